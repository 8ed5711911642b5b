"""An interrupted fit resumes after its last finished epoch (fastimg.train.resume), from the
library and from `fastimg train`."""
import dataclasses
import importlib
import json
import re

import pytest
import torch

from fastimg.cli import main
from fastimg.run_folder import RESUME_FILE
from fastimg.run_summary import run_seconds
from fastimg.train import TrainConfig, fit
from test_train import FAST, write_store

fit_module = importlib.import_module("fastimg.train.fit")

# dropout and a per-step schedule: a resume that lost the random state or the schedule's
# step count would train other numbers
SETTINGS = {**FAST, "epochs": 4, "probe": False, "schedule": "cosine", "dropout": 0.3}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "s.zarr"
    write_store(path, n_rows=120)
    return path


def _epochs_trained(monkeypatch, stop_at=None):
    """Record the epochs ``_Run.train_epoch`` is called for; Ctrl-C at epoch ``stop_at``."""
    calls = []
    train_epoch = fit_module._Run.train_epoch

    def recorded(run, epoch):
        calls.append(epoch)
        if epoch == stop_at:
            raise KeyboardInterrupt
        return train_epoch(run, epoch)

    monkeypatch.setattr(fit_module._Run, "train_epoch", recorded)
    return calls


def _stopped(store, config, out, monkeypatch, at=1, **kwargs):
    """A fit into ``out`` (``fit``'s ``kwargs``) stopped (Ctrl-C) as epoch ``at`` begins."""
    _epochs_trained(monkeypatch, stop_at=at)
    with pytest.raises(KeyboardInterrupt):
        fit(store, config, out_dir=out, **kwargs)
    monkeypatch.undo()


