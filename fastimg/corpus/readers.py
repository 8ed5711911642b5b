"""Readers: a file or folder -> a :class:`Table` of columns, decoded strictly as UTF-8.

Formats: CSV and TSV (stdlib ``csv``), JSON Lines, Parquet (pyarrow, imported lazily), each
optionally gzip-compressed (found by magic bytes), the aclImdb folder layout and the aclImdb
tarball (members read in place, never extracted).
"""
from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import re
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from fastimg.corpus._base import CorpusError

GZIP_MAGIC = b"\x1f\x8b"
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl",
                  ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
ACLIMDB_SPLITS = ("train", "test")
ACLIMDB_LABELS = ("neg", "pos")  # label 0, 1
ACLIMDB_MEMBER = re.compile(r"^(?:\./)?(?:[^/]+/)?(train|test)/(neg|pos)/(\d+)_(\d+)\.txt$")
ACLIMDB_MAX_REVIEW_BYTES = 1 << 20
SUPPORTED = ("give a .csv, .tsv, .jsonl or .parquet file (optionally .gz), an aclImdb folder or "
             "an aclImdb tarball")


@dataclass(repr=False)
class Table:
    """Columns of equal length read from one source.

    ``where(i)`` names row ``i`` in error messages. ``id_column`` and ``split_column`` are the
    source's own (used when the config names none) and ``label_names`` names integer labels.
    """

    columns: dict
    source: str
    locations: list | None = None
    location_kind: str = "row"
    id_column: str | None = None
    split_column: str | None = None
    label_names: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __repr__(self) -> str:
        # the dataclass's repr printed every cell (67 MB for the IMDB csv)
        return f"Table({self.source!r}, {self.n_rows} rows, columns {list(self.columns)})"

    def where(self, i: int) -> str:
        if self.locations is None:
            return f"row {i + 1}"
        return f"{self.location_kind} {self.locations[i]}"


