"""Numba CPU rasterisation kernel.

The kernel is compiled ``nogil`` and run by ``numba.get_num_threads()`` Python threads that take
blocks of ``_ROWS_PER_BLOCK`` rows from a shared counter (dynamic scheduling).
Per task of ``_ROWS_PER_TASK`` rows, each thread keeps small buffers that stay in L1:

1. *widen*: the input row is read once, contiguously, as raw bits (a ``uint16`` view for float16
   -- Numba's CPU target has no float16 type -- or a ``uint32`` view for float32) and widened to
   float32 with a vectorised bit trick. The same pass keeps a running maximum of the magnitude
   bits, so validation costs one vector ``max`` per element instead of a compare-and-count; a
   task whose maximum says "inf or NaN somewhere" is recounted exactly on a slow path (never
   taken for clean data).
2. *scale* (``minmax`` / ``norm2`` only): a vectorised pass over the widened row. ``norm2`` needs
   ``log``, which Numba would lower to a scalar libm call per element (there is no SVML in our
   llvmlite build); :func:`_log_ge1` is a branch-free exponent/mantissa split plus an odd
   polynomial in ``(m - 1) / (m + 1)`` that LLVM vectorises (relative error ~1e-7, far inside
   the 1e-5 parity tolerance).
3. *scatter*: ``_ROWS_PER_PASS`` rows are scatter-added together into per-row pixel
   accumulators, so one load of ``pixel_of_feature[f]`` serves several rows and the
   store-to-load chains of features that share a pixel are interleaved instead of serialised.
   A per-pixel gather with segment sums was measured too and lost: its variable-length inner
   loops mispredict and Numba does not emit vector gathers for it.
4. *finish*: branch-free ``sum * inv_count + empty_fill`` per pixel (vectorised).

Index arrays are passed as ``uint32`` so Numba emits no negative-index wraparound code in the
scatter (that alone was ~20% of the kernel). Summation order per pixel is feature order, so
results are deterministic and independent of the thread count.
"""
from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, types
from numba.extending import overload

from .plan import RasterPlan

_ROWS_PER_TASK = 64
_ROWS_PER_BLOCK = 1024  # rows a worker thread takes at a time
_ROWS_PER_PASS = 2
# 2**112 moves a float16 exponent (bias 15) into float32's range (bias 127).
_F16_EXPONENT_ADJUST = np.float32(2.0**112)
_F16_MAG_INF = 0x7C00        # float16 magnitude bits at or above this: inf or nan
_F32_MAG_INF = 0x7F800000    # the same for float32
_LN2 = np.float32(np.log(2.0))
_SQRT2_BITS = np.uint32(0x3FB504F3)  # float32 bits of sqrt(2)


@njit(cache=True, inline="always")
def _widen_f16(row, bits):
    """float16 bits -> float32 bits / 2**112 (the caller multiplies by 2**112); returns the
    largest magnitude seen (as float16 bits)."""
    mx = np.uint32(0)
    for f in range(row.shape[0]):
        h = np.uint32(row[f])
        mag = h & np.uint32(0x7FFF)
        mx = max(mx, mag)
        bits[f] = ((h & np.uint32(0x8000)) << np.uint32(16)) | (mag << np.uint32(13))
    return mx


@njit(cache=True, inline="always")
def _widen_f32(row, bits):
    mx = np.uint32(0)
    for f in range(row.shape[0]):
        u = row[f]
        mx = max(mx, u & np.uint32(0x7FFFFFFF))
        bits[f] = u
    return mx


@njit(cache=True, inline="always")
def _count_bad_f16(row):
    bad = 0
    for f in range(row.shape[0]):
        bad += (np.uint32(row[f]) & np.uint32(0x7C00)) == np.uint32(0x7C00)
    return bad


