"""Two commands on one store or run folder: the second gives way with one line, and nothing
half-written or mixed from two builds ever looks complete."""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from fastimg import store
from conftest import one_line
from fastimg.cli import main


def _images_args(matrix, out, *extra):
    return ["images", "--input", str(matrix), "--out", str(out), "--method", "pca",
            "--pixels", "8", "--quiet", *extra]


@pytest.fixture
def matrix(rng, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, rng.random((60, 120)).astype(np.float32))
    return path


def test_a_second_build_of_a_store_being_built_is_refused(matrix, tmp_path, monkeypatch,
                                                         capsys):
    """The second command would write into the first one's unfinished build (with --force
    and other settings it deletes the arrays the first is writing)."""
    from fastimg.layout import DeepInsightLayout

    out = tmp_path / "s.zarr"
    real_fit, second = DeepInsightLayout.fit, []

    def fit_while_another_command_builds(self, *args, **kwargs):
        if not second:  # the first build's layout: a second command starts meanwhile
            second.append(main(_images_args(matrix, out, "--pixels", "10", "--force")))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(DeepInsightLayout, "fit", fit_while_another_command_builds)
    assert main(_images_args(matrix, out)) == 0
    err = one_line(capsys.readouterr().err)
    assert second == [2]
    assert f"{out} is being written by another fastimg command (process {os.getpid()}" in err
    assert "wait for it to end, or choose another --out" in err
    assert store.StoreReader(out).images.shape == (60, 8, 8)  # the first build's, whole
    assert not (tmp_path / "s.zarr.lock").exists()
    monkeypatch.setattr(DeepInsightLayout, "fit", real_fit)
    assert main(_images_args(matrix, out, "--pixels", "10", "--force")) == 0  # lock let go


