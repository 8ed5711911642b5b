"""The post-build workflow as a user walks it: train, info, explain, show on tiny stores.

Each test pins a defect found walking through ``fastimg train / info / explain / show``."""
from __future__ import annotations

import importlib
import json
import os

import numpy as np
import pytest
import torch

from fastimg import store
from fastimg.cli import main
from fastimg.train import TrainConfig, fit
from test_explain import write_label_store
from test_train import script_val_accuracy, write_store

FAST = dict(weights=None, epochs=1, batch_size=16, progress=False, loader="torch",
            head_channels=(8, 8, 8, 8), hidden=(16, 8), probe=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convs on a shared 2-core machine run faster without intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def label_store(tmp_path_factory):
    """A 24 x 24 store with a layout and encoder layers (what explain and show read)."""
    path = tmp_path_factory.mktemp("walk") / "labels.zarr"
    write_label_store(path, n_rows=80)
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# -- train: options that trained nothing, or garbage, without a word -------------------------

def test_batch_size_one_is_refused_not_trained_on_silently(tmp_path, capsys):
    # every batch of one sample is skipped (BatchNorm): batch_size 1 trained nothing at all
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        TrainConfig(batch_size=1)
    write_store(tmp_path / "s.zarr", n_rows=40)
    code = main(["train", str(tmp_path / "s.zarr"), "--weights", "none", "--epochs", "1",
                 "--batch-size", "1", "--quiet", "--out", str(tmp_path / "r")])
    assert code == 2 and "--batch-size must be at least 2" in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_a_train_split_of_one_row_is_refused(tmp_path):
    path = tmp_path / "one.zarr"
    rng = np.random.default_rng(0)
    split = np.array([0, 1, 1, 1, 2, 2], np.int8)
    arrays = {store.IMAGES: rng.random((6, 24, 24)).astype(np.float16), store.SPLIT: split,
              store.LABELS: np.array([0, 1, 0, 1, 0, 1]),
              store.IDS: np.array([f"r{i}" for i in range(6)])}
    store.write_store(path, arrays, {"kind": "dataset", "corpus": {"class_values": None},
                                     "summary": {"class_names": ["a", "b"],
                                                 "image_shape": [24, 24]}})
    with pytest.raises(ValueError, match="1 train row; training needs at least 2"):
        fit(path, TrainConfig(**FAST), out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("field,flag", [("lr_head", "--lr-head"),
                                        ("lr_classifier", "--lr-classifier"),
                                        ("weight_decay", "--weight-decay")])
def test_infinite_rates_and_weight_decay_are_refused(tmp_path, capsys, field, flag):
    # inf passed the checks and trained a model stuck at chance, reported as a success
    with pytest.raises(ValueError, match=f"{field} must be a .*finite"):
        TrainConfig(**{field: float("inf")})
    code = main(["train", str(tmp_path / "no.zarr"), "--weights", "none", flag, "inf",
                 "--quiet", "--out", str(tmp_path / "r")])
    assert code == 2 and f"{flag} must be a" in _one_line_error(capsys)


# -- train --force: nothing of the earlier run stays behind ------------------------------------

def test_overwrite_removes_the_earlier_runs_cache_and_normaliser(tmp_path, capsys):
    write_store(tmp_path / "s.zarr", n_rows=60)
    out = tmp_path / "run"
    fit(tmp_path / "s.zarr", TrainConfig(**{**FAST, "normalize": "dataset", "cache": "zarr"}),
        out_dir=out)
    assert (out / "normaliser.npz").is_file() and (out / "feature_cache").is_dir()
    fit(tmp_path / "s.zarr", TrainConfig(**{**FAST, "normalize": "image", "cache": "memory"}),
        out_dir=out, overwrite=True)
    assert not (out / "normaliser.npz").exists() and not (out / "feature_cache").exists()
    assert main(["info", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "normaliser.npz" not in first


def test_metrics_json_is_written_last_so_a_cut_run_never_looks_finished(tmp_path, monkeypatch):
    run_files = importlib.import_module("fastimg.train.run_files")  # writes the run folder
    write_store(tmp_path / "s.zarr", n_rows=60)
    out = tmp_path / "run"
    fit(tmp_path / "s.zarr", TrainConfig(**FAST), out_dir=out)
    assert (out / "metrics.json").is_file()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_files, "save_run_bundle", disk_full)
    with pytest.raises(OSError):
        fit(tmp_path / "s.zarr", TrainConfig(**{**FAST, "seed": 1}), out_dir=out,
            overwrite=True)
    # the earlier run's metrics.json and bundle.json would describe the new best.pt: gone
    assert not (out / "metrics.json").exists() and not (out / "bundle.json").exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(OSError):
        fit(tmp_path / "s.zarr", TrainConfig(**FAST), out_dir=tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "metrics.json").exists()


def test_the_run_records_its_store_by_absolute_path(tmp_path, monkeypatch, capsys):
    write_store(tmp_path / "s.zarr", n_rows=60)
    monkeypatch.chdir(tmp_path)
    fit("s.zarr", TrainConfig(**FAST), out_dir="run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["store"] == os.fspath((tmp_path / "s.zarr").resolve())
    monkeypatch.chdir("/")
    assert main(["info", str(tmp_path / "run")]) == 0
    assert f"store      {(tmp_path / 's.zarr').resolve()}" in capsys.readouterr().out


# -- info on a run folder -------------------------------------------------------------------

@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "3"])
def test_info_on_a_metrics_json_that_is_not_an_object_is_one_line(tmp_path, capsys, content):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(content)
    assert main(["info", str(tmp_path / "run")]) == 2
    assert "not the object fastimg train writes" in _one_line_error(capsys)


@pytest.mark.parametrize("content", [{"final": {"val": 1}}, {"epochs": [3], "best_epoch": 1},
                                     {"rows": [1, 2]}])
def test_info_on_a_metrics_json_with_a_field_of_another_type_is_one_line(tmp_path, capsys,
                                                                         content):
    """A hand-edited field ("final": {"val": 1}) was an internal error (AttributeError)."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(content))
    assert main(["info", str(tmp_path / "run")]) == 2
    assert "metrics.json or config.json does not hold what fastimg train writes" in \
        _one_line_error(capsys)


def test_info_marks_a_selection_biased_run_and_shows_the_pixel_probe(tmp_path, capsys):
    write_store(tmp_path / "s.zarr", n_rows=60, test=False)
    fit(tmp_path / "s.zarr", TrainConfig(**{**FAST, "probe": True}), out_dir=tmp_path / "run")
    capsys.readouterr()
    assert main(["info", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "selection-biased" in out and "  pixels   val " in out


def test_info_of_a_run_with_no_config_does_not_claim_random_weights(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"epochs": []}))
    assert main(["info", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "extractor  not recorded" in out and "random init" not in out


# -- explain --------------------------------------------------------------------------------

def test_explain_into_a_file_is_refused_before_the_attributions(label_store, tmp_path, capsys,
                                                                monkeypatch):
    explain_module = importlib.import_module("fastimg.train.explain")
    fit(label_store, TrainConfig(**FAST), out_dir=tmp_path / "run")
    (tmp_path / "taken.csv").write_text("mine")

    def no_work(*args, **kwargs):
        raise AssertionError("explain attributed before refusing --out")

    monkeypatch.setattr(explain_module, "mean_attribution_maps", no_work)
    code = main(["explain", str(tmp_path / "run"), "--out", str(tmp_path / "taken.csv"),
                 "--quiet"])
    assert code == 2 and "taken.csv is a file, not a folder" in _one_line_error(capsys)
    code = main(["explain", str(tmp_path / "run"), "--out", str(tmp_path / "taken.csv" / "sub"),
                 "--quiet"])  # under a file: refused as early
    assert code == 2 and "taken.csv is a file, not a folder" in _one_line_error(capsys)
    assert (tmp_path / "taken.csv").read_text() == "mine"


# -- show -----------------------------------------------------------------------------------

def test_show_writes_exactly_the_path_it_names(label_store, tmp_path, capsys):
    # matplotlib adds ".png" to a name without a suffix: "wrote pic" named a missing file
    out = tmp_path / "pic"
    assert main(["show", str(label_store), "--out", str(out), "--per-class", "1"]) == 0
    assert out.is_file() and out.read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "pic.png").exists()
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize("target,message", [(".", "is a folder"),
                                            # a missing folder is made: a file is
                                            # where one would be
                                            ("notes/s.png", "is a file, not a folder"),
                                            ("s.xyz", "unknown image format")])
def test_show_refuses_a_bad_out_before_drawing(label_store, tmp_path, capsys, monkeypatch,
                                               target, message):
    show_module = importlib.import_module("fastimg.show")

    def no_work(*args, **kwargs):
        raise AssertionError("show read the images before refusing --out")

    monkeypatch.setattr(show_module, "_mean_images", no_work)
    (tmp_path / "notes").write_text("a file")
    out = tmp_path / target
    code = main(["show", str(label_store), "--out", str(out)])
    assert code == 2 and message in _one_line_error(capsys)
    assert not list(tmp_path.glob("*.png"))


def test_the_plateau_schedule_halves_after_two_epochs_without_a_gain_as_documented(
        tmp_path, monkeypatch):
    # the docstring said "has not improved for an epoch"; ReduceLROnPlateau(patience=1) waits
    # for two such epochs
    write_store(tmp_path / "s.zarr", n_rows=60)
    script_val_accuracy(monkeypatch, [0.6, 0.7, 0.65, 0.65, 0.65, 0.65])
    result = fit(tmp_path / "s.zarr", TrainConfig(**{**FAST, "epochs": 6, "schedule": "plateau",
                                                     "patience": 0}))
    # lr_head is the rate each epoch started with: best at epoch 2, halved for epoch 5
    assert [e["lr_head"] for e in result.history] == [1e-3] * 4 + [5e-4] * 2
    assert "after two epochs in a row without a validation" in TrainConfig.__doc__
