"""Builds on a dask cluster: the encode and image stages cut along the store's zarr chunks.

>>> from fastimg.cluster import connect
>>> with connect("local:2") as client:                          # doctest: +SKIP
...     build_dataset("s3://bucket/imdb.zarr", corpus, client=client)

- Work division: one task per row chunk of ``embeddings`` (then of ``images``), so no two
  tasks write one zarr chunk and nothing needs a lock. Each task writes its rows straight into
  the store, then marks its chunk finished in ``_done_<array>`` (uint8, one element per chunk,
  each element its own chunk file: concurrent tasks never rewrite a shared file). A retried
  task, a rerun after a crash or a rerun on another cluster skips finished chunks; chunks below
  the ``rows_done`` of an in-process run are finished too.
- Each worker process loads the model once, on its first task, and keeps it for all its tasks
  (a per-process cache keyed by the model settings). torch in a task uses as many threads as
  its worker has dask threads (``local:N`` starts one thread per worker), and the worker's GPU
  when it has one (``dask_cuda.LocalCUDACluster`` starts one worker per GPU).
- The layout is fitted once, on the client.

dask and distributed are imported only in this package, only when used (``pip install
'fastimg[cluster]'``). Its modules: :mod:`.connection` (a client for ``--cluster``),
:mod:`.driver` (the client side of a stage), :mod:`.tasks` (the worker side), :mod:`.quiet`
(what stays off the terminal) and :mod:`.errors`.
"""
from __future__ import annotations

from fastimg.cluster.connection import check_reachable, connect, parse_spec
from fastimg.cluster.driver import encode_chunks, raster_chunks
from fastimg.cluster.errors import (ClusterError, ClusterWarning, ModelLoadError,
                                    WorkerSetupError, WorkerStorageError)
from fastimg.cluster.tasks import encode_chunk, raster_chunk

__all__ = ["ClusterError", "ClusterWarning", "ModelLoadError", "WorkerSetupError",
           "WorkerStorageError",
           "check_reachable", "connect", "encode_chunk", "encode_chunks", "parse_spec",
           "raster_chunk", "raster_chunks"]
