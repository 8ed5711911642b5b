"""How one cell of a :class:`~fastimg.corpus.Table` is read: a label (missing, an integer,
a class name), an id, a text. Shared by the corpus loader and ``fastimg predict``'s
reader of new texts, so that both read a column alike."""
from __future__ import annotations

import math
import re
from decimal import Decimal

import numpy as np

from fastimg.corpus._base import CorpusError
from fastimg.corpus.readers import Table

#: Label cells that mean "no label".
MISSING_LABELS = {"", "nan", "na", "n/a", "null", "none"}
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def is_missing_label(value) -> bool:
    """Whether a label cell holds no label: None, NaN, or blank or NA-like text
    (:data:`MISSING_LABELS`)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING_LABELS


def as_integer(value):
    """An int, ``None`` (not a number: string labels) or ``False`` (a non-integral number)."""
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else False
    if isinstance(value, Decimal):  # a Parquet decimal column (SQL's NUMERIC)
        return int(value) if value.is_finite() and value == value.to_integral_value() else False
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        if text.lstrip("+-").isdigit():
            return int(text)  # exact, however many digits
        number = float(text)
        return int(number) if math.isfinite(number) and number.is_integer() else False
    return None


def class_name(value) -> str:
    """A label's class name among text labels: a typed number (JSON, Parquet) named by its
    integer when it is one (``1`` and ``1.0`` are one class), text as written, stripped."""
    if isinstance(value, (float, np.floating, Decimal)) and as_integer(value) is not False:
        return str(int(value))
    return str(value).strip()


def scalars(table: Table, column: str, values=None) -> list:
    """The column's ``values`` (default: the table's); a nested value (a JSON list or object, a
    Parquet list or struct) or bytes that are not UTF-8 (a Parquet binary column) is refused,
    naming its row (``str()`` would make ``"{'a': 1}"`` or ``"b'..'"`` of it)."""
    values = table.columns[column] if values is None else values
    for i, value in enumerate(values):
        if isinstance(value, (list, dict)):
            kind = "list" if isinstance(value, list) else "object"
            raise CorpusError(f"column {column!r} holds a nested {kind} at {table.where(i)}; "
                              f"expected a single value")
        if isinstance(value, bytes):
            raise CorpusError(f"column {column!r} holds bytes that are not UTF-8 text at "
                              f"{table.where(i)}; store the column as UTF-8 text")
    return values


def id_values(table: Table, column: str) -> list:
    """The id column's values as :func:`scalars` gives them, but a binary id that is not UTF-8
    text (a UUID, a digest) kept, as hex."""
    return scalars(table, column, [v.hex() if isinstance(v, bytes) else v
                                   for v in table.columns[column]])


def id_text(value) -> str:
    """An id (from :func:`id_values`) as text."""
    if is_missing_label(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def cell_text(value) -> str:
    """A text cell (from :func:`scalars`: never nested, never bytes) as text."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)
