"""`fastimg info` (stores and run folders, short by default, --json for scripts) and
`fastimg show` (colour bars, layer legend, per-pixel standardised samples)."""
import csv
import json
import os
import re
import shutil
import socket

import numpy as np
import pytest
import zarr

from conftest import TINY_WORDS
from fastimg import show, store
from fastimg.cli import main


def write_reviews(path, n=80, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("id", "text", "label", "split"))
        for i in range(n):
            writer.writerow((f"r{i}", " ".join(rng.choice(TINY_WORDS, 10)), ("pos", "neg")[i % 2],
                             ("train", "train", "train", "test")[(i // 2) % 4]))


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_bert_dir):
    """A tiny dataset store, then a second one from it with another grid (encoding reused)."""
    root = tmp_path_factory.mktemp("info")
    write_reviews(root / "reviews.csv")
    common = ["build-dataset", "--input", str(root / "reviews.csv"), "--id-column", "id",
              "--split-column", "split", "--model", str(tiny_bert_dir), "--method", "pca",
              "--max-length", "32", "--quiet", "--out", str(root / "d.zarr")]
    assert main([*common, "--pixels", "12"]) == 0
    first = json.dumps(store.StoreReader(root / "d.zarr").attrs["summary"])
    assert main([*common, "--pixels", "10x14", "--force"]) == 0
    return root / "d.zarr", json.loads(first)


def test_info_summarises_a_dataset_store_in_a_few_lines(built, capsys):
    path, _ = built
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert 6 <= len(lines) <= 30
    reader = store.StoreReader(path)
    train = reader.rows("train").size
    # "complete" alone is in "NOT complete" too
    assert lines[0].startswith(f"{path}: fastimg dataset store, complete, ")
    assert "MiB on disk" in lines[0]
    assert "classes   2: neg, pos" in out
    assert re.search(rf"^  train +{train} rows  \(neg \d+, pos \d+\)$", out, flags=re.M)
    assert "features  192 = 6 layers x 32 hidden" in out
    assert f"images    80 x 10 x 14 float16; {reader.summary['occupied_pixels']} of 140" in out
    assert "cls pooling, max_length 32" in out and "layers [7, 8, 9, 10, 11, 12]" in out
    assert "layout    pca" in out and f"fitted on the {train} train rows" in out
    assert "reused: corpus, encode" in out
    assert "{" not in out


def test_info_counts_the_classes_of_a_store_whose_summary_has_no_counts(built, tmp_path,
                                                                        capsys):
    """A store another tool wrote records no class counts: info counts them from the labels,
    in the lines it gives a store that records them."""
    path, _ = built
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    recorded = [line for line in capsys.readouterr().out.splitlines()
                if line.startswith(("classes", "  train", "  val", "  test"))]
    copy = tmp_path / "uncounted.zarr"
    shutil.copytree(path, copy)
    group = zarr.open_group(str(copy), mode="r+")
    attrs = dict(group.attrs[store.ATTRS_KEY])
    attrs["summary"] = {k: v for k, v in attrs["summary"].items() if k != "counts"}
    group.attrs[store.ATTRS_KEY] = attrs
    assert main(["info", str(copy)]) == 0
    counted = [line for line in capsys.readouterr().out.splitlines()
               if line.startswith(("classes", "  train", "  val", "  test"))]
    assert len(recorded) >= 3 and counted == recorded


def test_the_summaries_of_odd_and_many_class_names_read_as_the_classes(tmp_path,
                                                                       tiny_bert_dir, capsys):
    """A class 'very good, really' was listed as two names, and 300 classes made a summary
    line of 3,000 characters: names that misread are quoted, and past 20 classes the first
    20 are named and the counts per split given as a range."""
    rng = np.random.default_rng(5)
    for name, classes in (("odd", ["very good, really", "bad  one", "ok"]),
                          ("many", [f"c{k}" for k in range(30)])):
        with open(tmp_path / f"{name}.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(("text", "label"))
            for i in range(4 * len(classes)):
                writer.writerow((" ".join(rng.choice(TINY_WORDS, 6)), classes[i % len(classes)]))
        capsys.readouterr()
        assert main(["build-dataset", "--input", str(tmp_path / f"{name}.csv"), "--model",
                     str(tiny_bert_dir), "--method", "pca", "--max-length", "16", "--pixels",
                     "8", "--quiet", "--out", str(tmp_path / f"{name}.zarr")]) == 0
        built_line = capsys.readouterr().out
        assert main(["info", str(tmp_path / f"{name}.zarr")]) == 0
        info = capsys.readouterr().out
        if name == "odd":
            assert "3 classes ('bad  one', 'ok', 'very good, really'; train " in built_line
            assert "classes   3: 'bad  one', 'ok', 'very good, really'\n" in info
            assert re.search(r"^  train +\d+ rows  \('bad  one' \d+, 'ok' \d+, "
                             r"'very good, really' \d+\)$", info, flags=re.M)
        else:
            assert len(built_line) < 600
            assert "30 classes (c0, c1, c10, " in built_line and ", ... (10 more); " in built_line
            assert re.search(r"; train 9\d rows, 3 to 4 per class; val 2\d rows, 0 to 1 per "
                             r"class, \d classes without rows\), images", built_line)
            assert re.search(r"^classes   30: c0, c1, .*, c26, \.\.\. \(10 more\)$", info,
                             flags=re.M)
            assert re.search(r"^  val +2\d rows  \(0 to 1 per class, \d classes without "
                             r"rows\)$", info, flags=re.M)
            assert max(map(len, info.splitlines())) < 300


def test_info_of_an_images_store_fitted_on_every_row_names_no_evaluation_rows(tmp_path,
                                                                              capsys):
    """An images store without a split (no validation or test rows) read "fitted on all 300
    rows (evaluation rows included)"."""
    out = tmp_path / "i.zarr"
    assert main(["images", "--synthetic", "300x40", "--out", str(out), "--pixels", "8",
                 "--method", "pca", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    out = capsys.readouterr().out
    assert "assignment assignment; fitted on all 300 rows, seed 0" in out, out


def test_info_lists_the_splits_of_an_images_store_in_split_order(tmp_path, capsys):
    """The attrs keep keys sorted as text: info read "splits    test 5, train 20, val 5"."""
    (tmp_path / "split.txt").write_text("train\n" * 20 + "val\n" * 5 + "test\n" * 5)
    out = tmp_path / "i.zarr"
    assert main(["images", "--synthetic", "30x40", "--out", str(out), "--pixels", "8",
                 "--method", "pca", "--split-file", str(tmp_path / "split.txt"),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "splits    train 20, val 5, test 5\n" in capsys.readouterr().out


def test_info_counts_the_chunks_a_cluster_finished_out_of_order(tmp_path, capsys):
    """A cluster build marks chunks done in any order (``_done_embeddings``); ``rows_done``
    stays at the rows an in-process run finished in order."""
    import zarr

    from fastimg.store.schema import BUILD_KEY, DONE_PREFIX, EMBED_ATTRS_KEY

    out = tmp_path / "c.zarr"
    group = zarr.open_group(store.partial_path(out), mode="w")
    group.attrs[BUILD_KEY] = {"stages": {"corpus": {"done": True}, "encode": {"done": False}}}
    embeddings = group.create_array(store.EMBEDDINGS, shape=(290, 4), chunks=(50, 4),
                                    dtype="float16")
    embeddings.attrs[EMBED_ATTRS_KEY] = {"rows_done": 50}
    done = group.create_array(DONE_PREFIX + store.EMBEDDINGS, shape=(6,), chunks=(1,),
                              dtype="uint8", fill_value=0)
    done[:] = [0, 1, 0, 1, 0, 1]  # chunk 0 finished in process; the last chunk has 40 rows
    assert main(["info", str(out)]) == 0
    assert "encoded      190 of 290 rows" in capsys.readouterr().out.splitlines()


def test_info_describes_an_unfinished_build(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    """A build stopped after encoding: info says which stages are done and how to resume."""
    from fastimg.layout import DeepInsightLayout

    write_reviews(tmp_path / "reviews.csv")
    out = tmp_path / "u.zarr"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DeepInsightLayout, "fit", stop)
    assert main(["build-dataset", "--input", str(tmp_path / "reviews.csv"), "--model",
                 str(tiny_bert_dir), "--method", "pca", "--max-length", "32", "--quiet",
                 "--out", str(out)]) == 130
    capsys.readouterr()
    for given in (out, store.partial_path(out)):
        assert main(["info", str(given)]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[0].startswith(f"{store.partial_path(out)}: an unfinished fastimg build")
        assert "stages done  corpus, encode" in lines and "unfinished   layout" in lines
        assert "encoded      80 of 80 rows" in lines
    assert main(["info", str(out), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["complete"] is False and found["stages"]["encode"] is True
    assert found["rows_done"] == found["rows"] == 80 and found["built_by"] is None
    assert main(["info", str(tmp_path / "none.zarr")]) == 2
    assert "none.zarr does not exist" in capsys.readouterr().err
    # while a command builds it, info and the readers say so rather than "rerun the command"
    with store.build_lock(out):
        assert main(["info", str(out)]) == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert first == (f"{store.partial_path(out)}: an unfinished fastimg build; being built "
                         f"now by another fastimg command (process {os.getpid()} on "
                         f"{socket.gethostname()})")
        assert main(["show", str(out), "--out", str(tmp_path / "u.png")]) == 2
        assert (f"{out} is being built now by another fastimg command (process {os.getpid()}"
                in capsys.readouterr().err)


def test_info_names_the_unfinished_forced_build_beside_a_complete_store(tmp_path,
                                                                        tiny_bert_dir, capsys,
                                                                        monkeypatch):
    """A forced rebuild stopped late keeps OUT.partial beside the complete OUT; info showed
    only OUT, so the partial stayed there unseen (an encoding's worth of disk)."""
    from fastimg.layout import DeepInsightLayout

    write_reviews(tmp_path / "reviews.csv")
    out = tmp_path / "b.zarr"
    build = ["build-dataset", "--input", str(tmp_path / "reviews.csv"), "--model",
             str(tiny_bert_dir), "--method", "pca", "--max-length", "32", "--quiet",
             "--out", str(out)]
    assert main(build) == 0
    assert main(["info", str(out)]) == 0
    assert "beside" not in capsys.readouterr().out
    assert json.loads((main(["info", str(out), "--json"]), capsys.readouterr().out)[1])[
        "unfinished_beside"] is None

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DeepInsightLayout, "fit", stop)
    assert main([*build, "--force", "--pixels", "12"]) == 130
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{out}: fastimg dataset store, complete")
    assert lines[-1] == (f"beside     an unfinished build at {store.partial_path(out)} (stages "
                         f"done: corpus, encode): rerun the forced command that started it to "
                         f"resume, or delete it")
    assert main(["info", str(out), "--json"]) == 0
    beside = json.loads(capsys.readouterr().out)["unfinished_beside"]
    assert beside["stages"] == {"corpus": True, "encode": True, "layout": False}, beside


def test_packed_batches_build_the_same_store_and_say_so(built, tiny_bert_dir, capsys):
    path, _ = built
    out = path.parent / "packed.zarr"
    assert main(["build-dataset", "--input", str(path.parent / "reviews.csv"), "--id-column",
                 "id", "--split-column", "split", "--model", str(tiny_bert_dir), "--method",
                 "pca", "--max-length", "32", "--quiet", "--pixels", "10x14", "--batching",
                 "packed", "--out", str(out)]) == 0
    packed, padded = store.StoreReader(out), store.StoreReader(path)
    assert packed.provenance["batching"] == "packed"
    assert packed.provenance["attention"] == "padded"  # the CPU's packed attention
    assert padded.provenance["batching"] == "padded"
    np.testing.assert_allclose(np.asarray(packed.embeddings[:], np.float32),
                               np.asarray(padded.embeddings[:], np.float32), atol=2e-3, rtol=0)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "on cpu, packed batches ->" in capsys.readouterr().out


@pytest.mark.parametrize("engine", ["auto", "torch"])
def test_an_int8_build_records_and_shows_its_engine(built, tiny_bert_dir, capsys, engine):
    path, _ = built
    out = path.parent / f"int8-{engine}.zarr"
    assert main(["build-dataset", "--input", str(path.parent / "reviews.csv"), "--id-column",
                 "id", "--split-column", "split", "--model", str(tiny_bert_dir), "--method",
                 "pca", "--max-length", "32", "--quiet", "--pixels", "10x14", "--precision",
                 "int8", "--int8-engine", engine, "--out", str(out)]) == 0
    ran = "onnxruntime" if engine == "auto" else "torch"  # a BERT encoder with [CLS] pooling
    reader = store.StoreReader(out)
    assert reader.provenance["precision"] == "int8" and reader.provenance["int8_engine"] == ran
    assert "onnxruntime" in reader.provenance["versions"]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert f"int8 ({ran}) on cpu ->" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["info", "show", "train"])
def test_a_store_that_lost_its_images_is_one_line(built, tmp_path, capsys, command):
    """Its images folder deleted, each said "internal error (a bug, please report it):
    KeyError: 'images'" and exited 1."""
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(built[0], damaged)
    shutil.rmtree(damaged / store.IMAGES)
    out = {"info": [], "show": ["--out", str(tmp_path / "s.png")],
           "train": ["--out", str(tmp_path / "run"), "--weights", "none"]}[command]
    code = main([command, str(damaged), *out, *(["--quiet"] if command == "train" else [])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.endswith(f"{damaged} has lost its images array (a folder deleted, or a copy cut "
                        f"short): the store is damaged; build it again"), err


def test_a_store_with_a_damaged_chunk_is_one_line(built, tmp_path, capsys):
    """A chunk cut short said "internal error (a bug, please report it): RuntimeError: Zstd
    decompression error" and exited 1."""
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(built[0], damaged)
    chunk = next(p for p in sorted((damaged / store.IMAGES).rglob("*"))
                 if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:20])
    code = main(["show", str(damaged), "--out", str(tmp_path / "s.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith("fastimg show: error: stored data could not be decoded ("), err
    assert err.endswith("a file of the store (or of a feature cache) is damaged, cut short or "
                        "overwritten; build it again"), err


def test_info_of_a_store_that_reused_every_stage_names_its_times_in_build_order(built,
                                                                              tmp_path, capsys):
    """They were listed as copied ("encode, images, layout"), the raster stage named "images"
    where every other store says "raster"."""
    out = tmp_path / "again.zarr"
    assert main(["relayout", str(built[0]), "--out", str(out), "--pixels", "10x14", "--method",
                 "pca", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    timings = next(line for line in capsys.readouterr().out.splitlines()
                   if line.startswith("timings"))
    assert re.match(r"timings   encode [\d.]+ m?s, layout [\d.]+ m?s, raster [\d.]+ m?s; "
                    r"reused: corpus, encode, layout, images", timings), timings


def test_info_json_holds_the_full_attributes_without_layout_arrays(built, capsys):
    path, _ = built
    capsys.readouterr()
    assert main(["info", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    reader = store.StoreReader(path)
    assert data["summary"] == reader.summary and data["config"] == reader.configs
    assert data["arrays"]["images"]["shape"] == [80, 10, 14]
    assert "coords" not in data["layout"] and "coords" not in data["stages"]["layout"]["layout"]
    assert data["stages"]["encode"]["key"] == reader.stages["encode"]["key"]


def test_info_summarises_a_training_run_folder(tmp_path, capsys):
    from test_train import write_store

    write_store(tmp_path / "s.zarr", n_rows=60)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "s.zarr"), "--weights", "none", "--epochs", "2",
                 "--batch-size", "16", "--loader", "torch", "--quiet", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{run}: fastimg training run (metrics.json, config.json, best.pt, "
                          f"bundle.json, normaliser.npz)")
    assert "extractor  alexnet, weights random init (none)" in out and "None" not in out
    assert "training   2 epochs, batch 16, normalise dataset, seed 0 (preset ours)\n" in out
    # the optimiser, early stopping and the head's variant were not said
    assert ("optimiser  adamw, lr head 0.001 / classifier 0.001, weight decay 0.1, schedule "
            "cosine, early stop after 8 epochs without a val gain\n") in out
    assert "head       paper cut, upsample 1x, pixel branch\n" in out
    assert f"epochs     2 run, best epoch {metrics['best_epoch']}" in out
    assert f"val {metrics['final']['val']['accuracy']:.4f}" in out
    assert f"probe      val {metrics['probe']['val_accuracy']:.4f}" in out
    reported = metrics["reported"]
    assert (f"by class   {reported['split']}: macro F1 {reported['macro_f1']:.4f}, balanced "
            f"accuracy {reported['balanced_accuracy']:.4f}; lowest recall ") in out
    assert f"classes {', '.join(metrics['class_names'])}\n" in out
    assert len(out.strip().splitlines()) <= 30
    assert f"store      {metrics['store']}\n" in out
    capsys.readouterr()
    assert main(["info", str(run), "--json"]) == 0  # was refused: scripts read the files
    data = json.loads(capsys.readouterr().out)
    assert data["metrics"] == metrics and data["finished"] and data["run_folder"] == str(run)
    assert data["config"] == json.loads((run / "config.json").read_text())
    assert data["files"] == ["metrics.json", "config.json", "best.pt", "bundle.json",
                             "normaliser.npz"]
    # a training store moved away was named as if it were there
    (tmp_path / "s.zarr").rename(tmp_path / "moved.zarr")
    assert main(["info", str(run)]) == 0
    assert (f"store      {metrics['store']} (not there now: moved or deleted? explain reads the "
            f"split from it; give the new path with --store)\n") in capsys.readouterr().out


def test_info_says_one_epoch_and_the_weights_in_words(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for weights, words in ((None, "random init (none)"), ("DEFAULT", "ImageNet (DEFAULT)"),
                           ("/w/alex.pt", "from /w/alex.pt")):
        (run / "config.json").write_text(json.dumps({"extractor": "alexnet", "weights": weights,
                                                     "epochs": 1, "batch_size": 8,
                                                     "normalize": "image"}))
        assert main(["info", str(run)]) == 0
        out = capsys.readouterr().out
        assert f"extractor  alexnet, weights {words}\n" in out
        assert "training   1 epoch, batch 8" in out
        assert "optimiser  lr head default / classifier default\n" in out
        assert "head       " not in out  # not recorded: not said
        # image normalisation writes no normaliser.npz: it is not reported missing
        assert "missing metrics.json, best.pt, bundle.json)" in out.splitlines()[0]


def test_info_says_a_run_stopped_early(tmp_path, capsys):
    """A run of 10 epochs that early stopping ended after 4 read '10 epochs' and '4 run'
    without a word of why (train's own summary line says it stopped early)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"extractor": "alexnet", "epochs": 10,
                                                 "patience": 2, "normalize": "image"}))
    epochs = [{"epoch": e, "train_loss": 0.5, "val_accuracy": a}
              for e, a in enumerate((0.5, 0.6, 0.55, 0.55), start=1)]
    metrics = {"epochs": epochs, "best_epoch": 2, "epochs_run": 4, "stopped_early": True}
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["info", str(run)]) == 0
    assert ("epochs     4 run, stopped early (no val gain in 2 epochs), best epoch 2 (val "
            "accuracy 0.6000)") in capsys.readouterr().out
    (run / "metrics.json").write_text(json.dumps({**metrics, "stopped_early": False}))
    assert main(["info", str(run)]) == 0
    assert "epochs     4 run, best epoch 2 (val" in capsys.readouterr().out


def test_info_of_a_run_a_train_is_writing_names_the_train_not_an_unfinished_run(tmp_path,
                                                                                 capsys, caplog):
    """A run folder a train was still writing was said to be a run that did not finish; and
    --storage-option with a run folder was ignored without a word."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"extractor": "alexnet", "epochs": 1}))
    assert main(["info", str(run)]) == 0
    assert "no metrics.json: the run did not finish" in capsys.readouterr().out
    with store.build_lock(run):  # what the train writing the folder holds
        assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert (f"no metrics.json: being trained now by another fastimg command (process "
            f"{os.getpid()} on ") in out and "did not finish" not in out, out
    assert main(["info", str(run), "--storage-option", "anon=true"]) == 0
    assert "--storage-option is for store URLs (s3://...): ignored" in caplog.text


def test_logged_warnings_read_like_the_commands_other_warnings(tmp_path):
    """A logged warning printed as 'WARNING fastimg.cli: ...' where fastimg's other warnings
    and its errors say 'fastimg COMMAND: ...'."""
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"extractor": "alexnet", "epochs": 1}))
    done = subprocess.run([sys.executable, "-m", "fastimg.cli", "info", str(run),
                           "--storage-option", "anon=true"], capture_output=True, text=True,
                          check=True)
    assert done.stderr == (f"fastimg info: warning: --storage-option is for store URLs "
                           f"(s3://...): ignored for the local path {run}\n"), done.stderr


def test_pixel_stats_stream_and_standardise(rng):
    images = rng.random((50, 4, 5)).astype(np.float16)
    images[:, 0, 0] = 0.0  # an empty pixel: deviation 1, standardised 0
    rows = np.array([1, 4, 9, 20, 33, 49])
    mean, std = show.pixel_stats(images, rows, block_rows=4)
    chosen = images[rows].astype(np.float64)
    np.testing.assert_allclose(mean, chosen.mean(axis=0), atol=1e-12)
    expected = chosen.std(axis=0)
    expected[0, 0] = 1.0
    np.testing.assert_allclose(std, expected, atol=1e-9)
    z = show.standardise(images[3], mean, std)
    assert z[0, 0] == 0.0
    np.testing.assert_allclose(z, (chosen[0] * 0 + images[3] - mean) / std, atol=1e-12)


def _drawn_figure(monkeypatch, *show_args):
    """The figure ``fastimg show *show_args`` draws (savefig only marks the file written)."""
    import matplotlib.figure

    saved = {}

    def keep(fig, out, **kwargs):
        saved["fig"] = fig
        out.write_bytes(b"png")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    assert main(["show", *show_args]) == 0
    return saved["fig"]


def test_show_draws_samples_standardised_and_a_layer_legend(built, tmp_path, monkeypatch):
    path, _ = built
    fig = _drawn_figure(monkeypatch, str(path), "--out", str(tmp_path / "s.png"),
                        "--per-class", "2")
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("raw" in t for t in titles) == 4 and sum("per-pixel z" in t for t in titles) == 4
    assert any(t.startswith("dominant layer") for t in titles)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    labels = [t.get_text() for t in legends[0].get_texts()]
    assert labels and all(label.startswith("layer ") for label in labels)
    # one colour bar per drawn image (colour-bar axes have no title)
    drawn = [ax for ax in fig.axes if ax.get_images() and ax.get_title()]
    assert len(fig.axes) - len(drawn) >= len(drawn) - 1


@pytest.mark.parametrize("fit", ["fit-rows", "split-file", "all"])
def test_show_draws_an_images_store_as_one_group(tmp_path, monkeypatch, fit):
    """A store made by `fastimg images` (no labels) was refused; its samples, mean image and
    layout are drawn, standardised with the rows its layout was fitted on."""
    args = ["images", "--synthetic", "60x40", "--out", str(tmp_path / "i.zarr"), "--pixels",
            "6", "--method", "pca", "--quiet"]
    if fit == "fit-rows":
        args += ["--fit-rows", "30"]
    elif fit == "split-file":
        (tmp_path / "split.txt").write_text("\n".join(["train"] * 25 + ["test"] * 35))
        args += ["--split-file", str(tmp_path / "split.txt")]
    assert main(args) == 0
    fig = _drawn_figure(monkeypatch, str(tmp_path / "i.zarr"), "--out", str(tmp_path / "i.png"),
                        "--per-class", "3")
    titles = [ax.get_title() for ax in fig.axes]
    assert sum(re.fullmatch(r"image #\d+ raw", t) is not None for t in titles) == 3
    assert "mean image" in titles and "features per pixel (36 used)" in titles
    assert fig._suptitle.get_text().endswith({
        "fit-rows": "of 30 images the layout was fitted on",
        "split-file": "of 25 training images",
        "all": "of 60 images the layout was fitted on"}[fit])


def test_show_draws_a_uint8_store_on_the_scale_of_a_float_one(tmp_path, monkeypatch):
    """A uint8 store's samples and means were drawn in codes (0..255), a float store's in
    [0, 1]: figures of one layout had scales 255 apart."""
    drawn = {}
    for dtype in ("uint8", "float32"):
        assert main(["images", "--synthetic", "60x40", "--out", str(tmp_path / f"{dtype}.zarr"),
                     "--pixels", "6", "--method", "pca", "--dtype", dtype, "--quiet"]) == 0
        fig = _drawn_figure(monkeypatch, str(tmp_path / f"{dtype}.zarr"), "--out",
                            str(tmp_path / f"{dtype}.png"), "--per-class", "2")
        drawn[dtype] = {ax.get_title(): np.asarray(ax.get_images()[0].get_array())
                        for ax in fig.axes if ax.get_title() and ax.get_images()}
    assert drawn["uint8"].keys() == drawn["float32"].keys()
    for title, image in drawn["float32"].items():
        if title.endswith("raw") or title.startswith("mean"):
            assert image.max() <= 1.0
            np.testing.assert_allclose(drawn["uint8"][title], image, atol=1 / 255,
                                       err_msg=title)


def _shown_topics(tmp_path, tiny_bert_dir, monkeypatch, classes, *show_options):
    """The figure `fastimg show` draws of a store of 20 short texts per class."""
    rng = np.random.default_rng(3)
    with open(tmp_path / "topics.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("text", "label"))
        for i in range(20 * len(classes)):
            writer.writerow((" ".join(rng.choice(TINY_WORDS, 8)), classes[i % len(classes)]))
    assert main(["build-dataset", "--input", str(tmp_path / "topics.csv"), "--model",
                 str(tiny_bert_dir), "--method", "pca", "--max-length", "16", "--pixels", "8",
                 "--quiet", "--out", str(tmp_path / "t.zarr")]) == 0
    return _drawn_figure(monkeypatch, str(tmp_path / "t.zarr"), "--out", str(tmp_path / "t.png"),
                         *show_options)


def test_show_of_many_classes_wraps_their_means_to_the_samples_width(tmp_path, tiny_bert_dir,
                                                                     monkeypatch):
    """The means of every class sat in one row, so 20 classes drew 42 x 21 axes, most
    empty."""
    classes = [f"topic{i}" for i in range(8)]
    fig = _shown_topics(tmp_path, tiny_bert_dir, monkeypatch, classes, "--per-class", "2")
    grids = {ax.get_subplotspec().get_topmost_subplotspec().get_gridspec() for ax in fig.axes
             if ax.get_subplotspec() is not None}
    assert len(grids) == 1
    grid = grids.pop()
    assert (grid.nrows, grid.ncols) == (2 * 8 + 3 + 1, 3)  # 9 panels of means in 3 rows
    titles = [ax.get_title() for ax in fig.axes]
    assert all(f"mean {name}" in titles for name in classes)
    assert "spread of the 8 class means (std)" in titles


def test_show_of_three_classes_draws_the_spread_of_their_means_below_its_title(
        tmp_path, tiny_bert_dir, monkeypatch):
    fig = _shown_topics(tmp_path, tiny_bert_dir, monkeypatch, ("World", "Sports", "Tech"))
    titles = [ax.get_title() for ax in fig.axes]
    assert "spread of the 3 class means (std)" in titles
    assert "spread of the 3 class means (std) / pixel std" in titles
    assert not any(" - mean " in t for t in titles)  # no difference of two of the three
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    title_bottom = fig._suptitle.get_window_extent(renderer).y0
    assert all(ax.title.get_window_extent(renderer).y1 <= title_bottom for ax in fig.axes
               if ax.get_title())


def test_show_names_the_classes_of_a_store_a_class_has_no_rows_in(tmp_path, tiny_bert_dir,
                                                                   monkeypatch):
    """--limit sampled no row of the rare class 'apple': its name went to the samples and the
    mean of 'banana', and 'banana' to those of 'cherry'."""
    rng = np.random.default_rng(4)
    with open(tmp_path / "fruit.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("text", "label"))
        writer.writerow(("the film", "apple"))
        for i in range(40):
            writer.writerow((" ".join(rng.choice(TINY_WORDS, 8)), ("banana", "cherry")[i % 2]))
    assert main(["build-dataset", "--input", str(tmp_path / "fruit.csv"), "--model",
                 str(tiny_bert_dir), "--method", "pca", "--max-length", "16", "--pixels", "8",
                 "--limit", "12", "--quiet", "--out", str(tmp_path / "f.zarr")]) == 0
    reader = store.StoreReader(tmp_path / "f.zarr")
    names, targets = reader.class_names, reader.targets()
    assert names == ["apple", "banana", "cherry"] and 0 not in targets
    fig = _drawn_figure(monkeypatch, str(tmp_path / "f.zarr"), "--out", str(tmp_path / "f.png"),
                        "--per-class", "2")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    samples = [re.fullmatch(r"(\w+) #(\d+) raw", t) for t in titles]
    samples = [(m[1], int(m[2])) for m in samples if m]
    assert len(samples) == 4
    assert all(names[targets[row]] == name for name, row in samples)
    assert "mean banana" in titles and "mean cherry" in titles and "mean apple" not in titles
    assert "mean cherry - mean banana" in titles


def test_show_draws_as_many_samples_as_the_largest_class_has(built, tmp_path, monkeypatch):
    """--per-class beyond the rows of every class made that many columns of axes (100,000
    of them never finished drawing); past show.MAX_PER_CLASS it is refused."""
    path, _ = built
    labels = store.StoreReader(path).labels()
    fig = _drawn_figure(monkeypatch, str(path), "--out", str(tmp_path / "s.png"),
                        "--per-class", str(show.MAX_PER_CLASS))
    grid = fig.axes[0].get_subplotspec().get_topmost_subplotspec().get_gridspec()
    assert grid.ncols == min(max(np.bincount(labels)), show.MAX_PER_CLASS)
    drawn = show._class_rows(np.array([0, 0, 0, 1, 2, 2]), show.MAX_PER_CLASS, seed=0)
    assert {value: rows.tolist() for value, rows in drawn.items()} == {
        0: [0, 1, 2], 1: [3], 2: [4, 5]}  # what each class has
    with pytest.raises(ValueError, match=f"at most {show.MAX_PER_CLASS}"):
        show.show_store(path, tmp_path / "t.png", n_per_class=show.MAX_PER_CLASS + 1)


@pytest.mark.parametrize("suffix", ["png", "pdf", "svg"])
def test_show_writes_the_same_bytes_twice(built, tmp_path, monkeypatch, suffix):
    """matplotlib dates PDF and SVG files and salts SVG ids at random: two runs differed."""
    path, _ = built
    files = [tmp_path / f"{name}.{suffix}" for name in "ab"]
    for out, when in zip(files, ("1000000000", "2000000000")):  # two runs, years apart
        monkeypatch.setenv("SOURCE_DATE_EPOCH", when)
        assert main(["show", str(path), "--out", str(out), "--per-class", "1"]) == 0
    assert files[0].read_bytes() == files[1].read_bytes()


def test_show_makes_the_missing_folders_of_its_out(built, tmp_path):
    """show refused an --out in a folder that did not exist, where predict, train and explain
    make theirs."""
    out = tmp_path / "figures" / "new" / "store.png"
    assert main(["show", str(built[0]), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_refuses_an_out_inside_a_store(built, capsys):
    """A drawing written inside a store was counted in its size by info and deleted without
    a word by its next --force rebuild."""
    path, _ = built
    out = path / "samples.png"
    assert main(["show", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"lies inside the store {path}" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_show_cut_short_keeps_the_file_it_was_replacing(built, tmp_path, monkeypatch):
    """Ctrl-C while show wrote a large SVG left its first half under the name of the good file
    it was replacing."""
    import matplotlib.figure

    path, _ = built
    out = tmp_path / "s.svg"
    out.write_bytes(b"<svg>the figure of an earlier run</svg>")

    def cut_short(fig, target, **kwargs):
        with open(target, "wb") as fh:
            fh.write(b"<svg><g>")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", cut_short)
    with pytest.raises(KeyboardInterrupt):
        show.show_store(path, out, n_per_class=1)
    assert out.read_bytes() == b"<svg>the figure of an earlier run</svg>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.svg"]


def test_counts_per_class_follow_the_class_order_past_nine_classes(tmp_path, tiny_bert_dir,
                                                                   capsys):
    """Integer labels 1, 2 and 10: the store's attrs keep their keys sorted as text ('10'
    before '2', test before train), and the build line, which gives the counts without
    names, gave class 2's count as class 10's (and info listed class 10 second)."""
    rng = np.random.default_rng(7)
    with open(tmp_path / "r.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("text", "label"))
        for label, n in ((1, 8), (2, 16), (10, 32)):
            writer.writerows((" ".join(rng.choice(TINY_WORDS, 6)), label) for _ in range(n))
    capsys.readouterr()
    assert main(["build-dataset", "--input", str(tmp_path / "r.csv"), "--model",
                 str(tiny_bert_dir), "--method", "pca", "--max-length", "16", "--pixels", "8",
                 "--val-fraction", "0.25", "--quiet", "--out", str(tmp_path / "r.zarr")]) == 0
    assert "3 classes (1, 2, 10; train 6/12/24; val 2/4/8)" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "r.zarr")]) == 0
    info = capsys.readouterr().out
    assert re.search(r"^  train +42 rows  \(1 6, 2 12, 10 24\)$", info, flags=re.M), info
