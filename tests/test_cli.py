import json
import re

import numpy as np
import pytest
import zarr

from fastimg import store
from fastimg.cli import main
from fastimg.layout import DeepInsightLayout
from conftest import one_line, structured_matrix


@pytest.mark.parametrize("argv", [
    ["images", "--synthetic", "10x8", "--out", "x.zarr"],
    ["build-dataset", "--dataset", "imdb", "--out", "x.zarr"],
    ["relayout", "src.zarr", "--out", "x.zarr"],
])
def test_cli_layout_defaults_are_the_library_defaults(argv):
    # the CLI declares its own defaults for argparse's help; they must be LayoutConfig's
    from fastimg.cli import build_parser
    from fastimg.cli.build import layout_config
    from fastimg.layout import LayoutConfig

    assert layout_config(build_parser().parse_args(argv)) == LayoutConfig()


def test_tsne_threads_reach_the_layout_and_its_stage_settings():
    from fastimg.cli import build_parser
    from fastimg.cli.build import layout_config
    from fastimg.layout import LayoutConfig
    from fastimg.stages import layout_settings

    argv = ["build-dataset", "--dataset", "imdb", "--out", "x.zarr", "--tsne-threads", "-1"]
    config = layout_config(build_parser().parse_args(argv))
    assert config == LayoutConfig(n_jobs=-1)
    rows = np.arange(10)
    # each thread count gives its own layout: a store fitted with one is not reused for another
    assert layout_settings(config, "train", rows) != layout_settings(LayoutConfig(), "train", rows)


def test_cli_encoder_defaults_are_the_library_defaults():
    from fastimg.cli import build_parser
    from fastimg.cli.build import encoder_config
    from fastimg.embed import EncoderConfig

    args = build_parser().parse_args(["build-dataset", "--dataset", "imdb", "--out", "x.zarr"])
    assert encoder_config(args) == EncoderConfig()
    args = build_parser().parse_args(["build-dataset", "--dataset", "imdb", "--out", "x.zarr",
                                      "--batching", "packed", "--token-budget", "4096"])
    assert encoder_config(args) == EncoderConfig(batching="packed", token_budget=4096)


def test_layers_take_a_list_of_negative_indices():
    """``--layers -2,-1`` was 'expected one argument': argparse takes a value that starts
    with a dash, and is not one number, for a flag (the layer message offers -7..-1)."""
    from fastimg.cli import build_parser

    base = ["build-dataset", "--dataset", "imdb", "--out", "x.zarr"]
    for given in (["--layers", "-2,-1"], ["--layers=-2,-1"]):
        assert build_parser().parse_args([*base, *given]).layers == (-2, -1)
    assert build_parser().parse_args([*base, "--layers", "-1"]).layers == (-1,)
    assert build_parser().parse_args([*base, "--layers", "1,-1", "--quiet"]).quiet


def test_images_from_npy_end_to_end(rng, tmp_path, capsys):
    x = structured_matrix(rng, 150, 200).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "imgs.zarr"
    assert main(["images", "--input", str(tmp_path / "x.npy"), "--out", str(out),
                 "--pixels", "12x16", "--fit-rows", "100", "--quiet", "--dtype", "float32"]) == 0
    assert "150 images of 12 x 16" in capsys.readouterr().out
    assert store.is_complete(out) and not store.partial_path(out).exists()
    group = store.StoreReader(out).group
    attrs = group.attrs[store.ATTRS_KEY]
    assert attrs["summary"]["fit_rows"] == 100
    # the stored layout turns the same rows into the same images
    layout = DeepInsightLayout.from_dict(attrs["layout"])
    # its scaling is fitted on the first 100 rows, not on all 150 (the count alone said so)
    from fastimg.layout import FeatureScaler

    first, every = FeatureScaler.fit(x[:100], "norm2"), FeatureScaler.fit(x, "norm2")
    assert not np.array_equal(first.shift, every.shift)
    np.testing.assert_array_equal(layout.scaler_.shift, first.shift)
    np.testing.assert_array_equal(layout.scaler_.scale, first.scale)
    np.testing.assert_array_equal(group[store.IMAGES][:], layout.transform(x))
    assert main(["info", str(out), "--json"]) == 0
    assert '"rows": 150' in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    assert "fitted on the first 100 rows" in capsys.readouterr().out


