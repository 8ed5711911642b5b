"""fastimg predict / load_run: a run folder predicts new texts on its own."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
import zarr

from conftest import one_line, tiny_reviews
from conftest import write_csv as _write_csv
from fastimg.cli import main
from fastimg.layout import DeepInsightLayout
from fastimg.train import TrainConfig, fit, load_run
from fastimg.train import extractors as extractors_module
from fastimg.run_folder import BUNDLE_FILE
from fastimg.train.bundle import BUNDLE_KEYS, RunBundleError
from fastimg.store import ATTRS_KEY, StoreReader
from fastimg.train.data import ChunkedReader, Normaliser, StoreData, pixel_stats

FAST = dict(weights=None, epochs=2, batch_size=16, progress=False, loader="torch",
            head_channels=(8, 8, 8, 8), hidden=(16, 8), probe=False)


def _reviews(n, seed=0):
    return tiny_reviews(n, seed=seed, labels=("neg", "pos"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir):
    """A tiny text store, a run trained on it, and the run's own model's view of new texts."""
    from fastimg.corpus import CorpusConfig
    from fastimg.dataset import build_dataset, texts_to_images
    from fastimg.embed import EncoderConfig
    from fastimg.layout import LayoutConfig

    root = tmp_path_factory.mktemp("predict")
    corpus = _write_csv(root / "reviews.csv", _reviews(64))
    store_path = root / "tiny.zarr"
    build_dataset(store_path, CorpusConfig(input=str(corpus), split="random", seed=0),
                  EncoderConfig(model=str(tiny_bert_dir), max_length=32),
                  LayoutConfig(grid=(24, 24), method="pca", random_state=0), progress=False)
    run_dir = root / "run"
    result = fit(store_path, TrainConfig(**FAST), out_dir=run_dir)
    texts = [t for _, t, _ in _reviews(12, seed=5)]
    images = texts_to_images(store_path, texts)
    # the store keeps float16 images: the training loader saw them rounded so
    images = images.astype(np.float16).astype(np.float32)
    reader = StoreReader(store_path)
    stats = pixel_stats(ChunkedReader(reader.images), reader.rows("train"))
    with torch.no_grad():
        x = Normaliser("dataset", *stats)(torch.from_numpy(images))
        expected = torch.softmax(result.model.cpu()(x).float(), 1).numpy()
    return {"store": store_path, "run": run_dir, "texts": texts, "expected": expected,
            "root": root, "result": result}


def _copy_run(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    return run


def test_a_predictions_repr_is_short_whatever_the_number_of_texts():
    # the dataclass's repr listed every name, and numpy every probability up to 1,000
    from fastimg.train.predict import Prediction

    n = 5000
    indices = np.arange(n) % 2
    pred = Prediction(indices, [["neg", "pos"][i] for i in indices],
                      np.full((n, 2), 0.5, np.float32), ["neg", "pos"])
    assert repr(pred) == ("Prediction(5000 rows, names=['neg', 'pos', 'neg', ..., 'pos', "
                          "'neg', 'pos'], probabilities=<float32 (5000, 2)>, "
                          "class_names=['neg', 'pos'])")
    two = Prediction(indices[:2], ["neg", "pos"], np.zeros((2, 2), np.float32), ["neg", "pos"])
    assert "names=['neg', 'pos']," in repr(two)


def test_a_run_predicts_as_its_model_did_after_the_store_is_gone(trained, tmp_path):
    run_dir = _copy_run(trained, tmp_path)
    moved = tmp_path / "elsewhere.zarr"
    shutil.copytree(trained["store"], moved)
    bundle = json.loads((run_dir / BUNDLE_FILE).read_text())
    bundle["store"] = str(tmp_path / "gone.zarr")
    (run_dir / BUNDLE_FILE).write_text(json.dumps(bundle))
    run = load_run(run_dir)
    pred = run.predict(trained["texts"])
    np.testing.assert_allclose(pred.probabilities, trained["expected"], atol=1e-5)
    assert pred.probabilities.shape == (12, 2)
    np.testing.assert_allclose(pred.probabilities.sum(1), 1.0, atol=1e-5)
    assert pred.names == [["neg", "pos"][i] for i in pred.probabilities.argmax(1)]
    assert pred.class_names == ["neg", "pos"]
    none = run.predict(iter([]))  # an empty last batch of a caller's loop
    assert none.probabilities.shape == (0, 2) and none.indices.shape == (0,)
    assert none.names == [] and none.class_names == ["neg", "pos"]


def test_uint8_images_are_read_in_zero_to_one_as_the_trainer_read_them(trained):
    """predict_images took the uint8 images of a --dtype uint8 store as 0..255, where the
    trainer (and predict's own route) read them back in [0, 1]: other predictions, no error."""
    run = load_run(trained["run"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, *run.image_shape), dtype=np.uint8)
    expected = run.predict_images(images.astype(np.float32) / np.float32(255))
    got = run.predict_images(images)
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-6)


def test_what_is_no_run_folder_path_or_no_texts_is_named(trained):
    """load_run(a Run) failed in pathlib ("expected str, bytes or os.PathLike object, not
    Run"), naming no argument; predict({"a": 1}) predicted its keys."""
    run = load_run(trained["run"])
    with pytest.raises(TypeError, match=r"^run_dir is a run folder's path, got a Run: pass "
                                        r"its run_dir"):
        load_run(run)
    with pytest.raises(TypeError, match=r"^run_dir is a run folder's path, got int$"):
        load_run(3)
    with pytest.raises(TypeError, match=r"^texts must be a sequence of str, got a dict"):
        run.predict({"a quiet film": 1})


def test_images_with_nan_or_infinite_values_are_refused(trained):
    """predict_images gave NaN probabilities and still named a class (argmax of NaN) for
    images holding NaN or inf, where the layout's transform refuses such values."""
    run = load_run(trained["run"])
    images = np.zeros((3, *run.image_shape), np.float32)
    for bad in (np.nan, np.inf):
        images[1, 2, 3] = bad
        with pytest.raises(ValueError, match=r"^the image array contains NaN or infinite values "
                                             r"\(rows \[1\]\)"):
            run.predict_images(images)


def test_no_images_give_no_predictions_as_no_texts_do(trained):
    # predict([]) gave an empty Prediction, predict_images of no images numpy's "cannot
    # reshape array of size 0 into shape (0,newaxis)"
    run = load_run(trained["run"])
    for prediction in (run.predict([]),
                       run.predict_images(np.zeros((0, *run.image_shape), np.float32))):
        assert prediction.indices.shape == (0,) and prediction.names == []
        assert prediction.probabilities.shape == (0, len(run.class_names))


def test_embeddings_that_do_not_fit_a_fused_run_are_refused_in_one_line(trained, tmp_path):
    """A fused run given too few embedding rows, or rows of another width, failed inside the
    model with torch's "Sizes of tensors must match" or "running_mean should contain 10
    elements"; logits() without them with "'NoneType' object is not subscriptable"."""
    fit(trained["store"], TrainConfig(**FAST, fuse_embedding=True), out_dir=tmp_path / "run")
    run = load_run(tmp_path / "run")
    reader = StoreReader(trained["store"])
    images, embeddings = np.asarray(reader.images[:5]), np.asarray(reader.embeddings[:5])
    assert run.predict_images(images, embeddings).probabilities.shape == (5, 2)
    width = embeddings.shape[1]
    for bad in (embeddings[:3], embeddings[:, :10]):
        with pytest.raises(ValueError, match=rf"embeddings of shape .*{width} features.*"
                                             rf"\(5, {width}\)"):
            run.predict_images(images, bad)
    with pytest.raises(ValueError, match="give the embeddings too"):
        run.logits(images)


