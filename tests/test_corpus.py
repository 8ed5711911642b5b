"""fastimg.corpus: every reader, labels, ids, limit sampling, splits, the imdb recipe, bad input."""
import csv
import gzip
import hashlib
import importlib.util
import io
import json
import logging
import re
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from fastimg.corpus import (Corpus, CorpusConfig, CorpusError, load_corpus, read_table,
                            resolve_imdb)
from fastimg.corpus import imdb as imdb_mod
from conftest import shared_imdb

# $FASTIMG_DATA or ../shared/data, as the other IMDB tests find it
SHARED_IMDB = (shared_imdb() or Path("/nonexistent")) / "imdb" / "imdb.csv.gz"
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


def write_csv(path, header, rows, delimiter=","):
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_jsonl(path, records):
    data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def sorted_corpus(tmp_path, n_neg=60, n_pos=40, name="sorted.csv", split=None):
    """A label-sorted CSV: all negatives first, like the shared IMDB file."""
    rows = [[f"r{i}", f"text {i}", "neg" if i < n_neg else "pos"] + ([split(i)] if split else [])
            for i in range(n_neg + n_pos)]
    header = ["id", "text", "label"] + (["split"] if split else [])
    return write_csv(tmp_path / name, header, rows)


def cfg(path, **kw):
    return CorpusConfig(input=str(path), **kw)


# ---------------------------------------------------------------- readers

def test_csv_with_quoted_multiline_fields_and_big_field(tmp_path):
    big = "x" * 200_000  # above csv's default field limit of 131072
    path = write_csv(tmp_path / "a.csv", ["text", "label"],
                     [['line one\nline "two", quoted', "a"], [big, "b"], ["plain", "a"]])
    corpus = load_corpus(cfg(path))
    assert corpus.texts == ['line one\nline "two", quoted', big, "plain"]
    assert corpus.ids.tolist() == ["0", "1", "2"]
    assert corpus.class_names == ["a", "b"] and corpus.labels.tolist() == [0, 1, 0]
    assert corpus.labels.dtype == np.int64 and corpus.class_values is None


def test_tsv_jsonl_and_gzip_variants_read_the_same(tmp_path):
    rows = [["t1", "1"], ["t2", "0"], ["t3", "1"]]
    tables = [read_table(write_csv(tmp_path / "a.tsv", ["text", "label"], rows, "\t")),
              read_table(write_csv(tmp_path / "a.csv.gz", ["text", "label"], rows)),
              read_table(write_csv(tmp_path / "b.tsv.gz", ["text", "label"], rows, "\t"))]
    for table in tables:
        assert table.columns == {"text": ["t1", "t2", "t3"], "label": ["1", "0", "1"]}
    records = [{"text": t, "label": int(lab)} for t, lab in rows]
    for name in ("a.jsonl", "a.jsonl.gz"):
        table = read_table(write_jsonl(tmp_path / name, records))
        assert table.columns == {"text": ["t1", "t2", "t3"], "label": [1, 0, 1]}
    # gzip found by magic bytes even without the .gz suffix
    (tmp_path / "hidden.csv").write_bytes(gzip.compress(b"text,label\nt1,1\nt2,0\n"))
    assert read_table(tmp_path / "hidden.csv").columns["text"] == ["t1", "t2"]


def test_tsv_quotes_are_text_unless_the_file_quotes_its_fields(tmp_path):
    """A TSV written without quoting had '"Great" movie' read as 'Great movie', and a text
    opening a quote swallowed the next row (its label taken for the first one's): its quotes
    are text. A TSV that quotes fields (csv.writer's) reads as it was written."""
    (tmp_path / "plain.tsv").write_text(
        'id\ttext\tlabel\nr1\t"Great" movie, really\tpos\nr2\tbad film\tneg\n'
        'r3\t"an opened quote\tpos\nr4\tthe end "quoted"\tneg\n', encoding="utf-8")
    table = read_table(tmp_path / "plain.tsv")
    assert table.columns["id"] == ["r1", "r2", "r3", "r4"]
    assert table.columns["text"] == ['"Great" movie, really', "bad film", '"an opened quote',
                                     'the end "quoted"']
    assert table.columns["label"] == ["pos", "neg", "pos", "neg"]
    texts = ['say "hi"', "a\ttab", "two\nlines", '"Great" movie']
    path = write_csv(tmp_path / "quoted.tsv", ["text", "label"],
                     [[t, "ab"[i % 2]] for i, t in enumerate(texts)], "\t")
    assert read_table(path).columns["text"] == texts


def test_an_unquoted_tsv_with_a_text_in_quotes_keeps_its_quotes(tmp_path):
    """A TSV that quotes nothing, one of whose texts is a quotation ('"Wow"'), was taken for
    a quoted TSV and refused at another text's quote ('"Great" movie'): the file quotes
    nothing, so its quotes are text."""
    (tmp_path / "plain.tsv").write_text('text\tlabel\n"Wow"\tpos\n"Great" movie\tpos\n'
                                        'bad film\tneg\n', encoding="utf-8")
    table = read_table(tmp_path / "plain.tsv")
    assert table.columns["text"] == ['"Wow"', '"Great" movie', "bad film"]
    assert table.columns["label"] == ["pos", "pos", "neg"]
    # a field quoted whole that the quoted reading parses is still read as quoted
    (tmp_path / "quoted.tsv").write_text('text\tlabel\n"Wow"\tpos\n"say ""hi"""\tneg\n',
                                         encoding="utf-8")
    assert read_table(tmp_path / "quoted.tsv").columns["text"] == ["Wow", 'say "hi"']


def test_csv_with_a_stray_quote_is_refused_not_altered(tmp_path):
    """'r1,"Great" movie,pos' was read as the text 'Great movie', and a quote opened and
    closed rows later joined those rows into one text: both are refused, naming the line."""
    (tmp_path / "stray.csv").write_text('id,text,label\nr1,ok,neg\nr2,"Great" movie,pos\n')
    message = error(tmp_path / "stray.csv")
    assert "near line 3" in message and "quoted whole, its quotes doubled" in message
    (tmp_path / "open.csv").write_text('id,text,label\nr1,"opened,pos\nr2,ok,neg\nr3,"x",pos\n')
    assert "quoted whole" in error(tmp_path / "open.csv")
    (tmp_path / "unclosed.csv").write_text('id,text,label\nr1,ok,neg\nr2,"never closed,pos\n')
    assert "every quote closed" in error(tmp_path / "unclosed.csv")


@pytest.mark.skipif(not HAS_PYARROW, reason="needs pyarrow")
def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"doc": ["a", "b", "c", "d"], "y": [3, 5, 3, 5],
                             "key": ["k1", "k2", "k3", "k4"]}), tmp_path / "d.parquet")
    corpus = load_corpus(cfg(tmp_path / "d.parquet", text_columns=("doc",), label_column="y",
                             id_column="key", split="random", val_fraction=0.5))
    assert corpus.texts == ["a", "b", "c", "d"] and corpus.ids.tolist() == ["k1", "k2", "k3", "k4"]
    assert corpus.labels.tolist() == [3, 5, 3, 5] and corpus.class_names == ["3", "5"]
    assert corpus.targets.tolist() == [0, 1, 0, 1]
    assert sorted(corpus.split.tolist()) == ["train", "train", "val", "val"]


