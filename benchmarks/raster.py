"""Rasterisation: fastimg's CPU kernel against pyDeepInsight's ImageTransformer.transform.

Both get the same already-scaled float16 matrix and the same pixel coordinates (taken from a
fitted pyDeepInsight transformer); fastimg's fused norm2 variant is timed too, against
pyDeepInsight's Norm2Scaler.transform followed by transform.

When numba finds a CUDA GPU, the CUDA backend is timed as well: end to end from the host arrays
(upload, kernel, download) and kernel only (input, plan and output already on the device), with
the largest difference between its images and the CPU kernel's.
"""
from __future__ import annotations

import numpy as np

from benchmarks._harness import left_out, median_time, report
from fastimg.kernels import RasterPlan
from fastimg.layout import FeatureScaler
from fastimg.raster import rasterize


def _cuda_figures(x, raw, plan, fused_plan, ours, fused_ours, base_s, repeats) -> dict:
    from fastimg.raster import _cuda_available

    if not _cuda_available():
        return {"left_out": [left_out("the cuda columns", "numba finds no CUDA GPU here")]}
    from numba import cuda

    from fastimg.kernels.cuda import CudaPlan, raster_cuda

    images = np.empty_like(ours)
    end_to_end_s = median_time(lambda: rasterize(x, plan, backend="cuda", out=images),
                               repeats=repeats)
    rasterize(x, plan, backend="cuda", out=images)
    diff = float(np.abs(images - ours).max())

    d_out = cuda.device_array((x.shape[0], plan.n_pixels), dtype=np.float32)

    def kernel_only_s(host, raster_plan) -> float:
        """Median kernel time, input, plan and output on the device (freed on return)."""
        d_in, d_plan = cuda.to_device(host), CudaPlan(raster_plan)

        def once():
            raster_cuda(d_in, d_plan, d_out)  # returns after reading the non-finite count back
            cuda.synchronize()

        return median_time(once, repeats=max(repeats, 10))

    kernel_s = kernel_only_s(x, plan)
    fused_kernel_s = kernel_only_s(raw, fused_plan)  # d_out now holds the fused images
    fused_diff = float(np.abs(d_out.copy_to_host().reshape(fused_ours.shape) - fused_ours).max())
    name = getattr(cuda.get_current_device(), "name", "CUDA simulator")
    return {
        "cuda_device": name.decode() if isinstance(name, bytes) else str(name),
        "fastimg_cuda_s": end_to_end_s, "fastimg_cuda_kernel_s": kernel_s,
        "ratio_cuda": base_s / end_to_end_s, "ratio_cuda_kernel": base_s / kernel_s,
        "max_abs_diff_cuda_vs_cpu": diff,
        "fastimg_cuda_fused_norm2_kernel_s": fused_kernel_s,
        "max_abs_diff_cuda_vs_cpu_fused_norm2": fused_diff,
    }


class _FixedEmbedding:
    def __init__(self, coords):
        self.coords = coords

    def fit_transform(self, X):
        return self.coords


def run(quick: bool = False, json_path: str | None = None) -> dict:
    from pyDeepInsight import ImageTransformer
    from pyDeepInsight.utils import Norm2Scaler

    n_rows, n_features = (4_000, 4_608) if quick else (50_000, 4_608)
    grid = (50, 50)
    rng = np.random.default_rng(0)
    raw = (rng.standard_normal((n_rows, n_features), dtype=np.float32)).astype(np.float16)
    coords = rng.standard_normal((n_features, 2)) * [3.0, 1.0]
    it = ImageTransformer(feature_extractor=_FixedEmbedding(coords), pixels=grid).fit(raw[:100])
    rc = it.coords()
    pixels = rc[:, 0] * grid[1] + rc[:, 1]
    plan = RasterPlan.from_pixels(pixels, grid)
    scaler = FeatureScaler.fit(raw, "norm2")
    x = scaler.transform(raw).astype(np.float16)  # the same scaled float16 matrix for both
    out = np.empty((n_rows, *grid), dtype=np.float32)
    repeats = 5 if quick else 3

    fast_s = median_time(lambda: rasterize(x, plan, backend="cpu", out=out), repeats=repeats)
    ours = rasterize(x, plan, backend="cpu", out=out).copy()
    # pyDeepInsight rounds float16 means to float16, so the correctness figure uses float32 input
    base_scalar = it.transform(x.astype(np.float32), img_format="scalar")
    max_abs_diff = float(np.abs(ours - base_scalar).max())
    del base_scalar
    base_s = median_time(lambda: it.transform(x, img_format="scalar"), repeats=repeats if quick
                         else 1, warmup=0)
    rgb_s = median_time(lambda: it.transform(x, img_format="rgb"), repeats=1, warmup=0)

    fused_plan = RasterPlan.from_pixels(pixels, grid, scaling="norm2", shift=scaler.shift,
                                        scale=scaler.scale)
    fused_s = median_time(lambda: rasterize(raw, fused_plan, backend="cpu", out=out),
                          repeats=repeats)
    gpu = _cuda_figures(x, raw, plan, fused_plan, ours, out, base_s, repeats)
    pdi_scaler = Norm2Scaler().fit(raw)
    fused_base_s = median_time(
        lambda: it.transform(pdi_scaler.transform(raw), img_format="scalar"), repeats=1,
        warmup=0)
    return report({
        "suite": "raster", "baseline": "pyDeepInsight ImageTransformer.transform('scalar')",
        "shape": [n_rows, n_features], "grid": list(grid), "input_dtype": "float16",
        "fastimg_s": fast_s, "baseline_s": base_s, "max_abs_diff": max_abs_diff,
        "input_GB_per_s": x.nbytes / fast_s / 1e9, "images_per_s": n_rows / fast_s,
        "baseline_rgb_s": rgb_s, "ratio_vs_rgb": rgb_s / fast_s,
        "fastimg_fused_norm2_s": fused_s, "baseline_norm2_then_scalar_s": fused_base_s,
        "ratio_fused_norm2": fused_base_s / fused_s, **gpu,
    }, json_path)
