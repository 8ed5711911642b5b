"""Rasterisation kernels, installed as ``fastimg.kernels``.

All backends share one contract (:class:`RasterPlan` in, preallocated float32 images out) and
one oracle, :func:`raster_reference`. The compiled backends are imported on first use:
``raster_cpu`` needs numba, ``raster_cuda`` numba's CUDA target.
"""
if __name__ == "kernels":
    # This folder found as a top-level ``kernels``: the checkout is on sys.path (``python -m
    # pytest`` or ``python -m benchmarks`` run in it). That name is the PyPI package ``kernels``
    # (Hugging Face's hub kernels, which transformers >= 5.25 imports): hand the import over to
    # it, or fail as if this folder were not there.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _checkout = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    _path = [p for p in sys.path if os.path.realpath(p or os.curdir) != _checkout]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is None:
        raise ModuleNotFoundError("No module named 'kernels'", name="kernels")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module  # the import statement returns what sys.modules holds
    _spec.loader.exec_module(_module)
else:
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
