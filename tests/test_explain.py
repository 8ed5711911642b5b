"""fastimg explain: attributions of a trained run, mapped back through the layout to features."""
from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
import torch

from fastimg import store
from fastimg.cli import main
from fastimg.layout import DeepInsightLayout
from fastimg.train import TrainConfig, fit
from fastimg.train.explain import explain

N_LAYERS, HIDDEN, N_LABEL = 6, 100, 24


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convs on a shared 2-core machine run 10x faster without intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_label_store(path, *, n_rows=400, grid=(24, 24), signal=0.8, seed=0):
    """A store of 600 features (6 layers x 100) where only 24 carry the label.

    Every feature is N(0, 1); the 24 label features are shifted by ``+-signal`` with the
    class, each too weak to decide alone, so a good model uses all of them. The layout is
    fitted on the training rows as a build would fit it.
    """
    rng = np.random.default_rng(seed)
    n_features = N_LAYERS * HIDDEN
    y = rng.integers(0, 2, n_rows)
    x = rng.standard_normal((n_rows, n_features))
    label_features = np.sort(rng.choice(n_features, N_LABEL, replace=False))
    x[:, label_features] += signal * (2 * y[:, None] - 1)
    split = np.zeros(n_rows, np.int8)
    split[int(0.7 * n_rows):] = 1
    layout = DeepInsightLayout(grid=grid, method="pca", random_state=0).fit(x[split == 0])
    arrays = {store.IMAGES: layout.transform(x).astype(np.float32), store.SPLIT: split,
              store.EMBEDDINGS: x.astype(np.float16), store.LABELS: y.astype(np.int64),
              store.IDS: np.array([f"r{i}" for i in range(n_rows)])}
    attrs = {"kind": "dataset", "corpus": {"class_values": None},
             "summary": {"class_names": ["neg", "pos"], "image_shape": list(grid)},
             "layout": layout.to_dict(),
             "provenance": {"layers": list(range(1, N_LAYERS + 1))}}
    store.write_store(path, arrays, attrs, chunk_rows=128)
    return label_features, layout