def test_parquet_decimal_labels_are_numbers(tmp_path):
    """A decimal column (SQL's NUMERIC) made classes '0.00' and '1.00' of whole labels and
    a class '2.50' of a non-integer one, which every other format refuses."""
    from decimal import Decimal

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [f"t{i}" for i in range(6)]
    for name, labels in (("whole", ["0", "1.00"]), ("half", ["1", "2.50"])):
        column = pa.array([Decimal(v) for v in labels] * 3, pa.decimal128(5, 2))
        pq.write_table(pa.table({"text": texts, "label": column}), tmp_path / f"{name}.parquet")
    corpus = load_corpus(cfg(tmp_path / "whole.parquet", val_fraction=0.34))
    assert corpus.class_values == (0, 1) and corpus.class_names == ["0", "1"]
    assert "non-integer number (2.50) at row 2" in error(tmp_path / "half.parquet")


def test_parquet_without_pyarrow_names_the_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    (tmp_path / "d.parquet").write_bytes(b"PAR1 not really")
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(CorpusError, match="pip install pyarrow"):
        read_table(tmp_path / "d.parquet")


def test_several_text_columns_are_joined(tmp_path):
    records = [{"title": "Great", "body": "Loved it.", "label": "pos"},
               {"title": "", "body": "Meh.", "label": "neg"},
               {"title": "Bad", "body": None, "label": "neg"}]
    corpus = load_corpus(cfg(write_jsonl(tmp_path / "t.jsonl", records),
                             text_columns=("title", "body")))
    assert corpus.texts == ["Great\nLoved it.", "Meh.", "Bad"]


def test_a_lone_surrogate_in_a_text_is_refused_naming_its_row(tmp_path):
    # json.dumps writes the lone surrogate as the escape "\\ud800", which json.loads reads back
    records = [{"id": f"r{i}", "text": f"caf\u00e9 {i}", "label": i % 2} for i in range(6)]
    records[4]["text"] = "half \ud800 a character"
    with pytest.raises(CorpusError, match=r"lone surrogate '\\ud800'.*") as info:
        load_corpus(cfg(write_jsonl(tmp_path / "t.jsonl", records)))
    assert str(info.value).startswith("the text at line 5 holds"), str(info.value)


def test_string_labels_mapped_and_integer_labels_kept(tmp_path):
    path = write_csv(tmp_path / "s.csv", ["text", "label"],
                     [["a", " spam"], ["b", "ham"], ["c", "eggs"], ["d", "spam"]])
    corpus = load_corpus(cfg(path))
    assert corpus.class_names == ["eggs", "ham", "spam"]
    assert corpus.labels.tolist() == [2, 1, 0, 2]
    path = write_csv(tmp_path / "i.csv", ["text", "label"],
                     [["a", "7"], ["b", "2"], ["c", "7"], ["d", "4"]])
    corpus = load_corpus(cfg(path))
    assert corpus.labels.tolist() == [7, 2, 7, 4]  # values keep their meaning
    assert corpus.class_names == ["2", "4", "7"] and corpus.class_values == (2, 4, 7)
    assert corpus.targets.tolist() == [2, 0, 2, 1]
    json_path = write_jsonl(tmp_path / "f.jsonl", [{"text": t, "label": y} for t, y in
                                                  [("a", 1.0), ("b", 0), ("c", 1), ("d", 0)]])
    assert load_corpus(cfg(json_path)).labels.tolist() == [1, 0, 1, 0]


def make_acl_tree(root, n=3):
    for split in ("train", "test"):
        for label in ("neg", "pos"):
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}_{7 if label == 'pos' else 2}.txt").write_text(
                    f"{split} {label} review {i} \u00e9", encoding="utf-8")
    (root / "aclImdb" / "train" / "unsup").mkdir()
    (root / "aclImdb" / "train" / "unsup" / "0_0.txt").write_text("unlabelled")
    (root / "aclImdb" / "README").write_text("readme")
    return root / "aclImdb"


def check_acl_corpus(corpus):
    assert len(corpus) == 12
    assert corpus.ids[0] == "train/neg/0_2" and corpus.ids[-1] == "test/pos/2_7"
    assert corpus.class_names == ["neg", "pos"]
    by_id = dict(zip(corpus.ids.tolist(), corpus.labels.tolist()))
    assert by_id["train/pos/1_7"] == 1 and by_id["test/neg/2_2"] == 0
    assert corpus.texts[0] == "train neg review 0 \u00e9"
    test = corpus.split == "test"
    assert test.sum() == 6 and all(i.startswith("test/") for i in corpus.ids[test])
    assert set(corpus.split[~test].tolist()) == {"train", "val"}  # val carved from train


def test_aclimdb_folder(tmp_path):
    root = make_acl_tree(tmp_path)
    check_acl_corpus(load_corpus(cfg(root, val_fraction=0.34)))
    check_acl_corpus(load_corpus(cfg(tmp_path, val_fraction=0.34)))  # the parent works too


def test_aclimdb_tarball_reads_only_expected_members(tmp_path):
    make_acl_tree(tmp_path / "src")
    tar_path = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(tar_path, "w:gz") as archive:
        archive.add(tmp_path / "src" / "aclImdb", arcname="aclImdb")
        evil = tarfile.TarInfo("../../etc/train/pos/9_9.txt")  # path trick: not matched
        payload = b"evil"
        evil.size = len(payload)
        archive.addfile(evil, io.BytesIO(payload))
        link = tarfile.TarInfo("aclImdb/test/pos/99_9.txt")  # a link, not a regular file
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
    before = sorted(p.name for p in tmp_path.iterdir())
    corpus = load_corpus(cfg(tar_path, val_fraction=0.34))
    check_acl_corpus(corpus)
    assert "evil" not in corpus.texts and "test/pos/99_9" not in corpus.ids
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing extracted


# ---------------------------------------------------------------- ids, limit, splits

