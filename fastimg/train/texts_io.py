"""Texts in and predictions out for ``fastimg predict``: tables through the corpus readers,
plain lines from a stream, and the predictions CSV."""
from __future__ import annotations

import csv
import io
import logging
import os
import sys
from pathlib import Path

import numpy as np

from fastimg._files import replace_file
from fastimg.corpus._base import CorpusError, check_text_columns

logger = logging.getLogger("fastimg.train")


class MissingColumnError(CorpusError):
    """A table without the ``column`` it was asked for."""

    def __init__(self, message: str, column: str):
        super().__init__(message)
        self.column = column


def read_input_texts(path, text_columns=("text",), id_column=None, *,
                     label_column=None) -> tuple:
    """``(ids, texts)`` of a CSV / TSV / JSONL / Parquet file (optionally gzip-compressed);
    ``(ids, texts, labels)`` with ``label_column``.

    Parameters
    ----------
    path : str or path
    text_columns : sequence of str
        Columns joined with a newline (a title and a body), as ``build-dataset`` joins them.
    id_column : str, optional
        Ids of the rows; without it the ``id`` column when there is one, else rows are
        numbered from 0.
    label_column : str, optional
        The true class of each row, its values as the file holds them (map them with
        :meth:`fastimg.train.Run.targets`).

    Raises
    ------
    fastimg.corpus.CorpusError
        (a ``ValueError``) An unreadable file, a file of no table format (the message names
        ``--input -`` for one text per line), a missing column (:class:`MissingColumnError`,
        whose message lists the columns that exist), a text with a lone surrogate (the
        message names its row), or ``text_columns`` naming a column twice (it was joined
        twice, into other texts than the store's).
    """
    from fastimg.corpus.cells import cell_text, id_text, id_values, scalars
    from fastimg.corpus.readers import SUPPORTED, TABLE_SUFFIXES, TAR_SUFFIXES, read_table

    text_columns = check_text_columns(text_columns)
    path = Path(path)
    name = path.name.lower()
    if (path.is_file() and Path(name.removesuffix(".gz")).suffix not in TABLE_SUFFIXES
            and not name.endswith(TAR_SUFFIXES)):
        # a plain text file (reviews.txt) is what --input - reads, which the readers' own
        # message does not name
        raise CorpusError(f"unsupported input format {path.name!r}: {SUPPORTED}; a file of "
                          f"one text per line is read from stdin: --input - < {path}")
    table = read_table(path)
    names = ", ".join(repr(n) for n in table.columns)
    for column in [*text_columns, *(c for c in (id_column, label_column) if c)]:
        if column not in table.columns:
            raise MissingColumnError(f"{path} has no column {column!r} (columns: {names})",
                                     column)
    if id_column is None:
        id_column = next((c for c in (table.id_column, "id") if c in table.columns), None)
    selected = [scalars(table, c) for c in text_columns]
    texts = []
    for i in range(table.n_rows):
        parts = [cell_text(col[i]) for col in selected]
        texts.append(parts[0] if len(parts) == 1 else "\n".join(p for p in parts if p))
        _check_text(texts[-1], f"{table.where(i)} of {path}")
    if id_column:
        ids = [id_text(v) for v in id_values(table, id_column)]
        _warn_of_ambiguous_ids(ids, id_column, path)
    else:
        ids = [str(i) for i in range(table.n_rows)]
    if label_column:
        return ids, texts, scalars(table, label_column)
    return ids, texts


def _warn_of_ambiguous_ids(ids: list, column: str, path) -> None:
    """Say when some predictions cannot be joined back by their id: an empty id, or one that
    several rows share (they are written as given)."""
    empty = sum(1 for i in ids if not i)
    seen, repeated = set(), []
    for i in ids:
        if i and i in seen:
            repeated.append(i)
        seen.add(i)
    if empty or repeated:
        said = [f"{empty} empty" if empty else "",
                f"{len(repeated)} repeated (first: {repeated[0]!r})" if repeated else ""]
        logger.warning("ids in column %r of %s: %s; written as given, so those predictions "
                       "cannot be joined back by id", column, path,
                       " and ".join(p for p in said if p))


