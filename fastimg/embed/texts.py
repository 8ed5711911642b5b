"""The encoder's input: texts checked, empty ones reported, and their digest."""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping

from fastimg._validation import lone_surrogate

__all__ = ["EmptyTextWarning", "check_texts", "texts_digest", "warn_empty"]


class EmptyTextWarning(UserWarning):
    """Some texts are empty or whitespace-only (they are encoded as ``[CLS] [SEP]``)."""


def _items(texts):
    """An iterator over ``texts``, or the TypeError of :func:`check_texts` for a single str or
    bytes, a mapping, or something not iterable."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of str, not a single "
                        f"{type(texts).__name__}; wrap it in a list")
    if isinstance(texts, Mapping):  # its keys would be taken for the texts
        raise TypeError(f"texts must be a sequence of str, got a {type(texts).__name__}; pass "
                        f"its values (list(d.values())) if they are the texts")
    try:
        return iter(texts)
    except TypeError:
        raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}") from None


def check_texts(texts) -> list[str]:
    """Return ``texts`` as a list of str.

    Raises
    ------
    TypeError
        When ``texts`` is a single str or bytes, a mapping, not iterable, or holds a non-str
        item (the first one is named).
    ValueError
        When a text holds a lone surrogate (``"\\ud800"``, from a bad decode or a JSON
        escape): it has no UTF-8 form, so no tokenizer can read it.
    """
    texts = list(_items(texts))
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise _not_a_text(i, text)
        at = lone_surrogate(text)
        if at is not None:
            raise ValueError(f"texts[{i}] holds a lone surrogate {text[at]!r} at character "
                             f"{at}, which has no UTF-8 form; decode the text with "
                             f"errors='replace' or drop it")
    return texts


def warn_empty(texts, stacklevel: int = 3) -> None:
    """Warn (:class:`EmptyTextWarning`) when some texts are empty or whitespace-only."""
    n_empty = sum(1 for t in texts if not t.strip())
    if n_empty:
        warnings.warn(f"{n_empty} of {len(texts)} texts are empty or whitespace-only; they are "
                      f"encoded as [CLS] [SEP] alone", EmptyTextWarning, stacklevel=stacklevel)


def _not_a_text(index: int, item) -> TypeError:
    return TypeError(f"texts[{index}] is {type(item).__name__} ({item!r:.40}), expected str")


def texts_digest(texts) -> str:
    """sha256 over the texts (length-prefixed, UTF-8): identifies the input of a run.

    Raises
    ------
    TypeError
        As :func:`check_texts` for a single str or bytes, a mapping, something not iterable,
        or a non-str item (the digest of "ab" was that of ["a", "b"]).
    """
    digest = hashlib.sha256()
    for i, text in enumerate(_items(texts)):
        if not isinstance(text, str):
            raise _not_a_text(i, text)
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()
