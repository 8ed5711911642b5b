"""The corpus stage's config, result and error types."""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from fastimg._validation import check_seed
from fastimg.store.schema import SPLIT_NAMES

DATASETS = ("imdb",)
SPLIT_MODES = ("auto", "column", "paper", "random")
PAPER_VAL_FRACTION = 0.2


class CorpusError(ValueError):
    """A mistake in the corpus input or its settings, described in one line."""

    def __init__(self, message: str):
        super().__init__(re.sub(r"\s*[\r\n]+\s*", " ", str(message)))


def check_text_columns(text_columns) -> tuple[str, ...]:
    """``text_columns`` (one name, or several) as a tuple of names, each once, else a
    CorpusError: a column named twice is joined twice, into other texts than intended."""
    columns = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
    if not columns or not all(isinstance(c, str) and c for c in columns):
        raise CorpusError(f"text_columns must be one or more column names, got {columns!r}")
    twice = next((c for i, c in enumerate(columns) if c in columns[:i]), None)
    if twice is not None:
        raise CorpusError(f"text_columns names {twice!r} twice; each text column is joined "
                          f"once")
    return columns


def _number(name: str, value) -> float:
    """``value`` as a float (a number, or a string of one), else a CorpusError naming
    ``name`` (``float()``'s own message named neither)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CorpusError(f"{name} must be a number, got {value!r}") from None


@dataclass(frozen=True)
class CorpusConfig:
    """How to load a labelled text corpus.

    Parameters
    ----------
    input : str, path or None
        A CSV, TSV, JSONL or Parquet file (each optionally ``.gz``-compressed), an aclImdb
        folder (``{train,test}/{pos,neg}/*.txt``, or a folder holding ``aclImdb/``) or an
        aclImdb tarball; a file may be an fsspec URL (``s3://bucket/reviews.csv.gz``), read
        with the storage options given to :func:`~fastimg.corpus.load_corpus`. Exactly one of
        ``input`` and ``dataset`` is given.
    dataset : {"imdb"} or None
        A built-in recipe; ``"imdb"`` finds the data with :func:`fastimg.corpus.resolve_imdb`.
    text_columns : tuple of str
        The text column(s); several are joined with a newline (e.g. a title and a body).
    label_column : str
        The label column. String labels are mapped to integers in sorted order and the
        class names kept; integer labels (numbers, or strings such as ``"1"``, ``"1.0"``)
        keep their values; a column of numbers holding a non-integer one is refused.
    id_column : str or None
        The row-id column (ids must be unique and non-empty). ``None``: the source's own ids
        (aclImdb, the imdb recipe), else a column named ``id`` if the file has one, else the
        0-based row number.
    split_column : str or None
        A column of split names: ``train``; ``test``; ``val``/``valid``/``validation``/``dev``
        (-> ``val``). ``None``: the source's own split (aclImdb, the imdb recipe), else a
        column named ``split`` if the file has one (a file's own test rows are never pooled
        into training unless ``split`` says so), else none. ``split`` ``"random"`` or
        ``"paper"`` pools every row: a column given then is ignored, with a warning.
    limit : int or None
        Keep a seeded random sample of this many rows, stratified by (split, label);
        ``None`` keeps all. A limit above the number of rows keeps all and warns.
    split : {"auto", "column", "paper", "random"}
        ``"column"``: the split column's split; when it has no ``val`` rows, ``val`` is
        carved from ``train`` with ``val_fraction`` (seeded, stratified by label).
        ``"paper"``: pool every row, ignore any split column, and split train/val
        80/20 stratified by label (the paper's 40k/10k on the 50k IMDB reviews).
        ``"random"``: the same pooling with ``val_fraction``. ``"auto"``: ``"column"``
        when there is a split column, else ``"random"``.
    val_fraction : float
        Share of the validation split, in (0, 1). ``"paper"`` needs the default 0.2; ignored,
        with a warning, when the split column has ``val`` rows.
    test_fraction : float
        When the corpus has no test rows (``"paper"``, ``"random"``, or a split column
        without ``test``): move this share of the training split (after validation is
        carved) to a test split, seeded and stratified by label, so the reported accuracy
        is measured on rows that chose nothing. 0 (the default) carves none; ignored, with a
        warning, when the corpus has test rows. In [0, 1).
    seed : int
        Seed of the sample and of the splits: the same seed gives the same corpus.
    """

    input: str | None = None
    dataset: str | None = None
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    id_column: str | None = None
    split_column: str | None = None
    limit: int | None = None
    split: str = "auto"
    val_fraction: float = PAPER_VAL_FRACTION
    test_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if (self.input is None) == (self.dataset is None):
            raise CorpusError("give exactly one of an input path and a dataset name")
        if self.input is not None:
            if not isinstance(self.input, (str, os.PathLike)):
                # str(3) was the file '3', str(b"a.csv") the file "b'a.csv'"
                raise TypeError(f"input must be a path or URL (a str or a pathlib.Path), got "
                                f"{self.input!r}")
            object.__setattr__(self, "input", os.fspath(self.input))
            if not self.input:
                raise CorpusError("input is an empty path")
        if self.dataset is not None and self.dataset not in DATASETS:
            raise CorpusError(f"unknown dataset {self.dataset!r}; built-in: {', '.join(DATASETS)}")
        columns = check_text_columns(self.text_columns)
        object.__setattr__(self, "text_columns", columns)
        if not (isinstance(self.label_column, str) and self.label_column.strip()):
            raise CorpusError(f"label_column must be a column name, got {self.label_column!r}")
        if self.label_column in columns:  # the classes in the texts: a probe scored 1.0
            raise CorpusError(f"label_column {self.label_column!r} is also a text column; the "
                              f"labels must not be in the texts (name each text's column with "
                              f"text_columns, its class's with label_column)")
        for name in ("id_column", "split_column"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise CorpusError(f"{name} must be a column name or None, got {value!r}")
        if self.split not in SPLIT_MODES:
            raise CorpusError(f"split must be one of {', '.join(SPLIT_MODES)}, got {self.split!r}")
        fraction = _number("val_fraction", self.val_fraction)
        if not (math.isfinite(fraction) and 0.0 < fraction < 1.0):
            raise CorpusError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        object.__setattr__(self, "val_fraction", fraction)
        test = _number("test_fraction", self.test_fraction)
        if not (math.isfinite(test) and 0.0 <= test < 1.0):
            raise CorpusError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        object.__setattr__(self, "test_fraction", test)
        if self.split == "paper" and fraction != PAPER_VAL_FRACTION:
            raise CorpusError(f"split 'paper' is an 80/20 train/val split; val_fraction "
                              f"{fraction} needs split 'random'")
        if self.limit is not None:
            number = (int, float, np.integer, np.floating)
            if (isinstance(self.limit, bool) or not isinstance(self.limit, number)
                    or not math.isfinite(self.limit) or int(self.limit) != self.limit
                    or self.limit < 1):
                raise CorpusError(f"limit must be a positive integer, got {self.limit!r}")
            object.__setattr__(self, "limit", int(self.limit))
        try:  # the range the layout and the trainer take too: one seed serves the whole build
            object.__setattr__(self, "seed", check_seed("seed", self.seed))
        except ValueError as exc:
            raise CorpusError(str(exc)) from None

    def effective(self, corpus: "Corpus") -> "CorpusConfig":
        """This config with the settings that changed nothing in ``corpus`` (loaded from
        it) set to the value that says so: equal corpora get equal settings."""
        return replace(self, **corpus.unused_settings)

    def to_dict(self) -> dict:
        """The settings as a JSON-serialisable dict (tuples become lists)."""
        out = asdict(self)
        out["text_columns"] = list(self.text_columns)
        if not self.test_fraction:
            # absent when unused, so stores built before the setting existed keep their keys
            del out["test_fraction"]
        return out


@dataclass(frozen=True, eq=False, repr=False)
class Corpus:
    """A loaded corpus: one entry per row, in the source's order.

    Attributes
    ----------
    ids : np.ndarray of str
        Unique row ids.
    texts : list of str
    labels : np.ndarray of int64
        String labels: indices into ``class_names``. Integer labels: their own values.
    class_names : list of str
        String labels: the sorted distinct labels. Integer labels: the string of each distinct
        integer in increasing order (the imdb recipe and aclImdb: ``["neg", "pos"]``);
        ``targets`` maps labels to indices into this list.
    split : np.ndarray of str
        ``"train"``, ``"val"`` or ``"test"`` per row.
    source : str
        The file or folder read.
    split_mode : str
        The split mode used (``"column"``, ``"paper"`` or ``"random"``).
    n_empty_texts : int
        Rows whose text is empty or whitespace (kept, and warned about).
    limit_shortfall : int
        How many rows ``limit`` asked for beyond those available (0: none).
    warnings : tuple of str
        The warnings logged while loading.
    class_values : tuple of int or None
        Integer labels: the value of each class in ``class_names`` (increasing); ``None`` for
        string labels.
    unused_settings : dict
        Settings of the :class:`CorpusConfig` that changed nothing, each with the value that
        gives the same corpus (a ``limit`` of at least the row count: None; a
        ``test_fraction`` on a corpus with test rows: 0), so that a stage key does not tell
        equal corpora apart (:meth:`CorpusConfig.effective`).
    """

    ids: np.ndarray
    texts: list
    labels: np.ndarray
    class_names: list
    split: np.ndarray
    source: str = ""
    split_mode: str = "column"
    n_empty_texts: int = 0
    limit_shortfall: int = 0
    warnings: tuple = field(default=())
    class_values: tuple | None = None
    unused_settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        # the dataclass's repr printed every text (67 MB for the 50,000 IMDB reviews)
        splits = ", ".join(f"{name} {int((self.split == name).sum())}" for name in SPLIT_NAMES
                           if (self.split == name).any())
        return (f"Corpus({len(self)} rows, classes {list(self.class_names)}, splits: "
                f"{splits or 'none'}, source={self.source!r})")

    @property
    def targets(self) -> np.ndarray:
        """Labels as 0-based indices into ``class_names`` (the same as ``labels`` unless integer
        labels are not 0..K-1)."""
        if self.class_values is None:
            return self.labels
        values = np.asarray(self.class_values, dtype=np.int64)
        return np.searchsorted(values, self.labels).astype(np.int64)

    def counts(self) -> dict:
        """``{split: {class_name: rows}}`` for the splits present."""
        names = self.class_names
        targets = self.targets
        out = {}
        for name in SPLIT_NAMES:
            mask = self.split == name
            if mask.any():
                tally = Counter(targets[mask].tolist())
                out[name] = {names[k]: int(tally.get(k, 0)) for k in range(len(names))}
        return out

    def summary(self) -> dict:
        """A JSON-serialisable account of the corpus (for logs and the store's attrs)."""
        return {
            "source": self.source,
            "n_rows": len(self),
            "n_classes": len(self.class_names),
            "class_names": list(self.class_names),
            "class_values": None if self.class_values is None else list(self.class_values),
            "split_mode": self.split_mode,
            "counts": self.counts(),
            "n_empty_texts": int(self.n_empty_texts),
            "limit_shortfall": int(self.limit_shortfall),
            "warnings": list(self.warnings),
        }

