"""The errors and warnings of a cluster build, and dask.distributed imported with the
extra's install hint."""
from __future__ import annotations


class ClusterError(RuntimeError):
    """The cluster cannot do the build (bad spec, a worker that cannot load the model)."""


class WorkerSetupError(RuntimeError):
    """Raised in a worker that lacks what its task needs (the model, the GPU of a raster
    backend asked for by name); its message names the worker."""


class ModelLoadError(WorkerSetupError):
    """Raised in a worker that cannot load the model; its message names the worker."""


class WorkerStorageError(RuntimeError):
    """Raised in a worker that cannot open or write the store; its message names the worker
    (its credentials and endpoint are its own, not the client's)."""


class ClusterWarning(UserWarning):
    """A cluster build that will not use its whole cluster."""


def import_distributed():
    """dask.distributed, or an ImportError that says how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"a cluster build needs dask.distributed ({exc}): "
                          f"pip install 'fastimg[cluster]'") from exc
    return distributed
