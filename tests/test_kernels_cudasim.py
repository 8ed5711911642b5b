"""The CUDA kernel's contract, checked on the CPU under numba's CUDA simulator."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastimg.kernels import RasterPlan, raster_reference

pytest.importorskip("numba.cuda")
pytestmark = pytest.mark.cudasim

CASES = {  # name: (n_rows, n_features, grid, scaling, dtype, fill)
    "square_more_features": (6, 300, (10, 10), "norm2", np.float16, 0.0),
    "square_fewer_features": (5, 40, (10, 10), "minmax", np.float32, -1.0),
    "non_square": (4, 90, (5, 12), "none", np.float32, 0.5),
    # the worker forces the global-memory fallback (used for rows too long for shared memory)
    "global_fallback": (5, 120, (6, 7), "norm2", np.float16, -0.5),
}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    rng = np.random.default_rng(7)
    tmp = tmp_path_factory.mktemp("cudasim")
    arrays, expected = {}, {}
    for name, (n, f, grid, scaling, dtype, fill) in CASES.items():
        pixels = rng.integers(0, grid[0] * grid[1], f)
        shift, scale = rng.random(f) + 1.0, rng.random(f) + 0.1
        x = rng.random((n, f)).astype(dtype)
        if name == "non_square":
            x[2, 3] = np.nan
        arrays.update({f"{name}__x": x, f"{name}__pixels": pixels, f"{name}__shape": grid,
                       f"{name}__scaling": scaling, f"{name}__shift": shift,
                       f"{name}__scale": scale, f"{name}__fill": fill})
        plan = RasterPlan.from_pixels(pixels, grid, scaling=scaling, shift=shift, scale=scale,
                                      fill_value=fill)
        expected[name] = raster_reference(x, plan, np.empty((n, *grid)))
    np.savez(tmp / "in.npz", **arrays)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    worker = Path(__file__).with_name("cudasim_worker.py")
    subprocess.run([sys.executable, str(worker), str(tmp / "in.npz"), str(tmp / "out.npz")],
                   env=env, check=True, timeout=600)
    return np.load(tmp / "out.npz"), expected


@pytest.mark.parametrize("name", ["square_more_features", "square_fewer_features",
                                  "global_fallback"])
def test_cuda_kernel_matches_reference(simulated, name):
    got, expected = simulated
    assert int(got[f"{name}__bad"]) == 0
    np.testing.assert_allclose(got[f"{name}__images"], expected[name], atol=1e-5, rtol=0)


def test_cuda_kernel_refuses_an_out_it_could_not_write_in_place(simulated):
    got, _ = simulated
    assert got["contract__refused"].tolist() == [True, True, True]  # strided, float16, short
    assert str(got["contract__interface_dtype"]) == "float16"


def test_cuda_kernel_non_square_grid_and_non_finite_count(simulated):
    got, expected = simulated
    assert int(got["non_square__bad"]) == 1
    images, ref = got["non_square__images"], expected["non_square"]
    finite_rows = [0, 1, 3]
    np.testing.assert_allclose(images[finite_rows], ref[finite_rows], atol=1e-5, rtol=0)


def test_raster_benchmarks_cuda_figures_under_the_simulator():
    """benchmarks/raster.py's GPU section (run only on a GPU machine) times the right images."""
    pytest.importorskip("pyDeepInsight")  # benchmarks.raster imports it at the top of run()
    root = Path(__file__).resolve().parents[1]
    script = (
        "import json, numpy as np\n"
        "from benchmarks.raster import _cuda_figures\n"
        "from fastimg.kernels import RasterPlan, raster_reference\n"
        "rng = np.random.default_rng(3)\n"
        "raw = rng.standard_normal((2, 40)).astype(np.float16)\n"
        "pixels = rng.integers(0, 25, 40)\n"
        "shift, scale = rng.random(40), rng.random(40) + 0.5\n"
        "plan = RasterPlan.from_pixels(pixels, (5, 5))\n"
        "fused = RasterPlan.from_pixels(pixels, (5, 5), scaling='norm2', shift=shift,"
        " scale=scale)\n"
        "x = ((raw.astype(np.float32) - shift) / scale).astype(np.float16)\n"
        "ours = raster_reference(x, plan, np.empty((2, 5, 5), np.float32))\n"
        "fused_ours = raster_reference(raw, fused, np.empty((2, 5, 5), np.float32))\n"
        "print(json.dumps(_cuda_figures(x, raw, plan, fused, ours, fused_ours, 1.0, 1)))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = __import__("json").loads(done.stdout.splitlines()[-1])
    assert figures["max_abs_diff_cuda_vs_cpu"] <= 1e-5
    assert figures["max_abs_diff_cuda_vs_cpu_fused_norm2"] <= 1e-5
    assert figures["fastimg_cuda_kernel_s"] > 0 and figures["fastimg_cuda_fused_norm2_kernel_s"] > 0
