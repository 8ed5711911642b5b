"""`fastimg train`: the summary line, the run folder, and one-line errors with exit code 2."""
import json

import pytest

from fastimg.cli import main
from test_train import write_store


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "s.zarr"
    write_store(path, n_rows=100)
    return path


def test_train_writes_the_run_folder_and_prints_a_summary(small_store, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(small_store), "--extractor", "alexnet", "--weights", "none",
                 "--epochs", "2", "--batch-size", "16", "--loader", "torch", "--quiet",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "best epoch" in printed and "val accuracy" in printed and "linear probe" in printed
    assert str(out) in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["weights"] is None and len(metrics["epochs"]) == 2
    assert (out / "best.pt").is_file()


@pytest.mark.parametrize("argv,message", [
    (["--extractor", "alexnet", "--epochs", "0"], "--epochs must be a positive integer"),
    (["--weights", "/no/such/weights.pt"], "does not exist"),
    (["--loader", "torch", "--unfreeze-fraction", "2"], "--unfreeze-fraction must be a number in [0, 1]"),
])
def test_train_user_errors_exit_2_with_one_line(small_store, tmp_path, capsys, argv, message):
    code = main(["train", str(small_store), "--quiet", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err


def test_images_too_small_for_the_extractor_are_refused_naming_the_upsampling(tmp_path,
                                                                              capsys):
    """10 x 10 images (a store built with --pixels 10) crashed alexnet's max-pool: 'internal
    error (a bug, please report it): RuntimeError: ... Output size is too small', exit 1."""
    write_store(tmp_path / "s.zarr", n_rows=40, grid=(10, 10))
    argv = ["train", str(tmp_path / "s.zarr"), "--weights", "none", "--epochs", "1",
            "--batch-size", "16", "--loader", "torch", "--quiet", "--no-probe"]
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "internal error" not in err
    assert "10 x 10 images are too small for the alexnet extractor" in err
    assert "--upsample 2" in err and "--pixels" in err
    assert not (tmp_path / "r" / "metrics.json").exists()
    assert main([*argv, "--upsample", "2", "--out", str(tmp_path / "r2")]) == 0


def test_a_cache_budget_with_a_cache_chosen_is_said_to_be_ignored(small_store, tmp_path,
                                                                   caplog):
    """--cache memory --cache-budget 1MiB trained with the budget ignored, unsaid."""
    argv = ["train", str(small_store), "--extractor", "alexnet", "--weights", "none",
            "--epochs", "1", "--batch-size", "16", "--loader", "torch", "--quiet",
            "--no-probe", "--cache", "memory"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--cache-budget", "1MiB"]) == 0
    said = [r.getMessage() for r in caplog.records if "--cache-budget" in r.getMessage()]
    assert said == ["--cache-budget 1MiB ignored: it sizes --cache auto's choice, and --cache "
                    "memory is chosen"]
    caplog.clear()
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert not [r for r in caplog.records if "--cache-budget" in r.getMessage()]


def test_train_on_a_store_without_labels_or_missing(tmp_path, capsys):
    write_store(tmp_path / "images.zarr", n_rows=20, labels=False)
    code = main(["train", str(tmp_path / "images.zarr"), "--weights", "none", "--quiet",
                 "--out", str(tmp_path / "r")])
    assert code == 2 and "no labels" in capsys.readouterr().err
    code = main(["train", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "r")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_train_preset_paper_and_no_test_split_note(tmp_path, capsys):
    write_store(tmp_path / "notest.zarr", n_rows=60, test=False)
    out = tmp_path / "run"
    code = main(["train", str(tmp_path / "notest.zarr"), "--preset", "paper", "--weights", "none",
                 "--epochs", "1", "--batch-size", "16", "--loader", "torch", "--quiet",
                 "--no-probe", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "paper preset" in printed and "selection-biased" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    config = metrics["config"]
    assert (config["preset"], config["lr_head"], config["lr_classifier"], config["normalize"],
            config["epochs"]) == ("paper", 1e-5, 5e-4, "image", 1)
    assert metrics["selection_biased"] is True


def test_train_with_weights_that_are_not_a_state_dict_or_a_folder(small_store, tmp_path, capsys):
    reviews = tmp_path / "new-reviews.csv"
    reviews.write_text("id,text,label\nr0,a good film,pos\n")
    out = tmp_path / "runs" / "w1"
    code = main(["train", str(small_store), "--weights", str(reviews), "--quiet",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "internal error" not in err, err
    assert f"weights file {reviews} is not a torch state_dict (torch.load: " in err
    assert not (tmp_path / "runs").exists()  # a failed train leaves no empty run folder
    code = main(["train", str(small_store), "--weights", str(tmp_path), "--quiet",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"weights path {tmp_path} is a directory, not a file" in err, err
    assert not (tmp_path / "runs").exists()


def test_an_interrupted_train_into_an_empty_folder_can_be_run_again(small_store, tmp_path,
                                                                     monkeypatch, capsys):
    """Ctrl-C while training into a folder the user made left its feature_cache/ there, and
    the same command again was refused: 'is not empty; pass --force'."""
    import importlib

    fit_module = importlib.import_module("fastimg.train.fit")
    out = tmp_path / "run"
    out.mkdir()
    argv = ["train", str(small_store), "--weights", "none", "--epochs", "1", "--batch-size",
            "16", "--loader", "torch", "--cache", "zarr", "--no-probe", "--quiet",
            "--out", str(out)]

    def interrupted(run, epochs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "_epochs", interrupted)
    assert main(argv) == 130
    capsys.readouterr()
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "metrics.json").is_file()


def test_a_second_train_into_a_folder_a_train_writes_names_it_without_force(small_store,
                                                                            tmp_path, capsys):
    """Without --force, a second train into the folder a train was writing said 'is not
    empty; pass --force', and the --force it advised was then refused as being written."""
    from fastimg.store.locks import build_lock

    out = tmp_path / "run"
    out.mkdir()
    (out / "feature_cache").mkdir()  # what the first train has written so far
    with build_lock(out):
        code = main(["train", str(small_store), "--weights", "none", "--quiet",
                     "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "is being written by another fastimg command" in err and "--force" not in err, err


def test_info_of_several_runs_is_a_table_a_row_a_run(small_store, tmp_path, capsys, caplog):
    import torch

    from fastimg.run_folder import RESUME_FILE

    base = ["train", str(small_store), "--weights", "none", "--epochs", "2", "--batch-size",
            "16", "--loader", "torch", "--quiet"]
    runs = tmp_path / "runs"
    assert main([*base, "--extractor", "alexnet", "--out", str(runs / "alex")]) == 0
    assert main([*base, "--extractor", "shufflenet_v2_x1_0", "--no-probe",
                 "--out", str(runs / "shuffle")]) == 0
    other = tmp_path / "other.zarr"  # no test split: its figure is val's, not shown as test
    write_store(other, n_rows=60, test=False)
    assert main(["train", str(other), *base[2:], "--out", str(runs / "notest")]) == 0
    (runs / "unfinished").mkdir()
    torch.save({"not": "a state"}, runs / "unfinished" / RESUME_FILE)
    (runs / "notes.txt").write_text("a stray file runs/* matches")
    capsys.readouterr()
    caplog.clear()
    names = ["alex", "shuffle", "notest", "unfinished"]
    given = [str(runs / name) for name in names]
    assert main(["info", *given, str(runs / "notes.txt"), str(runs / "alex") + "/"]) == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{runs / 'notes.txt'} is a file: left out"]
    caplog.clear()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"runs in {runs}"
    assert lines[1].split() == ["run", "extractor", "weights", "preset", "best/epochs", "val",
                                "test", "macro", "F1", "probe", "emb", "probe", "px", "time"]
    metrics = json.loads((runs / "alex" / "metrics.json").read_text())
    alex = lines[2].split()
    assert alex[:5] == ["alex", "alexnet", "random", "ours", f"{metrics['best_epoch']}/2"]
    assert alex[5:10] == [f"{metrics['final'][s]['accuracy']:.4f}" for s in ("val", "test")] + [
        f"{metrics['reported']['macro_f1']:.4f}", f"{metrics['probe']['test_accuracy']:.4f}",
        f"{metrics['probe_pixels']['test_accuracy']:.4f}"]
    assert lines[3].split()[1] == "shufflenet_v2_x1_0" and lines[3].split()[8:10] == ["-"] * 2
    assert lines[4].split()[6:8] == ["-", "-"]  # val chose the epoch: no test figure, no F1
    assert lines[5].split() == ["unfinished", "?", "?", "?", "unfinished"]  # unreadable state
    assert lines[6:] == ["stores:", f"  alex: {small_store}", f"  shuffle: {small_store}",
                         f"  notest: {other}", "  unfinished: ?"]  # alex given twice: once

    assert main(["info", *given[:2], "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [run["run_folder"] for run in listed] == given[:2]
    assert listed[0]["metrics"]["best_epoch"] == metrics["best_epoch"]

    assert main(["info", str(small_store), str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == (
        "fastimg info: error: none of the paths is a training run folder: info shows several "
        "run folders side by side, and a store one at a time")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{small_store} is not a training run folder: left out",
        f"{tmp_path / 'missing'} is missing: left out"]


def test_the_runs_table_names_a_pending_force_and_an_edited_run(small_store, tmp_path,
                                                                monkeypatch, capsys):
    import importlib

    fit_module = importlib.import_module("fastimg.train.fit")
    base = ["train", str(small_store), "--weights", "none", "--epochs", "2", "--batch-size",
            "16", "--loader", "torch", "--no-probe", "--quiet"]
    for name in ("a", "b"):
        assert main([*base, "--out", str(tmp_path / name)]) == 0
    train_epoch = fit_module._Run.train_epoch

    def stopped(run, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return train_epoch(run, epoch)

    monkeypatch.setattr(fit_module._Run, "train_epoch", stopped)
    assert main([*base, "--epochs", "3", "--force", "--out", str(tmp_path / "b")]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["info", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    row = capsys.readouterr().out.splitlines()[3]
    assert row.startswith("b ") and "(--force pending 1/3)" in row

    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    metrics["final"]["val"]["accuracy"] = "0.9"  # edited by hand
    (tmp_path / "a" / "metrics.json").write_text(json.dumps(metrics))
    assert main(["info", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fastimg info: error: {tmp_path / 'a'}: its metrics.json or "
                          f"config.json does not hold what fastimg train writes")


def test_info_says_the_store_of_a_run_was_rebuilt_with_another_layout_or_moved(small_store,
                                                                              tmp_path, capsys):
    """info showed a run's store as if nothing had changed after it was rebuilt with another
    layout (explain then refused it), and the runs table did not say a store was gone."""
    import shutil

    import zarr

    from fastimg import store

    path = tmp_path / "s.zarr"
    shutil.copytree(small_store, path)
    group = zarr.open_group(str(path), mode="r+")  # its layout: where each feature went
    attrs = dict(group.attrs[store.ATTRS_KEY])
    group.attrs[store.ATTRS_KEY] = {**attrs, "layout": {"pixel_index": list(range(24))}}
    argv = ["train", str(path), "--extractor", "alexnet", "--weights", "none", "--epochs", "1",
            "--batch-size", "16", "--loader", "torch", "--quiet", "--no-probe"]
    for run in ("a", "b"):
        assert main([*argv, "--out", str(tmp_path / "runs" / run)]) == 0
    runs = [str(tmp_path / "runs" / run) for run in ("a", "b")]
    capsys.readouterr()
    assert main(["info", runs[0]]) == 0
    assert f"store      {path.resolve()}\n" in capsys.readouterr().out

    # a rebuild with another layout
    group.attrs[store.ATTRS_KEY] = {**attrs, "layout": {"pixel_index": list(range(24))[::-1]}}
    rebuilt = " (rebuilt since with another layout: its images no longer fit this run"
    assert main(["info", runs[0]]) == 0
    assert f"store      {path.resolve()}{rebuilt}" in capsys.readouterr().out
    assert main(["info", *runs]) == 0
    assert f"store: {path.resolve()}{rebuilt}" in capsys.readouterr().out

    path.rename(tmp_path / "moved.zarr")
    assert main(["info", *runs]) == 0
    assert f"store: {path.resolve()} (not there now: moved or deleted?" in \
        capsys.readouterr().out

