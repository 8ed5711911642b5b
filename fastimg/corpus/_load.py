"""``load_corpus``: a :class:`Table` -> checked ids, texts, labels and splits."""
from __future__ import annotations

import logging

import numpy as np

from fastimg._validation import MAX_LISTED, check_config, lone_surrogate
from fastimg.corpus._base import PAPER_VAL_FRACTION, Corpus, CorpusConfig, CorpusError
from fastimg.corpus.cells import (as_integer, cell_text, class_name, id_text, id_values,
                                  is_missing_label, scalars)
from fastimg.corpus.imdb import IMDB_LABEL_NAMES, resolve_imdb
from fastimg.corpus.readers import Table, read_table
from fastimg.store.schema import SPLIT_ALIASES

logger = logging.getLogger("fastimg.corpus")

#: A label column that many rows long, every value distinct, is not one (an id or text column).
MIN_ROWS_ALL_DISTINCT = 10


def load_corpus(config: CorpusConfig, storage_options: dict | None = None) -> Corpus:
    """Load, check, sample and split a labelled corpus as ``config`` says.

    ``storage_options`` (credentials, endpoint) serve an input given as an fsspec URL
    (``s3://bucket/reviews.csv``); they are not part of ``config``, so never stored.

    Raises
    ------
    CorpusError
        One line per problem: missing or empty input, unreadable format, a missing column
        (listing those that exist), non-UTF-8 bytes, a missing label, a single class (in
        the corpus or in its train split), a label column whose every value differs (at least
        :data:`MIN_ROWS_ALL_DISTINCT` rows), a duplicate or empty id, an unknown split name, a
        nested value (each naming the row).
    TypeError
        When ``config`` is not a :class:`CorpusConfig` (a dict: ``CorpusConfig(**settings)``).
    """
    check_config("config", config, CorpusConfig, required=True)
    table = _open_table(config, storage_options)
    notes: list[str] = []
    id_column, split_column, mode = _columns(config, table)
    ids = _ids(table, id_column)
    labels, class_names, class_values = _labels(table, config.label_column)
    _check_classes(config, table, class_names)
    _note_case_variants(class_names, config.label_column, notes)
    if class_values is not None:
        _note_number_spellings(scalars(table, config.label_column), config.label_column, notes)
    split = _split_values(table, split_column) if mode == "column" else None

    unused = {}  # settings that changed nothing, and the value that says so
    if mode != "column" and config.split_column:
        unused["split_column"] = None
        notes.append(f"split_column {config.split_column!r} ignored: split {mode!r} pools every "
                     f"row (its test rows too) into train and val (split 'column' keeps them)")
    rows, shortfall = _sample(config, table, labels, split, unused, notes)
    labels = labels[rows]
    ids = ids[rows]
    texts = _texts(table, config.text_columns, rows)
    n_empty = _note_empty_texts(config, table, texts, ids, rows, notes)
    split, carved = _assign_splits(config, mode, None if split is None else split[rows], labels,
                                   split_column, unused, notes)
    remedies = (["a larger limit"] if config.limit is not None and "limit" not in unused else [])
    if carved:
        remedies.append(f"a smaller {' or '.join(carved)}")
    if mode == "paper":  # its 80/20 is fixed
        remedies.append("split 'random' with a smaller val_fraction")
    if mode == "column":
        remedies.append(f"train rows of more than one class in split column {split_column!r}")
    _check_train_classes(split, labels, class_names, class_values, notes, remedies)
    _note_val_classes(split, labels, class_names, class_values, notes)

    for note in notes:
        logger.warning("%s", note)
    return Corpus(ids=ids, texts=texts, labels=labels, class_names=class_names,
                  split=split.astype("<U5"), source=table.source, split_mode=mode,
                  n_empty_texts=n_empty, limit_shortfall=shortfall, warnings=tuple(notes),
                  class_values=class_values, unused_settings=unused)


