"""Two commands on one store or run folder: the second gives way with one line, and nothing
half-written or mixed from two builds ever looks complete."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from fastimg import store
from fastimg.cli import main


def _images_args(matrix, out, *extra):
    return ["images", "--input", str(matrix), "--out", str(out), "--method", "pca",
            "--pixels", "8", "--quiet", *extra]


@pytest.fixture
def matrix(rng, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, rng.random((60, 120)).astype(np.float32))
    return path


def one_line(err: str) -> str:
    err = err.strip()
    assert err and "\n" not in err, err
    return err


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
    assert f"{out} is being built by another fastimg command (process {os.getpid()}" in err
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