def test_row_ids_come_from_an_id_column_else_row_numbers(tmp_path):
    path = sorted_corpus(tmp_path, 3, 3)
    assert load_corpus(cfg(path)).ids.tolist() == [f"r{i}" for i in range(6)]  # "id" found
    assert load_corpus(cfg(path, id_column="text")).ids.tolist() == [
        f"text {i}" for i in range(6)]
    bare = write_csv(tmp_path / "bare.csv", ["text", "label"],
                     [[f"t{i}", i % 2] for i in range(6)])
    assert load_corpus(cfg(bare)).ids.tolist() == [str(i) for i in range(6)]
    twice = write_csv(tmp_path / "twice.csv", ["id", "text", "label"],
                      [["a", "x", 0], ["b", "y", 1], ["a", "z", 1]])
    with pytest.raises(CorpusError, match="duplicate id 'a'"):
        load_corpus(cfg(twice))


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_files_own_split_column_is_kept_not_pooled(tmp_path, kind):
    """A column named "split" is the file's split, as "text" is its text: its test rows stay
    test rows (pooled only with --split random or paper)."""
    records = [{"id": f"k{i}", "split": "test" if i % 4 == 0 else "train", "text": f"t {i}",
                "label": i % 2} for i in range(40)]
    path = (write_jsonl(tmp_path / "s.jsonl", records) if kind == "jsonl" else
            write_csv(tmp_path / "s.csv", list(records[0]), [list(r.values()) for r in records]))
    corpus = load_corpus(cfg(path, val_fraction=0.25))
    test = {f"k{i}" for i in range(0, 40, 4)}
    assert set(corpus.ids[corpus.split == "test"].tolist()) == test
    assert not test & set(corpus.ids[corpus.split != "test"].tolist())
    assert (corpus.split == "val").sum() == 8  # carved from the 30 train rows
    pooled = load_corpus(cfg(path, split="random"))
    assert "test" not in set(pooled.split.tolist())
    records[3]["split"] = "holdout"
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(CorpusError, match="'holdout' at .*split='random' ignores the column"):
        load_corpus(cfg(path))
    assert "test" not in set(load_corpus(cfg(path, split="random")).split.tolist())


def test_limit_is_a_seeded_stratified_sample_not_the_first_rows(tmp_path):
    path = sorted_corpus(tmp_path, n_neg=600, n_pos=400)
    a = load_corpus(cfg(path, id_column="id", limit=100, seed=3))
    assert len(a) == 100
    assert np.bincount(a.labels).tolist() == [60, 40]  # both classes, in proportion
    b = load_corpus(cfg(path, id_column="id", limit=100, seed=3))
    assert a.ids.tolist() == b.ids.tolist() and a.split.tolist() == b.split.tolist()
    c = load_corpus(cfg(path, id_column="id", limit=100, seed=4))
    assert a.ids.tolist() != c.ids.tolist()
    assert not set(a.ids.tolist()) <= {f"r{i}" for i in range(100)}
    assert a.limit_shortfall == 0 and a.warnings == ()


def test_limit_keeps_each_splits_share(tmp_path):
    path = sorted_corpus(tmp_path, 500, 500, split=lambda i: "train" if i % 5 else "test")
    corpus = load_corpus(cfg(path, split_column="split", limit=200, val_fraction=0.25))
    counts = corpus.counts()
    assert counts["test"] == {"neg": 20, "pos": 20}
    assert counts["train"] == {"neg": 60, "pos": 60} and counts["val"] == {"neg": 20, "pos": 20}


def test_limit_larger_than_data_keeps_all_and_says_so(tmp_path, caplog):
    path = sorted_corpus(tmp_path, 5, 5)
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        corpus = load_corpus(cfg(path, limit=25, val_fraction=0.2))
    assert len(corpus) == 10 and corpus.limit_shortfall == 15
    assert "larger than the 10 rows" in caplog.text
    assert corpus.summary()["limit_shortfall"] == 15


def test_split_column_names_are_mapped(tmp_path):
    names = ["train", "TRAIN", "valid", "dev", "validation", "val", "test", " Test ", "train",
             "train"]
    rows = [[f"t{i}", str(i % 2), s] for i, s in enumerate(names)]
    path = write_csv(tmp_path / "s.csv", ["text", "label", "part"], rows)
    corpus = load_corpus(cfg(path, split_column="part"))
    assert corpus.split.tolist() == ["train", "train", "val", "val", "val", "val", "test",
                                     "test", "train", "train"]
    assert corpus.split_mode == "column"


def test_train_and_test_only_get_a_stratified_val_carved_from_train(tmp_path):
    path = sorted_corpus(tmp_path, 100, 100, split=lambda i: "test" if i % 2 else "train")
    corpus = load_corpus(cfg(path, split_column="split", val_fraction=0.2, seed=1))
    assert corpus.counts() == {"train": {"neg": 40, "pos": 40}, "val": {"neg": 10, "pos": 10},
                               "test": {"neg": 50, "pos": 50}}
    again = load_corpus(cfg(path, split_column="split", val_fraction=0.2, seed=1))
    assert corpus.split.tolist() == again.split.tolist()


def test_paper_split_pools_everything_80_20(tmp_path):
    path = sorted_corpus(tmp_path, 250, 250, split=lambda i: "test" if i % 2 else "train")
    corpus = load_corpus(cfg(path, split_column="split", split="paper"))
    assert corpus.split_mode == "paper"
    assert corpus.counts() == {"train": {"neg": 200, "pos": 200}, "val": {"neg": 50, "pos": 50}}
    with pytest.raises(CorpusError, match="split 'random'"):
        cfg(path, split="paper", val_fraction=0.1)
    random = load_corpus(cfg(path, split="random", val_fraction=0.1))
    assert random.split_mode == "random" and (random.split == "val").sum() == 50


def test_config_to_dict_is_json_and_validates():
    config = CorpusConfig(input=Path("x.csv"), text_columns="body", limit=10)
    assert config.text_columns == ("body",)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["text_columns"] == ["body"] and data["input"] == "x.csv" and data["limit"] == 10
    for bad in ({}, {"input": "a", "dataset": "imdb"}, {"dataset": "mnist"},
                {"input": "a", "limit": 0}, {"input": "a", "val_fraction": 1.0},
                {"input": "a", "split": "kfold"}, {"input": "a", "text_columns": ()}):
        with pytest.raises(CorpusError):
            CorpusConfig(**bad)
    # float() and int() refused these with their own words ("could not convert string to
    # float: 'abc'", a TypeError for None), naming no setting
    for name, bad in (("val_fraction", "abc"), ("val_fraction", None), ("test_fraction", "x"),
                      ("test_fraction", [0.1]), ("limit", "abc"), ("limit", float("inf")),
                      ("limit", [10])):
        with pytest.raises(CorpusError, match=f"{name} must be"):
            CorpusConfig(input="a", **{name: bad})


def test_summary_is_json_serialisable(tmp_path):
    corpus = load_corpus(cfg(sorted_corpus(tmp_path, 10, 10)))
    summary = json.loads(json.dumps(corpus.summary()))
    assert summary["n_rows"] == 20 and summary["class_names"] == ["neg", "pos"]
    assert isinstance(corpus, Corpus)


# ---------------------------------------------------------------- bad input

