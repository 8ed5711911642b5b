"""Rasterisation stage: backend registry, in-memory ``rasterize`` and the streaming zarr driver."""
from __future__ import annotations

import logging
import threading

import numpy as np

from fastimg._registry import Registry, has_module
from fastimg._validation import check_feature_matrix, check_finite_rows
from fastimg.kernels import RasterPlan, raster_reference

logger = logging.getLogger("fastimg.raster")

IMAGE_DTYPES = ("float16", "float32", "uint8")


def _cuda_available() -> bool:
    if not has_module("numba.cuda"):
        return False
    try:
        from numba import cuda

        return cuda.is_available()
    except Exception:  # noqa: BLE001 - any driver failure means "no GPU"
        return False


def _load_cpu():
    from fastimg.kernels.cpu import raster_cpu

    return raster_cpu


def _load_cuda():
    from fastimg.kernels.cuda import CudaPlan, raster_cuda

    last: list[CudaPlan] = []  # the plan of the last call, on the GPU

    def run(x, plan, out):
        # upload the plan once per plan object, not once per block (a build has one plan; a
        # new one replaces the old, so GPU memory is not held for plans gone by)
        if not last or last[0].plan is not plan:
            last[:] = [CudaPlan(plan)]
        return raster_cuda(x, last[0], out)

    return run


def _load_numpy():
    def run(x, plan, out):
        raster_reference(x, plan, out)
        return int((~np.isfinite(np.asarray(x))).sum())

    return run


RASTER_BACKENDS = Registry("raster", setting="raster_backend")
# "auto" is the CPU kernel: for images that start and end in host memory (a zarr store) the
# PCIe copies dominate the CUDA path. Measured on an H100 machine, 50k x 4,608 float16: CUDA
# 0.28 s from host arrays (2.4 ms of kernel), the CPU kernel on its 16 cores 0.028 s. Features
# that already live on the GPU go to fastimg.kernels.raster_cuda directly (it takes any
# __cuda_array_interface__ array, and device output); these functions take host arrays.
RASTER_BACKENDS.add("cpu", _load_cpu, priority=2)
RASTER_BACKENDS.add("cuda", _load_cuda, available=_cuda_available, priority=1, extra="gpu")
RASTER_BACKENDS.add("numpy", _load_numpy, priority=0)


_WARM_UPS: dict[str, threading.Thread] = {}
_WARM_UP_LOCK = threading.Lock()


def _load_cpu_kernels() -> None:
    try:
        from fastimg.kernels.cpu import raster_cpu

        plan = RasterPlan.from_pixels([0, 1], (2, 2))
        for dtype in (np.float16, np.float32):
            raster_cpu(np.zeros((1, 2), dtype), plan, np.empty((1, 2, 2), np.float32))
    except Exception:  # noqa: BLE001 - the real call reports whatever went wrong
        logger.debug("raster kernel warm-up failed", exc_info=True)


def warm_up(backend: str = "auto") -> None:
    """Start loading the ``backend``'s compiled kernel in a background thread.

    Even when the kernel comes from Numba's on-disk cache, the first call in a process costs
    Numba's own start-up (about a second of imports and registries on a small machine). A
    build calls this before fitting the layout, so that cost overlaps the fit instead of adding
    to the raster stage; :func:`rasterize_to_array` waits for it. Only the CPU kernel is
    warmed; unknown or unavailable backends are left for the real call to report.
    """
    try:
        name = RASTER_BACKENDS.resolve(backend)
    except (ValueError, ImportError):
        return
    if name != "cpu":
        return
    with _WARM_UP_LOCK:
        if name in _WARM_UPS:
            return
        thread = threading.Thread(target=_load_cpu_kernels, name="fastimg-raster-warm-up",
                                  daemon=True)
        _WARM_UPS[name] = thread
        thread.start()


def _wait_for_warm_up(name: str) -> None:
    thread = _WARM_UPS.get(name)
    if thread is not None:
        thread.join()


def _check_block(n_bad: int, block: np.ndarray, start: int, name: str = "x") -> None:
    """Name the rows of ``name`` (``block`` its rows from ``start``) whose ``n_bad`` values
    the kernel found NaN or infinite, as :func:`~fastimg._validation.check_feature_matrix`
    does (was "input rows 0..9 contain 1 NaN or infinite values": which one, it did not
    say)."""
    if n_bad:
        check_finite_rows(block, name, offset=start)


def _described(array) -> str:
    """``array``'s type, dtype, shape and layout, for a refusal (a list is "a list")."""
    if not isinstance(array, np.ndarray):
        return f"a {type(array).__name__}"
    flags = [name for name, ok in (("C-contiguous", array.flags.c_contiguous),
                                   ("writeable", array.flags.writeable)) if not ok]
    return (f"{array.dtype} of shape {array.shape}"
            + (f", not {' or '.join(flags)}" if flags else ""))


def checked_out(out, shape: tuple, backend: str) -> np.ndarray:
    """``out`` (a new float32 array when None) once it and ``backend`` are fit to take the
    images of ``shape``, else the ValueError :func:`rasterize` documents."""
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif (not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != np.float32
          or not out.flags.c_contiguous or not out.flags.writeable):
        # the compiled kernels index out by the plan's pixels without bounds checks: a
        # smaller array would be written past its end
        raise ValueError(f"out must be a writeable, C-contiguous float32 array of shape {shape}, "
                         f"got {_described(out)}")
    RASTER_BACKENDS.check(backend, setting="backend")  # not numba's traceback
    return out