def read_table(path, storage_options: dict | None = None) -> Table:
    """Read ``path`` into a :class:`Table`, or raise :class:`CorpusError` with one line.

    ``path`` is a local file or folder, or an fsspec URL of a file (``s3://bucket/x.csv``,
    read with ``storage_options``); an aclImdb folder is read from a local disk only.
    """
    if isinstance(path, str):
        scheme, _, rest = path.partition("://") if "://" in path else ("", "", path)
        if scheme in ("file", "local"):
            path = rest
        elif scheme:
            return _read_url(path, storage_options or {})
        else:
            _check_not_a_url(path)
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"input {path} does not exist")
    if path.is_dir():
        return read_aclimdb_folder(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CorpusError(f"input {path} is empty")
    if path.name.lower().endswith(TAR_SUFFIXES):
        return read_aclimdb_tar(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _table_from_bytes(raw, path, path.name)


def _read_url(url: str, storage_options: dict) -> Table:
    """A file on object storage (or any fsspec URL), read whole into memory as a local one is;
    a missing object or bucket and a refused access are one line each."""
    from fastimg.store import location

    where = location.Location(url.rstrip("/"), storage_options)
    name = where.url.rsplit("/", 1)[-1]
    try:
        with location._access(where):
            fs, key = where.fs()
            if fs.isdir(key):
                raise CorpusError(f"input {url} is a folder: an aclImdb folder is read from a "
                                  f"local disk; give a table file or the aclImdb tarball")
            if name.lower().endswith(TAR_SUFFIXES):
                with fs.open(key, "rb") as handle:
                    return read_aclimdb_tar(url, fileobj=handle)
            raw = fs.cat_file(key)
    except FileNotFoundError as exc:
        if str(exc).startswith(f"{where.url}: the bucket"):  # named by location._access
            raise CorpusError(str(exc)) from None
        raise CorpusError(f"input {url} does not exist") from None
    except (PermissionError, ValueError, ImportError) as exc:
        raise CorpusError(str(exc)) from None
    return _table_from_bytes(raw, url, name)


def _check_not_a_url(text: str) -> None:
    """Refuse a path that is a URL with a slash missing (``s3:/bucket/x.csv``), which would
    be looked for as a local file in a folder named ``s3:``."""
    from fastimg.store import location

    try:
        location._check_not_a_url(text)
    except ValueError as exc:
        raise CorpusError(f"input {exc}") from None


def _table_from_bytes(raw: bytes, path, name: str) -> Table:
    """The table in a file's bytes; ``path`` names it in messages, ``name`` (its file name)
    says its format."""
    if not raw:
        raise CorpusError(f"input {path} is empty")
    stem = name.lower()
    if stem.endswith(".gz"):
        stem = stem[:-3]
        if not raw.startswith(GZIP_MAGIC):
            raise CorpusError(f"{path} is named .gz but is not gzip-compressed")
    if raw.startswith(GZIP_MAGIC):
        raw = _gunzip(raw, path)
        if not raw:
            raise CorpusError(f"input {path} is empty (after decompression)")
    kind = TABLE_SUFFIXES.get(Path(stem).suffix)
    if kind is None:
        raise CorpusError(f"unsupported input format {name!r}: {SUPPORTED}")
    if kind == "parquet":
        return _read_parquet(raw, path)
    text = _decode(raw, path, kind)
    if kind == "jsonl":
        return _read_jsonl(text, path)
    return _read_delimited(text, path, "\t" if kind == "tsv" else ",")


def _gunzip(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorpusError(f"cannot decompress {path}: {exc}") from None


#: byte-order marks of encodings that are not UTF-8 (UTF-32's first: it opens like UTF-16's)
_OTHER_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
               (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


def _decode(raw: bytes, path: Path, kind: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        encoding = next((name for bom, name in _OTHER_BOMS if raw.startswith(bom)), None)
        if encoding is not None:  # Excel's "Unicode text", Windows tools: bad byte 0xff
            raise CorpusError(f"{path} is {encoding} (its byte-order mark says so), not UTF-8; "
                              f"re-encode the file as UTF-8") from None
        # utf-8-sig counts offsets after the byte-order mark it drops
        start = exc.start + (len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0)
        line = raw.count(b"\n", 0, start) + 1
        where = f"line {line}"
        if kind != "jsonl":
            row = _csv_row_at(raw, start, kind)
            where = f"{f'row {row}' if row else 'the header'} (line {line})"
        raise CorpusError(f"{path} is not valid UTF-8: bad byte {raw[start]:#04x} at "
                          f"{where}; re-encode the file as UTF-8") from None


def _csv_row_at(raw: bytes, offset: int, kind: str) -> int:
    """The 1-based data row (header excluded) holding byte ``offset``; 0: the header."""
    prefix = raw[:offset].decode("utf-8-sig", errors="replace")
    _raise_field_limit()
    try:
        rows = sum(1 for r in csv.reader(io.StringIO(prefix, newline=""),
                                          delimiter="\t" if kind == "tsv" else ",") if r)
    except csv.Error:
        rows = prefix.count("\n") + 1
    # the record holding the bad byte is partly in the prefix (or starts right after it)
    if prefix.endswith(("\n", "\r")) or not prefix:
        rows += 1
    return max(rows - 1, 0)


def _raise_field_limit() -> None:
    limit = min(sys.maxsize, 2**31 - 1)
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


def _read_delimited(text: str, path: Path, delimiter: str) -> Table:
    _raise_field_limit()
    rows = _unquoted_tsv(text) if delimiter == "\t" else None
    if rows is None:
        # strict: a stray quote ('"Great" movie', a quote opened and never closed) is refused,
        # not dropped from the text or left to swallow the rows up to the next quote
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        try:
            rows = [row for row in reader if row]
        except csv.Error as exc:
            # a TSV whose quoted reading fails yet whose rows line up unquoted quotes nothing:
            # a text that is a quotation ('"Wow"') made it look quoted
            rows = _plain_tsv(text) if delimiter == "\t" else None
            if rows is None:
                hint = ("; a field that holds a quote must be quoted whole, its quotes doubled "
                        "(\"say \"\"hi\"\"\"), and every quote closed" if '"' in str(exc)
                        or "end of data" in str(exc) else "")
                raise CorpusError(f"cannot parse {path} as "
                                  f"{'TSV' if delimiter == chr(9) else 'CSV'} near line "
                                  f"{reader.line_num}: {exc}{hint}") from None
    return _delimited_table(rows, path)


def _delimited_table(rows: list, path: Path) -> Table:
    if not rows:
        raise CorpusError(f"input {path} is empty")
    header, body = rows[0], rows[1:]
    _check_header(header, path)
    if not body:
        raise CorpusError(f"{path} has a header but no data rows")
    width = len(header)
    if set(map(len, body)) != {width}:
        i, row = next((i, row) for i, row in enumerate(body) if len(row) != width)
        raise CorpusError(f"{path}: row {i + 1} has {len(row)} fields but the header has "
                          f"{width} (wrong delimiter or unbalanced quotes?)")
    return Table({name: list(values) for name, values in zip(header, zip(*body))}, str(path))


def _unquoted_tsv(text: str) -> list | None:
    """The rows of a TSV file written without quotes (tab-separated values proper, whose
    fields hold no tab and no line break, and whose quotes are text: '"Great" movie'), or
    None when the file quotes fields (one is quoted whole, or the rows only line up with the
    quotes read) or has no quote at all (both readings agree)."""
    if '"' not in text:
        return None
    rows = _plain_tsv(text)
    if rows is None:
        return None
    if any(len(value) > 1 and value[0] == value[-1] == '"' for row in rows for value in row):
        return None
    return rows


def _plain_tsv(text: str) -> list | None:
    """The rows of ``text`` read as tab-separated values with no quoting, or None when they do
    not line up (as many fields in every row)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = [row for row in reader if row]
    if not rows or any(len(row) != len(rows[0]) for row in rows):
        return None
    return rows


def _check_header(header, path: Path) -> None:
    seen = set()
    for name in header:
        if name in seen:
            raise CorpusError(f"{path} has the column {name!r} twice")
        seen.add(name)


def _read_jsonl(text: str, path: Path) -> Table:
    records, lines = [], []
    # records end at "\n" only: str.splitlines would also cut at U+2028, U+0085 and other
    # characters that JSON strings may hold as they are
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}: line {number} is not valid JSON ({exc.msg}: column "
                              f"{exc.colno})") from None
        if not isinstance(record, dict):
            raise CorpusError(f"{path}: line {number} is a JSON {type(record).__name__}, "
                              f"not an object")
        records.append(record)
        lines.append(number)
    if not records:
        raise CorpusError(f"input {path} is empty")
    names = list(dict.fromkeys(key for record in records for key in record))
    columns = {name: [record.get(name) for record in records] for name in names}
    return Table(columns, str(path), locations=lines, location_kind="line")


def _read_parquet(raw: bytes, path: Path) -> Table:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CorpusError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    try:
        # one thread, no dataset layer: pyarrow's pools can abort the interpreter at exit
        # ("terminate called without an active exception", apache/arrow#34314)
        table = pq.ParquetFile(pa.BufferReader(raw)).read(use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"cannot read {path} as Parquet: {exc}") from None
    if table.num_rows == 0:
        raise CorpusError(f"{path} has no data rows")
    _check_header(table.column_names, path)
    columns = {}
    for name in table.column_names:
        values = table.column(name).to_pylist()
        if any(isinstance(v, bytes) for v in values):  # binary columns, of any width
            values = [_utf8(v) for v in values]
        columns[name] = values
    return Table(columns, str(path))


def _utf8(value):
    """A binary cell as text; one that is not UTF-8 stays bytes, refused with its row if its
    column is used."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return value


def _aclimdb_table(reviews, source: str) -> Table:
    """reviews: (split, label, number, rating, text) tuples -> a Table in release order."""
    if not reviews:
        raise CorpusError(f"{source} holds no aclImdb reviews "
                          f"({{train,test}}/{{pos,neg}}/ID_RATING.txt); {SUPPORTED}")
    reviews.sort(key=lambda r: (ACLIMDB_SPLITS.index(r[0]), ACLIMDB_LABELS.index(r[1]), r[2]))
    ids = [f"{s}/{lab}/{n}_{rating}" for s, lab, n, rating, _ in reviews]
    columns = {"id": ids, "split": [r[0] for r in reviews],
               "label": [ACLIMDB_LABELS.index(r[1]) for r in reviews],
               "rating": [r[3] for r in reviews], "text": [r[4] for r in reviews]}
    return Table(columns, source, locations=[i + ".txt" for i in ids], location_kind="file",
                 id_column="id", split_column="split",
                 label_names={i: name for i, name in enumerate(ACLIMDB_LABELS)})


def _decode_review(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{name} is not valid UTF-8 (bad byte at offset {exc.start})") from None


def read_aclimdb_folder(path: Path) -> Table:
    """The aclImdb release folder (or a folder holding ``aclImdb/``); ``unsup`` is left out."""
    root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
    reviews = []
    for split in ACLIMDB_SPLITS:
        for label in ACLIMDB_LABELS:
            folder = root / split / label
            if not folder.is_dir():
                continue
            for file in folder.iterdir():
                match = ACLIMDB_MEMBER.match(f"{split}/{label}/{file.name}")
                if match is None or not file.is_file() or file.is_symlink():
                    continue
                text = _decode_review(file.read_bytes(), str(file))
                reviews.append((split, label, int(match[3]), int(match[4]), text))
    if not reviews and not any((root / s).is_dir() for s in ACLIMDB_SPLITS):
        raise CorpusError(f"folder {path} is not an aclImdb layout (no train/ or test/ with "
                          f"pos/ and neg/ inside); {SUPPORTED}")
    return _aclimdb_table(reviews, str(path))


def read_aclimdb_tar(path, fileobj=None) -> Table:
    """The aclImdb tarball at ``path`` (or in ``fileobj``, ``path`` naming it), read member by
    member: only regular files named like ``aclImdb/{train,test}/{pos,neg}/ID_RATING.txt`` are
    read; nothing is written to disk."""
    reviews = []
    try:
        with tarfile.open(None if fileobj else path, mode="r:*", fileobj=fileobj) as archive:
            for member in archive:
                match = ACLIMDB_MEMBER.match(member.name)
                if match is None or not member.isreg():
                    continue
                if member.size > ACLIMDB_MAX_REVIEW_BYTES:
                    raise CorpusError(f"{path}: member {member.name} is {member.size} bytes, "
                                      f"too large for a review; is this the aclImdb tarball?")
                handle = archive.extractfile(member)
                text = _decode_review(handle.read(), f"{path}:{member.name}")
                reviews.append((match[1], match[2], int(match[3]), int(match[4]), text))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorpusError(f"cannot read {path} as a tar archive ({reason})") from None
    return _aclimdb_table(reviews, str(path))