def test_images_and_relayout_name_each_stage_as_it_starts(tmp_path, capsys):
    """build-dataset named each stage as it started; images and relayout printed nothing
    during the layout fit (minutes of t-SNE on a large matrix)."""
    out = tmp_path / "s.zarr"
    assert main(["images", "--synthetic", "80x30", "--out", str(out), "--pixels", "8",
                 "--method", "pca"]) == 0
    err = capsys.readouterr().err
    stages = re.findall(r"^\[ *[0-9.]+ s\] (\w+)$", err, flags=re.M)
    assert stages == ["layout", "raster"], err
    assert main(["images", "--synthetic", "80x30", "--out", str(out), "--pixels", "8",
                 "--method", "pca", "--quiet", "--force"]) == 0
    assert "] layout" not in capsys.readouterr().err


def test_fit_rows_past_the_rows_warns_and_fits_on_all(caplog):
    from fastimg.images import _fit_rows

    with caplog.at_level("WARNING", logger="fastimg"):
        assert _fit_rows(50, 40, None)[1].size == 40 and not caplog.records
        how, rows = _fit_rows(50, 5000, None)
    # recorded as fitted on all rows (it said "the first rows"): the layout key of a build
    # without fit_rows, which fits the same rows
    assert how == "all" and rows.tolist() == list(range(50))
    assert "fit_rows 5000 is more than the 50 rows" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fastimg"):
        assert _fit_rows(50, 50, None)[0] == "all" and not caplog.records


def test_synthetic_demo_is_up_to_date_and_other_settings_need_force(tmp_path, capsys,
                                                                   monkeypatch):
    """The same command again was refused ("already exists, with these settings"): a script
    or notebook cell run twice failed. It is up to date, and nothing is computed."""
    import fastimg.stages

    out = tmp_path / "demo.zarr"
    args = ["images", "--synthetic", "300x120", "--out", str(out), "--pixels", "10", "--quiet"]
    assert main(args) == 0
    before = store.StoreReader(out).images[:]
    capsys.readouterr()

    def no_layout(*args, **kwargs):
        raise AssertionError("an up-to-date store was computed again")

    monkeypatch.setattr(fastimg.stages, "run_layout", no_layout)
    assert main(args) == 0
    assert capsys.readouterr().out == (f"{out} is up to date: 300 images of 10 x 10, built "
                                       f"with these settings; nothing computed (pass --force "
                                       f"to build it again)\n")
    np.testing.assert_array_equal(store.StoreReader(out).images[:], before)
    monkeypatch.undo()
    assert main([*args, "--pixels", "12"]) == 2
    err = capsys.readouterr().err
    assert "already exists, built with other settings (layout.grid" in err
    assert "pass --force" in err
    assert main([*args, "--force"]) == 0


def test_metric_is_the_layouts_distance(tmp_path, capsys):
    """--metric reaches the t-SNE: recorded in the store's layout, and another distance gives
    another map (the config's metric had no flag)."""
    maps = {}
    for metric in ("cosine", "euclidean"):
        out = tmp_path / f"{metric}.zarr"
        assert main(["images", "--synthetic", "120x60", "--out", str(out), "--pixels", "8",
                     "--perplexity", "5", "--metric", metric, "--quiet"]) == 0
        layout = store.StoreReader(out).layout()
        assert layout.config.metric == metric
        maps[metric] = layout.pixel_index_
    assert not np.array_equal(maps["cosine"], maps["euclidean"])


def test_another_split_file_is_not_up_to_date(rng, tmp_path, capsys):
    """A split file that moved rows between val and test (the same training rows) found the
    store "up to date" and kept the old split: the split was in no stage's key."""
    np.save(tmp_path / "x.npy", structured_matrix(rng, 60, 20).astype(np.float32))
    out = tmp_path / "imgs.zarr"
    args = ["images", "--input", str(tmp_path / "x.npy"), "--out", str(out), "--pixels", "6",
            "--method", "pca", "--quiet", "--split-file", str(tmp_path / "split.txt")]
    (tmp_path / "split.txt").write_text("train\n" * 40 + "val\n" * 10 + "test\n" * 10)
    assert main(args) == 0
    (tmp_path / "split.txt").write_text("train\n" * 40 + "test\n" * 10 + "val\n" * 10)
    capsys.readouterr()
    assert main(args) == 2
    assert "built with other settings (input.split_sha256" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert store.StoreReader(out).split_codes().tolist() == [0] * 40 + [2] * 10 + [1] * 10


