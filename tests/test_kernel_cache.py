"""The CPU kernel is compiled once per machine (Numba's on-disk cache) and still runs as plain
Python under Numba's JIT switch. Each check runs in fresh processes: the cache only matters
there."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from fastimg.kernels import RasterPlan

ROOT = Path(__file__).resolve().parents[1]

RUN_KERNEL = """
import json
import numpy as np

from fastimg.kernels import RasterPlan
from fastimg.kernels import RasterPlan, cpu, raster_reference

rng = np.random.default_rng(0)
plan = RasterPlan.from_pixels(rng.integers(0, 36, 50), (6, 6), scaling="norm2",
                              shift=np.ones(50, np.float32), scale=np.full(50, 0.3, np.float32))
x = rng.random((9, 50)).astype(np.float16)
out = np.empty((9, 6, 6), np.float32)
cpu.raster_cpu(x, plan, out)
ref = raster_reference(x, plan, np.empty((9, 6, 6)))
stats = getattr(cpu._raster, "stats", None)
print(json.dumps({
    "max_diff": float(np.abs(out - ref).max()),
    "compiled": not isinstance(cpu._raster, type(raster_reference)),
    "hits": 0 if stats is None else sum(stats.cache_hits.values()),
    "misses": 0 if stats is None else sum(stats.cache_misses.values()),
}))
"""


def run_kernel(**env) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", RUN_KERNEL], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path, **env}, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_compiled_kernel_from_disk(tmp_path):
    first = run_kernel(NUMBA_CACHE_DIR=str(tmp_path))
    second = run_kernel(NUMBA_CACHE_DIR=str(tmp_path))
    assert first["compiled"] and first["misses"] == 1 and first["max_diff"] < 1e-5
    # a closure-made kernel was keyed by a per-process pickle and recompiled every time
    assert second["hits"] == 1 and second["misses"] == 0 and second["max_diff"] < 1e-5
    assert len(list(tmp_path.rglob("*.nbc"))) == 1


def test_kernel_runs_as_plain_python_under_the_jit_switch(tmp_path):
    got = run_kernel(NUMBA_DISABLE_JIT="1", NUMBA_CACHE_DIR=str(tmp_path))
    assert not got["compiled"] and got["max_diff"] < 1e-5
    assert np.isfinite(got["max_diff"])


def test_warm_up_loads_the_cpu_kernel_once_in_the_background(monkeypatch):
    from fastimg import raster

    monkeypatch.setattr(raster, "_WARM_UPS", {})
    raster.warm_up("numpy")  # nothing to load
    raster.warm_up("tpu")  # unknown: left for the real call to report
    assert raster._WARM_UPS == {}
    raster.warm_up("auto")
    thread = raster._WARM_UPS["cpu"]
    raster.warm_up("cpu")
    assert raster._WARM_UPS == {"cpu": thread}
    # rasterising waits for it, then uses the loaded kernel
    plan = RasterPlan.from_pixels([0, 1, 1], (2, 2))
    got = raster.rasterize(np.array([[1.0, 2.0, 4.0]], np.float32), plan, backend="cpu")
    assert not thread.is_alive()
    np.testing.assert_array_equal(got[0], [[1.0, 3.0], [0.0, 0.0]])
