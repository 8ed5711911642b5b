"""Numba CUDA rasterisation kernel: the same contract as :mod:`fastimg.kernels.cpu`.

One thread block per image (grid-stride over the rows): the block reads the image's feature row
once with coalesced loads, scales it into a shared-memory buffer, synchronises, and then each
thread computes whole pixels by gathering their features (``plan.order`` / ``plan.starts``) from
shared memory and writes them with coalesced stores. There are no atomics, so each pixel is summed
in feature order and results are deterministic. (The earlier one-thread-per-(sample, pixel)
kernel read every feature from global memory in pixel order, i.e. scattered 2-byte loads; it is
kept as the fallback for rows too long for shared memory.) Runs on the CPU under
``NUMBA_ENABLE_CUDASIM=1`` (set before numba is first imported), which is how the tests check it
on machines without a GPU.
"""
from __future__ import annotations

import math

import numpy as np

from .plan import RasterPlan

try:
    from numba import cuda
    from numba import float32 as _nb_float32
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the CUDA rasteriser needs numba's CUDA target: pip install 'fastimg[gpu]'"
    ) from exc

_THREADS = 256
_MAX_BLOCKS = 16384
# dynamic shared memory above 48 KiB needs an opt-in numba does not expose: longer rows use the
# global-memory kernel
_MAX_SHARED_FEATURES = 48 * 1024 // 4
_GLOBAL_THREADS = (128, 2)


@cuda.jit(device=True)
def _scaled(v, shift, scale, code):
    # the contract's scaling (plan.SCALING_CODES): none, minmax, norm2
    if code == 1:
        return min(max((v + shift) * scale, np.float32(0.0)), np.float32(1.0))
    if code == 2:
        return min(max(math.log(max(v + shift, np.float32(1.0))) * scale, np.float32(0.0)),
                   np.float32(1.0))
    return v


@cuda.jit
def _raster_kernel(x, order, starts, inv_count, shift, scale, code, fill, out, n_bad):
    # one block per image (grid-stride over rows): the block reads the feature row once,
    # coalesced, scales it into shared memory, then each thread gathers whole pixels from there
    row = cuda.shared.array(0, dtype=_nb_float32)
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    n_rows = x.shape[0]
    n_features = x.shape[1]
    n_pixels = out.shape[1]
    for i in range(cuda.blockIdx.x, n_rows, cuda.gridDim.x):
        bad = 0
        for f in range(tid, n_features, n_threads):
            v = np.float32(x[i, f])
            if math.isinf(v) or math.isnan(v):
                bad += 1
            row[f] = _scaled(v, shift[f], scale[f], code)
        if bad:
            cuda.atomic.add(n_bad, 0, bad)
        cuda.syncthreads()
        for p in range(tid, n_pixels, n_threads):
            lo = starts[p]
            hi = starts[p + 1]
            if hi == lo:
                out[i, p] = fill
            else:
                acc = np.float32(0.0)
                for k in range(lo, hi):
                    acc += row[order[k]]
                out[i, p] = acc * inv_count[p]
        cuda.syncthreads()  # the next row overwrites the shared buffer


@cuda.jit
def _raster_kernel_global(x, order, starts, inv_count, shift, scale, code, fill, out, n_bad):
    # one thread per (sample, pixel), features read from global memory
    p0, i0 = cuda.grid(2)
    p_step, i_step = cuda.gridsize(2)
    n_rows = x.shape[0]
    n_pixels = out.shape[1]
    for i in range(i0, n_rows, i_step):
        for p in range(p0, n_pixels, p_step):
            lo = starts[p]
            hi = starts[p + 1]
            if hi == lo:
                out[i, p] = fill
                continue
            acc = np.float32(0.0)
            bad = 0
            for k in range(lo, hi):
                f = order[k]
                v = np.float32(x[i, f])
                if math.isinf(v) or math.isnan(v):
                    bad += 1
                acc += _scaled(v, shift[f], scale[f], code)
            out[i, p] = acc * inv_count[p]
            if bad:
                cuda.atomic.add(n_bad, 0, bad)