def _open_table(config: CorpusConfig, storage_options) -> Table:
    """The table of the corpus: IMDB's, or the input file's, with the roles of its columns
    named like the defaults."""
    if config.dataset == "imdb":
        table = read_table(resolve_imdb())
        table.id_column = table.id_column or "id"
        table.split_column = table.split_column or "split"
        table.label_names = table.label_names or dict(IMDB_LABEL_NAMES)
        return table
    table = read_table(config.input, storage_options)
    # columns named like the defaults are the file's ids and split unless others are named,
    # as "text" and "label" are its texts and labels
    for role, name in (("id_column", "id"), ("split_column", "split")):
        if getattr(table, role) is None and name in table.columns:
            setattr(table, role, name)
    return table


def _columns(config: CorpusConfig, table: Table) -> tuple:
    """``(id column, split column, split mode)``: ``auto`` resolved, a source's own split
    column dropped when pooling, and every column named checked to exist."""
    id_column = config.id_column or table.id_column
    split_column = config.split_column or table.split_column
    mode = config.split
    if mode == "auto":
        mode = "column" if split_column else "random"
    if mode == "column" and not split_column:
        raise CorpusError(f"split 'column' needs a split column; columns of {table.source}: "
                          f"{_names(table)}")
    if mode != "column" and not config.split_column:
        split_column = None  # a source's own split is not used when pooling
    for role, name in [("text", c) for c in config.text_columns] + [
            ("label", config.label_column), ("id", id_column), ("split", split_column)]:
        if name is not None and name not in table.columns:
            raise CorpusError(f"{table.source} has no {role} column {name!r}"
                              f"{_did_you_mean(name, table.columns)}; its columns: "
                              f"{_names(table)}")
    return id_column, split_column, mode


def _check_classes(config: CorpusConfig, table: Table, class_names) -> None:
    """Refuse a label column of one class, or one whose every value differs (an id or text
    column named as the labels)."""
    if len(class_names) < 2:
        raise CorpusError(f"label column {config.label_column!r} has a single class "
                          f"({class_names[0]!r}); a classifier needs at least two")
    if len(class_names) == table.n_rows >= MIN_ROWS_ALL_DISTINCT:
        raise CorpusError(f"label column {config.label_column!r} holds a different value in "
                          f"each of its {table.n_rows} rows (first: {str(class_names[0])[:40]!r})"
                          f", so every row would be a class of its own; is it the label column? "
                          f"(label_column; columns: {_names(table)})")


def _sample(config: CorpusConfig, table: Table, labels, split, unused: dict,
            notes: list) -> tuple[np.ndarray, int]:
    """``(rows kept, rows short of the limit)``: ``config.limit`` rows stratified by class
    (and by split with a split column), ascending; every row without a limit or past it."""
    rows = np.arange(table.n_rows)
    if config.limit is None:
        return rows, 0
    if config.limit >= table.n_rows:
        unused["limit"] = None
    if config.limit > table.n_rows:
        notes.append(f"limit {config.limit} is larger than the {table.n_rows} rows of "
                     f"{table.source}; using all {table.n_rows}")
        return rows, config.limit - table.n_rows
    if config.limit < table.n_rows:
        strata = labels if split is None else _pair_codes(split, labels)
        rng = np.random.default_rng([config.seed, 1])
        rows = np.sort(_stratified_pick(strata, config.limit, rng))
        if np.unique(labels[rows]).size < 2:
            raise CorpusError(f"limit {config.limit} keeps a single class; raise it")
    return rows, 0


def _note_empty_texts(config: CorpusConfig, table: Table, texts, ids, rows, notes: list) -> int:
    """How many of the kept texts are empty or blank (noted, with the first one's place)."""
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        # a JSON record without the key, or a null: a schema slip more often than a text
        keyless = sum(all(table.columns[c][int(rows[i])] is None for c in config.text_columns)
                      for i in empty)
        absent = (f"; {keyless} of them {'has' if keyless == 1 else 'have'} no "
                  f"{' or '.join(map(repr, config.text_columns))} (a record without the key, "
                  f"or null)" if keyless and table.location_kind == "line" else "")
        notes.append(f"{len(empty)} of {len(texts)} texts are empty or blank (first: "
                     f"{table.where(int(rows[empty[0]]))}, id {str(ids[empty[0]])!r}{absent}); "
                     f"kept, encoded as [CLS] [SEP] alone")
    return len(empty)