def rasterize(x, plan: RasterPlan, *, backend: str = "auto", out=None) -> np.ndarray:
    """Images of every row of ``x``, in memory.

    Parameters
    ----------
    x : array-like, shape (n, F)
        Real numbers, ``F = plan.n_features``; float16 and float32 are read as they are, other
        dtypes are converted to float32 first.
    plan : fastimg.kernels.RasterPlan
        Which features land on which pixel, and their scaling
        (:meth:`fastimg.layout.DeepInsightLayout.raster_plan`).
    backend : {"auto", "cpu", "cuda", "numpy"}
        Kernel; ``"auto"`` is the CPU kernel.
    out : ndarray of float32, shape (n, H, W), optional
        C-contiguous array to write the images into.

    Returns
    -------
    ndarray of float32, shape (n, H, W)
        ``out`` when given.

    Raises
    ------
    TypeError
        When ``plan`` is not a :class:`~fastimg.kernels.RasterPlan`.
    ValueError
        When ``x`` is not a non-empty 2-D matrix of real numbers with ``F`` columns, holds NaN
        or infinite values or values beyond float32's range, or ``out`` has the wrong shape,
        dtype or memory order; an unknown ``backend``, or one that cannot run here
        (``"cuda"`` without a CUDA GPU).
    """
    return rasterize_named(x, plan, backend=backend, out=out, name="x")


def rasterize_named(x, plan: RasterPlan, *, backend: str, out, name: str) -> np.ndarray:
    """:func:`rasterize`, its refusals naming the matrix ``name`` (``X`` for
    :meth:`fastimg.layout.DeepInsightLayout.transform`)."""
    if not isinstance(plan, RasterPlan):
        raise TypeError(f"plan must be a RasterPlan, got {type(plan).__name__}")
    # the kernels count NaN and inf
    x = check_feature_matrix(x, name=name, check_finite=False)
    if x.shape[1] != plan.n_features:
        raise ValueError(f"expected a matrix with {plan.n_features} features, got shape {x.shape}")
    source = x
    if x.dtype not in (np.float16, np.float32):
        with np.errstate(over="ignore"):  # float64 beyond float32's range: named below
            x = x.astype(np.float32)
    out = checked_out(out, (x.shape[0], plan.height, plan.width), backend)
    resolved, kernel = RASTER_BACKENDS.get(backend)
    _wait_for_warm_up(resolved)
    n_bad = kernel(x, plan, out)
    if n_bad and source is not x and np.isfinite(source).all():
        # float64 values beyond float32's range became infinite in the cast: said as such
        # (check_feature_matrix's range check), not as NaN or infinite input
        check_feature_matrix(source, name=name)
    _check_block(n_bad, x, 0, name)
    return out


def check_image_dtype(dtype: str) -> None:
    """Raise ValueError unless ``dtype`` is one of :data:`IMAGE_DTYPES`."""
    if dtype not in IMAGE_DTYPES:
        raise ValueError(f"image dtype must be one of {IMAGE_DTYPES}, got {dtype!r}")


def to_image_dtype(images: np.ndarray, dtype: str) -> np.ndarray:
    """Convert float32 images to the stored dtype; ``uint8`` maps [0, 1] to 0..255."""
    if dtype == "uint8":
        return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    return images.astype(dtype, copy=False)


def image_unit(dtype) -> np.float32:
    """What a step of 1 in a stored image dtype is worth in [0, 1]: ``1/255`` for ``uint8``
    (:func:`to_image_dtype`'s 0..255), 1 for the float dtypes. Stored values times this are
    the images as the trainer reads them."""
    return np.float32(1 / 255) if np.dtype(dtype) == np.uint8 else np.float32(1)


def rasterize_to_array(source, plan: RasterPlan, target, *, backend: str = "auto",
                       block_rows: int | None = None, start_row: int = 0,
                       progress: bool = True, on_block=None) -> None:
    """Stream ``source`` [N, F] (numpy, memmap or zarr array) block by block into ``target``
    [N, H, W] (a zarr array, or anything that takes slice assignment).

    Memory is bounded by ``block_rows`` (default: a multiple of the target's row chunk near 4096
    rows), not by N. Rows before ``start_row`` are skipped, which lets an interrupted run resume
    from the first unfinished chunk; ``on_block(stop)`` is called after rows ``..stop`` are
    written, so a caller can record how far it got.
    """
    n_rows = source.shape[0]
    if source.shape[1] != plan.n_features:
        raise ValueError(f"source has {source.shape[1]} features, the layout {plan.n_features}")
    if tuple(target.shape) != (n_rows, plan.height, plan.width):
        raise ValueError(f"target shape {tuple(target.shape)} does not match "
                         f"({n_rows}, {plan.height}, {plan.width})")
    chunk_rows = getattr(target, "chunks", (1,))[0]
    if block_rows is None:
        block_rows = max(chunk_rows, (4096 // chunk_rows) * chunk_rows)
    RASTER_BACKENDS.check(backend, setting="backend")  # not numba's traceback
    name, kernel = RASTER_BACKENDS.get(backend)
    _wait_for_warm_up(name)
    logger.info("rasterising %d rows with the %s backend, %d rows per block", n_rows, name,
                block_rows)
    buffer = np.empty((block_rows, plan.height, plan.width), dtype=np.float32)
    from tqdm.auto import tqdm

    with tqdm(total=n_rows, initial=start_row, unit="img", desc="rasterise",
              disable=not progress) as bar:
        for start in range(start_row, n_rows, block_rows):
            stop = min(n_rows, start + block_rows)
            block = np.asarray(source[start:stop])
            if block.dtype not in (np.float16, np.float32):
                block = block.astype(np.float32)
            images = buffer[: stop - start]
            _check_block(kernel(block, plan, images), block, start)
            target[start:stop] = to_image_dtype(images, np.dtype(target.dtype).name)
            bar.update(stop - start)
            if on_block is not None:
                on_block(stop)