def test_a_training_split_of_one_row_is_refused_in_one_line(rng, tmp_path, capsys):
    """The layout is fitted on the training rows ("the split has 1 training rows" before; a
    corpus's training split has two classes, so two rows, before its layout is reached)."""
    np.save(tmp_path / "x.npy", structured_matrix(rng, 12, 20).astype(np.float32))
    (tmp_path / "split.txt").write_text("train\n" + "test\n" * 11)
    out = tmp_path / "i.zarr"
    assert main(["images", "--input", str(tmp_path / "x.npy"), "--out", str(out), "--pixels",
                 "6", "--method", "pca", "--quiet", "--split-file",
                 str(tmp_path / "split.txt")]) == 2
    assert one_line(capsys.readouterr().err).endswith(
        "the training split has 1 row; the layout needs at least 2")
    assert not out.exists()


def test_an_images_build_stopped_after_its_layout_resumes_and_says_so(tmp_path, capsys,
                                                                       monkeypatch):
    """Rerun after a Ctrl-C in the raster stage, the build finished the store, then said
    "internal error (a bug, please report it): KeyError: 'layout_s'" and exited 1: the
    resumed run had fitted no layout, whose time the summary line read."""
    import fastimg.stages

    out = tmp_path / "demo.zarr"
    args = ["images", "--synthetic", "300x120", "--out", str(out), "--pixels", "10", "--quiet"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fastimg.stages, "run_images", interrupted)
    assert main(args) == 130
    assert not out.exists() and store.partial_path(out).exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(args) == 0
    assert "layout reused (fitted on 300 rows" in capsys.readouterr().out
    assert store.is_complete(out)