def read_lines(stream) -> tuple[list, list]:
    """``(ids, texts)`` of a text stream: one text per non-blank line, its id the line's
    number from 0 (as a file's row number is), so that blank lines, skipped with a warning,
    do not shift the ids of the lines after them.

    A stream over bytes (``sys.stdin``) is read as UTF-8 whatever the locale says (a
    Latin-1 locale turned ``café`` into ``cafÃ©`` without a word), a leading byte-order mark
    dropped, as the corpus readers read files.

    Raises
    ------
    fastimg.corpus.CorpusError
        A line with bytes that are not UTF-8, or a lone surrogate (the message names it).
    """
    utf8 = (io.TextIOWrapper(stream.buffer, encoding="utf-8-sig", errors="surrogateescape")
            if hasattr(stream, "buffer") else None)
    try:
        lines = [line.rstrip("\r\n") for line in (utf8 or stream)]
    finally:
        if utf8 is not None:
            utf8.detach()  # leave the stream itself open
    for i, line in enumerate(lines):
        _check_text(line, f"line {i + 1}", stream="stdin")
    kept = [i for i, line in enumerate(lines) if line.strip()]
    if len(kept) < len(lines):
        blank = len(lines) - len(kept)
        logger.warning("skipped %d blank line%s of %d; ids are line numbers from 0",
                       blank, "" if blank == 1 else "s", len(lines))
    return [str(i) for i in kept], [lines[i] for i in kept]


def _check_text(text: str, where: str, *, stream: str | None = None) -> None:
    """Refuse a text that no tokenizer reads, naming ``where`` it is (``line 3 of a.jsonl``):
    a lone surrogate (a JSON ``\\ud800`` escape), or, read from the text ``stream`` named
    so (``stdin``, which decodes such bytes as U+DC80-U+DCFF), a byte that is not UTF-8.

    Raises
    ------
    fastimg.corpus.CorpusError
    """
    from fastimg._validation import lone_surrogate

    at = lone_surrogate(text)
    if at is None:
        return
    if stream is not None and 0xDC80 <= ord(text[at]) <= 0xDCFF:
        raise CorpusError(f"{stream} is not valid UTF-8: bad byte 0x{ord(text[at]) - 0xDC00:02x} "
                          f"at {where}; re-encode the texts as UTF-8")
    where = where if stream is None else f"{where} of {stream}"
    raise CorpusError(f"the text at {where} holds a lone surrogate {text[at]!r} (half of a "
                      f"character, as a JSON escape can write it), which no tokenizer reads; "
                      f"fix or drop that text")


#: ``out`` of :func:`write_predictions` for standard output: this string, not a path (a file
#: named ``-`` is ``Path("-")``)
STDOUT = "-"


def _is_stdout(out) -> bool:
    return isinstance(out, str) and out == STDOUT


def writes_to(out, stream) -> bool:
    """Whether writing ``out`` writes into ``stream`` (:data:`STDOUT`, ``/dev/stdout``, or
    the file or pipe ``stream`` is): then nothing else may be printed there."""
    if _is_stdout(out):
        return True
    try:
        a, b = os.stat(out), os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no such file yet; a stream without an fd
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def write_predictions(out, ids, prediction, *, labels=None, stdout=None) -> Path | None:
    """CSV with columns ``id, predicted, p_<class>...`` (probabilities to 6 decimals), and
    ``label`` after ``id`` when ``labels`` (each row's true class) are given.

    A new or regular file is written beside ``out`` and moved onto it, so a cut-short write
    never sits under its name; a symlink, ``/dev/stdout`` or a pipe is written through, and
    the string ``"-"`` (:data:`STDOUT`) is ``stdout`` (default ``sys.stdout``). Returns the
    path written, None for ``stdout``."""
    probs = np.asarray(prediction.probabilities)

    def rows(fh):
        writer = csv.writer(fh)
        true = [] if labels is None else ["label"]
        writer.writerow(["id", *true, "predicted",
                         *(f"p_{c}" for c in prediction.class_names)])
        for i, (row_id, name, p) in enumerate(zip(ids, prediction.names, probs)):
            true = [] if labels is None else [labels[i]]
            writer.writerow([row_id, *true, name, *(f"{v:.6f}" for v in p)])

    if _is_stdout(out):
        stream = sys.stdout if stdout is None else stdout
        rows(stream)
        stream.flush()
        return None
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True)

    def write(path):
        with open(path, "w", newline="", encoding="utf-8") as fh:
            rows(fh)

    replace_file(out, write)
    logger.info("wrote %d predictions to %s", len(ids), out)
    return out
