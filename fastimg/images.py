"""`fastimg images`: a feature matrix you already have -> layout -> zarr image store."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass

import numpy as np

from fastimg._validation import (check_config, check_count, check_feature_matrix,
                                 check_finite_rows, total_memory_bytes)
from fastimg.layout import LayoutConfig
from fastimg.raster import RASTER_BACKENDS, check_image_dtype
from fastimg.store import SPLIT, SPLIT_NAMES, StoreWriter, build_lock
from fastimg.store.schema import SPLIT_ALIASES, split_rows
from fastimg.store.keys import StagePlan, digest

logger = logging.getLogger("fastimg")


@dataclass(frozen=True)
class ImagesConfig:
    """Settings of :func:`build_image_store` beyond the layout's own.

    Parameters
    ----------
    fit_rows : int or None
        Fit the layout on the first ``fit_rows`` rows only (the training rows); ``None``: the
        training rows of the ``split`` given to :func:`build_image_store`, else every row.
    image_dtype : {"float16", "float32", "uint8"}
    raster_backend : {"auto", "cpu", "cuda", "numpy"}
    """

    fit_rows: int | None = None
    image_dtype: str = "float16"
    raster_backend: str = "auto"

    def __post_init__(self):
        check_image_dtype(self.image_dtype)
        if self.raster_backend != "auto":  # the name; whether it runs here, the build says
            RASTER_BACKENDS.resolve(self.raster_backend)  # an unknown one: ValueError
        if self.fit_rows is not None:  # stored as a Python int: JSON-safe
            object.__setattr__(self, "fit_rows",
                               check_count("fit_rows", self.fit_rows, 2, "or None"))


#: rows of :func:`synthetic_matrix` made at a time (its float64 noise draw is 8 bytes a value)
SYNTHETIC_BLOCK_ROWS = 8192


def synthetic_matrix(n_samples: int, n_features: int, *, rank: int = 16, seed: int = 0,
                     dtype=np.float16) -> np.ndarray:
    """A low-rank matrix with feature groups, shaped like stacked [CLS] embeddings.

    Made :data:`SYNTHETIC_BLOCK_ROWS` rows at a time into the output: the temporaries (the
    float64 noise draw, its float32 copies) take a block's memory, not the matrix's (a
    200,000 x 2,304 float16 matrix needed 7 GB for 0.9 GB of output). The values are those
    of one draw of the whole matrix (the generator's stream is drawn in the same order), up to
    the float32 rounding of the product: BLAS may sum a block of another number of rows in
    another order. The same arguments give the same bytes on one machine.

    Parameters
    ----------
    n_samples, n_features : int
        The shape, each at least 1.
    rank : int
        Number of latent factors.
    seed : int
        The same seed gives the same matrix.
    dtype : numpy dtype
        dtype of the result.

    Returns
    -------
    numpy.ndarray, shape (n_samples, n_features)
    """
    check_count("n_samples", n_samples)
    check_count("n_features", n_features)
    needed = n_samples * n_features * np.dtype(dtype).itemsize
    if needed > total_memory_bytes():  # np.empty would succeed, and the fill be killed
        raise MemoryError(f"a {n_samples} x {n_features} {np.dtype(dtype)} matrix needs "
                          f"{needed / 2**30:.1f} GiB, more than this machine's "
                          f"{total_memory_bytes() / 2**30:.1f} GiB of memory")
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n_samples, rank)).astype(np.float32)
    loadings = rng.standard_normal((rank, n_features)).astype(np.float32)
    out = np.empty((n_samples, n_features), dtype=dtype)
    for start in range(0, n_samples, SYNTHETIC_BLOCK_ROWS):
        stop = min(n_samples, start + SYNTHETIC_BLOCK_ROWS)
        noise = 0.3 * rng.standard_normal((stop - start, n_features)).astype(np.float32)
        out[start:stop] = factors[start:stop] @ loadings / np.sqrt(rank) + noise
    return out


def _load_npy(path, what: str, **kwargs) -> np.ndarray:
    """``np.load`` of a ``.npy`` file, nothing pickled; ValueError (one line) for a file that is
    not one (``np.load`` calls anything without its header pickled data)."""
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise ValueError(f"{path} is not a .npy file (no NumPy header): save {what} with "
                             f"numpy.save")
    try:
        return np.load(path, allow_pickle=False, **kwargs)
    except ValueError as exc:
        raise ValueError(f"cannot read {path} as {what}: {exc}") from None


def read_matrix(path):
    """A feature matrix from ``.npy`` (memory-mapped) or a zarr array, without reading it all.

    Raises
    ------
    ValueError
        When ``path`` is missing, not a 2-D ``.npy`` matrix or zarr array (a fastimg store is
        named as such: its ``embeddings`` array is the matrix), or has no rows.
    """
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise ValueError(f"input {path} does not exist")
    if path.suffix == ".npy":
        matrix = _load_npy(path, "a .npy matrix", mmap_mode="r")
    elif path.is_dir():
        matrix = _open_zarr_array(path)
    else:
        raise ValueError(f"unsupported input {path}: give a .npy file or a zarr array folder")
    if len(matrix.shape) != 2:
        raise ValueError(f"input must be a 2-D matrix (samples x features), got shape "
                         f"{tuple(matrix.shape)}")
    if matrix.shape[0] == 0:
        raise ValueError(f"input {path} has no rows (shape {tuple(matrix.shape)})")
    return matrix


def _open_zarr_array(path):
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for a bad store
        raise ValueError(f"cannot open {path} as a zarr array: {exc}") from None
    if isinstance(node, zarr.Array):
        return node
    matrices = sorted(name for name, array in node.arrays() if array.ndim == 2)
    hint = (f"; to lay out a store's embeddings again use fastimg relayout, or give "
            f"{path}/embeddings" if "embeddings" in matrices else
            f"; give one of its 2-D arrays ({', '.join(matrices)})" if matrices else
            " (it holds no 2-D array)")
    raise ValueError(f"{path} is a zarr group, not an array{hint}")


def read_split(path, n_rows: int) -> np.ndarray:
    """The split of each row, as int8 codes into :data:`~fastimg.store.SPLIT_NAMES`.

    Parameters
    ----------
    path : str or path
        A ``.npy`` array of codes (0 train, 1 val, 2 test) or names (``train``, ``val``,
        ``test``, or ``valid``, ``validation``, ``dev`` for ``val``, in any case), or a text
        file (UTF-8) with one code or name per line.
    n_rows : int
        Rows of the feature matrix; the split must have as many.

    Raises
    ------
    ValueError
        On a missing or unreadable file, a wrong length or an unknown split.
    """
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"split file {path} is a folder, not a file")
    if not path.is_file():
        raise ValueError(f"split file {path} does not exist")
    if path.suffix == ".npy":
        values = _load_npy(path, "split labels")
    else:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise ValueError(f"split file {path} is not valid UTF-8 (line {line}); re-encode "
                             f"it as UTF-8") from None
        # one split per line: a blank line is a row without a split, not a line to skip
        # (skipping it moved every later row's split up by one)
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        blank = next((i for i, line in enumerate(lines) if not line.strip()), None)
        if blank is not None:
            raise ValueError(f"split file {path}: line {blank + 1} is empty; give each row's "
                             f"split (train, val or test) on a line of its own")
        if len(lines) != n_rows:
            raise ValueError(f"split file {path} has {len(lines)} lines; give one split per "
                             f"row ({n_rows})")
        values = np.array([line.strip() for line in lines])
        return split_codes(values, n_rows, source=str(path), lines=True)
    return split_codes(values, n_rows, source=str(path))


def split_codes(values, n_rows: int, *, source: str = "split",
                lines: bool = False) -> np.ndarray:
    """``values`` (codes, or names as :data:`~fastimg.store.schema.SPLIT_ALIASES` spells them,
    or codes written as text; one per row) as int8 codes; raises ValueError when invalid,
    naming the row by its index (0-based), or the 1-based line of a text file when ``lines``."""
    values = np.asarray(values)
    if values.ndim != 1 or values.shape[0] != n_rows:
        raise ValueError(f"{source} must hold one split per row ({n_rows}), got shape "
                         f"{values.shape}")
    if values.dtype.kind in "iu":
        codes = values.astype(np.int64)
    elif values.dtype.kind in "US":
        code_of = {**{alias: SPLIT_NAMES.index(name) for alias, name in SPLIT_ALIASES.items()},
                   **{str(code): code for code in range(len(SPLIT_NAMES))}}
        codes = np.fromiter((code_of.get(name.strip().lower(), -1)
                             for name in values.astype(str).tolist()),
                            dtype=np.int64, count=n_rows)
    else:
        raise ValueError(f"{source} must hold split codes or names, got dtype {values.dtype}")
    bad = np.flatnonzero((codes < 0) | (codes >= len(SPLIT_NAMES)))
    if bad.size:
        where = f"line {bad[0] + 1}" if lines else f"index {bad[0]}"  # as numpy counts
        raise ValueError(f"{source}: {where} has split {values[bad[0]].item()!r}; expected "
                         f"one of {', '.join(SPLIT_NAMES)} or their codes "
                         f"0-{len(SPLIT_NAMES) - 1}")
    return codes.astype(np.int8)


def training_rows(codes: np.ndarray, advice: str = "") -> np.ndarray:
    """The rows of the training split of split ``codes``, the layout's rows; a ValueError
    (``advice`` added) when there are fewer than the 2 a layout needs."""
    rows = split_rows(codes, "train")
    if rows.size < 2:
        raise ValueError(f"the training split has {rows.size} row{'' if rows.size == 1 else 's'}"
                         f"; the layout needs at least 2{advice}")
    return rows


def _fit_rows(n_rows: int, fit_rows: int | None, split) -> tuple[str, np.ndarray]:
    """How the layout's rows were chosen and which they are."""
    if split is not None:
        if fit_rows is not None:
            raise ValueError("give either fit_rows or a split, not both")
        return "train", training_rows(split)
    if fit_rows is not None and fit_rows < n_rows:
        return "first_rows", np.arange(fit_rows)
    if fit_rows is not None and fit_rows > n_rows:
        logger.warning("fit_rows %d is more than the %d rows: the layout is fitted on all "
                       "of them", fit_rows, n_rows)
    return "all", np.arange(n_rows)  # recorded as all: the same layout key as without fit_rows


def matrix_digest(matrix, *, check_finite: bool = False, block_rows: int = 8192) -> str:
    """sha256 of a matrix's shape, dtype and values, read block by block; with
    ``check_finite``, the same pass refuses rows that hold NaN or infinite values.

    Raises
    ------
    ValueError
        Naming the first such rows.
    """
    digest = hashlib.sha256(json.dumps([list(matrix.shape), str(matrix.dtype)]).encode())
    for start in range(0, matrix.shape[0], block_rows):
        block = np.ascontiguousarray(matrix[start:start + block_rows])
        if check_finite:
            check_finite_rows(block, "input matrix", offset=start)
        digest.update(block.tobytes())
    return digest.hexdigest()


def build_image_store(matrix, out, layout_config: LayoutConfig | None = None,
                      config: ImagesConfig | None = None, *, split=None, force: bool = False,
                      progress: bool = True, on_stage=None) -> dict:
    """Fit a layout on ``matrix`` and write every row's image into a new zarr store at ``out``.

    The layout is fitted on the training rows of ``split`` (codes or names per row, see
    :func:`split_codes`; stored beside the images), else on the first ``config.fit_rows``
    rows, else on every row. An interrupted run resumes (the layout and the finished image
    blocks are kept) when it is started again on the same matrix with the same settings.

    Parameters
    ----------
    matrix : array-like, shape (n_rows, n_features)
        Real numbers, finite. An array with ``shape``, ``dtype`` and slicing (numpy,
        memmap, zarr) is read block by block; anything else (a list of lists, a DataFrame) is
        converted with :func:`numpy.asarray` first.
    out : str or path
        The store to write.
    layout_config : LayoutConfig, optional
        Default ``LayoutConfig()``.
    config : ImagesConfig, optional
        Default ``ImagesConfig()``.
    split : array-like, optional
        One split per row (codes 0/1/2 or names); the layout is fitted on the train rows.
    force : bool
        Replace a complete store at ``out``, reusing its stages whose settings match (the
        layout, when only the image dtype changes). Without it, a store built with other
        settings is refused, and one built with these is returned as it is (its summary with
        ``up_to_date: True``; nothing is computed).
    progress : bool
        Show a progress bar.
    on_stage : callable, optional
        ``on_stage(name)`` when a stage starts (``layout``, ``raster``), once the input and
        the settings are checked.

    Returns
    -------
    dict
        The summary written into the store's attrs.

    Raises
    ------
    TypeError
        When ``layout_config`` or ``config`` is not a :class:`LayoutConfig` /
        :class:`ImagesConfig`, or ``matrix`` is a path (read it with :func:`read_matrix`).
    ValueError
        When ``matrix`` is not a non-empty 2-D matrix of real numbers, holds NaN or infinite
        values, or the split is invalid.
    fastimg.store.StoreError
        When ``out`` exists with other settings and ``force`` is false.
    """
    from fastimg import stages

    layout_config = check_config("layout_config", layout_config, LayoutConfig)
    config = check_config("config", config, ImagesConfig)
    on_stage = on_stage or (lambda name: None)
    if isinstance(matrix, (str, bytes, os.PathLike)):
        # np.asarray of a path is a 0-d str array: "must be 2-D ..., got shape ()"
        raise TypeError(f"matrix must be an array, got the path {matrix!r}: "
                        f"build_image_store(matrix, out, ...) takes the matrix first (a .npy "
                        f"file or zarr array: fastimg.images.read_matrix(path))")
    if not all(hasattr(matrix, attr) for attr in ("shape", "dtype", "__getitem__")):
        matrix = np.asarray(matrix)  # a list of lists, a DataFrame: in memory anyway
    if len(matrix.shape) != 2 or matrix.shape[0] == 0:
        raise ValueError(f"input matrix must be 2-D with at least one row, got shape "
                         f"{tuple(matrix.shape)}")
    n_rows = matrix.shape[0]
    if split is not None:
        split = split_codes(split, n_rows)
    fit_on, fit_rows = _fit_rows(n_rows, config.fit_rows, split)
    check_feature_matrix(np.asarray(matrix[:fit_rows.max() + 1])[fit_rows], name="input matrix")
    # the rows the layout is not fitted on are checked too, before it is fitted on these
    given = {"sha256": matrix_digest(matrix, check_finite=fit_rows.size < n_rows),
             "shape": list(matrix.shape)}
    # before the layout is fitted (minutes of t-SNE) and an unfinished build is left behind
    stages.check_unscaled_uint8(matrix, layout_config.scaling, config.image_dtype)
    if split is not None:  # stored beside the images: another split is another store
        given["split_sha256"] = digest(split)
    plan = (StagePlan()
            .add("input", given)
            .add("layout", stages.layout_settings(layout_config, fit_on, fit_rows))
            .add("images", stages.images_settings(config)))
    with build_lock(out):  # a second command building out is refused
        current = stages.up_to_date(out, plan, force=force)
        if current is not None:
            return current
        # a forced build takes the matching stages (the layout) of the store it replaces
        existing = stages.open_existing(out, plan, force=force)
        timings = {}
        with StoreWriter.open(out) as writer:
            reused = stages.reconcile(writer, plan, [existing] if existing else [], force=force)
            writer.begin("input", plan.keys["input"], plan.settings["input"])
            if split is not None:
                writer.write_rows(SPLIT, split)
            elif SPLIT in writer.group:  # the split of a build picked up, or rebuilt in place
                del writer.group[SPLIT]
            on_stage("layout")
            layout = stages.run_layout(writer, plan, layout_config, fit_rows, matrix, timings,
                                       config.raster_backend)
            # done once the layout has read it: a refusal before then leaves nothing behind
            writer.complete_stage("input")
            on_stage("raster")
            stages.run_images(writer, plan, layout, matrix, config, progress, timings)
            height, width = layout_config.grid
            summary = {
                "rows": n_rows, "features": int(matrix.shape[1]),
                "image_shape": [height, width], "image_dtype": config.image_dtype,
                "fit_on": fit_on, "fit_rows": int(fit_rows.size),
                "occupied_pixels": layout.n_occupied_pixels, "timings": timings,
                "reused": reused,
            }
            if split is not None:
                summary["split_rows"] = {name: int((split == code).sum())
                                         for code, name in enumerate(SPLIT_NAMES)}
            writer.finish({"kind": "images", "config": {"layout": layout_config.to_dict(),
                                                        "images": asdict(config)},
                           "layout": layout.to_dict(), "summary": summary})
    return summary
