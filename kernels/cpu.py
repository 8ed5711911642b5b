"""Numba CPU rasterisation kernel (``@njit(parallel=True)``).

Each row is widened to float32 and scaled in a per-thread buffer, then scatter-added into a
per-thread pixel accumulator that stays in L1, and finished with a branch-free
``sum * inv_count + empty_fill``. Scattering in feature order keeps the inner loops free of the
data-dependent branches a per-pixel gather would have (those mispredictions cost more than the
memory traffic). Numba's CPU target has no float16 type, so float16 input is read through a
``uint16`` view and widened with a vectorisable bit trick. Non-finite input is counted on the way
and returned, so validation costs no extra pass over the data.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .plan import RasterPlan

_ROWS_PER_TASK = 64
# 2**112 moves a float16 exponent (bias 15) into float32's range (bias 127).
_F16_EXPONENT_ADJUST = np.float32(2.0**112)


@njit(cache=True, inline="always")
def _scale_scatter_finish(buf, adjust, acc, code, shift, scale, pixel_of_feature, inv_count,
                          empty_fill, out_row):
    # ``buf[f] * adjust`` is the input value (adjust finishes the float16 widening)
    n_features = buf.shape[0]
    if code == 1:
        for f in range(n_features):
            v = (buf[f] * adjust + shift[f]) * scale[f]
            buf[f] = min(max(v, np.float32(0.0)), np.float32(1.0))
        adjust = np.float32(1.0)
    elif code == 2:
        for f in range(n_features):
            v = np.log(max(buf[f] * adjust + shift[f], np.float32(1.0))) * scale[f]
            buf[f] = min(max(v, np.float32(0.0)), np.float32(1.0))
        adjust = np.float32(1.0)
    acc[:] = 0.0
    for f in range(n_features):
        acc[pixel_of_feature[f]] += buf[f] * adjust
    for p in range(out_row.shape[0]):
        out_row[p] = acc[p] * inv_count[p] + empty_fill[p]


@njit(parallel=True, cache=True)
def _raster_f32(x, pixel_of_feature, inv_count, empty_fill, shift, scale, code, out):
    n_rows, n_features = x.shape
    n_tasks = (n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    n_bad = 0
    for t in prange(n_tasks):
        buf = np.empty(n_features, dtype=np.float32)
        acc = np.empty(out.shape[1], dtype=np.float32)
        bad = 0
        for i in range(t * _ROWS_PER_TASK, min(n_rows, (t + 1) * _ROWS_PER_TASK)):
            for f in range(n_features):
                v = x[i, f]
                bad += not (abs(v) < np.inf)
                buf[f] = v
            _scale_scatter_finish(buf, np.float32(1.0), acc, code, shift, scale,
                                  pixel_of_feature, inv_count, empty_fill, out[i])
        n_bad += bad
    return n_bad


@njit(parallel=True, cache=True)
def _raster_f16(x_bits, pixel_of_feature, inv_count, empty_fill, shift, scale, code, out):
    n_rows, n_features = x_bits.shape
    n_tasks = (n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    n_bad = 0
    for t in prange(n_tasks):
        bits = np.empty(n_features, dtype=np.uint32)
        buf = bits.view(np.float32)
        acc = np.empty(out.shape[1], dtype=np.float32)
        bad = 0
        for i in range(t * _ROWS_PER_TASK, min(n_rows, (t + 1) * _ROWS_PER_TASK)):
            for f in range(n_features):
                h = np.uint32(x_bits[i, f])
                bad += (h & 0x7C00) == 0x7C00  # exponent all ones: inf or nan
                bits[f] = ((h & 0x8000) << 16) | ((h & 0x7FFF) << 13)
            _scale_scatter_finish(buf, _F16_EXPONENT_ADJUST, acc, code, shift, scale,
                                  pixel_of_feature, inv_count, empty_fill, out[i])
        n_bad += bad
    return n_bad


def raster_cpu(x: np.ndarray, plan: RasterPlan, out: np.ndarray) -> int:
    """Rasterise ``x`` [n, F] (float16 or float32) into the float32 ``out`` [n, H, W].

    Returns
    -------
    int
        Number of non-finite input values seen (the pixels they fall on are undefined); callers
        that accept untrusted data raise on a non-zero count.
    """
    x = np.ascontiguousarray(x)
    if out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 array")
    if x.ndim != 2 or x.shape[1] != plan.n_features or out.shape[0] != x.shape[0]:
        raise ValueError(f"expected x of shape (n, {plan.n_features}) and out with n rows")
    args = (plan.pixel_of_feature, plan.inv_count, plan.empty_fill, plan.shift, plan.scale,
            plan.scaling_code, out.reshape(out.shape[0], -1))
    if x.dtype == np.float16:
        return int(_raster_f16(x.view(np.uint16), *args))
    if x.dtype == np.float32:
        return int(_raster_f32(x, *args))
    raise TypeError(f"raster_cpu takes float16 or float32 input, got {x.dtype}")