def test_the_lock_of_a_killed_build_holds_nobody_back(matrix, tmp_path):
    out = tmp_path / "s.zarr"
    with subprocess.Popen(
            [sys.executable, "-c", "import sys, time; from fastimg import store\n"
             "with store.build_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(60)",
             str(out)], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            assert main(_images_args(matrix, out)) == 2
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
    assert (tmp_path / "s.zarr.lock").exists()  # left behind by the kill, locked by nobody
    assert main(_images_args(matrix, out)) == 0
    assert store.is_complete(out) and not (tmp_path / "s.zarr.lock").exists()


def test_a_store_replaced_while_training_reads_it_gives_no_run(tmp_path, monkeypatch):
    """The arrays are read by path: after a --force rebuild the epochs read the new build's
    images, while the bundle records the layout of the store as it was opened."""
    from fastimg.train import TrainConfig, fit
    from test_train import FAST, write_store

    path, run_dir = tmp_path / "blobs.zarr", tmp_path / "runs" / "r"
    write_store(path, n_rows=120, grid=(16, 16))
    fit_module = importlib.import_module("fastimg.train.fit")  # fastimg.train.fit: fit()
    real = fit_module._final_evaluation

    def rebuilt_meanwhile(run):
        reader = store.StoreReader(path)
        arrays = {name: reader.group[name][:] for name in reader.group.array_keys()}
        arrays[store.IMAGES] = arrays[store.IMAGES][:, ::-1].copy()  # another layout
        store.write_store(path, arrays, dict(reader.attrs), force=True)
        return real(run)

    monkeypatch.setattr(fit_module, "_final_evaluation", rebuilt_meanwhile)
    with pytest.raises(store.StoreError, match="was replaced or deleted while this command"):
        fit(path, TrainConfig(**{**FAST, "epochs": 1}, probe=False), out_dir=run_dir)
    # no run that looks finished: the state of its epoch only, which read one build
    assert sorted(p.name for p in run_dir.iterdir()) == ["resume.pt"]


def test_a_store_or_run_inside_a_store_is_refused(matrix, tmp_path, capsys):
    """A rebuild of the outer store (--force) deleted what was inside it, silently, and a run
    folder that is a store hid the store from info."""
    from test_train import write_store

    outer = tmp_path / "outer.zarr"
    assert main(_images_args(matrix, outer)) == 0
    capsys.readouterr()
    for out in (outer / "inner.zarr", outer / "images" / "x.zarr", outer / "new" / "x.zarr"):
        assert main(_images_args(matrix, out)) == 2
        err = one_line(capsys.readouterr().err)
        assert f"{out} lies inside the store {outer}, whose rebuild would delete it" in err
    assert sorted(p.name for p in outer.iterdir()) == ["images", "zarr.json"]
    assert not list(outer.rglob("*.lock"))

    blobs = tmp_path / "blobs.zarr"
    write_store(blobs, n_rows=60, grid=(16, 16))
    for out, where in ((blobs, "is"), (blobs / "run", "lies inside")):
        assert main(["train", str(blobs), "--out", str(out), "--force", "--weights", "none",
                     "--epochs", "1", "--no-probe", "--quiet"]) == 2
        err = one_line(capsys.readouterr().err)
        assert f"{out} {where} the store {blobs}, whose rebuild would delete the run" in err
    assert store.is_complete(blobs) and not (blobs / "run").exists()
    assert not any((blobs / name).exists() for name in ("metrics.json", "config.json"))


def test_a_second_train_into_a_run_folder_being_written_is_refused(tmp_path, monkeypatch,
                                                                    capsys):
    """Its run files would mix with the first one's (and with --force it deleted the first
    one's on-disk feature cache)."""
    from fastimg.train import TrainConfig, fit
    from test_train import FAST, write_store

    path, run_dir = tmp_path / "blobs.zarr", tmp_path / "runs" / "r"
    write_store(path, n_rows=60, grid=(16, 16))
    fit_module = importlib.import_module("fastimg.train.fit")
    real, second = fit_module._final_evaluation, []

    def another_train_meanwhile(run):
        if not second:  # the first fit's end: a second train starts meanwhile
            second.append("started")
            second[0] = main(["train", str(path), "--out", str(run_dir), "--force",
                              "--weights", "none", "--epochs", "1", "--no-probe", "--quiet"])
        return real(run)

    monkeypatch.setattr(fit_module, "_final_evaluation", another_train_meanwhile)
    result = fit(path, TrainConfig(**{**FAST, "epochs": 1}, probe=False), out_dir=run_dir)
    assert second == [2]
    err = one_line(capsys.readouterr().err)
    assert f"{run_dir} is being written by another fastimg command (process" in err
    written = json.loads((run_dir / "metrics.json").read_text())["config"]
    assert written == json.loads(json.dumps(result.metrics["config"]))  # the first fit's run
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r"]  # no lock left


def test_a_source_replaced_while_relayout_copies_it_gives_no_store(tmp_path, tiny_bert_dir,
                                                                  monkeypatch, capsys):
    """relayout copies the source's corpus and embeddings by path: a --force rebuild of the
    source meanwhile would have given the new store two builds' rows."""
    import shutil

    from conftest import tiny_reviews, write_csv
    from fastimg import stages

    corpus = write_csv(tmp_path / "c.csv", tiny_reviews(40), ("id", "text", "label"))
    src, dst = tmp_path / "src.zarr", tmp_path / "dst.zarr"
    build = ["build-dataset", "--input", str(corpus), "--model", str(tiny_bert_dir),
             "--max-length", "16", "--method", "pca", "--pixels", "8", "--quiet"]
    assert main([*build, "--out", str(src)]) == 0
    real = stages.reconcile

    def rebuilt_while_copied(*args, **kwargs):
        reused = real(*args, **kwargs)
        shutil.copytree(src, tmp_path / "rebuilt.zarr")  # a rebuild moves another folder in
        shutil.rmtree(src)
        (tmp_path / "rebuilt.zarr").rename(src)
        return reused

    monkeypatch.setattr(stages, "reconcile", rebuilt_while_copied)
    assert main(["relayout", str(src), "--out", str(dst), "--pixels", "10", "--method", "pca",
                 "--quiet"]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"{src} was replaced or deleted while this command read it" in err
    assert not store.location.is_complete(dst)
    # nor an unfinished build whose rerun would resume with what was copied
    assert not store.partial_path(dst).exists()


def test_the_lock_of_a_folder_is_one_whatever_its_spelling(tmp_path, monkeypatch):
    """`train --out .` failed (`Path('.').with_name`), and `a/..` or a symlink named another
    lock file, so two commands on one folder were not kept apart."""
    folder = tmp_path / "run"
    folder.mkdir()
    (tmp_path / "alias").symlink_to(folder)
    monkeypatch.chdir(folder)
    with store.build_lock("."):
        assert (tmp_path / "run.lock").is_file()
        for spelling in (folder, tmp_path / "alias", folder / "sub" / "..", "."):
            with pytest.raises(store.StoreError, match="is being written by another"):
                with store.build_lock(spelling):
                    pass
    assert not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize("failure", ["no locks", "no fcntl"])
def test_a_folder_that_cannot_be_locked_is_built_with_a_warning_and_nothing_left(
        matrix, tmp_path, monkeypatch, caplog, failure):
    """Without flock (NFS without lockd) the lock file stayed behind with the folders made for
    it."""
    import errno
    import fcntl

    if failure == "no locks":
        def flock(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")

        monkeypatch.setattr(fcntl, "flock", flock)
    else:  # Windows
        monkeypatch.setitem(sys.modules, "fcntl", None)
    out = tmp_path / "new" / "dir" / "s.zarr"
    with caplog.at_level("WARNING", logger="fastimg.store"):
        assert main(_images_args(matrix, out)) == 0
    assert "a second command writing" in caplog.text and store.is_complete(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.zarr"]


def test_a_lock_file_that_cannot_be_made_warns_only_where_the_folder_is_writable(
        matrix, tmp_path, monkeypatch, caplog, capsys):
    """A run folder mounted writable under a read-only parent was refused for its lock file;
    a store whose parent is read-only printed that warning and then the error that mattered."""
    import errno

    real_open = os.open

    def read_only_lock(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_lock)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with caplog.at_level("WARNING", logger="fastimg.store"):
        with store.build_lock(run_dir):
            pass
    assert "cannot lock" in caplog.text
    caplog.clear()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # nothing writable there
    assert main(_images_args(matrix, tmp_path / "s.zarr")) == 2
    err = one_line(capsys.readouterr().err)
    # the store is named, not the lock file the user never asked for
    assert err.endswith(f"error: cannot write {tmp_path / 's.zarr'}: Read-only file system "
                        f"(in {os.path.realpath(tmp_path)})")
    assert "cannot lock" not in caplog.text


def test_a_zarr_json_that_is_not_zarrs_is_no_store_around(tmp_path):
    (tmp_path / "zarr.json").write_text("[1, 2]")
    assert store.location.store_around(tmp_path / "x.zarr") is None