def _assign_splits(config: CorpusConfig, mode: str, split, labels, split_column, unused: dict,
                   notes: list) -> tuple[np.ndarray, list[str]]:
    """``(split of each kept row, the fractions that carved rows)``: the split column's
    (``split``, with val carved from train when it has none) or every row pooled into train
    and val; then test carved from train with ``test_fraction``."""
    rng = np.random.default_rng([config.seed, 2])
    fraction = PAPER_VAL_FRACTION if mode == "paper" else config.val_fraction
    carved_val = carved_test = False
    if mode == "column":
        present = set(split.tolist())
        if "train" not in present:
            raise CorpusError(f"split column {split_column!r} has no train rows "
                              f"(found: {', '.join(sorted(present))})")
        if "val" in present and config.val_fraction != PAPER_VAL_FRACTION:
            unused["val_fraction"] = PAPER_VAL_FRACTION  # the default: the same corpus's key
            notes.append(f"val_fraction {config.val_fraction} ignored: the corpus has "
                         f"{int((split == 'val').sum())} val rows")
        if "val" not in present:
            train = np.flatnonzero(split == "train")
            val = train[_split_off(labels[train], fraction, rng, "the train split")]
            split[val] = "val"
            carved_val = True
            logger.info("carved %d validation rows from %d train rows (val_fraction %.3g)",
                        val.size, train.size, fraction)
    else:
        split = np.full(len(labels), "train", dtype="<U5")
        split[_split_off(labels, fraction, rng, "the corpus")] = "val"
    if config.test_fraction:
        if (split == "test").any():
            unused["test_fraction"] = 0.0
            notes.append(f"test_fraction {config.test_fraction} ignored: the corpus has "
                         f"{int((split == 'test').sum())} test rows")
        else:
            train = np.flatnonzero(split == "train")
            test = train[_split_off(labels[train], config.test_fraction,
                                    np.random.default_rng([config.seed, 3]), "the train split")]
            split[test] = "test"
            carved_test = True
            logger.info("carved %d test rows from %d train rows (test_fraction %.3g)",
                        test.size, train.size, config.test_fraction)
    carved = [name for name, carved in (("val_fraction", mode == "random" or carved_val),
                                        ("test_fraction", carved_test)) if carved]
    return split, carved


def _did_you_mean(name: str, columns) -> str:
    """`` (did you mean 'Text'?)`` for the column ``name`` probably meant (the same name in
    another case, or a close spelling), else ``""``."""
    import difflib

    folded = {str(c).casefold(): str(c) for c in columns}
    close = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=0.75)
    return f" (did you mean {folded[close[0]]!r}?)" if close else ""


def _names(table: Table) -> str:
    names = ", ".join(repr(n) for n in table.columns)
    if len(table.columns) == 1:
        header = next(iter(table.columns))
        delimiter = next((d for d in (";", "\t", "|", ",") if d in header), None)
        if delimiter is not None:
            names += f" (one column: is the file delimited by {delimiter!r}?)"
    return names


def _check_train_classes(split, labels, class_names, class_values, notes, remedies) -> None:
    """Refuse a train split of one class, naming ``remedies`` (what shaped the split); note the
    classes it lacks (a model never sees them, yet they are scored)."""
    values = labels if class_values is None else np.searchsorted(class_values, labels)
    present = set(values[split == "train"].tolist())
    missing = [class_names[k] for k in range(len(class_names)) if k not in present]
    if len(present) < 2:
        only = ", ".join(repr(class_names[k]) for k in sorted(present)) or "none"
        raise CorpusError(f"the train split holds a single class ({only}) of "
                          f"{len(class_names)}; a classifier needs two (try "
                          f"{'; '.join(remedies) or 'more rows'})")
    if not missing:
        return
    kept = set(values.tolist())
    absent = [name for k, name in enumerate(class_names) if k not in kept]
    if absent:  # classes of the file that the sample (--limit) holds no row of
        notes.append(f"{len(absent)} of the {len(class_names)} classes "
                     f"{'has' if len(absent) == 1 else 'have'} no rows in the limit's sample "
                     f"({_listed(absent)}): they stay classes of the store, without rows")
    absent_names = set(absent)
    missing = [name for name in missing if name not in absent_names]
    if missing:
        notes.append(f"the train split has no rows of class {_listed(missing)}: a model "
                     f"trained on it cannot predict {'it' if len(missing) == 1 else 'them'}")