def error(path_or_config, **kw) -> str:
    config = path_or_config if isinstance(path_or_config, CorpusConfig) else cfg(path_or_config,
                                                                                  **kw)
    with pytest.raises(CorpusError) as info:
        load_corpus(config)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_and_empty_files(tmp_path):
    assert "does not exist" in error(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    assert "is empty" in error(tmp_path / "empty.csv")
    (tmp_path / "empty.csv.gz").write_bytes(gzip.compress(b""))
    # "empty" alone is in the file's name: any message about it held it
    assert "empty.csv.gz is empty (after decompression)" in error(tmp_path / "empty.csv.gz")
    (tmp_path / "header.csv").write_text("text,label\n")
    assert "no data rows" in error(tmp_path / "header.csv")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    assert "is empty" in error(tmp_path / "blank.jsonl")


def test_unreadable_formats(tmp_path):
    (tmp_path / "a.xlsx").write_bytes(b"PK\x03\x04")
    assert "unsupported input format" in error(tmp_path / "a.xlsx")
    (tmp_path / "a.csv.gz").write_bytes(b"text,label\n")
    assert "not gzip-compressed" in error(tmp_path / "a.csv.gz")
    (tmp_path / "b.csv.gz").write_bytes(gzip.compress(b"text,label\na,1\n")[:-12])
    assert "cannot decompress" in error(tmp_path / "b.csv.gz")
    (tmp_path / "c.jsonl").write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    assert "line 2 is not valid JSON" in error(tmp_path / "c.jsonl")
    (tmp_path / "d.jsonl").write_text('[1, 2]\n')
    assert "not an object" in error(tmp_path / "d.jsonl")
    (tmp_path / "e.csv").write_text("text,label\na,1\nb,0,extra\n")
    assert "row 2 has 3 fields" in error(tmp_path / "e.csv")
    (tmp_path / "f.tar.gz").write_bytes(gzip.compress(b"not a tar at all" * 100))
    assert "tar archive" in error(tmp_path / "f.tar.gz")
    (tmp_path / "folder").mkdir()
    assert "not an aclImdb layout" in error(tmp_path / "folder")
    if HAS_PYARROW:
        (tmp_path / "g.parquet").write_bytes(b"PAR1 but not parquet")
        assert "cannot read" in error(tmp_path / "g.parquet")


def test_missing_columns_list_those_that_exist(tmp_path):
    path = write_csv(tmp_path / "a.csv", ["body", "y"], [["a", "1"], ["b", "0"]])
    message = error(path)
    assert "no text column 'text'" in message and "'body', 'y'" in message
    assert "no label column 'label'" in error(path, text_columns=("body",))
    assert "no id column 'key'" in error(path, text_columns=("body",), label_column="y",
                                         id_column="key")
    assert "no split column 'part'" in error(path, text_columns=("body",), label_column="y",
                                            split_column="part")
    assert "needs a split column" in error(path, text_columns=("body",), label_column="y",
                                          split="column")


def test_non_utf8_bytes_name_the_row(tmp_path):
    data = 'text,label\nfine,1\n"multi\nline",0\n"caf\xe9 here",1\n'.encode("latin-1")
    (tmp_path / "a.csv").write_bytes(data)
    message = error(tmp_path / "a.csv")
    assert "not valid UTF-8" in message and "row 3" in message and "line 5" in message
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "ok", "label": 1}\n'
                                       b'{"text": "\xff", "label": 0}\n')
    assert "a.jsonl is not valid UTF-8: bad byte 0xff at line 2;" in error(tmp_path / "a.jsonl")
    root = make_acl_tree(tmp_path / "acl", n=1)
    (root / "test" / "pos" / "5_9.txt").write_bytes(b"bad \xff byte")
    assert "5_9.txt is not valid UTF-8" in error(root)


def test_missing_labels_name_the_row(tmp_path):
    for bad in ("", "NaN", "  "):
        path = write_csv(tmp_path / "a.csv", ["text", "label"], [["a", "1"], ["b", bad],
                                                                  ["c", "0"]])
        assert "label is missing (NaN or empty) in column 'label' at row 2;" in error(path)
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": 1}, {"text": "b"},
                                              {"text": "c", "label": float("nan")}])
    assert "label is missing (NaN or empty) in column 'label' at line 2;" in error(path)
    path = write_jsonl(tmp_path / "b.jsonl", [{"text": "a", "label": 0.5},
                                              {"text": "b", "label": 1}])
    assert "non-integer number" in error(path)
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "a", "label": 1},
                                              {"text": "b", "label": [0, 1]}])
    assert "nested list at line 2" in error(path)


def test_single_class_and_duplicate_or_empty_ids(tmp_path):
    path = write_csv(tmp_path / "a.csv", ["id", "text", "label"], [["x", "a", "pos"],
                                                                    ["y", "b", "pos"]])
    assert "single class ('pos')" in error(path)
    path = write_csv(tmp_path / "b.csv", ["id", "text", "label"],
                     [["x", "a", "1"], ["y", "b", "0"], ["x", "c", "1"]])
    message = error(path, id_column="id")
    assert "duplicate id 'x'" in message and "row 1 and row 3" in message
    path = write_csv(tmp_path / "c.csv", ["id", "text", "label"],
                     [["x", "a", "1"], ["", "b", "0"]])
    assert "id column 'id' is empty at row 2" in error(path, id_column="id")


def test_unknown_split_value_and_no_train_rows(tmp_path):
    path = write_csv(tmp_path / "a.csv", ["text", "label", "split"],
                     [["a", "1", "train"], ["b", "0", "holdout"]])
    assert "'holdout' at row 2" in error(path, split_column="split")
    path = write_csv(tmp_path / "b.csv", ["text", "label", "split"],
                     [["a", "1", "test"], ["b", "0", "test"]])
    assert "no train rows" in error(path, split_column="split")


def test_empty_texts_are_kept_counted_and_warned(tmp_path, caplog):
    path = write_csv(tmp_path / "a.csv", ["text", "label"],
                     [["a", "1"], ["", "0"], ["   ", "1"], ["d", "0"], ["e", "1"]])
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        corpus = load_corpus(cfg(path))
    assert len(corpus) == 5 and corpus.n_empty_texts == 2
    assert "2 of 5 texts are empty" in caplog.text and "row 2" in caplog.text
    assert corpus.summary()["n_empty_texts"] == 2
    # a JSON Lines record without the text key was an 'empty or blank' text, nothing more
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": 1}, {"label": 0},
                                              {"text": None, "label": 1}, {"text": "", "label": 0},
                                              {"text": "e", "label": 1}])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        load_corpus(cfg(path))
    assert ("3 of 5 texts are empty or blank (first: line 2, id '1'; 2 of them have no 'text' "
            "(a record without the key, or null)); kept") in caplog.text, caplog.text


# ---------------------------------------------------------------- the imdb recipe

@pytest.mark.skipif(not SHARED_IMDB.is_file(),
                    reason="needs ../shared/data/imdb/imdb.csv.gz or $FASTIMG_DATA")