def test_predict_shows_the_classifier_pass_too(trained, capsys):
    """Classifying 100,000 texts took 27 of predict's 37 s with no bar on screen."""
    run = load_run(trained["run"])
    capsys.readouterr()
    quiet = run.predict(trained["texts"], batch_size=5)
    assert "classify" not in capsys.readouterr().err
    shown = run.predict(trained["texts"], batch_size=5, progress=True)
    assert "classify" in capsys.readouterr().err
    np.testing.assert_array_equal(shown.probabilities, quiet.probabilities)


def test_a_run_loads_its_encoder_once_for_every_call(trained, monkeypatch):
    """Each predict call loaded the encoder again (seconds for bert-base), so a caller
    predicting in a loop paid it every time; the answers do not change."""
    import fastimg.embed
    import fastimg.embed.encoder

    loads = []
    real = fastimg.embed.load_model

    def counted(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    for module in (fastimg.embed, fastimg.embed.encoder):  # the run's loader, the encoder's
        monkeypatch.setattr(module, "load_model", counted)
    run = load_run(trained["run"])
    first = run.predict(trained["texts"][:5])
    second = run.predict(trained["texts"][:5])
    assert len(loads) == 1
    np.testing.assert_array_equal(second.probabilities, first.probabilities)
    np.testing.assert_allclose(first.probabilities, trained["expected"][:5], atol=1e-5)


def test_predict_makes_its_images_a_block_at_a_time(trained, monkeypatch):
    """Images of 100,000 texts were made at once (1 GB at 50 x 50): blocks of whole batches
    give the same probabilities."""
    from fastimg.train import predict as predict_mod

    run = load_run(trained["run"])
    whole = run.predict(trained["texts"], batch_size=3)
    made = []
    images_of = predict_mod.Run.images_of
    monkeypatch.setattr(predict_mod.Run, "images_of",
                        lambda self, f: made.append(len(f)) or images_of(self, f))
    monkeypatch.setattr(predict_mod, "PREDICT_BLOCK_ROWS", 7)  # blocks of 2 batches of 3
    blocks = run.predict(trained["texts"], batch_size=3)
    assert made == [6, 6]
    np.testing.assert_array_equal(blocks.probabilities, whole.probabilities)
    assert blocks.names == whole.names


def test_predict_classifies_each_block_before_encoding_the_rest(trained, monkeypatch):
    """All the texts were encoded before any was classified (0.46 GB of embeddings per 100,000
    texts): each block is classified as soon as its texts are encoded."""
    import dataclasses

    from fastimg.train import predict as predict_mod

    run = load_run(trained["run"])
    whole = run.predict(trained["texts"], batch_size=3)
    events = []
    encoder_config, encode_chunks = predict_mod.Run.encoder_config, predict_mod.Run.encode_chunks
    images_of = predict_mod.Run.images_of
    monkeypatch.setattr(predict_mod.Run, "encoder_config", lambda self: dataclasses.replace(
        encoder_config(self), chunk_rows=4))

    def chunks(self, texts, **kwargs):
        for start, stop, features in encode_chunks(self, texts, **kwargs):
            events.append(("encoded", stop))
            yield start, stop, features

    monkeypatch.setattr(predict_mod.Run, "encode_chunks", chunks)
    monkeypatch.setattr(predict_mod.Run, "images_of",
                        lambda self, f: events.append(("images", len(f))) or images_of(self, f))
    monkeypatch.setattr(predict_mod, "PREDICT_BLOCK_ROWS", 3)
    streamed = run.predict(trained["texts"], batch_size=3)
    assert events == [("encoded", 4), ("images", 3), ("encoded", 8), ("images", 3),
                      ("encoded", 12), ("images", 3), ("images", 3)]
    np.testing.assert_allclose(streamed.probabilities, whole.probabilities, atol=1e-6)
    assert streamed.names == whole.names


def test_an_encoder_that_stops_short_is_not_read_as_predictions(trained, monkeypatch):
    """Rows the encoder never gave would have been classified from uninitialised logits."""
    import dataclasses

    from fastimg.train import predict as predict_mod

    run = load_run(trained["run"])
    encoder_config, encode_chunks = predict_mod.Run.encoder_config, predict_mod.Run.encode_chunks

    def first_chunk_only(self, texts, **kwargs):
        chunks = encode_chunks(self, texts, **kwargs)
        yield next(chunks)

    monkeypatch.setattr(predict_mod.Run, "encoder_config", lambda self: dataclasses.replace(
        encoder_config(self), chunk_rows=4))
    monkeypatch.setattr(predict_mod.Run, "encode_chunks", first_chunk_only)
    with pytest.raises(RuntimeError, match="the encoder gave 4 of 12 embeddings"):
        run.predict(trained["texts"], batch_size=2)


def test_the_bundle_is_json_and_holds_what_prediction_needs(trained):
    bundle = json.loads((trained["run"] / BUNDLE_FILE).read_text())
    assert bundle["class_names"] == ["neg", "pos"]
    assert list(bundle["layout"]["config"]["grid"]) == [24, 24]
    assert len(bundle["layout"]["pixel_index"]) == 6 * 32
    assert bundle["encoder"]["max_length"] == 32
    assert bundle["model_fingerprint"] and bundle["hidden_size"] == 32
    assert len(bundle["layers"]) == 6 and bundle["n_features"] == 6 * 32
    with np.load(trained["run"] / "normaliser.npz", allow_pickle=False) as f:
        assert f["mean"].shape == (24, 24) and f["inv_std"].shape == (24, 24)
    assert bundle["text_columns"] == ["text"]  # the columns the store's texts came from
    assert bundle["class_values"] is None  # text labels: matched by name
    assert sorted(bundle) == sorted((*BUNDLE_KEYS, "sha256", "text_columns", "class_values"))
    assert sorted(bundle["sha256"]) == ["best.pt", "normaliser.npz"]


@pytest.mark.parametrize("edit,message", [
    (lambda b: b.pop("train_config"), "lacks train_config"),
    (lambda b: [b.pop("layout"), b.pop("encoder")], "lacks encoder, layout"),
    # a run saved before batch_size 1 was refused (it trained nothing)
    (lambda b: b["train_config"].update(batch_size=1),
     "training settings are refused (--batch-size must"),
    (lambda b: b["train_config"].update(colour="red"),
     "training settings are refused (unknown TrainConfig"),
])
def test_a_bundle_missing_keys_is_named_in_one_line(trained, tmp_path, capsys, edit, message):
    run_dir = _copy_run(trained, tmp_path)
    bundle = json.loads((run_dir / BUNDLE_FILE).read_text())
    edit(bundle)
    (run_dir / BUNDLE_FILE).write_text(json.dumps(bundle))
    code = main(["predict", str(run_dir), "--input", "-", "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err, err


def test_imagenet_weights_are_never_fetched_to_reload(trained, tmp_path, monkeypatch):
    """best.pt holds the whole classifier: a run trained with weights=DEFAULT reloads offline."""
    run_dir = _copy_run(trained, tmp_path)
    bundle = json.loads((run_dir / BUNDLE_FILE).read_text())
    bundle["train_config"]["weights"] = "DEFAULT"
    (run_dir / BUNDLE_FILE).write_text(json.dumps(bundle))

    real = extractors_module.resolve_weights

    def no_download(name, weights, **kw):
        assert weights is None, "reloading a run must not look for ImageNet weights"
        return real(name, weights, **kw)

    monkeypatch.setattr(extractors_module, "resolve_weights", no_download)
    run = load_run(run_dir)
    state = torch.load(run_dir / "best.pt", weights_only=True)
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    np.testing.assert_allclose(run.predict(trained["texts"]).probabilities, trained["expected"],
                               atol=1e-5)


def test_a_model_fingerprint_mismatch_is_refused_in_one_line(trained, tmp_path, capsys):
    run_dir = _copy_run(trained, tmp_path)
    bundle = json.loads((run_dir / BUNDLE_FILE).read_text())
    bundle["model_fingerprint"] = "0" * 64
    (run_dir / BUNDLE_FILE).write_text(json.dumps(bundle))
    with pytest.raises(RunBundleError, match="fingerprint"):
        load_run(run_dir).predict(["a film"])
    corpus = _write_csv(tmp_path / "new.csv", _reviews(3))
    code = main(["predict", str(run_dir), "--input", str(corpus), "--out",
                 str(tmp_path / "p.csv")])  # with progress bars: none is drawn before the error
    err = capsys.readouterr().err
    assert code == 2 and "fingerprint" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p.csv").exists()


def test_an_encoder_folder_moved_since_training_is_named_with_model(trained, tmp_path,
                                                                     tiny_bert_dir, capsys):
    """The run records the folder the store was encoded from; once the folder moved, the
    error said 'give a local folder' and predict had no way to take one."""
    run_dir = _copy_run(trained, tmp_path)
    moved = tmp_path / "my-bert"
    shutil.copytree(tiny_bert_dir, moved)
    bundle = json.loads((run_dir / BUNDLE_FILE).read_text())
    bundle["encoder"]["model"] = str(tmp_path / "gone")
    (run_dir / BUNDLE_FILE).write_text(json.dumps(bundle))
    with pytest.raises(OSError, match=r"gone .*does not exist.*moved\? predict --model"):
        load_run(run_dir).predict(["a film"])
    pred = load_run(run_dir, model=moved).predict(trained["texts"])
    np.testing.assert_allclose(pred.probabilities, trained["expected"], atol=1e-5)
    corpus = _write_csv(tmp_path / "new.csv", _reviews(3))
    out = tmp_path / "p.csv"
    assert main(["predict", str(run_dir), "--input", str(corpus), "--out", str(out), "--quiet",
                 "--model", str(moved)]) == 0
    assert len(out.read_text().splitlines()) == 4
    # other weights are refused as before
    other = tmp_path / "other"
    shutil.copytree(tiny_bert_dir, other)
    (other / "config.json").write_text((other / "config.json").read_text() + "\n")
    assert main(["predict", str(run_dir), "--input", str(corpus), "--out", str(out), "--quiet",
                 "--model", str(other)]) == 2
    assert "fingerprint" in capsys.readouterr().err


def test_a_run_folder_given_as_the_encoder_is_named_so(trained, tmp_path, capsys):
    """``predict RUN --model RUN`` fingerprinted the run's config.json as an encoder's and
    said the weights differ: 'install the same model weights'."""
    corpus = _write_csv(tmp_path / "new.csv", _reviews(3))
    code = main(["predict", str(trained["run"]), "--input", str(corpus), "--out",
                 str(tmp_path / "p.csv"), "--quiet", "--model", str(trained["run"])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{trained['run']} is a fastimg training run, not an encoder" in err, err
    assert "fingerprint" not in err and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("missing", [BUNDLE_FILE, "best.pt", "normaliser.npz"])
def test_a_run_without_its_bundle_is_refused(trained, tmp_path, missing, capsys):
    run_dir = _copy_run(trained, tmp_path)
    (run_dir / missing).unlink()
    with pytest.raises(RunBundleError, match=missing):
        load_run(run_dir)
    code = main(["predict", str(run_dir), "--input", "-", "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 2 and missing in err and len(err.strip().splitlines()) == 1


def test_a_store_or_a_folder_of_runs_given_as_the_run_is_named_so(trained, tmp_path, capsys):
    """predict and explain on a store (or a folder of runs) said it had no bundle.json, "a
    run from an older fastimg, or not a run folder: train it again"; info on a folder of runs
    that it was not a store."""
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        shutil.copytree(trained["run"], runs / name)
    store_path = trained["store"]
    expected = {
        store_path: f"{store_path} is a fastimg store, not a training run folder: train a run "
                    f"on it (`fastimg train {store_path} --out RUN`, or fit(store, "
                    f"out_dir=RUN))",
        store_path / "images": f"{store_path / 'images'} lies inside the fastimg store "
                               f"{store_path}, not a training run folder",
        runs: f"{runs} holds training run folders (a, b), not a run: give one of them"}
    for given, message in expected.items():
        with pytest.raises(RunBundleError, match=re.escape(message)):
            load_run(given)
        for command in (["predict", str(given), "--input", "-", "--out", str(tmp_path / "p")],
                        ["explain", str(given), "--out", str(tmp_path / "e")]):
            assert main(command) == 2
            assert capsys.readouterr().err.strip() == f"fastimg {command[0]}: error: {message}"
    assert main(["info", str(runs)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fastimg info: error: {runs} is not a fastimg store: it holds training run folders "
        f"(a, b); `fastimg info {runs}/*` shows them side by side")


@pytest.mark.parametrize("rewritten", ["best.pt", "normaliser.npz"])
def test_files_of_another_run_beside_the_bundle_are_refused(trained, tmp_path, capsys,
                                                            rewritten):
    """What predict reads while a train --force rewrites the run: its earlier bundle.json
    with the new best.pt (or normaliser.npz). Both load; the predictions would be wrong."""
    run_dir = _copy_run(trained, tmp_path)
    path = run_dir / rewritten
    if rewritten == "best.pt":
        state = torch.load(path, weights_only=True)
        torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, path)
    else:
        with np.load(path) as f:
            np.savez(path, mean=f["mean"] + 1, inv_std=f["inv_std"])
    with pytest.raises(RunBundleError, match=f"{path} is not the file bundle.json was written "
                                             f"with"):
        load_run(run_dir)
    code = main(["predict", str(run_dir), "--input", "-", "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "a train rewrote the run while it was read" in err


@pytest.mark.parametrize("failing", ["normaliser.npz", "bundle.json"])
def test_a_bundle_write_cut_short_leaves_the_earlier_files_whole(trained, tmp_path, monkeypatch,
                                                                 failing):
    """bundle.json and normaliser.npz were written in place: a write cut short (a full disk,
    a kill) left half a file under the name predict reads."""
    from fastimg.train import bundle as bundle_mod

    run_dir = _copy_run(trained, tmp_path)
    before = {name: (run_dir / name).read_bytes() for name in ("bundle.json", "normaliser.npz")}

    def cut_short(file, *args, **kwargs):
        with open(file, "wb") if not hasattr(file, "write") else contextlib.nullcontext(
                file) as fh:
            fh.write(b"half")
        raise OSError(28, "No space left on device")

    if failing == "normaliser.npz":
        monkeypatch.setattr(bundle_mod.np, "savez", cut_short)
    else:
        monkeypatch.setattr(bundle_mod.Path, "write_text", lambda path, text, **kw: cut_short(
            path))
    data = StoreData(trained["store"])
    normaliser = Normaliser("dataset", *pixel_stats(ChunkedReader(data.images),
                                                    data.rows("train")))
    with pytest.raises(OSError, match="No space left"):
        bundle_mod.save_run_bundle(run_dir, data, normaliser, TrainConfig(**FAST))
    monkeypatch.undo()
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        p.name for p in trained["run"].iterdir())  # no temporary file left
    load_run(run_dir)


@pytest.mark.parametrize("state", ["bundle gone", "checkpoint rewritten"])
def test_a_run_being_rewritten_by_a_train_is_named_so(trained, tmp_path, capsys, state):
    """While train --force writes a run, predict found its files missing or mismatched and
    said the run came from an older fastimg, or from another run."""
    from fastimg import store

    run_dir = _copy_run(trained, tmp_path)
    if state == "bundle gone":
        (run_dir / BUNDLE_FILE).unlink()
    else:
        (run_dir / "best.pt").write_bytes((run_dir / "best.pt").read_bytes() + b"\0")
    with store.build_lock(run_dir):  # what the train writing the folder holds
        code = main(["predict", str(run_dir), "--input", "-", "--out",
                     str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert f"{run_dir} is being written by a train (process {os.getpid()} on " in err
    code = main(["predict", str(run_dir), "--input", "-", "--out", str(tmp_path / "p.csv")])
    assert code == 2 and "being written" not in capsys.readouterr().err  # lock let go


def _corrupt(path, how):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif how == "text":
        path.write_text("not a checkpoint\n")
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "text", "empty"])
def test_a_corrupt_checkpoint_is_named_in_one_line(trained, tmp_path, capsys, how):
    run_dir = _copy_run(trained, tmp_path)
    _corrupt(run_dir / "best.pt", how)
    with pytest.raises(RunBundleError, match=f"{run_dir / 'best.pt'} is unreadable "
                                             r"\(truncated or corrupt\?"):
        load_run(run_dir)
    corpus = _write_csv(tmp_path / "x.csv", _reviews(3))
    code = main(["predict", str(run_dir), "--input", str(corpus), "--out",
                 str(tmp_path / "p.csv"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "internal error" not in err and "\n" not in err, err
    assert f"{run_dir / 'best.pt'} is unreadable" in err and "weights_only" not in err


@pytest.mark.parametrize("how", ["truncated", "text", "empty", "other arrays"])
def test_a_corrupt_normaliser_is_named_in_one_line(trained, tmp_path, capsys, how):
    run_dir = _copy_run(trained, tmp_path)
    npz = run_dir / "normaliser.npz"
    if how == "other arrays":
        np.savez(npz, mean=np.zeros((3, 3), np.float32), inv_std=np.ones((3, 3), np.float32))
    else:
        _corrupt(npz, how)
    with pytest.raises(RunBundleError, match=str(npz)):
        load_run(run_dir)
    code = main(["predict", str(run_dir), "--input", "-", "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "internal error" not in err and "\n" not in err, err
    assert str(npz) in err and "allow_pickle" not in err and "pickle.load" not in err, err
    assert ("is unreadable" in err) if how != "other arrays" else "of shape" in err


def test_what_a_notebook_shows_of_the_library_objects_is_short(trained):
    """The reprs a notebook prints of what the library returns: a TrainResult printed the
    model's layers and every epoch's metrics (thousands of characters); a StoreReader, a
    layout and a Run printed ``<... object at 0x...>``; an Explanation its arrays."""
    result = trained["result"]
    text = repr(result)
    assert len(text) < 400 and "best_epoch=" in text and "test_accuracy=" in text
    assert "Conv2d" not in text and "train_loss" not in text
    reader = StoreReader(trained["store"])
    assert repr(reader) == (f"StoreReader({str(trained['store'])!r}, kind='dataset', rows=64, "
                            f"image_shape=(24, 24), classes=['neg', 'pos'])")
    layout = reader.layout()
    assert repr(layout) == (f"DeepInsightLayout(grid=(24, 24), method='pca', scaling='norm2', "
                            f"fitted: {layout.n_features} features on "
                            f"{layout.n_occupied_pixels} pixels)")
    assert repr(DeepInsightLayout(grid=8)).endswith("scaling='norm2', not fitted)")
    run = load_run(trained["run"])
    assert repr(run) == (f"Run({str(trained['run'])!r}, extractor='alexnet', "
                         f"classes=['neg', 'pos'], image_shape=(24, 24), device='cpu')")
    pytest.importorskip("captum")
    from fastimg.train.explain import explain

    shown = repr(explain(trained["run"], max_rows=4))
    assert len(shown) < 600 and "method='integrated_gradients'" in shown


def test_explain_loads_the_run_the_same_way(trained, tmp_path):
    from fastimg.train.explain import explain

    run_dir = _copy_run(trained, tmp_path)
    _corrupt(run_dir / "best.pt", "truncated")
    with pytest.raises(RunBundleError, match="best.pt is unreadable"):
        explain(run_dir)


def test_cli_predicts_a_csv_with_ids_and_probabilities(trained, tmp_path, capsys):
    rows = [(f"x{i}", t, "") for i, t in enumerate(trained["texts"])]
    corpus = _write_csv(tmp_path / "new.csv", rows, ("key", "body", "label"))
    out = tmp_path / "preds.csv"
    code = main(["predict", str(trained["run"]), "--input", str(corpus), "--text-column", "body",
                 "--id-column", "key", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    with open(out, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["id", "predicted", "p_neg", "p_pos"]
    assert [r["id"] for r in table] == [f"x{i}" for i in range(12)]
    probs = np.array([[float(r["p_neg"]), float(r["p_pos"])] for r in table])
    np.testing.assert_allclose(probs, trained["expected"], atol=1e-5)
    assert [r["predicted"] for r in table] == [["neg", "pos"][i] for i in probs.argmax(1)]


def test_a_batch_size_below_one_is_refused_before_encoding(trained, tmp_path, capsys,
                                                            monkeypatch):
    from fastimg.train import predict as predict_mod

    monkeypatch.setattr(predict_mod.Run, "encode_chunks",
                        lambda *a, **k: pytest.fail("encoded before checking the batch size"))
    monkeypatch.setattr("sys.stdin", io.StringIO("a film\n"))
    out = tmp_path / "preds.csv"
    code = main(["predict", str(trained["run"]), "--input", "-", "--out", str(out),
                 "--batch-size", "0", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--batch-size must be a whole number >= 1, got 0" in err, err
    assert not out.exists()


def test_cli_reads_texts_from_stdin(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(trained["texts"][:3]) + "\n\n"))
    out = tmp_path / "preds.csv"
    assert main(["predict", str(trained["run"]), "--input", "-", "--out", str(out),
                 "--quiet"]) == 0
    with open(out, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [r["id"] for r in table] == ["0", "1", "2"]
    np.testing.assert_allclose([float(r["p_pos"]) for r in table], trained["expected"][:3, 1],
                               atol=1e-5)


@pytest.mark.parametrize("flag", ["--text-column", "--id-column", "--label-column"])
def test_column_flags_with_stdin_are_refused_not_ignored(trained, tmp_path, monkeypatch,
                                                         capsys, flag):
    """With --input - the column flags were ignored: a CSV piped in with --text-column review
    was classified line by line, its header line included, with exit code 0."""
    from fastimg.train import predict as predict_mod

    monkeypatch.setattr(predict_mod.Run, "encode_chunks",
                        lambda *a, **k: pytest.fail("encoded stdin's lines"))
    monkeypatch.setattr("sys.stdin", io.StringIO("id,review\n1,a good film\n"))
    out = tmp_path / "preds.csv"
    code = main(["predict", str(trained["run"]), "--input", "-", flag, "review", "--out",
                 str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and flag in err, err
    assert not out.exists()


def test_predict_reads_the_text_columns_the_store_was_built_from(trained, tmp_path, capsys):
    """--text-column defaulted to text, whatever columns the store's texts came from: a run
    of a title + body store predicted on a table of titles and bodies needed both flags
    again, and without them was refused for a missing 'text' column."""
    run = _copy_run(trained, tmp_path)
    bundle = json.loads((run / BUNDLE_FILE).read_text())
    bundle["text_columns"] = ["title", "body"]
    (run / BUNDLE_FILE).write_text(json.dumps(bundle))
    rows = [(f"x{i}", t[:20], t[20:]) for i, t in enumerate(trained["texts"])]
    corpus = _write_csv(tmp_path / "new.csv", rows, ("id", "title", "body"))
    for given in ([], ["--text-column", "title", "--text-column", "body"]):
        assert main(["predict", str(run), "--input", str(corpus), *given, "--out",
                     str(tmp_path / f"p{len(given)}.csv"), "--quiet"]) == 0
    assert (tmp_path / "p0.csv").read_bytes() == (tmp_path / "p4.csv").read_bytes()
    texts = _write_csv(tmp_path / "texts.csv", _reviews(3))
    assert main(["predict", str(run), "--input", str(texts), "--out",
                 str(tmp_path / "p.csv")]) == 2
    err = one_line(capsys.readouterr().err)
    assert ("has no column 'title' (columns: 'id', 'text', 'label'); without --text-column the "
            "texts are read from the columns the run's store was built from (title, body): "
            "give --text-column for another") in err


def test_cli_names_the_columns_that_exist(trained, tmp_path, capsys):
    corpus = _write_csv(tmp_path / "new.csv", _reviews(3))
    code = main(["predict", str(trained["run"]), "--input", str(corpus), "--text-column",
                 "review", "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "'review'" in err and "'text'" in err


@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_an_out_predict_cannot_write_is_refused_before_encoding(trained, tmp_path, capsys,
                                                                monkeypatch, where):
    from fastimg.train import predict as predict_mod

    monkeypatch.setattr(predict_mod.Run, "encode_chunks",
                        lambda *a, **k: pytest.fail("encoded before checking --out"))
    monkeypatch.setattr("sys.stdin", io.StringIO("a film\n"))
    if where == "folder":
        out = tmp_path
    else:
        (tmp_path / "notes").write_text("x")
        out = tmp_path / "notes" / "preds.csv"
    code = main(["predict", str(trained["run"]), "--input", "-", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--out" in err, err


@pytest.mark.parametrize("spelling", ["same", "other"])
def test_an_out_that_is_the_input_is_refused_before_encoding(trained, tmp_path, capsys,
                                                             monkeypatch, spelling):
    """``--out`` naming the ``--input`` file replaced the texts with the predictions, with
    exit code 0 (a TSV then held CSV)."""
    from fastimg.train import predict as predict_mod

    monkeypatch.setattr(predict_mod.Run, "encode_chunks",
                        lambda *a, **k: pytest.fail("encoded before checking --out"))
    corpus = _write_csv(tmp_path / "new.csv", _reviews(3))
    before = corpus.read_bytes()
    out = corpus if spelling == "same" else tmp_path / "sub" / ".." / "new.csv"
    (tmp_path / "sub").mkdir()
    code = main(["predict", str(trained["run"]), "--input", str(corpus), "--out", str(out),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"--out {out} is the --input file: the predictions would replace its texts" in err, err
    assert corpus.read_bytes() == before


@pytest.mark.parametrize("name", ["best.pt", "bundle.json", "metrics.json"])
def test_an_out_that_is_a_file_of_the_run_is_refused_before_encoding(trained, tmp_path, capsys,
                                                                    monkeypatch, name):
    """``--out RUN/best.pt`` replaced the run's checkpoint with the predictions CSV, with exit
    code 0 (the next predict said best.pt was corrupt); into an unfinished run a
    ``metrics.json`` would have marked it finished."""
    from fastimg.train import predict as predict_mod

    monkeypatch.setattr(predict_mod.Run, "encode_chunks",
                        lambda *a, **k: pytest.fail("encoded before checking --out"))
    run = _copy_run(trained, tmp_path)
    before = (run / name).read_bytes()
    corpus = _write_csv(tmp_path / "new.csv", _reviews(3))
    code = main(["predict", str(run), "--input", str(corpus), "--out",
                 str(run / "sub" / ".." / name), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    # the name alone is in the --out path any message repeats
    assert f"is the run's own {name}: the predictions would replace it" in err, err
    assert (run / name).read_bytes() == before


def test_an_out_inside_a_store_is_refused_before_encoding(trained, tmp_path, capsys,
                                                          monkeypatch):
    """Predictions written inside a store were counted in its size by info and deleted
    without a word by its next --force rebuild."""
    from fastimg.train import predict as predict_mod

    monkeypatch.setattr(predict_mod.Run, "encode_chunks",
                        lambda *a, **k: pytest.fail("encoded before checking --out"))
    corpus = _write_csv(tmp_path / "new.csv", _reviews(3))
    out = trained["store"] / "preds.csv"
    code = main(["predict", str(trained["run"]), "--input", str(corpus), "--out", str(out),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"lies inside the store {trained['store']}" in err and "--out" in err, err
    assert not out.exists()


@pytest.mark.parametrize("recorded, here, expected", [
    (("cuda", "fp16"), "cpu", ("cpu", "auto")),   # a GPU build predicted on a CPU
    (("cuda", "fp32"), "cpu", ("cpu", "fp32")),
    (("cpu", "int8"), "cuda", ("cpu", "int8")),   # int8 runs on the CPU only
    (("auto", "auto"), "cuda", ("cuda", "auto")),
])
def test_predict_runs_the_stores_encoder_on_its_own_device(recorded, here, expected, caplog):
    from fastimg.embed import EncoderConfig

    config = EncoderConfig(model="m", device=recorded[0], precision=recorded[1], max_length=64)
    with caplog.at_level("WARNING", logger="fastimg.embed"):
        got = config.on_device(here)
    assert (got.device, got.precision) == expected
    assert (got.model, got.max_length) == ("m", 64)
    assert ("cannot run on" in caplog.text) == (expected[1] != recorded[1])


def test_a_run_of_a_gpu_built_store_predicts_on_the_cpu(trained, tmp_path):
    run_dir = _copy_run(trained, tmp_path)
    bundle = json.loads((run_dir / BUNDLE_FILE).read_text())
    bundle["encoder"] = {**bundle["encoder"], "device": "cuda", "precision": "fp16"}
    (run_dir / BUNDLE_FILE).write_text(json.dumps(bundle))
    prediction = load_run(run_dir, device="cpu").predict(trained["texts"])
    np.testing.assert_allclose(prediction.probabilities, trained["expected"], atol=1e-5)


def test_texts_to_images_of_a_gpu_built_store_run_here(trained):
    from fastimg.dataset import texts_to_images

    path = trained["store"]
    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs[ATTRS_KEY])
    encoder = attrs["config"]["encoder"]
    try:
        group.attrs[ATTRS_KEY] = {**attrs, "config": {**attrs["config"], "encoder": {
            **encoder, "device": "cuda", "precision": "fp16"}}}
        images = texts_to_images(path, trained["texts"][:3])
        on_cpu = texts_to_images(path, trained["texts"][:3], device="cpu")
    finally:
        group.attrs[ATTRS_KEY] = attrs
    np.testing.assert_array_equal(images, texts_to_images(path, trained["texts"][:3]))
    np.testing.assert_array_equal(on_cpu, images)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            texts_to_images(path, trained["texts"][:3], device="cuda")


def test_predictions_go_through_a_symlink_and_into_a_pipe(trained, tmp_path):
    """A new file is written beside --out and moved onto it; a link or a pipe (/dev/stdout)
    is written through, never replaced by a regular file."""
    import os
    import threading
    from types import SimpleNamespace

    from fastimg.train.texts_io import write_predictions

    prediction = SimpleNamespace(probabilities=[[0.25, 0.75]], names=["pos"],
                                 class_names=["neg", "pos"])
    (tmp_path / "real.csv").write_text("x")
    (tmp_path / "link.csv").symlink_to(tmp_path / "real.csv")
    write_predictions(tmp_path / "link.csv", ["a"], prediction)
    assert (tmp_path / "link.csv").is_symlink()
    assert (tmp_path / "real.csv").read_text().startswith("id,predicted,p_neg,p_pos")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_predictions(fifo, ["a"], prediction)
    reader.join(10)
    assert got and got[0].splitlines()[1] == "a,pos,0.250000,0.750000" and not fifo.is_file()
    write_predictions(tmp_path / "new.csv", ["a"], prediction)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "new.csv", "pipe",
                                                          "real.csv"]
    umask = os.umask(0)
    os.umask(umask)  # a CSV others may read, as open() makes it, not a private temp file
    assert (tmp_path / "new.csv").stat().st_mode & 0o777 == 0o666 & ~umask


def test_new_texts_are_encoded_in_the_precision_the_store_resolved(trained):
    """A store built with precision "auto" records what auto became (fp32 on this CPU); the
    bundle and texts_to_images use that, not the predicting machine's own auto (fp16 on a
    GPU for a CPU-built store)."""
    reader = StoreReader(trained["store"])
    assert reader.configs["encoder"]["precision"] == "auto"
    assert reader.encoder_config().precision == "fp32"
    assert json.loads((trained["run"] / BUNDLE_FILE).read_text())["encoder"]["precision"] == \
        "fp32"
    assert reader.encoder_config().on_device("cuda").precision == "fp32"


def test_one_text_is_said_in_the_singular(trained, capsys, monkeypatch):
    """'predicted 1 texts' for one line on stdin."""
    monkeypatch.setattr("sys.stdin", io.StringIO("a good film\n"))
    assert main(["predict", str(trained["run"]), "--input", "-", "--out", "-", "--quiet"]) == 0
    assert capsys.readouterr().err.startswith(f"predicted 1 text with {trained['run']} (")


def test_predictions_on_stdout_keep_stdout_to_the_csv(trained, tmp_path, capsys,
                                                      monkeypatch):
    """``--out -`` wrote a file named '-'; ``--out /dev/stdout`` got the summary line appended
    to the CSV."""
    from fastimg.train.texts_io import writes_to

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("a good film\nawful\n"))
    assert main(["predict", str(trained["run"]), "--input", "-", "--out", "-", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert not (tmp_path / "-").exists()
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][:2] == ["id", "predicted"] and [r[0] for r in rows[1:]] == ["0", "1"]
    assert err.startswith("predicted 2 texts") and "wrote stdout" in err
    target = tmp_path / "p.csv"
    with open(target, "w") as stream:  # what the shell's > makes of stdout
        assert writes_to(target, stream) and writes_to("-", stream)
        assert not writes_to(tmp_path / "other.csv", stream)
    assert not writes_to(target, io.StringIO())
    # a file named '-' is ./- (and a folder named '-' does not stand in stdout's way)
    (tmp_path / "-").mkdir()
    monkeypatch.setattr("sys.stdin", io.StringIO("a good film\n"))
    assert main(["predict", str(trained["run"]), "--input", "-", "--out", "-", "--quiet"]) == 0
    assert list(csv.reader(io.StringIO(capsys.readouterr().out)))[0][:2] == ["id", "predicted"]
    (tmp_path / "-").rmdir()
    monkeypatch.setattr("sys.stdin", io.StringIO("a good film\n"))
    assert main(["predict", str(trained["run"]), "--input", "-", "--out", "./-", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert (tmp_path / "-").read_text().startswith("id,predicted") and "id," not in out


def test_a_run_from_before_a_training_setting_is_named_as_older(trained, tmp_path, capsys):
    """A run trained before pixel_branch existed: its bundle has no pixel settings (nor
    sha256) and best.pt no pixel branch, which today's default would add."""
    run_dir = _copy_run(trained, tmp_path)
    bundle = json.loads((run_dir / BUNDLE_FILE).read_text())
    for key in ("pixel_branch", "pixel_hidden"):
        bundle["train_config"].pop(key)
    bundle.pop("sha256")
    (run_dir / BUNDLE_FILE).write_text(json.dumps(bundle))
    state = torch.load(run_dir / "best.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("pixel_mlp.")},
               run_dir / "best.pt")
    code = main(["predict", str(run_dir), "--input", "-", "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert "trained by an older fastimg" in err and "pixel_branch, pixel_hidden" in err
    assert "train the run again" in err


# -- predictions against true labels ------------------------------------------------------------

def test_cli_scores_predictions_against_a_label_column(trained, tmp_path, capsys):
    from sklearn.metrics import balanced_accuracy_score, f1_score

    labels = ["pos", "neg", " pos", "neg"] * 3                    # as a file may space them
    rows = [(f"x{i}", t, labels[i]) for i, t in enumerate(trained["texts"])]
    corpus = _write_csv(tmp_path / "new.csv", rows)
    out = tmp_path / "preds.csv"
    code = main(["predict", str(trained["run"]), "--input", str(corpus), "--label-column",
                 "label", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    with open(out, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["id", "label", "predicted", "p_neg", "p_pos"]
    truth = [label.strip() for label in labels]
    assert [r["label"] for r in table] == truth                  # the class, as predicted
    predicted = [["neg", "pos"][i] for i in trained["expected"].argmax(1)]
    assert [r["predicted"] for r in table] == predicted
    accuracy = np.mean([a == b for a, b in zip(truth, predicted)])
    macro_f1 = f1_score(truth, predicted, average="macro", zero_division=0)
    balanced = balanced_accuracy_score(truth, predicted)
    assert (f"against label: accuracy {accuracy:.4f}, macro F1 {macro_f1:.4f}, balanced "
            f"accuracy {balanced:.4f}; wrote") in captured.out, captured.out


def test_labels_that_are_no_class_of_the_run_are_refused_before_encoding(trained, tmp_path,
                                                                         capsys, monkeypatch):
    from fastimg.train import predict as predict_mod

    monkeypatch.setattr(predict_mod.Run, "encode_chunks",
                        lambda *a, **k: pytest.fail("encoded before checking the labels"))
    rows = [("a", "a film", "pos"), ("b", "a play", "neutral"), ("c", "a book", "neutral"),
            ("d", "a song", "")]
    corpus = _write_csv(tmp_path / "new.csv", rows)
    out = tmp_path / "preds.csv"
    code = main(["predict", str(trained["run"]), "--input", str(corpus), "--label-column",
                 "label", "--out", str(out), "--quiet"])
    err = one_line(capsys.readouterr().err)
    assert code == 2 and err.endswith(
        f"--label-column label of {corpus}: labels that are no class of the run (neg, pos): "
        f"'neutral' (2 rows), a missing label (1 row); correct those rows or leave them out"), err
    assert not out.exists()
    assert main(["predict", str(trained["run"]), "--input", str(corpus), "--label-column",
                 "truth", "--out", str(out), "--quiet"]) == 2
    assert "has no column 'truth' (columns: 'id', 'text', 'label')" in capsys.readouterr().err


def test_labels_map_to_classes_as_the_build_read_them():
    from fastimg.train.predict import class_indices

    # integer labels 3 / 7, named neg / pos: by value, in any spelling, or by name
    np.testing.assert_array_equal(
        class_indices([7, "3", 3.0, "pos", " neg ", np.int64(7)], ["neg", "pos"], [3, 7]),
        [1, 0, 0, 1, 0, 1])
    # integer labels without names (class names "3", "7"; older runs record no values)
    np.testing.assert_array_equal(class_indices([7, "3", 7.0], ["3", "7"]), [1, 0, 1])
    with pytest.raises(ValueError, match=r"no class of the run \(neg \(3\), pos \(7\)\): 5 "
                                         r"\(2 rows\), a missing label \(3 rows\); correct those "
                                         r"rows or leave them out$"):
        class_indices([5, None, float("nan"), "", 3, np.int64(5)], ["neg", "pos"], [3, 7])
    with pytest.raises(ValueError, match=r"no class of the run \(3, 7\): 'neg' \(1 row\); "):
        class_indices(["neg", 3], ["3", "7"], [3, 7])
    # a label that reads as the marker of missing ones is a label like any other
    with pytest.raises(ValueError, match=r"\(a, b\): 'a missing label' \(1 row\); "):
        class_indices(["a missing label"], ["a", "b"])
    with pytest.raises(ValueError, match=r"'c' \(1 row\), 'd' \(1 row\), 'e' \(1 row\), "
                                         r"'f' \(1 row\), 'g' \(1 row\) and 2 more; "):
        class_indices(list("abcdefghi"), ["a", "b"])


def test_a_prediction_is_scored_against_class_indices():
    from sklearn.metrics import confusion_matrix, f1_score

    from fastimg.train import Prediction

    rng = np.random.default_rng(0)
    predicted, truth = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    prediction = Prediction(predicted, [str(i) for i in predicted], np.zeros((50, 3), np.float32),
                            ["a", "b", "c"])
    scores = prediction.score(truth)
    assert scores["rows"] == 50 and scores["accuracy"] == pytest.approx(np.mean(predicted == truth))
    assert scores["confusion_matrix"] == confusion_matrix(
        truth, predicted, labels=[0, 1, 2]).tolist()
    assert scores["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert set(scores["per_class"]) == {"a", "b", "c"}
    with pytest.raises(ValueError, match="targets of shape 49 for 50 predictions; give one "
                                         "class index per prediction"):
        prediction.score(truth[:49])
    with pytest.raises(ValueError, match=r"targets are class indices 0..2 \(one per class of "
                                         r"a, b, c\), got 3..3; map labels \(class names or "
                                         r"values\) to them with Run.targets\(labels\)$"):
        prediction.score(np.full(50, 3))                         # the labels 1..3, say


def test_the_label_zero_is_a_class_value_like_any_other():
    # IMDB stores 0 / 1 named neg / pos: 0 == False made the value 0 fall back to the names
    from fastimg.train.predict import class_indices

    np.testing.assert_array_equal(
        class_indices([0, "0", 0.0, " 0 ", np.int64(0), 1, "neg", False], ["neg", "pos"],
                      [0, 1]),
        [0, 0, 0, 0, 0, 1, 0, 0])


def test_long_labels_are_shown_cut_short():
    # a text column given as the labels: each refused label was shown whole
    from fastimg.train.predict import class_indices

    review = "A quiet, lovely film about a lighthouse keeper and his dog. " * 20
    with pytest.raises(ValueError) as info:
        class_indices([review, review + "!", "pos"], ["neg", "pos"])
    message = str(info.value)
    assert len(message) < 240, message
    assert message.endswith("'A quiet, lovely film about a lightho... (1 row), "
                            "'A quiet, lovely film about a lightho... (1 row); correct those "
                            "rows or leave them out"), message


@pytest.mark.parametrize("given", [[], ["--text-column", "label"]])
def test_a_label_column_that_is_the_text_column_is_named_so(trained, tmp_path, capsys, given):
    corpus = _write_csv(tmp_path / "new.csv", _reviews(3))
    column = "label" if given else "text"
    code = main(["predict", str(trained["run"]), "--input", str(corpus), *given,
                 "--label-column", column, "--out", str(tmp_path / "p.csv"), "--quiet"])
    err = one_line(capsys.readouterr().err)
    where = "--text-column, label" if given else "the store's text column, text"
    assert code == 2 and err.endswith(
        f"--label-column {column} is a text column, not labels (texts: {where}); name the "
        f"column of each text's true class"), err


def test_a_text_column_given_twice_is_refused(trained, tmp_path, capsys):
    # it was joined twice: other texts than the store's, other probabilities, exit 0
    corpus = _write_csv(tmp_path / "new.csv", _reviews(3))
    out = tmp_path / "p.csv"
    code = main(["predict", str(trained["run"]), "--input", str(corpus), "--text-column", "text",
                 "--text-column", "text", "--out", str(out), "--quiet"])
    err = one_line(capsys.readouterr().err)
    assert code == 2 and err.endswith("--text-column names 'text' twice; each text column is "
                                      "joined once"), err
    assert not out.exists()


def test_the_csv_names_the_true_class_of_an_integer_label_as_predicted_names_it(trained,
                                                                                 tmp_path):
    # IMDB's labels are 0 / 1, its classes neg / pos: the CSV held 0 beside neg, so
    # label == predicted was never true
    run = _copy_run(trained, tmp_path)
    bundle = json.loads((run / BUNDLE_FILE).read_text())
    bundle["class_values"] = [0, 1]
    (run / BUNDLE_FILE).write_text(json.dumps(bundle))
    rows = [(f"x{i}", t, ["0", "1.0", " 1", "pos"][i % 4])
            for i, t in enumerate(trained["texts"])]
    corpus = _write_csv(tmp_path / "new.csv", rows)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run), "--input", str(corpus), "--label-column", "label",
                 "--out", str(out), "--quiet"]) == 0
    with open(out, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [r["label"] for r in table] == ["neg", "pos", "pos", "pos"] * 3


def test_an_older_run_without_class_values_says_why_integer_labels_are_unknown(trained,
                                                                               tmp_path):
    run_dir = _copy_run(trained, tmp_path)
    bundle = json.loads((run_dir / BUNDLE_FILE).read_text())
    bundle.pop("class_values", None)
    (run_dir / BUNDLE_FILE).write_text(json.dumps(bundle))
    run = load_run(run_dir)
    np.testing.assert_array_equal(run.targets(["neg", "pos"]), [0, 1])
    with pytest.raises(ValueError, match=r"\(neg, pos\): 0 \(1 row\); this run's bundle.json is "
                                         r"older than the class values it now records, so "
                                         r"integer labels are unknown to it: give the class "
                                         r"names, or train the run again$"):
        run.targets([0, "pos"])
    with pytest.raises(ValueError, match=r"\(neg, pos\): 'good' \(1 row\); correct those rows "
                                         r"or leave them out$"):
        run.targets(["good", "pos"])
    with pytest.raises(ValueError, match=r"integer labels are unknown to it"):
        run.targets(x for x in [0, "pos"])                       # a generator, read twice
    # a run that records them (text labels: None) is told nothing of the kind
    bundle["class_values"] = None
    (run_dir / BUNDLE_FILE).write_text(json.dumps(bundle))
    with pytest.raises(ValueError, match=r"\(neg, pos\): 0 \(1 row\); correct those rows or "
                                         r"leave them out$"):
        load_run(run_dir).targets([0, "pos"])


def test_targets_that_are_no_class_indices_are_refused_not_cast():
    # np.asarray(targets, dtype=int64) scored 1.9 as class 1, "1" and True as 1
    from fastimg.train import Prediction

    prediction = Prediction(np.array([0, 1, 1]), ["neg", "pos", "pos"],
                            np.zeros((3, 2), np.float32), ["neg", "pos"])
    for targets in (["0", "1", "1"], [0.5, 1.2, 1.9], [True, False, True],
                    ["neg", "pos", "pos"]):
        with pytest.raises(TypeError, match=r"targets are class indices \(whole numbers "
                                            r"0..1\), got .* values; map labels \(class names "
                                            r"or values\) to them with Run.targets\(labels\)"):
            prediction.score(targets)
    with pytest.raises(ValueError, match="targets of shape 1x3 for 3 predictions"):
        prediction.score([[0, 1, 1]])
    for targets in ([0, 1, 1], np.array([0, 1, 1], np.uint8), [0.0, 1.0, 1.0],
                    torch.tensor([0, 1, 1])):
        assert prediction.score(targets)["accuracy"] == 1.0


def test_whole_float_targets_beyond_int64_are_out_of_range_as_given():
    # the cast to int64 came first: a RuntimeWarning, and 1e30 shown as -9223372036854775808
    import warnings

    from fastimg.train import Prediction

    prediction = Prediction(np.array([0, 1]), ["neg", "pos"], np.zeros((2, 2), np.float32),
                            ["neg", "pos"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"got 0..1000000000000000019884624838656; map "):
            prediction.score([0.0, 1e30])
        with pytest.raises(ValueError, match=r"got -2..1; map "):
            prediction.score(np.array([-2, 1], np.int8))


def test_score_refusals_read_as_sentences():
    # "targets of shape a scalar for 1 predictions"; twelve classes were listed as ten
    from fastimg.train import Prediction

    names = [f"c{k}" for k in range(12)]
    prediction = Prediction(np.array([0]), ["c0"], np.zeros((1, 12), np.float32), names)
    with pytest.raises(ValueError, match=r"^targets are a scalar for 1 prediction; give one "
                                         r"class index per prediction$"):
        prediction.score(1)
    with pytest.raises(ValueError, match=r"\(one per class of c0, c1, c2, c3, c4, c5, c6, c7, "
                                         r"c8, c9 and 2 more\), got 12..12; "):
        prediction.score([12])


@pytest.mark.parametrize("flag", ["--id-column", "--label-column"])
def test_an_empty_column_name_is_refused_not_taken_as_none(trained, tmp_path, capsys, flag):
    # --label-column "" predicted without a word of the labels, --id-column "" numbered rows
    corpus = _write_csv(tmp_path / "new.csv", _reviews(3))
    out = tmp_path / "p.csv"
    code = main(["predict", str(trained["run"]), "--input", str(corpus), flag, "", "--out",
                 str(out), "--quiet"])
    err = one_line(capsys.readouterr().err)
    assert code == 2 and err.endswith(f"{flag} must be a column name, got ''"), err
    assert not out.exists()


def test_labels_are_a_sequence_of_labels():
    # a lone "pos" was read as the labels 'p', 'o', 's'; a generator failed in len()
    from fastimg.train.predict import class_indices

    # a 0-d array or tensor failed in list() with "iteration over a 0-d array"
    for one in ("pos", b"pos", 1, np.int64(1), np.array("pos"), np.array(1), torch.tensor(1)):
        with pytest.raises(TypeError, match=r"labels are one label per text \(a list, an "
                                            r"array, a column\), got "):
            class_indices(one, ["neg", "pos"])
    np.testing.assert_array_equal(class_indices((x for x in ["pos", "neg"]), ["neg", "pos"]),
                                  [1, 0])
    np.testing.assert_array_equal(class_indices(np.array(["pos"]), ["neg", "pos"]), [1])
    assert class_indices([], ["neg", "pos"]).shape == (0,)


def test_a_label_column_without_labels_is_named_so(trained, tmp_path, capsys):
    # a test file with an empty label column was refused as 'a missing label (3 rows); correct
    # those rows', where the way out is to predict without --label-column
    rows = [(f"x{i}", t, "") for i, t in enumerate(trained["texts"][:3])]
    corpus = _write_csv(tmp_path / "new.csv", rows)
    code = main(["predict", str(trained["run"]), "--input", str(corpus), "--label-column",
                 "label", "--out", str(tmp_path / "p.csv"), "--quiet"])
    err = one_line(capsys.readouterr().err)
    assert code == 2 and err.endswith(
        f"--label-column label of {corpus} holds no labels (every row's is empty); predict "
        f"without --label-column, or name the column of the true classes"), err


def test_train_s_refusals_of_its_run_folder_name_its_flags(tmp_path, capsys):
    # the library's refusals (out_dir, overwrite=True) on the command line
    store = tmp_path / "missing.zarr"  # refused after the folder: never read
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    code = main(["train", str(store), "--out", str(run), "--quiet"])
    err = one_line(capsys.readouterr().err)
    assert code == 2 and err.endswith(f"--out {run} is not empty; pass --force to train into "
                                      f"it anyway, or choose another --out"), err
    (run / "metrics.json").write_text("{}")
    code = main(["train", str(store), "--out", str(run), "--quiet"])
    err = one_line(capsys.readouterr().err)
    assert code == 2 and err.endswith(f"--out {run} already holds a run (metrics.json); pass "
                                      f"--force to replace it, or choose another --out"), err
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "notes.txt"]
    code = main(["train", str(store), "--out", str(run / "notes.txt" / "r"), "--quiet"])
    err = one_line(capsys.readouterr().err)
    assert code == 2 and err.endswith(f"--out {run / 'notes.txt' / 'r'}: {run / 'notes.txt'} is "
                                      f"a file, not a folder"), err