def _note_val_classes(split, labels, class_names, class_values, notes) -> None:
    """Note the classes the train split has and the val split lacks: validation, which picks
    the best epoch, never scores them (a class without train rows is noted already)."""
    values = labels if class_values is None else np.searchsorted(class_values, labels)
    val = values[split == "val"]
    if not val.size:
        return
    missing = sorted(set(values[split == "train"].tolist()) - set(val.tolist()))
    if missing:
        rows = f"{val.size} row{'s' if val.size > 1 else ''}"
        notes.append(f"the val split ({rows}) has no rows of class "
                     f"{_listed([class_names[k] for k in missing])}: validation, which picks "
                     f"the best epoch, never scores {'it' if len(missing) == 1 else 'them'}")


def _listed(names, limit: int = MAX_LISTED, shown=repr) -> str:
    """``names`` written by ``shown`` (quoted) and joined, the first ``limit`` of them and
    how many more."""
    text = ", ".join(map(shown, names[:limit]))
    return text + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _note_case_variants(class_names, column: str, notes: list) -> None:
    """Note classes whose names differ only in case (``World`` / ``world``): kept apart, as
    the labels say, but seldom meant."""
    groups: dict = {}
    for name in class_names:
        groups.setdefault(name.casefold(), []).append(name)
    variants = [" / ".join(repr(n) for n in names) for names in groups.values() if len(names) > 1]
    if variants:
        notes.append(f"label column {column!r} has classes that differ only in case "
                     f"({', '.join(variants)}): they are separate classes; make the labels "
                     f"agree if each group is one class")


def _note_number_spellings(values, column: str, notes: list) -> None:
    """Note integer labels written in several ways (``01`` and ``1``, ``7`` and ``7.0``):
    one class, as numbers, but codes such as ``01`` seldom mean ``1``."""
    spellings: dict = {}
    for value in dict.fromkeys(v for v in values if isinstance(v, str)):
        spellings.setdefault(as_integer(value), set()).add(value.strip())
    merged = [" / ".join(map(repr, sorted(names))) for number, names in spellings.items()
              if len(names) > 1]
    if merged:
        notes.append(f"label column {column!r} writes one number in several ways "
                     f"({_listed(merged, shown=str)}): each "
                     f"is one class, named by its integer; keep them apart with labels that "
                     f"are not numbers")


def _first(values, predicate) -> int:
    return next(i for i, v in enumerate(values) if predicate(v))


def _ids(table: Table, column: str | None) -> np.ndarray:
    if column is None:
        return np.arange(table.n_rows).astype(str)
    values = id_values(table, column)
    if all(type(v) is str for v in values):
        ids = [v.strip() for v in values]
    else:
        ids = [id_text(v) for v in values]
    if "" in set(ids):
        raise CorpusError(f"id column {column!r} is empty at {table.where(ids.index(''))}")
    if len(set(ids)) != len(ids):
        first = {}
        for i, key in enumerate(ids):
            if key in first:
                raise CorpusError(f"duplicate id {key!r} in column {column!r} "
                                  f"({table.where(first[key])} and {table.where(i)})")
            first[key] = i
    return np.asarray(ids, dtype=str)


def _labels(table: Table, column: str):
    """-> (labels int64, class_names, class_values or None); each distinct value parsed once."""
    values = scalars(table, column)
    distinct = list(dict.fromkeys(values))
    if any(is_missing_label(v) for v in distinct):
        raise CorpusError(f"label is missing (NaN or empty) in column {column!r} at "
                          f"{table.where(_first(values, is_missing_label))}; drop or fix that row")
    numbers = {value: as_integer(value) for value in distinct}
    if all(number is not None for number in numbers.values()):
        # every label is a number (a CSV's too): one that is not an integer is refused,
        # whichever comes first, rather than turning the column into string classes
        value = next((v for v, number in numbers.items() if number is False), None)
        if value is not None:
            raise CorpusError(f"label column {column!r} holds a non-integer number ({value}) at "
                              f"{table.where(_first(values, lambda v: v == value))}; labels "
                              f"must be classes")
        info = np.iinfo(np.int64)  # a code of 20 digits overflowed int64 labels (a bug exit)
        value = next((v for v, number in numbers.items()
                      if not info.min <= number <= info.max), None)
        if value is not None:
            raise CorpusError(f"label column {column!r} holds an integer too large for a class "
                              f"value ({value}) at "
                              f"{table.where(_first(values, lambda v: v == value))}; labels must "
                              f"fit in 64 bits: re-code them, or make them text (a letter first)")
        labels = np.fromiter((numbers[v] for v in values), dtype=np.int64, count=len(values))
        class_values = tuple(sorted(set(numbers.values())))
        names = table.label_names if set(class_values) <= set(table.label_names) else {}
        return labels, [names.get(v, str(v)) for v in class_values], class_values
    strings = {v: class_name(v) for v in distinct}
    class_names = sorted(set(strings.values()))
    index = {v: class_names.index(name) for v, name in strings.items()}
    labels = np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))
    return labels, class_names, None