@njit(cache=True, inline="always")
def _count_bad_f32(row):
    bad = 0
    for f in range(row.shape[0]):
        bad += (row[f] & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
    return bad


@njit(cache=True, inline="always")
def _log_ge1(buf, bits, expo):
    """``expo[f] = log(buf[f])`` for finite ``buf[f] >= 1`` (``bits`` is ``buf``'s uint32
    view; ``buf`` is clobbered), vectorised.

    ``x = m * 2**e`` with ``m`` in [sqrt(1/2), sqrt(2)), ``log x = e * ln 2 + log m`` and
    ``log m = 2 atanh(t)``, ``t = (m - 1) / (m + 1)``, ``|t| <= 0.172``: the odd series to
    ``t**9`` leaves a truncation error below 1e-9. The result goes to ``expo`` rather than back
    to ``buf``: a loop that reads and writes ``buf`` through two views is not vectorised.
    """
    n = buf.shape[0]
    for f in range(n):
        u = bits[f]
        e = np.int32(u >> np.uint32(23)) - np.int32(127)
        m = (u & np.uint32(0x007FFFFF)) | np.uint32(0x3F800000)
        big = np.uint32(m > _SQRT2_BITS)
        bits[f] = m - (big << np.uint32(23))  # halve m when it is above sqrt(2)
        expo[f] = np.float32(e + np.int32(big))
    for f in range(n):
        m = buf[f]
        t = (m - np.float32(1.0)) / (m + np.float32(1.0))
        t2 = t * t
        p = np.float32(1.0 / 9.0)
        p = p * t2 + np.float32(1.0 / 7.0)
        p = p * t2 + np.float32(1.0 / 5.0)
        p = p * t2 + np.float32(1.0 / 3.0)
        p = p * t2 + np.float32(1.0)
        expo[f] = expo[f] * _LN2 + np.float32(2.0) * t * p


@njit(cache=True, inline="always")
def _scale_row(buf, bits, expo, adjust, code, shift, scale):
    """Apply the plan's scaling to one widened row in place (``buf * adjust`` is the input)."""
    n = buf.shape[0]
    if code == 1:
        for f in range(n):
            v = (buf[f] * adjust + shift[f]) * scale[f]
            buf[f] = min(max(v, np.float32(0.0)), np.float32(1.0))
    elif code == 2:
        for f in range(n):
            buf[f] = max(buf[f] * adjust + shift[f], np.float32(1.0))
        _log_ge1(buf, bits, expo)
        for f in range(n):
            buf[f] = min(max(expo[f] * scale[f], np.float32(0.0)), np.float32(1.0))


def _widen(row, bits):
    """Widen one row of raw input bits (``uint16``: float16, ``uint32``: float32) into ``bits``;
    returns the largest magnitude seen. This Python body runs under ``NUMBA_DISABLE_JIT=1``;
    compiled code takes the :func:`_widen_overload` specialisation, chosen by type at compile
    time (a closure over the helpers would do the same, but Numba's on-disk cache keys closures by
    a pickle that changes in every process, so it never hit)."""
    return _widen_f16(row, bits) if row.dtype == np.uint16 else _widen_f32(row, bits)


def _count_bad(row):
    """Number of inf/NaN values in one row of raw input bits (Python body: see :func:`_widen`)."""
    return _count_bad_f16(row) if row.dtype == np.uint16 else _count_bad_f32(row)


def _mag_inf(row):
    """Magnitude bits at or above which a value of ``row``'s type is inf or NaN."""
    return np.uint32(_F16_MAG_INF if row.dtype == np.uint16 else _F32_MAG_INF)


@overload(_widen, inline="always")
def _widen_overload(row, bits):
    if row.dtype == types.uint16:
        return lambda row, bits: _widen_f16(row, bits)
    return lambda row, bits: _widen_f32(row, bits)


@overload(_count_bad, inline="always")
def _count_bad_overload(row):
    if row.dtype == types.uint16:
        return lambda row: _count_bad_f16(row)
    return lambda row: _count_bad_f32(row)


@overload(_mag_inf, inline="always")
def _mag_inf_overload(row):
    mag_inf = np.uint32(_F16_MAG_INF if row.dtype == types.uint16 else _F32_MAG_INF)
    return lambda row: mag_inf


def _raster_kernel(x_bits, pixel_of_feature, inv_count, empty_fill, shift, scale, code, adjust,
                   out):
    """``x_bits`` [n, F] raw input bits; ``inv_count`` already includes ``adjust`` when
    ``code == 0`` (no scaling pass to apply it)."""
    n_rows, n_features = x_bits.shape
    n_pixels = out.shape[1]
    n_tasks = (n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    n_bad = 0
    for t in range(n_tasks):
        bits = np.zeros(_ROWS_PER_PASS * n_features, dtype=np.uint32)
        buf = bits.view(np.float32)
        expo = np.empty(n_features if code == 2 else 0, dtype=np.float32)
        acc = np.empty(_ROWS_PER_PASS * n_pixels, dtype=np.float32)
        b0 = buf[:n_features]
        b1 = buf[n_features:]
        a0 = acc[:n_pixels]
        a1 = acc[n_pixels:]
        lo = t * _ROWS_PER_TASK
        hi = min(n_rows, lo + _ROWS_PER_TASK)
        mx = np.uint32(0)
        for i0 in range(lo, hi, _ROWS_PER_PASS):
            n_pass = min(_ROWS_PER_PASS, hi - i0)
            for r in range(n_pass):
                rb = bits[r * n_features:(r + 1) * n_features]
                mx = max(mx, _widen(x_bits[i0 + r], rb))
                if code != 0:
                    _scale_row(buf[r * n_features:(r + 1) * n_features], rb, expo,
                               adjust, code, shift, scale)
            if n_pass < _ROWS_PER_PASS:
                b1[:] = 0.0
            acc[:] = 0.0
            for f in range(n_features):
                p = np.uintp(pixel_of_feature[f])
                a0[p] += b0[f]
                a1[p] += b1[f]
            for r in range(n_pass):
                ar = acc[r * n_pixels:(r + 1) * n_pixels]
                orow = out[i0 + r]
                for p in range(n_pixels):
                    orow[p] = ar[p] * inv_count[p] + empty_fill[p]
        if mx >= _mag_inf(x_bits[lo]):  # rare: count exactly
            bad = 0
            for i in range(lo, hi):
                bad += _count_bad(x_bits[i])
            n_bad += bad
    return n_bad


# The serial kernel releases the GIL and is run on blocks of rows by a pool of Python threads
# (see raster_cpu). error_model="numpy": no ZeroDivisionError branch on the division in
# _log_ge1, which otherwise keeps that loop scalar (the denominator is m + 1 >= 1.7 anyway).
# cache=True: compiled once per machine, then loaded from __pycache__ (or $NUMBA_CACHE_DIR).
# One signature per input type (uint16: float16, uint32: float32).
_raster = njit(nogil=True, cache=True, error_model="numpy")(_raster_kernel)


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
    if x.dtype == np.float16:
        x_bits, adjust = x.view(np.uint16), _F16_EXPONENT_ADJUST
    elif x.dtype == np.float32:
        x_bits, adjust = x.view(np.uint32), np.float32(1.0)
    else:
        raise TypeError(f"raster_cpu takes float16 or float32 input, got {x.dtype}")
    code = plan.scaling_code
    inv_count = plan.inv_count if code != 0 else (plan.inv_count * adjust).astype(np.float32)
    args = (plan.pixel_of_feature.astype(np.uint32), inv_count, plan.empty_fill, plan.shift,
            plan.scale, code, adjust)
    out2d = out.reshape(out.shape[0], -1)
    n_rows = x_bits.shape[0]
    n_threads = _n_threads()
    if n_threads == 1 or n_rows <= _ROWS_PER_BLOCK:
        return int(_raster(x_bits, *args, out2d))
    # Dynamic scheduling: each thread takes the next block of rows until none is left, so a
    # thread that loses its core to another process does not hold the others up (a prange
    # splits the rows statically; measured ~15% slower in median on a shared 2-core machine).
    blocks = itertools.count()

    def work():
        bad = 0
        while True:
            lo = next(blocks) * _ROWS_PER_BLOCK  # itertools.count is atomic under the GIL
            if lo >= n_rows:
                return bad
            hi = min(n_rows, lo + _ROWS_PER_BLOCK)
            bad += _raster(x_bits[lo:hi], *args, out2d[lo:hi])

    pool = _pool(n_threads)
    return int(sum(f.result() for f in [pool.submit(work) for _ in range(n_threads)]))


def _n_threads() -> int:
    """``numba.get_num_threads()``, without launching Numba's threading layer to ask.

    The kernel runs on Python threads, never on that layer; and its first launch, with the
    OpenMP layer, sets the process's OpenMP thread count to ``NUMBA_NUM_THREADS``, which is
    torch's thread count too: a ``torch.set_num_threads(1)`` made before (a cluster worker's)
    came back as 2 after one raster call, and encodings then differed in the last bit.
    """
    from numba.np.ufunc import parallel

    if getattr(parallel, "_is_initialized", True):  # launched already (or unknown): ask it
        return numba.get_num_threads()
    return numba.config.NUMBA_NUM_THREADS


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _pool(n_threads: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        pool = _POOLS.get(n_threads)
        if pool is None:
            pool = _POOLS[n_threads] = ThreadPoolExecutor(n_threads,
                                                          thread_name_prefix="fastimg-raster")
        return pool
