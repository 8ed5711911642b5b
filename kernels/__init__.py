"""Rasterisation kernels, installed as ``fastimg.kernels``.

All backends share one contract (:class:`RasterPlan` in, preallocated float32 images out) and
one oracle, :func:`raster_reference`. The compiled backends are imported on first use:
``raster_cpu`` needs numba, ``raster_cuda`` numba's CUDA target.
"""
from .plan import SCALING_CODES, RasterPlan
from .reference import raster_reference, scale_features

__all__ = ["RasterPlan", "SCALING_CODES", "raster_reference", "scale_features",
           "raster_cpu", "raster_cuda"]


def __getattr__(name):
    if name == "raster_cpu":
        from .cpu import raster_cpu
        return raster_cpu
    if name == "raster_cuda":
        from .cuda import raster_cuda
        return raster_cuda
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