def _split_values(table: Table, column: str) -> np.ndarray:
    values = scalars(table, column)
    names = {}
    for value in dict.fromkeys(values):
        name = None if is_missing_label(value) else SPLIT_ALIASES.get(str(value).strip().lower())
        if name is None:
            where = table.where(_first(values, lambda v: v is value or v == value))
            raise CorpusError(f"split column {column!r} has {value!r} at {where}; "
                              f"expected train, test or val (valid, validation, dev); "
                              f"split='random' ignores the column")
        names[value] = name
    return np.asarray([names[v] for v in values], dtype="<U5")


def _pair_codes(split: np.ndarray, labels: np.ndarray) -> np.ndarray:
    codes = {"train": 0, "val": 1, "test": 2}
    return np.asarray([codes[s] for s in split.tolist()], dtype=np.int64) * (
        int(labels.max()) - int(labels.min()) + 1) + (labels - labels.min())


def _allocate(counts: np.ndarray, total: int, keep: int = 0) -> np.ndarray:
    """Split ``total`` over strata in proportion to ``counts`` (largest remainder, exact),
    leaving ``keep`` rows of every stratum untaken where the others can give the rows instead:
    a class of one row is not moved out of train whole while larger classes have rows to
    spare. Where no stratum needs that, the shares are the proportional ones."""
    quota = counts * (total / counts.sum())
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[:total - int(take.sum())]] += 1
    take = np.minimum(take, counts)
    room = np.maximum(counts - keep, 0)
    if not keep or (take <= room).all() or room.sum() < total:
        return take
    take = np.minimum(take, room)
    while take.sum() < total:  # the rows kept back come from the strata with rows to spare,
        for k in order:        # largest remainder first
            if take.sum() < total and take[k] < room[k]:
                take[k] += 1
    return take


def _stratified_pick(strata: np.ndarray, total: int, rng, keep: int = 0) -> np.ndarray:
    """``total`` indices drawn without replacement, each stratum in proportion to its size
    (less ``keep`` rows of each, where it can: :func:`_allocate`)."""
    keys, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    take = _allocate(counts, total, keep)
    picked = [rng.choice(np.flatnonzero(inverse == k), size=int(n), replace=False)
              for k, n in enumerate(take) if n]
    return np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)


def _split_off(labels: np.ndarray, fraction: float, rng, what: str) -> np.ndarray:
    """Indices (into ``labels``) of a stratified validation share ``fraction``; a class keeps
    one row out of it while other classes can give theirs."""
    if labels.size < 2:
        raise CorpusError(f"{what} has {labels.size} row(s), too few to split off validation "
                          f"rows")
    n_val = min(max(int(round(labels.size * fraction)), 1), labels.size - 1)
    # every class keeps a row in the part that stays (train) while others can spare theirs
    return _stratified_pick(labels, n_val, rng, keep=1)


def _texts(table: Table, columns, rows: np.ndarray) -> list:
    selected = [scalars(table, c) for c in columns]
    texts = []
    for i in rows.tolist():
        parts = [cell_text(col[i]) for col in selected]
        text = parts[0] if len(parts) == 1 else "\n".join(p for p in parts if p)
        at = lone_surrogate(text)
        if at is not None:
            raise CorpusError(f"the text at {table.where(i)} holds a lone surrogate "
                              f"{text[at]!r} (half of a character, as a JSON escape can write "
                              f"it), which no tokenizer reads; fix or drop that row")
        texts.append(text)
    return texts