def test_imdb_recipe_reads_fastimg_data(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTIMG_DATA", str(SHARED_IMDB.parents[1]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(imdb_mod, "_urlopen", None)  # would fail if called
    assert resolve_imdb() == SHARED_IMDB
    corpus = load_corpus(CorpusConfig(dataset="imdb", limit=400, seed=0))
    assert corpus.class_names == ["neg", "pos"]
    assert corpus.counts()["test"] == {"neg": 100, "pos": 100}  # the file is sorted by label
    assert corpus.counts()["train"] == {"neg": 80, "pos": 80}
    assert all(i.startswith(("train/", "test/")) for i in corpus.ids)
    paper = load_corpus(CorpusConfig(dataset="imdb", split="paper", limit=500))
    assert paper.counts() == {"train": {"neg": 200, "pos": 200}, "val": {"neg": 50, "pos": 50}}


def tiny_tarball(tmp_path) -> bytes:
    make_acl_tree(tmp_path / "tiny", n=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        archive.add(tmp_path / "tiny" / "aclImdb", arcname="aclImdb")
    return buf.getvalue()


class FakeResponse(io.BytesIO):
    pass


def test_imdb_finds_folder_and_tarball_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(imdb_mod, "_urlopen", None)
    data = tmp_path / "data"
    (data / "aclImdb").mkdir(parents=True)
    (data / "aclImdb_v1.tar.gz").write_bytes(b"x")
    assert resolve_imdb(data, cache=tmp_path / "cache") == data / "aclImdb"
    (data / "aclImdb").rmdir()
    assert resolve_imdb(data, cache=tmp_path / "cache") == data / "aclImdb_v1.tar.gz"
    cache = tmp_path / "fastimg"
    cache.mkdir()
    (cache / "aclImdb_v1.tar.gz").write_bytes(b"x")
    monkeypatch.delenv("FASTIMG_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert resolve_imdb() == cache / "aclImdb_v1.tar.gz"
    assert "not found" in str(pytest.raises(CorpusError, resolve_imdb, tmp_path / "empty",
                                            download=False, cache=tmp_path / "none").value)


def test_imdb_download_verifies_and_caches(tmp_path, monkeypatch):
    payload = tiny_tarball(tmp_path)
    calls = []

    def opener(url, timeout):
        calls.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(imdb_mod, "_urlopen", opener)
    monkeypatch.setattr(imdb_mod, "IMDB_MD5", hashlib.md5(payload).hexdigest())
    monkeypatch.setenv("FASTIMG_DATA", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = resolve_imdb()
    assert path == tmp_path / "xdg" / "fastimg" / "aclImdb_v1.tar.gz"
    assert path.read_bytes() == payload and calls == [imdb_mod.IMDB_URL]
    assert [p.name for p in path.parent.iterdir()] == ["aclImdb_v1.tar.gz"]
    corpus = load_corpus(CorpusConfig(dataset="imdb", val_fraction=0.5))
    assert len(corpus) == 8 and corpus.class_names == ["neg", "pos"]
    assert resolve_imdb() == path and len(calls) == 1  # cached: no second download


def test_imdb_download_checksum_mismatch_and_network_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(imdb_mod, "_urlopen", lambda url, timeout: FakeResponse(b"corrupt"))
    cache = tmp_path / "cache"
    with pytest.raises(CorpusError, match="corrupt: MD5"):
        resolve_imdb(tmp_path / "none", cache=cache)
    assert list(cache.iterdir()) == []  # the partial download is gone

    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(imdb_mod, "_urlopen", offline)
    with pytest.raises(CorpusError, match="FASTIMG_DATA") as info:
        resolve_imdb(tmp_path / "none", cache=cache)
    assert "Name or service not known" in str(info.value) and list(cache.iterdir()) == []


# ---------------------------------------------------------------- test_fraction

def test_test_fraction_carves_a_stratified_seeded_test_split(tmp_path):
    path = sorted_corpus(tmp_path, n_neg=120, n_pos=80)
    corpus = load_corpus(cfg(path, split="paper", test_fraction=0.25))
    counts = corpus.counts()
    # 200 rows -> 160 train / 40 val, then a quarter of train (40) -> test, by label
    assert counts["val"] == {"neg": 24, "pos": 16}
    assert counts["test"] == {"neg": 24, "pos": 16}
    assert counts["train"] == {"neg": 72, "pos": 48}
    again = load_corpus(cfg(path, split="paper", test_fraction=0.25))
    assert again.split.tolist() == corpus.split.tolist()
    other = load_corpus(cfg(path, split="paper", test_fraction=0.25, seed=1))
    assert other.split.tolist() != corpus.split.tolist()
    # the validation rows are those of the same build without a test split
    plain = load_corpus(cfg(path, split="paper"))
    assert np.array_equal(plain.split == "val", corpus.split == "val")


def test_test_fraction_is_part_of_the_key_only_when_used(tmp_path):
    path = sorted_corpus(tmp_path)
    assert "test_fraction" not in cfg(path).to_dict()
    assert cfg(path, test_fraction=0.1).to_dict()["test_fraction"] == 0.1
    assert CorpusConfig(**cfg(path, test_fraction=0.1).to_dict()) == cfg(path, test_fraction=0.1)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(CorpusError, match="test_fraction"):
            cfg(path, test_fraction=bad)


def test_test_fraction_ignored_when_the_corpus_has_test_rows(tmp_path, caplog):
    path = sorted_corpus(tmp_path, split=lambda i: "test" if i % 4 == 0 else "train")
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        corpus = load_corpus(cfg(path, split_column="split", test_fraction=0.3))
    assert int((corpus.split == "test").sum()) == 25
    assert any("test_fraction 0.3 ignored" in r.getMessage() for r in caplog.records)


def test_val_fraction_ignored_when_the_split_column_has_val_rows(tmp_path, caplog):
    """--val-fraction 0.3 on a file whose split column has val rows changed nothing and said
    nothing (an ignored --test-fraction warns), and its store's key differed from the one
    without it."""
    path = sorted_corpus(tmp_path, split=lambda i: ("test", "val", "train", "train")[i % 4])
    plain = cfg(path)
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        corpus = load_corpus(cfg(path, val_fraction=0.3))
    assert int((corpus.split == "val").sum()) == 25
    assert any("val_fraction 0.3 ignored: the corpus has 25 val rows" in r.getMessage()
               for r in caplog.records)
    assert cfg(path, val_fraction=0.3).effective(corpus).to_dict() == plain.to_dict()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        load_corpus(plain)  # the default is no request: nothing to warn about
    assert not caplog.records


@pytest.mark.parametrize("mode", ["random", "paper"])
def test_split_column_given_with_a_pooling_split_is_said_to_be_ignored(tmp_path, caplog, mode):
    """--split-column with --split random or paper pooled the file's test rows into train
    and val without a word; the store's key held the column that changed nothing."""
    path = sorted_corpus(tmp_path, split=lambda i: ("test", "val", "train", "train")[i % 4])
    plain = cfg(path, split=mode)
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        corpus = load_corpus(cfg(path, split=mode, split_column="split"))
    assert not (corpus.split == "test").any()  # pooled, as documented
    assert any(f"split_column 'split' ignored: split {mode!r} pools every row" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    effective = cfg(path, split=mode, split_column="split").effective(corpus).to_dict()
    assert effective == plain.effective(load_corpus(plain)).to_dict()


def test_settings_that_change_nothing_give_the_settings_of_the_same_corpus(tmp_path):
    """An ignored test_fraction and a limit of at least the row count leave the corpus as
    without them, so its stage settings are those of the plain config too."""
    path = sorted_corpus(tmp_path, split=lambda i: "test" if i % 4 == 0 else "train")
    plain = cfg(path, split_column="split")
    plain_corpus = load_corpus(plain)
    assert plain_corpus.unused_settings == {}
    for extra in ({"test_fraction": 0.3}, {"limit": 100}, {"limit": 500},
                  {"limit": 1000, "test_fraction": 0.2}):
        config = cfg(path, split_column="split", **extra)
        corpus = load_corpus(config)
        np.testing.assert_array_equal(corpus.split, plain_corpus.split)
        assert config.to_dict() != plain.to_dict()
        assert config.effective(corpus).to_dict() == plain.to_dict(), extra
    # a limit that picks rows, or a test_fraction that carves some, is kept
    for extra in ({"limit": 99}, {"test_fraction": 0.3}):
        config = cfg(sorted_corpus(tmp_path, name="nosplit.csv"), **extra)
        corpus = load_corpus(config)
        assert corpus.unused_settings == {}
        assert config.effective(corpus) == config


# ---------------------------------------------------------------- found walking the README

def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    texts = ["one\u2028two", "next\x85line", "plain", "form\x0cfeed"]
    data = "".join(json.dumps({"text": t, "label": i % 2}, ensure_ascii=False) + "\r\n"
                   for i, t in enumerate(texts))
    (tmp_path / "a.jsonl").write_text(data, encoding="utf-8", newline="")
    corpus = load_corpus(cfg(tmp_path / "a.jsonl", split="random", val_fraction=0.5))
    assert corpus.texts == texts
    (tmp_path / "b.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b, "label": 0}\n')
    assert "line 2 is not valid JSON" in error(tmp_path / "b.jsonl")
    assert ": column " in error(tmp_path / "b.jsonl")


@pytest.mark.skipif(not HAS_PYARROW, reason="needs pyarrow")
def test_parquet_binary_columns_are_utf8_text_and_bad_bytes_name_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    blob = pa.array([b"\x89PNG\xff"] * 4, pa.binary())  # unused: never decoded, never refused
    pq.write_table(pa.table({"text": pa.array([b"caf\xc3\xa9", b"b", b"c", b"d"], pa.binary()),
                             "id": pa.array([b"x", b"y", b"z", b"w"], pa.large_binary()),
                             "label": [1, 0, 1, 0], "blob": blob}), tmp_path / "a.parquet")
    corpus = load_corpus(cfg(tmp_path / "a.parquet", split="random", val_fraction=0.5))
    assert corpus.texts == ["caf\u00e9", "b", "c", "d"]  # not "b'caf\\xc3\\xa9'"
    assert corpus.ids.tolist() == ["x", "y", "z", "w"]
    pq.write_table(pa.table({"text": pa.array([b"a", b"b", b"\xff", b"d"], pa.binary()),
                             "label": [1, 0, 1, 0]}), tmp_path / "b.parquet")
    message = error(tmp_path / "b.parquet", split="random", val_fraction=0.5)
    assert "column 'text' holds bytes that are not UTF-8 text at row 3" in message
    uuids = [bytes([i] * 15 + [0xFF]) for i in range(4)]  # binary ids: kept, as hex
    pq.write_table(pa.table({"text": ["a", "b", "c", "d"], "id": pa.array(uuids, pa.binary(16)),
                             "label": [1, 0, 1, 0]}), tmp_path / "c.parquet")
    corpus = load_corpus(cfg(tmp_path / "c.parquet", split="random", val_fraction=0.5))
    assert corpus.ids.tolist() == [u.hex() for u in uuids]


def test_nested_texts_and_ids_are_refused_not_stringified(tmp_path):
    records = [{"id": i, "text": f"t{i}", "label": i % 2} for i in range(4)]
    records[2]["text"] = {"title": "T", "body": "B"}
    path = write_jsonl(tmp_path / "a.jsonl", records)
    assert "column 'text' holds a nested object at line 3" in error(path)
    records[2]["text"], records[1]["id"] = "t2", [1, 2]
    path = write_jsonl(tmp_path / "b.jsonl", records)
    assert "column 'id' holds a nested list at line 2" in error(path)


def test_an_integer_label_past_64_bits_is_refused_in_one_line(tmp_path):
    """A label of 20 digits (a code, not a class index) raised OverflowError, which the CLI
    reported as a bug."""
    path = write_csv(tmp_path / "a.csv", ["text", "label"],
                     [["a", "7"], ["b", "18446744073709551615"], ["c", "7"]])
    assert ("label column 'label' holds an integer too large for a class value "
            "(18446744073709551615) at row 2" in error(path))
    path = write_jsonl(tmp_path / "b.jsonl", [{"text": "a", "label": 1},
                                              {"text": "b", "label": 1e30}])
    assert "too large for a class value" in error(path) and "at line 2" in error(path)
    big = str(2**63 - 1)  # the largest that fits is a class
    path = write_csv(tmp_path / "c.csv", ["text", "label"], [["a", "1"], ["b", big]] * 3)
    assert load_corpus(cfg(path, split="random", val_fraction=0.34)).class_values == (
        1, 2**63 - 1)


def test_a_non_integer_number_label_is_refused_in_a_csv_as_in_jsonl(tmp_path):
    path = write_csv(tmp_path / "a.csv", ["text", "label"],
                     [["a", "0.0"], ["b", "1.0"], ["c", "2.5"], ["d", "1.0"]])
    message = error(path)
    assert "non-integer number (2.5) at row 3" in message
    # the order of the values does not matter, in a CSV or a JSONL file
    path = write_jsonl(tmp_path / "b.jsonl", [{"text": t, "label": y} for t, y in
                                              [("a", "pos"), ("b", 2.5), ("c", "pos")]])
    assert load_corpus(cfg(path, val_fraction=0.34)).class_names == ["2.5", "pos"]
    path = write_csv(tmp_path / "c.csv", ["text", "label"],
                     [["a", "1e1"], ["b", "2"], ["c", "1e1"], ["d", "2"]])
    assert load_corpus(cfg(path)).class_values == (2, 10)


def test_a_train_split_of_one_class_is_refused_and_missing_classes_named(tmp_path, caplog):
    path = write_csv(tmp_path / "a.csv", ["text", "label"], [["good", "pos"], ["bad", "neg"]])
    message = error(path)  # val takes the one neg row: train holds pos alone
    assert "the train split holds a single class ('pos') of 2" in message
    assert message.endswith("(try a smaller val_fraction)")
    path = sorted_corpus(tmp_path, n_neg=20, n_pos=20)
    message = error(path, split="random", test_fraction=0.97)
    assert message.endswith("(try a smaller val_fraction or test_fraction)")
    rows = [[f"t{i}", "neg" if i < 2 else "pos", ("test", "val", "train")[min(i, 2)]]
            for i in range(20)]
    path = write_csv(tmp_path / "own.csv", ["text", "label", "split"], rows)
    message = error(path)  # the split column's own train rows hold one class: no limit to blame
    assert message.endswith("(try train rows of more than one class in split column 'split')")
    rows = [[f"t{i}", "pos" if i % 2 else "neg", "train"] for i in range(20)]
    rows.append(["rare", "neutral", "test"])
    path = write_csv(tmp_path / "b.csv", ["text", "label", "split"], rows)
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        corpus = load_corpus(cfg(path))
    assert corpus.counts()["train"]["neutral"] == 0
    assert "train split has no rows of class 'neutral'" in caplog.text


def test_labels_that_spell_one_number_two_ways_are_merged_with_a_warning(tmp_path, caplog):
    """Codes '01' and '1' became one class '1' without a word."""
    rows = [[f"t{i}", ("01", "1", "2", "2")[i % 4]] for i in range(40)]
    path = write_csv(tmp_path / "a.csv", ["text", "label"], rows)
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        corpus = load_corpus(cfg(path))
    assert corpus.class_names == ["1", "2"]
    assert "label column 'label' writes one number in several ways ('01' / '1'): each is one " \
           "class" in caplog.text
    caplog.clear()
    rows = [[f"t{i}", ("1.0", "2.0")[i % 2]] for i in range(40)]  # one spelling each: quiet
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        load_corpus(cfg(write_csv(tmp_path / "b.csv", ["text", "label"], rows)))
    assert "several ways" not in caplog.text


@pytest.mark.parametrize("column", ["id", "text"])
def test_a_label_column_of_distinct_values_is_refused(tmp_path, column):
    """--label-column id (or text and label swapped) built a store of 120 classes of one row
    each, with no word of warning."""
    rows = [[f"r{i}", f"text number {i}", "ab"[i % 2]] for i in range(120)]
    path = write_csv(tmp_path / "a.csv", ["id", "text", "label"], rows)
    swapped = {"text_columns": ("label",)} if column == "text" else {}
    message = error(path, label_column=column, **swapped)
    assert message.startswith(f"label column {column!r} holds a different value in each of "
                              f"its 120 rows")
    assert "is it the label column? (label_column; columns: 'id', 'text', 'label')" in message
    few = write_csv(tmp_path / "few.csv", ["text", "label"], [["x", "a"], ["y", "b"], ["z", "c"]])
    assert load_corpus(cfg(few, split="random", val_fraction=0.34)).class_names == ["a", "b", "c"]


def test_classes_the_limit_samples_no_row_of_are_named_once_and_briefly(tmp_path, caplog):
    """--limit 120 of 300 classes warned that 'the train split' lacked 220 classes, all named
    in one line of 2,000 characters, though 180 of them had no row at all: those are said to
    be absent from the sample, and a list past 20 names says how many more."""
    rows = [[f"t{i}", f"c{i % 300:03d}"] for i in range(900)]
    path = write_csv(tmp_path / "many.csv", ["text", "label"], rows)
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        corpus = load_corpus(cfg(path, limit=120))
    present = set(corpus.targets.tolist())
    absent = 300 - len(present)
    no_train = len(present) - len(set(corpus.targets[corpus.split == "train"].tolist()))
    assert absent == 180 and no_train > 20
    assert len(corpus.class_names) == 300
    notes = [n for n in corpus.warnings if "no rows" in n and not n.startswith("the val")]
    assert len(notes) == 2 and all(len(n) < 500 for n in notes)
    assert notes[0].startswith("180 of the 300 classes have no rows in the limit's sample ('c")
    assert ", ... (160 more)): they stay classes" in notes[0]
    assert notes[1].startswith("the train split has no rows of class 'c")
    assert notes[1].endswith(f", ... ({no_train - 20} more): a model trained on it cannot "
                             f"predict them")


def test_a_text_column_named_twice_and_empty_column_names_are_refused(tmp_path):
    path = write_csv(tmp_path / "a.csv", ["text", "label"], [["a", "1"], ["b", "0"]])
    with pytest.raises(CorpusError, match="names 'text' twice"):
        cfg(path, text_columns=("text", "text"))
    with pytest.raises(CorpusError, match="^label_column 'label' is also a text column"):
        cfg(path, text_columns=("text", "label"))
    for name in ("id_column", "split_column"):
        with pytest.raises(CorpusError, match=f"{name} must be a column name"):
            cfg(path, **{name: ""})
    for label in ("", " ", 5, ("label",)):  # 5 was accepted, unlike the other columns
        with pytest.raises(CorpusError, match=f"label_column must be a column name, got "
                                              f"{re.escape(repr(label))}"):
            cfg(path, label_column=label)


def test_a_one_column_header_suggests_the_delimiter(tmp_path):
    (tmp_path / "a.csv").write_text("text;label\ngood;pos\nbad;neg\n")
    assert "delimited by ';'" in error(tmp_path / "a.csv")
    (tmp_path / "b.tsv").write_text("text,label\ngood,pos\nbad,neg\n")
    assert "delimited by ','" in error(tmp_path / "b.tsv")


def test_imdb_csv_directly_in_fastimg_data_and_a_missing_folder_warned(tmp_path, monkeypatch,
                                                                     caplog):
    monkeypatch.setattr(imdb_mod, "_urlopen", None)  # would fail if called
    (tmp_path / "imdb").mkdir()
    (tmp_path / "imdb" / "imdb.csv.gz").write_bytes(b"x")
    # FASTIMG_DATA naming the imdb/ folder itself, not its parent
    assert resolve_imdb(tmp_path / "imdb", cache=tmp_path / "c") == tmp_path / "imdb/imdb.csv.gz"
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        with pytest.raises(CorpusError, match="not found"):
            resolve_imdb(tmp_path / "typo", download=False, cache=tmp_path / "c")
    assert "typo (FASTIMG_DATA) does not exist" in caplog.text


@pytest.mark.skipif(not HAS_PYARROW, reason="needs pyarrow")
def test_parquet_is_read_on_one_thread_and_duplicate_columns_refused(tmp_path, monkeypatch):
    # pyarrow's thread pools aborted the CLI at exit after a corpus error now and then
    # ("terminate called without an active exception", exit 134 instead of 2)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b", "c", "d"], "label": [[1], [0], [1], [0]]}),
                   tmp_path / "a.parquet")
    calls, read = [], pq.ParquetFile.read

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("use_threads", True))
        return read(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read", spy)
    assert "nested list at row 1" in error(tmp_path / "a.parquet")
    assert calls == [False]
    table = pa.Table.from_arrays([pa.array(["a", "b"]), pa.array(["c", "d"]), pa.array([1, 0])],
                                 names=["text", "text", "label"])
    pq.write_table(table, tmp_path / "b.parquet")
    assert "has the column 'text' twice" in error(tmp_path / "b.parquet")


def test_non_utf8_bytes_after_a_bom_or_in_the_header_are_placed_right(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbftext,label\r\n\xe9a,pos\r\nb,neg\r\n")
    message = error(tmp_path / "a.csv")  # was: "bad byte 0x6c at row 1 (line 1)"
    assert "bad byte 0xe9 at row 1 (line 2)" in message
    (tmp_path / "b.csv").write_bytes(b"t\xe9xt,label\na,pos\nb,neg\n")
    assert "bad byte 0xe9 at the header (line 1)" in error(tmp_path / "b.csv")
    (tmp_path / "c.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "a", "label": 1}\n'
                                       b'{"text": "\xe9", "label": 0}\n')
    assert "bad byte 0xe9 at line 2" in error(tmp_path / "c.jsonl")


def test_a_rare_class_keeps_its_rows_in_train_while_others_can_spare_theirs(tmp_path, caplog):
    """Validation and test rows are carved by label; a class of one or two rows lost its only
    train row to them (a largest-remainder share) while the large class had rows to spare."""
    labels = ["sports"] * 60 + ["World", "Health", "Sci/Tech", "Business"]
    rows = [[f"r{i}", f"text {i}", y] for i, y in enumerate(labels)]
    path = write_csv(tmp_path / "rare.csv", ["id", "text", "label"], rows)
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        corpus = load_corpus(cfg(path, split="random", val_fraction=0.2, test_fraction=0.2))
    counts = corpus.counts()
    assert all(n == 1 for name, n in counts["train"].items() if name != "sports"), counts
    assert counts["val"]["sports"] == 13 and sum(counts["val"].values()) == 13
    assert sum(counts["test"].values()) == 10
    assert "the train split has no rows of class" not in caplog.text
    # a class of two rows: one trains, one validates
    rows = [[f"r{i}", f"text {i}", y] for i, y in enumerate(["a"] * 30 + ["b"] * 2)]
    path = write_csv(tmp_path / "two.csv", ["id", "text", "label"], rows)
    for seed in range(3):
        counts = load_corpus(cfg(path, split="random", val_fraction=0.5, seed=seed)).counts()
        assert counts["train"]["b"] == 1 and counts["val"]["b"] == 1, counts


def test_classes_that_differ_only_in_case_are_kept_and_named(tmp_path, caplog):
    """Padding around a label is stripped; 'World' and 'world' stay two classes, said aloud."""
    labels = ["World", "world", " World ", "sports", "Sports", "sports", "Business", "Business"]
    rows = [[f"r{i}", f"text {i}", y] for i, y in enumerate(labels * 3)]
    path = write_csv(tmp_path / "case.csv", ["id", "text", "label"], rows)
    with caplog.at_level(logging.WARNING, logger="fastimg.corpus"):
        corpus = load_corpus(cfg(path, split="random", val_fraction=0.25))
    assert corpus.class_names == ["Business", "Sports", "World", "sports", "world"]
    notes = [w for w in corpus.warnings if "differ only in case" in w]
    assert len(notes) == 1 and "'Sports' / 'sports'" in notes[0]
    assert "'World' / 'world'" in notes[0] and "Business" not in notes[0]
    assert "differ only in case" in caplog.text


def test_a_column_name_in_another_case_or_misspelt_is_pointed_to(tmp_path):
    """A header 'ID,Text,Label' was refused listing its columns only, the one meant unnamed."""
    path = write_csv(tmp_path / "a.csv", ["ID", "Text", "Label"], [[1, "a", "x"], [2, "b", "y"]])
    message = error(path)
    assert message.startswith(f"{path} has no text column 'text' (did you mean 'Text'?); its "
                              f"columns: 'ID', 'Text', 'Label'"), message
    assert "(did you mean 'Label'?)" in error(path, text_columns=("Text",), label_column="lable")
    assert "did you mean" not in error(path, text_columns=("Text",), label_column="category")


@pytest.mark.parametrize("encoding,name", [("utf-16", "UTF-16"), ("utf-32", "UTF-32")])
def test_a_utf16_file_is_named_so(tmp_path, encoding, name):
    """Excel's 'Unicode text' export (UTF-16 with its byte-order mark) was refused as 'bad
    byte 0xff at the header', which says nothing of what the file is."""
    path = tmp_path / "a.tsv"
    path.write_bytes("text\tlabel\ngood\t1\nbad\t0\n".encode(encoding))
    assert error(path) == f"{path} is {name} (its byte-order mark says so), not UTF-8; re-encode " \
                          f"the file as UTF-8"


def test_classes_the_val_split_lacks_are_noted(tmp_path):
    """A val split without a class the train split has never scores it while picking the best
    epoch; it was silent (`val 0/1` in the summary only)."""
    rows = [[f"t{i}", "rare" if i < 2 else ("a" if i % 2 else "b")] for i in range(200)]
    path = write_csv(tmp_path / "rare.csv", ["text", "label"], rows)
    for seed in range(20):  # a seed whose val draws neither 'rare' row
        corpus = load_corpus(cfg(path, seed=seed, val_fraction=0.1))
        if "rare" not in {corpus.class_names[k] for k in corpus.targets[corpus.split == "val"]}:
            break
    notes = [n for n in corpus.warnings if n.startswith("the val split")]
    assert notes == ["the val split (20 rows) has no rows of class 'rare': validation, which "
                     "picks the best epoch, never scores it"]
    balanced = load_corpus(cfg(sorted_corpus(tmp_path, 100, 100, name="b.csv")))
    assert not [n for n in balanced.warnings if n.startswith("the val split")]


def test_typed_numbers_among_text_labels_are_one_class_per_integer(tmp_path):
    """JSONL labels 1.0, 1 and "other": one class (1 == 1.0), named '1.0' or '1' by which came
    first, because a text label sent the column down the text path; it is '1' whatever the
    order. Text spellings stay apart."""
    records = [{"text": f"t{i}", "label": [1.0, 1, "other", "01"][i % 4]} for i in range(40)]
    corpus = load_corpus(cfg(write_jsonl(tmp_path / "mixed.jsonl", records)))
    assert corpus.class_names == ["01", "1", "other"]
    assert np.bincount(corpus.labels).tolist() == [10, 20, 10]


def test_load_corpus_names_a_config_of_the_wrong_type():
    # a dict raised AttributeError: 'dict' object has no attribute 'dataset'
    with pytest.raises(TypeError, match=r"config must be a CorpusConfig, got dict; build one "
                                        r"with CorpusConfig\(\*\*settings\)"):
        load_corpus({"dataset": "imdb"})


def test_corpus_and_table_reprs_are_short(tmp_path):
    # the dataclasses' reprs printed every text and cell: a notebook cell showing the loaded
    # IMDB corpus printed 67 MB
    rows = [[i, "x" * 1000, "pos" if i % 2 else "neg"] for i in range(60)]
    path = write_csv(tmp_path / "r.csv", ["id", "text", "label"], rows)
    corpus = load_corpus(CorpusConfig(input=str(path), seed=0))
    text = repr(corpus)
    assert len(text) < 300 and "x" * 20 not in text
    assert text.startswith("Corpus(60 rows, classes ['neg', 'pos'], splits: train 48, val 12")
    table = read_table(path)
    assert repr(table) == f"Table({str(path)!r}, 60 rows, columns ['id', 'text', 'label'])"


def test_an_input_that_is_no_path_is_refused_as_the_config_is_made(tmp_path):
    """CorpusConfig(input=3) became the file '3', input=b"a.csv" the file "b'a.csv'"."""
    for given in (3, b"reviews.csv", ["reviews.csv"]):
        with pytest.raises(TypeError, match="input must be a path or URL"):
            CorpusConfig(input=given)
    with pytest.raises(CorpusError, match="input is an empty path"):
        CorpusConfig(input="")
    assert CorpusConfig(input=tmp_path / "r.csv").input == str(tmp_path / "r.csv")
    assert CorpusConfig(input="s3://b/r.csv").input == "s3://b/r.csv"