def _rebuilt(path, **attrs):
    """The store at ``path`` written again with the same arrays and ``attrs`` changed."""
    from fastimg import store

    reader = store.StoreReader(path)
    arrays = {name: reader.group[name][:] for name in reader.group.array_keys()}
    store.write_store(path, arrays, {**reader.attrs, **attrs}, force=True)


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_an_interrupted_fit_resumes_with_the_numbers_of_an_uninterrupted_one(
        store, tmp_path, monkeypatch, cache):
    config = TrainConfig(extractor="alexnet", **{**SETTINGS, "cache": cache})
    whole = fit(store, config, out_dir=tmp_path / "whole")
    assert whole.metrics["resumed_after_epoch"] is None

    calls = _epochs_trained(monkeypatch, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        fit(store, config, out_dir=tmp_path / "cut")
    assert calls == [0, 1, 2]
    # the finished epochs are kept; nothing of a finished run is written
    assert [p.name for p in (tmp_path / "cut").iterdir()] == [RESUME_FILE]
    monkeypatch.undo()

    calls = _epochs_trained(monkeypatch)
    resumed = fit(store, config, out_dir=tmp_path / "cut")
    assert calls == [2, 3]  # not the first two again
    assert resumed.metrics["resumed_after_epoch"] == 2
    keys = ("train_loss", "val_loss", "val_accuracy", "lr_head")
    assert ([[epoch[k] for k in keys] for epoch in resumed.history]
            == [[epoch[k] for k in keys] for epoch in whole.history])
    assert resumed.best_epoch == whole.best_epoch
    assert (tmp_path / "cut" / "best.pt").read_bytes() == (
        tmp_path / "whole" / "best.pt").read_bytes()
    assert resumed.metrics["final"] == whole.metrics["final"]
    assert not (tmp_path / "cut" / RESUME_FILE).exists()
    assert not (tmp_path / "whole" / RESUME_FILE).exists()


def test_a_fit_interrupted_after_its_last_epoch_trains_no_epoch_again(store, tmp_path,
                                                                      monkeypatch):
    config = TrainConfig(extractor="alexnet", **{**SETTINGS, "epochs": 2})
    final_evaluation = fit_module._final_evaluation

    def interrupted(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "_final_evaluation", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(store, config, out_dir=tmp_path / "run")
    monkeypatch.setattr(fit_module, "_final_evaluation", final_evaluation)
    calls = _epochs_trained(monkeypatch)
    result = fit(store, config, out_dir=tmp_path / "run")
    assert calls == [] and result.metrics["resumed_after_epoch"] == 2
    assert [epoch["epoch"] for epoch in result.history] == [1, 2]
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_an_unfinished_run_with_other_settings_is_refused_and_overwrite_starts_over(
        store, tmp_path, monkeypatch):
    config = TrainConfig(extractor="alexnet", **SETTINGS)
    _stopped(store, config, tmp_path / "run", monkeypatch)
    more = TrainConfig(extractor="alexnet", **{**SETTINGS, "epochs": 5})
    with pytest.raises(FileExistsError, match=r"1 epoch done\) with other settings \(epochs: "
                                              r"4 -> 5\).*overwrite=True to start over"):
        fit(store, more, out_dir=tmp_path / "run")
    # what does not change the numbers does not stand in the way
    calls = _epochs_trained(monkeypatch)
    fit(store, TrainConfig(extractor="alexnet", **{**SETTINGS, "num_workers": 1}),
        out_dir=tmp_path / "run")
    assert calls == [1, 2, 3]
    monkeypatch.undo()

    _stopped(store, config, tmp_path / "again", monkeypatch, overwrite=True)
    calls = _epochs_trained(monkeypatch)
    result = fit(store, more, out_dir=tmp_path / "again", overwrite=True)
    assert calls == [0, 1, 2, 3, 4] and result.metrics["resumed_after_epoch"] is None


def test_a_store_rebuilt_since_is_not_resumed(tmp_path, monkeypatch):
    from fastimg import store

    path = tmp_path / "s.zarr"
    write_store(path, n_rows=80)
    config = TrainConfig(extractor="alexnet", **SETTINGS)
    _stopped(path, config, tmp_path / "run", monkeypatch)
    # a build records its timings: a rebuild of the same settings has other attributes
    summary = store.StoreReader(path).attrs["summary"]
    _rebuilt(path, summary={**summary, "timings": {"total": 1.0}})
    with pytest.raises(FileExistsError, match="on a store that was rebuilt since, or on another "
                                              "store: pass overwrite=True to start over"):
        fit(path, config, out_dir=tmp_path / "run")


def test_train_interrupted_says_its_epochs_are_kept_and_the_same_command_resumes(
        store, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["train", str(store), "--extractor", "alexnet", "--weights", "none", "--epochs", "3",
            "--batch-size", "32", "--loader", "torch", "--no-probe", "--quiet",
            "--out", str(out)]
    _epochs_trained(monkeypatch, stop_at=1)
    assert main(argv) == 130
    assert capsys.readouterr().err.strip() == (
        "fastimg train: interrupted (its finished epochs are kept: rerun to resume)")
    monkeypatch.undo()

    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "no metrics.json: the run did not finish, 1 of 3 epochs done (best val accuracy" in shown
    assert "fastimg train with its settings, without --force, resumes it" in shown
    assert "training   3 epochs, batch 32" in shown
    # the store it resumes on (a setting of the command that resumes it), and its files
    # without an empty list ("(; missing metrics.json, ...)")
    assert f"\nstore      {store.resolve()}\n" in shown
    assert shown.startswith(f"{out}: fastimg training run ({RESUME_FILE}; missing ")
    assert main(["info", str(out), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["finished"] is False
    assert described["unfinished"] == {"epochs_done": 1, "epochs": 3,
                                       "store": str(store.resolve())}
    assert main(["info", str(out), str(out.parent)]) == 0  # the table names it too
    assert f"store: {store.resolve()}" in capsys.readouterr().out
    assert described["config"]["epochs"] == 3

    assert main([*argv[:-2], "--epochs", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "(--epochs: 3 -> 4)" in err and "pass --force to start over" in err

    calls = _epochs_trained(monkeypatch)
    assert main(argv) == 0, capsys.readouterr().err
    assert calls == [1, 2]
    assert "(resumed after epoch 1)" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "epochs     3 run, resumed after epoch 1, best epoch" in shown
    # the time of the process stopped after epoch 1 counts too (the table showed only the
    # resumed process's)
    timings = json.loads((out / "metrics.json").read_text())["timings"]
    assert timings["before_resume_s"] > 0
    assert run_seconds({"timings": timings}) == timings["total_s"] + timings["before_resume_s"]
    assert re.search(r"^time       \S+ s \(\S+ s of it before it was stopped and resumed\)$",
                     shown, flags=re.M), shown
    assert not (out / RESUME_FILE).exists()
    assert torch.load(out / "best.pt", weights_only=True)


def test_a_store_replaced_between_epochs_stops_the_fit_and_saves_no_state_of_it(tmp_path,
                                                                         monkeypatch):
    """The epochs after a rebuild read the new build's images: their state is never saved;
    the one saved before is kept (a store that failed to read once is resumed), and the
    rebuilt store is refused by its key."""
    from fastimg import store

    path = tmp_path / "s.zarr"
    write_store(path, n_rows=80)
    train_epoch = fit_module._Run.train_epoch
    calls = []

    def rebuilt_during_the_second_epoch(run, epoch):
        calls.append(epoch)
        if epoch == 1:
            _rebuilt(path, rebuilt=True)
        return train_epoch(run, epoch)

    monkeypatch.setattr(fit_module._Run, "train_epoch", rebuilt_during_the_second_epoch)
    run = tmp_path / "runs" / "r"
    config = TrainConfig(extractor="alexnet", **SETTINGS)
    with pytest.raises(store.StoreError, match="was replaced or deleted while this command"):
        fit(path, config, out_dir=run)
    assert calls == [0, 1]  # stopped at the end of the epoch the rebuild fell in
    assert torch.load(run / RESUME_FILE, weights_only=True)["done"] == 1  # the epoch before
    assert sorted(p.name for p in run.iterdir()) == [RESUME_FILE]
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="on a store that was rebuilt since"):
        fit(path, config, out_dir=run)


def test_a_resumed_fit_reads_its_finished_on_disk_feature_cache_again(store, tmp_path,
                                                                      monkeypatch):
    cache_module = importlib.import_module("fastimg.train.cache")
    config = TrainConfig(extractor="alexnet", **{**SETTINGS, "cache": "zarr"})
    whole = fit(store, config, out_dir=tmp_path / "whole")

    _stopped(store, config, tmp_path / "cut", monkeypatch, at=2)
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["feature_cache", RESUME_FILE]
    built = []
    build_cache = fit_module.build_cache

    def counted(*args, **kwargs):
        built.append(kwargs["desc"])
        return build_cache(*args, **kwargs)

    monkeypatch.setattr(fit_module, "build_cache", counted)
    resumed = fit(store, config, out_dir=tmp_path / "cut")
    assert built == []  # every split's features read from the run folder's cache
    assert resumed.metrics["resumed_after_epoch"] == 2
    assert (tmp_path / "cut" / "best.pt").read_bytes() == (
        tmp_path / "whole" / "best.pt").read_bytes()
    assert [e["val_loss"] for e in resumed.history] == [e["val_loss"] for e in whole.history]

    # a cache cut short, or of another fit, is built again
    _stopped(store, config, tmp_path / "again", monkeypatch)
    import zarr

    array = zarr.open_array(str(tmp_path / "again" / "feature_cache" / "val"), mode="r+")
    array.attrs[cache_module.FINISHED_KEY] = {"key": "another fit", "rows": 24}
    monkeypatch.setattr(fit_module, "build_cache", counted)
    built.clear()
    fit(store, config, out_dir=tmp_path / "again")
    assert built == ["features val"]


def test_train_into_a_folder_with_an_unfinished_run_and_its_cache_resumes(store, tmp_path,
                                                                          monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["train", str(store), "--extractor", "alexnet", "--weights", "none", "--epochs", "2",
            "--batch-size", "32", "--loader", "torch", "--cache", "zarr", "--no-probe",
            "--quiet", "--out", str(out)]
    _epochs_trained(monkeypatch, stop_at=1)
    assert main(argv) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["feature_cache", RESUME_FILE]
    (out / "notes.txt").write_text("mine")  # the folder was accepted when the run began
    assert main(argv) == 0, capsys.readouterr().err
    assert "(resumed after epoch 1)" in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "mine"


def test_a_resumed_fit_keeps_the_cache_place_its_epochs_had(store, tmp_path, monkeypatch):
    """--cache auto chooses by the machine's RAM: resumed where it would choose otherwise, the
    on-disk cache's epoch order would change."""
    config = TrainConfig(extractor="alexnet", **{**SETTINGS, "cache": "auto"})
    monkeypatch.setattr(fit_module, "_resolve_cache", lambda config, run: "zarr")
    _stopped(store, config, tmp_path / "run", monkeypatch)
    monkeypatch.setattr(fit_module, "_resolve_cache", lambda config, run: "memory")
    assert fit(store, config, out_dir=tmp_path / "run").metrics["cache"] == "zarr"


def _argv(store, out, *more):
    return ["train", str(store), "--extractor", "alexnet", "--weights", "none", "--epochs", "3",
            "--batch-size", "32", "--loader", "torch", "--no-probe", "--quiet", *more,
            "--out", str(out)]


def test_a_fit_stopped_while_writing_its_run_files_resumes(store, tmp_path, monkeypatch):
    """best.pt written, metrics.json not: the rerun was refused as 'already holds a run',
    while the Ctrl-C line and info said it would resume."""
    config = TrainConfig(extractor="alexnet", **SETTINGS)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("fastimg.train.run_files"), "save_run_bundle",
                        stopped)
    with pytest.raises(KeyboardInterrupt):
        fit(store, config, out_dir=tmp_path / "run")
    monkeypatch.undo()
    assert (tmp_path / "run" / "best.pt").is_file()
    calls = _epochs_trained(monkeypatch)
    result = fit(store, config, out_dir=tmp_path / "run")
    assert calls == [] and result.metrics["resumed_after_epoch"] == 4


def test_a_train_force_stopped_resumes_without_force_and_replaces_the_run(
        store, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(_argv(store, out)) == 0
    _epochs_trained(monkeypatch, stop_at=1)
    assert main(_argv(store, out, "--epochs", "4", "--force")) == 130
    assert capsys.readouterr().err.strip() == ("fastimg train: interrupted (its finished epochs "
                                               "are kept: rerun without --force to resume)")
    monkeypatch.undo()
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "epochs     3 run" in shown  # the finished run, still there
    assert ("unfinished a train over this run (--force) stopped, 1 of 4 epochs done" in shown
            and "the same command without --force resumes it" in shown)
    calls = _epochs_trained(monkeypatch)
    assert main(_argv(store, out, "--epochs", "4")) == 0, capsys.readouterr().err
    assert calls == [1, 2, 3]
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 4


def test_a_killed_train_resumes_beside_its_cache_and_a_state_write_cut_short(store, tmp_path,
                                                                          monkeypatch, capsys):
    """SIGKILL leaves what no handler removed: the on-disk cache and a temporary state file.
    The rerun said 'is not empty; pass --force'."""
    out = tmp_path / "run"
    _epochs_trained(monkeypatch, stop_at=1)
    assert main(_argv(store, out, "--cache", "zarr")) == 130
    monkeypatch.undo()
    (out / f".{RESUME_FILE}.123.456.tmp").write_bytes(b"cut sh")
    capsys.readouterr()
    assert main(_argv(store, out, "--cache", "zarr")) == 0, capsys.readouterr().err
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("state", [{"key": json.dumps({"settings": {}}), "done": 1},
                                   {"key": "not json"}, b"cut short"])
def test_a_state_of_another_format_is_one_line_and_force_starts_over(store, tmp_path, capsys,
                                                                      state):
    out = tmp_path / "run"
    out.mkdir()
    if isinstance(state, bytes):
        (out / RESUME_FILE).write_bytes(state)
    else:
        torch.save(state, out / RESUME_FILE)
    assert main(_argv(store, out)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"whose {RESUME_FILE} cannot be read" in err and "--force" in err
    assert main(["info", str(out)]) == 0
    assert f"its {RESUME_FILE} cannot be read (cut short, or of another fastimg): fastimg " \
           f"train --force starts over" in capsys.readouterr().out
    assert main(["predict", str(out), "--input", "-", "--out", str(tmp_path / "p.csv")]) == 2
    assert "holds a training run that did not finish (no bundle.json yet): fastimg train with " \
           "its settings, without --force, resumes it" in capsys.readouterr().err
    assert main([*_argv(store, out), "--force"]) == 0


def test_the_key_holds_what_changes_the_numbers_as_it_resolves(store):
    from fastimg.train.data import StoreData
    from fastimg.train.resume import resume_key

    data = StoreData(store)
    config = TrainConfig(extractor="alexnet", **SETTINGS)
    cpu = resume_key(config, data, torch.device("cpu"), "torch")
    # device="auto" is the CPU here and CUDA (with AMP and channels_last) on a GPU machine
    assert resume_key(config, data, torch.device("cuda"), "torch") != cpu
    same = dataclasses.replace(config, device="cpu", amp=False, channels_last=False, probe=True,
                               cache_budget="1GiB", num_workers=2, progress=True)
    assert resume_key(same, data, torch.device("cpu"), "torch") == cpu
    assert resume_key(dataclasses.replace(config, seed=1), data, torch.device("cpu"),
                      "torch") != cpu


def test_a_resumed_fit_keeps_its_extractor_whatever_its_weights_file_holds_now(
        store, tmp_path, monkeypatch):
    import torchvision

    weights = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)
    config = TrainConfig(extractor="alexnet", **{**SETTINGS, "weights": str(weights)})
    whole = fit(store, config, out_dir=tmp_path / "whole")
    _stopped(store, config, tmp_path / "cut", monkeypatch, at=2)
    torch.manual_seed(1)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)
    resumed = fit(store, config, out_dir=tmp_path / "cut")
    assert [e["train_loss"] for e in resumed.history] == [e["train_loss"] for e in whole.history]


@pytest.mark.gpu
def test_a_cuda_fit_with_amp_resumes_its_scaler_and_random_state(store, tmp_path, monkeypatch):
    """On CUDA (no deterministic cuDNN algorithms are forced) the numbers may differ in their
    last bits: what must hold is that the state of each part comes back."""
    config = TrainConfig(extractor="alexnet", device="cuda", **SETTINGS)
    _stopped(store, config, tmp_path / "run", monkeypatch, at=2)
    state = torch.load(tmp_path / "run" / RESUME_FILE, weights_only=True)
    assert state["scaler"] and state["cuda_rng"] is not None  # AMP's scale, CUDA's generator
    calls = _epochs_trained(monkeypatch)
    result = fit(store, config, out_dir=tmp_path / "run")
    assert calls == [2, 3] and result.metrics["amp"] and result.metrics["resumed_after_epoch"] == 2
    assert result.val_accuracy > 0.9


def test_an_early_stopped_fit_cut_short_before_its_files_trains_no_epoch_again(
        store, tmp_path, monkeypatch):
    config = TrainConfig(extractor="alexnet", **{**SETTINGS, "epochs": 12, "patience": 1})
    whole = fit(store, config, out_dir=tmp_path / "whole")
    assert whole.metrics["stopped_early"] and len(whole.history) < 12

    def interrupted(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "_final_evaluation", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(store, config, out_dir=tmp_path / "run")
    monkeypatch.undo()
    calls = _epochs_trained(monkeypatch)
    result = fit(store, config, out_dir=tmp_path / "run")
    assert calls == [] and result.metrics["stopped_early"]
    assert len(result.history) == len(whole.history)


def test_a_refusal_names_the_settings_and_the_store_when_both_differ(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    write_store(path, n_rows=80)
    config = TrainConfig(extractor="alexnet", **SETTINGS)
    _stopped(path, config, tmp_path / "run", monkeypatch)
    _rebuilt(path, rebuilt=True)
    with pytest.raises(FileExistsError, match=r"\(seed: 0 -> 1; the store was rebuilt since, "
                                              r"or is another store\)"):
        fit(path, dataclasses.replace(config, seed=1), out_dir=tmp_path / "run")


def test_a_stopped_train_force_resumes_beside_what_the_folder_held(store, tmp_path,
                                                                 monkeypatch, capsys):
    """An explain/ folder in the run folder (the README's own example), or a run file's write
    that a kill cut short, made the rerun 'not empty; pass --force', which starts over."""
    out = tmp_path / "run"
    assert main(_argv(store, out)) == 0
    (out / "explain").mkdir()
    _epochs_trained(monkeypatch, stop_at=1)
    assert main(_argv(store, out, "--epochs", "4", "--force")) == 130
    monkeypatch.undo()
    (out / ".best.pt.123.456.tmp").write_bytes(b"cut sh")
    capsys.readouterr()
    calls = _epochs_trained(monkeypatch)
    assert main(_argv(store, out, "--epochs", "4")) == 0, capsys.readouterr().err
    assert calls == [1, 2, 3] and (out / "explain").is_dir()
    assert not list(out.glob(".*.tmp"))


def test_a_full_disk_during_train_force_says_to_resume_without_force(store, tmp_path,
                                                                     monkeypatch, capsys):
    import errno

    out = tmp_path / "run"
    assert main(_argv(store, out)) == 0
    train_epoch = fit_module._Run.train_epoch

    def full(run, epoch):
        if epoch == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return train_epoch(run, epoch)

    monkeypatch.setattr(fit_module._Run, "train_epoch", full)
    capsys.readouterr()
    assert main(_argv(store, out, "--force")) == 2
    assert capsys.readouterr().err.strip().endswith(
        "free some space, then rerun without --force to resume (its finished epochs are kept)")


def test_what_a_train_killed_before_its_first_state_leaves_does_not_block_the_next(
        store, tmp_path, capsys):
    """SIGKILL during the first epoch of `--cache zarr` left feature_cache/ (and maybe a state
    write cut short): the same command again said 'is not empty; pass --force'."""
    out = tmp_path / "run"
    (out / "feature_cache" / "train").mkdir(parents=True)
    (out / "feature_cache" / "train" / "zarr.json").write_text("{}")
    (out / f".{RESUME_FILE}.123.456.tmp").write_bytes(b"cut sh")
    assert main(_argv(store, out, "--cache", "zarr")) == 0, capsys.readouterr().err
    assert not list(out.glob(".*.tmp")) and (out / "metrics.json").is_file()

    mine = tmp_path / "mine"
    (mine / "feature_cache" / "my notes").mkdir(parents=True)  # not a fit's cache
    assert main(_argv(store, mine)) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
