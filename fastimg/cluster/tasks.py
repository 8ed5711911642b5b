"""The worker side of a cluster build: a task encodes or rasterises one row chunk straight
into the store and marks it done; each worker process loads the model (and the layout) once."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time

import numpy as np

from fastimg import store
from fastimg.cluster.errors import ModelLoadError, WorkerSetupError, WorkerStorageError
from fastimg.store.schema import BUILD_KEY, DONE_PREFIX, EMBEDDINGS, ENCODE_RUN_STATS, IMAGES

logger = logging.getLogger("fastimg.cluster")

_MODELS: dict = {}
_LAYOUTS: dict = {}


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _set_threads() -> None:
    """torch threads = this worker's dask threads, set before every encode task: other
    libraries in the worker may reset the process's OpenMP thread count (Numba's OpenMP layer
    does on its first launch), and a task's bytes depend on it."""
    try:
        from distributed import get_worker

        worker = get_worker()
        n = getattr(worker, "nthreads", None) or worker.state.nthreads
    except (ImportError, ValueError, AttributeError):
        return
    import torch

    if torch.get_num_threads() != int(n):
        torch.set_num_threads(int(n))


def _model_key(config) -> str:
    return json.dumps({"model": config.model, "revision": config.revision}, sort_keys=True)


def _model(config_json: str):
    """``(EncoderConfig, LoadedModel)`` of ``config_json``; the model is loaded once per
    worker process. Any failure (a package missing on this node, no weights) raises
    :class:`ModelLoadError` naming this worker."""
    config = None
    try:
        from fastimg.embed import EncoderConfig, load_model

        config = EncoderConfig.from_dict(json.loads(config_json))
        key = _model_key(config)
        if key not in _MODELS:
            _MODELS[key] = load_model(config.model, config.revision)
            logger.info("worker %s loaded %s", _worker_address(), config.model)
    except Exception as exc:  # noqa: BLE001 - reported as one line naming the worker
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        model = json.loads(config_json).get("model")
        raise ModelLoadError(f"worker {_worker_address()} cannot load the model {model!r}: "
                             f"{message}") from None
    return config, _MODELS[key]

def _write_chunk(location, name: str, stage: str, index: int, start: int, stop: int,
                 stage_key: str | None, compute) -> dict:
    """The body of every task: rows ``start:stop`` of array ``name`` (chunk ``index``) from
    ``compute(group) -> (block, report)``, written into the store, then the chunk marked done.

    A chunk already marked is skipped. With ``stage_key``, nothing is written unless the
    build's ``stage`` still has that key (``{"stale": True}`` is returned then).

    Returns ``{"index", "rows", "skipped", "worker", "pid", "seconds", ...report}``.
    """
    t0 = time.perf_counter()
    with _storage_errors_named():
        group = store.location.open_group(location, "r+")
        done = group[DONE_PREFIX + name]
    info = {"index": index, "rows": stop - start, "worker": _worker_address(),
            "pid": os.getpid()}
    if done[index]:
        return {**info, "skipped": True, "seconds": time.perf_counter() - t0}
    block, report = compute(group)
    with _storage_errors_named():
        # looked at afresh: the build may have moved on while this task computed
        group = store.location.open_group(location, "r+")
    if stage_key is not None and not _current(group, stage, stage_key):
        return {**info, "skipped": True, "stale": True, "seconds": time.perf_counter() - t0}
    with _storage_errors_named():
        # a task cancelled mid-run (a Ctrl-C) runs on, and a rerun may have done its chunk,
        # or finished the stage and dropped the markers, which a late mark would bring back
        # as a stray folder in the finished store
        marker = DONE_PREFIX + name
        if marker not in group or group[marker][index]:
            return {**info, "skipped": True, "seconds": time.perf_counter() - t0}
        group[name][start:stop] = block
        group[marker][index] = 1  # after the rows: a marked chunk is always complete
    return {**info, "skipped": False, "seconds": time.perf_counter() - t0, **report}


@contextlib.contextmanager
def _storage_errors_named():
    """An error of the store's file system (no credentials on this worker, a path only the
    client sees, a full disk) raised as :class:`WorkerStorageError` naming this worker."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only file-system errors are renamed
        access = isinstance(exc, (PermissionError, FileNotFoundError)) \
            or store.location.from_object_storage(exc)
        if not (access or isinstance(exc, OSError)):
            raise
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        hint = (" (a worker needs its own access: the store's path on its node, or credentials "
                "in its environment or storage_options)") if access else ""
        raise WorkerStorageError(f"worker {_worker_address()} cannot reach the store: "
                                 f"{message}{hint}") from None


def _current(group, stage: str, key: str) -> bool:
    """Whether the build, opened as ``group``, still runs ``stage`` with ``key``.

    A task of a client that was killed can outlive it on a remote scheduler; if the build was
    restarted with other settings meanwhile (same array shapes, new stage key), that task must
    not write old rows into the new arrays or mark their chunks done.
    """
    attrs = group.attrs.get(BUILD_KEY) or {}
    return (attrs.get("stages") or {}).get(stage, {}).get("key") == key


def encode_chunk(location, texts, config_json: str, index: int, start: int, stop: int,
                 stage_key: str | None = None) -> dict:
    """Task: encode ``texts``, rows ``start:stop`` (one chunk), into the store's
    ``embeddings`` and mark the chunk done; fenced by the encode stage's ``stage_key`` (see
    :func:`_write_chunk`, which gives the report, with the encoder's run stats added)."""
    def compute(group):
        from fastimg.embed import encode

        config, model = _model(config_json)
        _set_threads()
        stats = {}
        block = encode(list(texts), config, model=model, stats=stats)
        return block, {k: stats.get(k) for k in ENCODE_RUN_STATS}

    return _write_chunk(location, EMBEDDINGS, "encode", index, start, stop, stage_key, compute)


def _layout(layout_json: str):
    key = hashlib.sha256(layout_json.encode("utf-8")).hexdigest()
    if key not in _LAYOUTS:
        from fastimg.layout import DeepInsightLayout

        _LAYOUTS.clear()
        _LAYOUTS[key] = DeepInsightLayout.from_dict(json.loads(layout_json))
    return _LAYOUTS[key]


def raster_chunk(location, layout_json: str, dtype: str, backend: str, index: int, start: int,
                 stop: int, stage_key: str | None = None) -> dict:
    """Task: rasterise rows ``start:stop`` (one chunk of ``images``) and mark it done (fenced
    by the images stage's ``stage_key`` as :func:`encode_chunk` is by the encode stage's).
    A raster backend that cannot run on this worker raises :class:`WorkerSetupError` naming
    it (the client's check passed on the client's machine)."""
    from fastimg.raster import RASTER_BACKENDS

    try:
        RASTER_BACKENDS.check(backend)
    except ValueError as exc:
        raise WorkerSetupError(f"worker {_worker_address()} cannot rasterise: {exc}") from None

    def compute(group):
        from fastimg.raster import rasterize, to_image_dtype

        block = np.asarray(group[EMBEDDINGS][start:stop])
        images = rasterize(block, _layout(layout_json).raster_plan(), backend=backend)
        return to_image_dtype(images, dtype), {}

    return _write_chunk(location, IMAGES, "images", index, start, stop, stage_key, compute)