def test_the_summary_of_a_resumed_build_says_so(tmp_path, capsys):
    """A rerun after a kill said only "reused corpus", its encode timed as if from scratch;
    ``fastimg info`` said "resumed"."""
    from fastimg.cli.build import print_dataset_summary

    summary = {"rows": 10, "classes": 2, "class_names": ["neg", "pos"],
               "counts": {"train": {"neg": 5, "pos": 5}}, "image_shape": [4, 4],
               "image_dtype": "float16", "features": 16, "occupied_pixels": 16,
               "timings": {"encode_s": 1.0}, "reused": ["corpus"], "reused_from": {},
               "resumed": True}
    print_dataset_summary(tmp_path, summary, 2.0)
    assert "; reused corpus; resumed the unfinished build; encode 1.0 s;" in (
        capsys.readouterr().out)
    print_dataset_summary(tmp_path, {**summary, "resumed": False}, 2.0)
    assert "; reused corpus; encode 1.0 s;" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--input", "missing.npy"], "does not exist"),
    (["--synthetic", "100x40"], "needs at least 91 features"),
    (["--synthetic", "100x200", "--pixels", "1"], "at least 2 x 2"),
])
def test_user_mistakes_exit_2_with_one_line_and_no_store(tmp_path, capsys, argv, message):
    out = tmp_path / "bad.zarr"
    assert main(["images", *argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists() and not store.partial_path(out).exists()


def test_nan_input_exit_2(rng, tmp_path, capsys):
    x = rng.random((120, 150))
    x[7, 7] = np.nan
    np.save(tmp_path / "x.npy", x)
    assert main(["images", "--input", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "o.zarr"), "--quiet"]) == 2
    assert "NaN or infinite" in capsys.readouterr().err


def test_nan_outside_the_fitted_rows_is_refused_before_the_layout(rng, tmp_path, capsys):
    """A NaN in a row the layout is not fitted on (past --fit-rows, a val or test row) was
    refused by the raster stage, after the layout fit, leaving an unfinished build that a
    rerun "resumed" into the same refusal."""
    x = rng.random((120, 150))
    x[100, 7] = np.nan
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "o.zarr"
    assert main(["images", "--input", str(tmp_path / "x.npy"), "--out", str(out), "--quiet",
                 "--method", "pca", "--pixels", "10", "--fit-rows", "50"]) == 2
    assert "NaN or infinite values (rows [100])" in capsys.readouterr().err
    assert not out.exists() and not store.partial_path(out).exists()


def test_float64_input_beyond_float32s_range_is_one_line(rng, tmp_path, capsys):
    """Finite float64 values past float32's range overflowed in the layout: three
    RuntimeWarnings and a scikit-learn message about NaN that the input did not hold."""
    np.save(tmp_path / "x.npy", rng.standard_normal((120, 150)) * 1e40)
    out = tmp_path / "o.zarr"
    assert main(["images", "--input", str(tmp_path / "x.npy"), "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "beyond float32's range" in err and err.count("\n") == 1
    assert not out.exists() and not store.partial_path(out).exists()


def test_what_is_not_a_store_is_named(tmp_path, capsys):
    """A run folder, a build that stopped and a folder of something else: each said as such."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    (run / "bundle.json").write_text(json.dumps({"store": "imdb.zarr"}))
    stopped = tmp_path / "stopped.zarr"
    store.partial_path(stopped).mkdir()
    other = tmp_path / "other"
    other.mkdir()
    images = tmp_path / "i.zarr"
    assert main(["images", "--synthetic", "40x20", "--out", str(images), "--pixels", "5",
                 "--method", "pca", "--quiet"]) == 0
    # a file or an array inside a store or a run folder was "not a fastimg store"
    expected = {run: "is a training run folder, not a store (its store: imdb.zarr)",
                stopped: "is not finished: its build stopped before the end",
                other: "is not a fastimg store",
                images / "images": f"lies inside the fastimg store {images}: give that instead",
                run / "metrics.json": f"lies inside the training run folder {run}: give that "
                                      f"instead"}
    for path, message in expected.items():
        for command in (["show", str(path), "--out", str(tmp_path / "x.png")],
                        ["relayout", str(path), "--out", str(tmp_path / "r.zarr"), "--quiet"]):
            assert main(command) == 2
            err = capsys.readouterr().err.strip()
            assert message in err and "\n" not in err, (command, err)


def test_a_model_folder_is_named_as_such_not_taken_for_a_training_run(tiny_bert_dir,
                                                                        tmp_path, capsys):
    """A transformers model folder (its config.json) given where a store goes (the --model
    folder given to --reuse-from, info or relayout) was said to be 'a training run folder',
    and `fastimg info` printed it as an unfinished run with exit code 0."""
    pytest.importorskip("transformers")
    for command in (["info", str(tiny_bert_dir)],
                    ["relayout", str(tiny_bert_dir), "--out", str(tmp_path / "r.zarr")],
                    ["train", str(tiny_bert_dir), "--out", str(tmp_path / "run")]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "training run" not in err, (command, err)
        assert f"{tiny_bert_dir} is a model folder (a 'bert' model), not a store" in err


def test_a_run_is_never_written_into_a_model_folder(tiny_bert_dir, tmp_path, capsys):
    """`train --out MODEL --force` would have overwritten the model's config.json."""
    import shutil

    model = tmp_path / "bert"
    shutil.copytree(tiny_bert_dir, model)
    before = (model / "config.json").read_bytes()
    assert main(["images", "--synthetic", "60x40", "--out", str(tmp_path / "s.zarr"),
                 "--pixels", "8", "--method", "pca", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", str(tmp_path / "s.zarr"), "--out", str(model), "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{model} is a model folder (a 'bert' model)" in err and "\n" not in err
    assert (model / "config.json").read_bytes() == before


def test_unfinished_store_is_refused(tmp_path, capsys):
    group = zarr.open_group(str(tmp_path / "half.zarr"), mode="w")
    group.attrs[store.ATTRS_KEY] = {"format_version": store.FORMAT_VERSION}
    assert main(["info", str(tmp_path / "half.zarr")]) == 2
    assert "is an unfinished fastimg store" in capsys.readouterr().err