class CudaPlan:
    """A :class:`RasterPlan` whose arrays live on the GPU, made once and reused for every block."""

    def __init__(self, plan: RasterPlan):
        self.plan = plan
        self.order = cuda.to_device(plan.order)
        self.starts = cuda.to_device(plan.starts)
        self.inv_count = cuda.to_device(plan.inv_count)
        self.shift = cuda.to_device(plan.shift)
        self.scale = cuda.to_device(plan.scale)


def _dtype(array) -> np.dtype:
    """The dtype of a host array or of any ``__cuda_array_interface__`` one (a torch or CuPy
    tensor's ``dtype`` is not a numpy dtype)."""
    interface = getattr(array, "__cuda_array_interface__", None)
    return np.dtype(interface["typestr"] if interface is not None else array.dtype)


def _as_device(array):
    if hasattr(array, "__cuda_array_interface__"):
        return cuda.as_cuda_array(array), False
    return cuda.to_device(np.ascontiguousarray(array)), True


def raster_cuda(x, plan, out) -> int:
    """Rasterise ``x`` [n, F] (float16 or float32; host or device array) into ``out`` [n, H, W].

    ``plan`` is a :class:`RasterPlan` or a :class:`CudaPlan` (reuse one across calls). ``out`` is
    a float32 host array (filled on return) or a device array. Returns the number of non-finite
    input values seen.
    """
    device_plan = plan if isinstance(plan, CudaPlan) else CudaPlan(plan)
    host_plan = device_plan.plan
    if _dtype(x) not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise TypeError(f"raster_cuda takes float16 or float32 input, got {_dtype(x)}")
    d_x, _ = _as_device(x)
    n_rows = d_x.shape[0]
    if d_x.ndim != 2 or d_x.shape[1] != host_plan.n_features:
        raise ValueError(f"expected x of shape (n, {host_plan.n_features}), got {d_x.shape}")
    out_on_host = not hasattr(out, "__cuda_array_interface__")
    # out is written in place: a host copy (another dtype, a strided view) would stay unwritten
    d_out = (cuda.device_array((n_rows, host_plan.n_pixels), dtype=np.float32) if out_on_host
             else _as_device(out)[0])
    contiguous = out.flags.c_contiguous if out_on_host else d_out.is_c_contiguous()
    if _dtype(out) != np.float32 or not contiguous:
        raise ValueError("out must be a C-contiguous float32 array")
    if out.shape[0] != n_rows or math.prod(out.shape) != n_rows * host_plan.n_pixels:
        raise ValueError(f"out must hold {n_rows} images of {host_plan.n_pixels} pixels, got "
                         f"shape {tuple(out.shape)}")
    d_out2d = d_out.reshape(n_rows, host_plan.n_pixels) if d_out.ndim == 3 else d_out
    n_bad = cuda.to_device(np.zeros(1, dtype=np.int64))
    if host_plan.n_features <= _MAX_SHARED_FEATURES:
        launch = _raster_kernel[max(1, min(n_rows, _MAX_BLOCKS)), _THREADS, 0,
                                4 * host_plan.n_features]
    else:
        launch = _raster_kernel_global[
            (min(math.ceil(host_plan.n_pixels / _GLOBAL_THREADS[0]), 64),
             min(max(math.ceil(n_rows / _GLOBAL_THREADS[1]), 1), 4096)), _GLOBAL_THREADS]
    launch(
        d_x, device_plan.order, device_plan.starts, device_plan.inv_count, device_plan.shift,
        device_plan.scale, host_plan.scaling_code, np.float32(host_plan.fill_value), d_out2d,
        n_bad)
    if out_on_host:
        out.reshape(n_rows, host_plan.n_pixels)[...] = d_out2d.copy_to_host()
    return int(n_bad.copy_to_host()[0])
