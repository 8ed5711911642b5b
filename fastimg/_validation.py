"""Input checks shared by the stages: one clear ValueError per user mistake."""
from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
#: Names (classes, values) a message or summary lists one by one; past it, the first ones and
#: how many more.
MAX_LISTED = 20


def total_memory_bytes() -> int:
    """Physical memory of this machine (``os.sysconf``)."""
    return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))


def check_feature_matrix(x, *, name: str = "X", n_features: int | None = None,
                         check_finite: bool = True, rows_required: bool = True) -> np.ndarray:
    """Return ``x`` as a 2-D float array (no copy when possible) or raise ValueError; without
    ``rows_required``, a matrix of no rows is one (the last, empty batch of a loop)."""
    if hasattr(x, "toarray") and hasattr(x, "nnz"):
        # np.asarray of a scipy sparse matrix is a 0-d object array: "got shape ()"
        raise ValueError(f"{name} is a sparse matrix ({type(x).__name__}, shape {x.shape}); "
                         f"fastimg needs a dense one: pass {name}.toarray()")
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (samples x features), got shape {x.shape}")
    if (x.shape[0] == 0 and rows_required) or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.dtype not in FLOAT_DTYPES:
        x = x.astype(np.float32)
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(
            f"{name} has {x.shape[1]} features but the layout was fitted on {n_features}")
    if check_finite:
        check_finite_rows(x, name)
    if check_finite and x.dtype.itemsize > 4:  # the layout and the kernels compute in float32
        largest = max(float(x.max()), -float(x.min()))  # no copy of x
        if largest > float(np.finfo(np.float32).max):
            raise ValueError(f"{name} holds values beyond float32's range (largest magnitude "
                             f"{largest:.3g}), in which fastimg computes; rescale them first")
    return x


def non_finite_rows(x: np.ndarray, *, offset: int = 0) -> str | None:
    """``"rows [3, 9]"``: the first rows of the 2-D ``x`` (numbered from ``offset``) that hold
    a NaN or infinite value (`` ...`` after five), for a refusal; None when all are finite."""
    finite = np.isfinite(x)
    if finite.all():
        return None
    bad = np.flatnonzero(~finite.all(axis=1)) + offset
    return f"rows {bad[:5].tolist()}{' ...' if bad.size > 5 else ''}"


def check_finite_rows(x: np.ndarray, name: str, *, offset: int = 0) -> None:
    """ValueError naming the first rows of the 2-D ``x`` (numbered from ``offset``) that hold a
    NaN or infinite value, if any (:func:`non_finite_rows`)."""
    rows = non_finite_rows(x, offset=offset)
    if rows is not None:
        raise ValueError(f"{name} contains NaN or infinite values ({rows}); clean or impute "
                         f"them first")


def check_grid(shape, name: str = "grid") -> tuple[int, int]:
    """Normalise ``50`` or ``(50, 40)`` to ``(height, width)``; both must be whole numbers
    >= 2 (a string, a fraction or a bool is a ValueError naming ``name``, not truncated or
    split)."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (int(shape), int(shape))
    try:
        height, width = (_whole(s) for s in (() if isinstance(shape, (str, bytes)) else shape))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a (height, width) pair of ints, got "
                         f"{shape!r}") from None
    if height < 2 or width < 2:
        raise ValueError(f"{name} must be at least 2 x 2 pixels, got {height} x {width}")
    return height, width


def is_whole(value) -> bool:
    """Whether ``value`` is an int or a numpy integer (a bool is not)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _whole(value) -> int:
    """``value`` as an int when it is a whole number (``50`` or ``50.0``), else ValueError."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(value)
    if is_whole(value):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise ValueError(value)


#: seeds numpy's legacy RandomState (scikit-learn's ``random_state``) accepts: [0, 2**32)
SEED_LIMIT = 2 ** 32


def check_seed(name: str, value) -> int:
    """``value`` as an int when it is a whole number in [0, 2**32), else ValueError naming
    ``name`` (the range every seeded library here accepts)."""
    if not is_whole(value) or not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be a whole number from 0 to {SEED_LIMIT - 1}, "
                         f"got {value!r}")
    return int(value)


def check_flag(name: str, value) -> bool:
    """``value`` as a bool when it is one (numpy's included), else ValueError naming ``name``:
    a string is truthy, so ``probe="false"`` ran the probes and ``shuffle="no"`` shuffled."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_fraction(name: str, value) -> float:
    """``value`` as a float when it is a real number in [0, 1], else ValueError naming
    ``name`` (True is no number here)."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or not 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_count(name: str, value, minimum: int = 1, alternative: str = "") -> int:
    """``value`` as an int when it is a whole number >= ``minimum``, else ValueError naming
    ``name`` (and the ``alternative`` it may also be, such as ``"or None"``)."""
    if not is_whole(value) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}"
                         f"{' ' + alternative if alternative else ''}, got {value!r}")
    return int(value)


def check_description(cls, data) -> None:
    """Refuse, with a TypeError naming ``cls.from_dict``, a ``data`` that is no dict (None, a
    JSON list): iterating it failed with "'NoneType' object is not iterable"."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}.from_dict takes a dict (what to_dict gives), got "
                        f"{type(data).__name__}")


def check_config(name: str, value, cls, *, required: bool = False):
    """``value`` when it is a ``cls``, ``cls()`` (the defaults) when it is None and not
    ``required``, else a TypeError naming ``name``: a config passed in the wrong place (an
    ``EncoderConfig`` where a ``LayoutConfig`` goes) or as a dict would otherwise fail deep
    inside, naming neither."""
    if isinstance(value, cls):
        return value
    if value is None and not required:
        return cls()
    hint = ""
    if isinstance(value, dict):
        hint = f"; build one with {cls.__name__}(**settings)" + (
            f" or {cls.__name__}.from_dict(settings)" if hasattr(cls, "from_dict") else "")
    article = "an" if cls.__name__[0] in "AEIOU" else "a"
    raise TypeError(f"{name} must be {article} {cls.__name__}{'' if required else ' or None'}, "
                    f"got {type(value).__name__}{hint}")


def lone_surrogate(text: str) -> int | None:
    """The position of the first lone surrogate in ``text`` (half of a character, as a JSON
    ``\\ud800`` escape or a bad decode leaves it: it has no UTF-8 form, so no tokenizer reads
    it), or None. ASCII texts cost one ``isascii``."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def file_in_the_way(folder) -> Path | None:
    """The first of ``folder`` and its parents that exists and is not a folder (so that
    nothing can be written into ``folder``), or None."""
    folder = Path(folder)
    return next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)


def check_can_write(path, what, *, replaced: bool = False) -> None:
    """Refuse, before any work, to write ``what`` at ``path`` (a file or a folder) where this
    user cannot: a read-only file system, or no permission.

    An existing ``path`` is written where it is, and a new one is made in the nearest of its
    parents that exists; ``replaced``: an existing regular file is replaced by a new file
    beside it (:func:`fastimg._files.replace_file`), so its folder is what must be writable.

    Raises
    ------
    PermissionError
        One line naming ``what`` and the file or folder that cannot be written.
    """
    path = Path(path)
    in_place = path.exists() and not (replaced and path.is_file() and not path.is_symlink())
    target = path if in_place else next((p for p in path.parents if p.exists()), None)
    if target is not None and not os.access(
            target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
        raise PermissionError(f"cannot write {what}: {target} is not writable (a read-only "
                              f"file system, or no permission)")