@pytest.fixture(scope="module")
def label_run(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("explain")
    label_features, layout = write_label_store(root / "labels.zarr")
    config = TrainConfig(weights=None, epochs=30, batch_size=32, progress=False, loader="torch",
                         lr_head=3e-3, lr_classifier=3e-3, head_channels=(16, 16, 8, 8),
                         hidden=(32, 16), probe=False)
    result = fit(root / "labels.zarr", config, out_dir=root / "run")
    assert result.val_accuracy > 0.8  # the check means nothing on a model that learnt nothing
    return {"root": root, "run": root / "run", "store": root / "labels.zarr",
            "label_features": label_features, "layout": layout}


def test_top_features_recover_the_label_carrying_set(label_run, tmp_path):
    result = explain(label_run["run"], out_dir=tmp_path)
    top = result.top(N_LABEL)
    precision = np.isin(top, label_run["label_features"]).mean()
    assert precision >= 0.8, f"precision@{N_LABEL} = {precision:.3f}"
    # the label features' pixels are brighter than the rest in each class's map
    pixels = np.unique(label_run["layout"].pixel_index_[label_run["label_features"]])
    for k in range(2):
        flat = result.pixel_importance[k].ravel()
        assert flat[pixels].mean() > np.delete(flat, pixels).mean() + 3 * flat.std() / 10


def test_uint8_images_are_attributed_in_zero_to_one_as_the_trainer_read_them(label_run):
    """``mean_attribution_maps`` of a uint8 store's images (0..255) normalised the codes as
    they were, so the maps were of images 255 times brighter than any the model saw."""
    from fastimg.raster import to_image_dtype
    from fastimg.train import load_run
    from fastimg.train.data import as_loaded
    from fastimg.train.explain import mean_attribution_maps

    reader = store.StoreReader(label_run["store"])
    rows = reader.rows("val")[:16]
    codes = to_image_dtype(np.asarray(reader.images[:])[rows], "uint8")
    run = load_run(label_run["run"])
    targets = reader.targets()[rows]
    got = mean_attribution_maps(run, codes, targets, method="input_x_gradient")
    expected = mean_attribution_maps(run, as_loaded(codes), targets, method="input_x_gradient")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_features_csv_is_ranked_and_maps_features_to_layers_and_pixels(label_run, tmp_path,
                                                                       caplog):
    with caplog.at_level("INFO"):
        result = explain(label_run["run"], out_dir=tmp_path, max_rows=40)
    # the layer bars are drawn at positions: string categories made matplotlib log "Using
    # categorical units" twice, in a notebook that shows INFO
    assert "categorical units" not in caplog.text
    with open(tmp_path / "features.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["rank", "feature", "layer", "encoder_layer", "dimension", "row",
                             "col", "pixel_features", "importance", "importance_neg",
                             "importance_pos"]
    assert len(rows) == N_LAYERS * HIDDEN
    assert sorted(int(r["feature"]) for r in rows) == list(range(N_LAYERS * HIDDEN))
    importance = [float(r["importance"]) for r in rows]
    assert importance == sorted(importance, reverse=True)
    pix = label_run["layout"].pixel_index_
    for r in rows[:50]:
        f = int(r["feature"])
        assert (int(r["layer"]), int(r["dimension"])) == divmod(f, HIDDEN)
        assert int(r["encoder_layer"]) == int(r["layer"]) + 1  # provenance layers 1..6
        assert int(r["row"]) * 24 + int(r["col"]) == pix[f]
        assert int(r["pixel_features"]) == int((pix == pix[f]).sum())
        mean = (float(r["importance_neg"]) + float(r["importance_pos"])) / 2
        assert mean == pytest.approx(float(r["importance"]), rel=1e-4, abs=1e-9)
    assert result.rows == 40
    np.testing.assert_allclose(result.layer_totals.sum(),
                               result.pixel_importance.mean(0).ravel()[np.unique(pix)].sum(),
                               rtol=1e-6)
    assert (tmp_path / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_features_csv_write_cut_short_leaves_the_earlier_file_whole(label_run, tmp_path,
                                                                     monkeypatch):
    """features.csv was written in place: an explain stopped while writing it (Ctrl-C) left
    the first rows of the new ranking under the name, a file that reads as a whole one."""
    from fastimg.train import explain as explain_module

    result = explain(label_run["run"], out_dir=tmp_path, max_rows=8)
    before = (tmp_path / "features.csv").read_bytes()
    origin, calls = explain_module.Explanation.feature_origin, []

    def cut_short(self, feature):
        calls.append(feature)
        if len(calls) > 10:
            raise KeyboardInterrupt
        return origin(self, feature)

    monkeypatch.setattr(explain_module.Explanation, "feature_origin", cut_short)
    with pytest.raises(KeyboardInterrupt):
        explain_module.write_features_csv(result, tmp_path / "features.csv")
    assert (tmp_path / "features.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.csv", "importance.png"]


def test_an_explain_stopped_while_writing_keeps_the_earlier_pair(label_run, tmp_path,
                                                                 monkeypatch):
    """features.csv was moved in before importance.png was drawn: an explain stopped in
    between (Ctrl-C) left a new ranking beside the earlier figure, or, into a new folder, a
    ranking without its figure."""
    from fastimg.train import explain as explain_module

    explain(label_run["run"], out_dir=tmp_path / "a", max_rows=8)
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(explain_module, "plot_importance", stopped)
    for out, kept in ((tmp_path / "a", before), (tmp_path / "new", {})):
        with pytest.raises(KeyboardInterrupt):
            explain(label_run["run"], out_dir=out, max_rows=16, seed=1)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == kept


def test_top_and_feature_origin_refuse_what_is_no_count_or_feature():
    # top(-1) gave every feature but the least important, top("5") a TypeError from slicing;
    # feature_origin(-1) and feature_origin(10**6) described features that do not exist
    from fastimg.train.explain import Explanation

    result = Explanation(pixel_importance=np.zeros((2, 2, 2)),
                         feature_importance=np.zeros((4, 2)), importance=np.zeros(4),
                         ranking=np.array([2, 0, 3, 1]), layer_totals=np.zeros(2),
                         class_names=["a", "b"], layers=[5, 6], hidden_size=2, rows=3,
                         method="integrated_gradients", split="val")
    assert result.top(2).tolist() == [2, 0] and result.top(0).size == 0
    assert result.top(10).tolist() == [2, 0, 3, 1]
    for k in (-1, "5", 2.0):
        with pytest.raises(ValueError, match="k must be a whole number >= 0"):
            result.top(k)
    assert result.feature_origin(np.int64(3)) == (1, 6, 1)
    for feature in (-1, 4, 10**6, 1.5):
        with pytest.raises(ValueError, match="feature must be a feature index from 0 to 3"):
            result.feature_origin(feature)


def test_a_loaded_run_is_refused_naming_its_folder(label_run):
    """explain(load_run(...)) failed in pathlib: 'expected str, bytes or os.PathLike object,
    not Run'."""
    from fastimg.train import load_run

    run = load_run(label_run["run"])
    with pytest.raises(TypeError, match=f"got a Run: pass its run_dir \\({label_run['run']}"):
        explain(run)


@pytest.mark.parametrize("store", [False, True])
def test_cli_explain_writes_both_files(label_run, tmp_path, capsys, caplog, store):
    """--storage-option with the run's local store (no --store) was ignored unsaid; with a
    local --store it is said once."""
    from fastimg import cli
    from fastimg.cli import report

    out = tmp_path / "explain"
    given = ["--store", str(label_run["store"])] if store else []
    code = main(["explain", str(label_run["run"]), "--split", "val", "--out", str(out),
                 "--method", "input_x_gradient", "--max-rows", "32", *given,
                 "--storage-option", "anon=true"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / "features.csv").is_file() and (out / "importance.png").is_file()
    # the five best-ranked features of features.csv, each with its layer and dimension
    # (provenance layers 1..6, HIDDEN dimensions each)
    with open(out / "features.csv", newline="", encoding="utf-8") as fh:
        best = [int(row["feature"]) for row in csv.DictReader(fh)][:5]
    top = ", ".join(f"{f} (encoder layer {f // HIDDEN + 1}, dim {f % HIDDEN})" for f in best)
    assert f"top features: {top}; wrote {out / 'features.csv'}" in captured.out, captured.out
    warnings = [r.getMessage() for r in caplog.records if "store URLs" in r.getMessage()]
    assert warnings == [f"storage_options (for store URLs such as s3://...) ignored for the "
                        f"local store {label_run['store']}"]
    flags = cli.flags_of(cli.build_parser(), "explain")
    assert report.as_flag(warnings[0], flags).startswith("--storage-option (for store URLs")


@pytest.mark.parametrize("flags, message", [
    (["--max-rows", "0"], "--max-rows must be a whole number >= 1, got 0"),
    (["--batch-size", "-1"], "--batch-size must be a whole number >= 1, got -1"),
])
def test_a_count_below_one_is_refused_before_any_work(label_run, tmp_path, capsys, flags,
                                                      message):
    out = tmp_path / "explain"
    code = main(["explain", str(label_run["run"]), "--out", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def _explain_against(label_run, tmp_path, capsys, store_path):
    """``fastimg explain`` of a copy of the run whose bundle names ``store_path``:
    (exit code, stderr)."""
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(label_run["run"], run)
    bundle = json.loads((run / "bundle.json").read_text())
    bundle["store"] = str(store_path)
    (run / "bundle.json").write_text(json.dumps(bundle))
    code = main(["explain", str(run), "--out", str(tmp_path / "x")])
    return code, capsys.readouterr().err


def test_explain_needs_the_store_and_says_so_in_one_line(label_run, tmp_path, capsys):
    code, err = _explain_against(label_run, tmp_path, capsys, tmp_path / "gone.zarr")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    # the store's name alone is in any message about it
    assert f"({tmp_path / 'gone.zarr'}) is gone: explain reads the " in err, err


def test_an_unfinished_store_is_named_so(label_run, tmp_path, capsys):
    """explain said "is not a complete fastimg store" (--store) or "is gone" (the recorded
    store) of an unfinished build; every other command says it is unfinished."""
    from fastimg import store

    unfinished = tmp_path / "unfinished.zarr"
    store.partial_path(unfinished).mkdir()
    code, err = _explain_against(label_run, tmp_path, capsys, unfinished)
    assert code == 2 and "is not finished: its build stopped before the end" in err
    assert main(["explain", str(tmp_path / "run"), "--out", str(tmp_path / "x"), "--store",
                 str(unfinished)]) == 2
    assert "is not finished: its build stopped" in capsys.readouterr().err


def test_missing_captum_names_the_extra(label_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ImportError, match=r"fastimg\[explain\]"):
        explain(label_run["run"], out_dir=tmp_path, max_rows=8)


def test_a_store_rebuilt_with_another_layout_is_refused(label_run, tmp_path, capsys):
    write_label_store(tmp_path / "other.zarr", n_rows=60, seed=1)
    code, err = _explain_against(label_run, tmp_path, capsys, tmp_path / "other.zarr")
    assert code == 2 and "another layout" in err and len(err.strip().splitlines()) == 1


def test_a_store_of_the_layout_with_other_classes_is_refused(label_run, tmp_path, capsys):
    """A store of the run's layout labelled otherwise (another label column, the layout fitted
    on every row) failed inside the attribution with an internal error (a class index past
    the run's), or, with as many classes, explained the run against the wrong classes."""
    reader = store.StoreReader(label_run["store"])
    labels = reader.labels()
    arrays = {name: np.asarray(reader.group[name][:]) for name in
              (store.IMAGES, store.SPLIT, store.EMBEDDINGS, store.IDS)}
    arrays[store.LABELS] = np.where(np.arange(labels.size) % 3 == 0, 2, labels)
    attrs = {"kind": "dataset", "corpus": {"class_values": None},
             "summary": {"class_names": ["neg", "pos", "mixed"], "image_shape": [24, 24]},
             "layout": label_run["layout"].to_dict(),
             "provenance": {"layers": list(range(1, N_LAYERS + 1))}}
    store.write_store(tmp_path / "relabelled.zarr", arrays, attrs, chunk_rows=128)
    code, err = _explain_against(label_run, tmp_path, capsys, tmp_path / "relabelled.zarr")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert (f"{tmp_path / 'relabelled.zarr'} has the classes ['neg', 'pos', 'mixed'], not the "
            f"classes ['neg', 'pos'] ") in err, err


def test_a_moved_store_is_given_with_store(label_run, tmp_path, capsys):
    """The run records where its store was: once moved, explain said "is gone" with no way
    to name the new place; --store names it, and a store of another layout is refused."""
    import shutil

    moved = tmp_path / "moved.zarr"
    shutil.copytree(label_run["store"], moved)
    code, err = _explain_against(label_run, tmp_path, capsys, tmp_path / "gone.zarr")
    assert code == 2 and "is gone: explain reads the" in err and "--store" in err, err
    out = tmp_path / "x"
    assert main(["explain", str(tmp_path / "run"), "--out", str(out), "--max-rows", "16",
                 "--method", "input_x_gradient", "--store", str(moved)]) == 0
    assert (out / "features.csv").is_file()
    write_label_store(tmp_path / "other.zarr", n_rows=60, seed=1)
    assert main(["explain", str(tmp_path / "run"), "--out", str(out), "--store",
                 str(tmp_path / "other.zarr")]) == 2
    assert "another layout" in capsys.readouterr().err


@pytest.mark.parametrize("inside", ["", "maps"])
def test_an_out_in_a_store_is_refused_before_any_work(tmp_path, capsys, inside):
    """explain wrote features.csv and importance.png into the store, where a rebuild of it
    deletes them."""
    write_label_store(tmp_path / "s.zarr", n_rows=60)
    out = tmp_path / "s.zarr" / inside
    code = main(["explain", str(tmp_path / "run"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"the store {tmp_path / 's.zarr'}, whose rebuild would delete" in err
    assert not (out / "features.csv").exists() and not (tmp_path / "s.zarr" / "maps").exists()
