"""The client side of a cluster build: one task per unfinished chunk of a stage, submitted,
watched and accounted for; the stage's errors as one :class:`ClusterError`."""
from __future__ import annotations

import dataclasses
import json
import logging
import uuid
import warnings
from pathlib import Path

import numpy as np

from fastimg import store
from fastimg.cluster.errors import (ClusterError, ClusterWarning, WorkerSetupError,
                                    WorkerStorageError, import_distributed)
from fastimg.cluster.tasks import encode_chunk, raster_chunk
from fastimg.store.schema import EMBEDDINGS, ENCODE_RUN_STATS, IMAGES
from fastimg.store.writer import finished_chunks

logger = logging.getLogger("fastimg.cluster")

#: times a task that failed (an exception, not a lost worker) is tried again
RETRIES = 2
#: seconds between two looks at the cluster's workers while a stage waits for its tasks
WATCH_SECONDS = 15.0


def _task_location(writer):
    """The unfinished store as workers must open it: a URL, or an absolute path (a relative
    one would be resolved in each worker's own working directory)."""
    location = store.location.partial_path(writer.path)
    return location.absolute() if isinstance(location, Path) else location



def _todo(writer, name: str, rows_done: int):
    """(index, start, stop) of every chunk of ``name`` not yet finished, and the chunk count."""
    array = writer.group[name]
    starts, stops, finished = finished_chunks(writer.done_markers(name)[:], int(array.shape[0]),
                                              int(array.chunks[0]), rows_done)
    return ([(i, int(starts[i]), int(stops[i])) for i in np.flatnonzero(~finished)],
            int(starts.size))


def _record_chunk(result: dict, stats: dict) -> None:
    """Bookkeeping of one finished task on the client."""
    stats["tasks"] += 1
    stats["skipped"] += int(result["skipped"])
    stats["task_seconds"] += result["seconds"]
    for key in ENCODE_RUN_STATS:
        if result.get(key) is not None:
            stats[key] = result[key]


def _drive(client, futures, stage: str, stats: dict, *, rows: int, progress: bool) -> None:
    """Wait for ``futures`` (a bar of the ``rows`` they hold); a worker that cannot load the
    model, run the raster backend or reach the store, a lost scheduler or a task that killed every worker it ran on
    stops the build (:class:`ClusterError`)."""
    from tqdm.auto import tqdm

    distributed = import_distributed()
    bar = tqdm(total=rows, unit="row", desc=f"{stage} on the cluster", disable=not progress,
               leave=False)
    stop_watching = _watch_workers(client, stage)
    try:
        for future in distributed.as_completed(futures):
            try:
                result = future.result()
            except (WorkerSetupError, WorkerStorageError) as exc:
                raise ClusterError(str(exc)) from None
            except distributed.client.FutureCancelledError as exc:
                # the scheduler went away (or restarted): the marked chunks are kept
                raise ClusterError(f"the dask scheduler dropped the build's tasks ({exc.reason}"
                                   f"): the unfinished build is kept; with the scheduler and "
                                   f"workers up again, rerun the same command to resume"
                                   ) from None
            except distributed.KilledWorker as exc:
                # every worker that ran the task died (its nanny's memory limit, a crash):
                # the node's set-up, not a bug; the marked chunks are kept
                last = getattr(exc.last_worker, "address", exc.last_worker)
                raise ClusterError(f"{stage}: task {exc.task} killed each of the "
                                   f"{exc.allowed_failures + 1} workers that ran it (the last: "
                                   f"{last}; out of memory? see the worker logs): the "
                                   f"unfinished build is kept; with workers given more memory "
                                   f"(dask worker --memory-limit), rerun the same command to "
                                   f"resume") from None
            _record_chunk(result, stats)
            bar.update(result["rows"])
            logger.info("%s chunk %d done on %s (%.2f s%s)", stage, result["index"],
                        result["worker"], result["seconds"],
                        ", already done" if result["skipped"] else "")
    finally:
        stop_watching()
        bar.close()
        client.cancel([f for f in futures if not f.done()])


def _watch_workers(client, stage: str):
    """Look at the cluster's workers every :data:`WATCH_SECONDS` on a thread, and warn once
    when two looks in a row find none: the tasks wait for a worker, and would wait silently
    (workers that died for good, say of a package missing on their node, or were stopped).
    A worker back clears the warning's memory. Returns the function that stops the watch."""
    import threading

    stop = threading.Event()

    def watch():
        looks_without = 0
        while not stop.wait(WATCH_SECONDS):
            try:
                workers = len(client.nthreads())
            except Exception:  # noqa: BLE001 - the client's own wait reports a lost scheduler
                return
            looks_without = 0 if workers else looks_without + 1
            if looks_without == 2 and not stop.is_set():
                address = getattr(client.scheduler, "address", "the scheduler")
                logger.warning("%s: the cluster has had no workers for %.0f s (they died or were "
                               "stopped: see their logs); the tasks wait for one (start them "
                               "with `dask worker %s`), or Ctrl-C keeps the unfinished build",
                               stage, WATCH_SECONDS, address)

    # not joined when stopped: a look at a lost scheduler can take dask's connect timeout
    threading.Thread(target=watch, name="fastimg-workers", daemon=True).start()
    return stop.set


def _warn_workers(client, n_tasks: int, n_chunks: int, stage: str, *, idle: bool) -> None:
    """One warning when the cluster has no worker yet (the tasks wait for one), or, with
    ``idle``, when a fresh stage (every chunk to do: a resume keeps its chunking) has fewer
    tasks than the cluster has workers."""
    n_workers = len(client.nthreads())  # scheduler_info() lists only a few workers
    if n_tasks and not n_workers:
        address = getattr(client.scheduler, "address", "the scheduler")
        warnings.warn(f"{stage}: the cluster has no workers yet; waiting for one (start them "
                      f"with `dask worker {address}`)", ClusterWarning, stacklevel=3)
    elif idle and 0 < n_tasks == n_chunks < n_workers:
        warnings.warn(f"{stage}: {n_tasks} task{'s' * (n_tasks != 1)} for {n_workers} workers "
                      f"(one per chunk of chunk_rows rows): lower chunk_rows to use them "
                      f"all", ClusterWarning, stacklevel=3)


def _run_stage(client, writer, name: str, stage: str, task, leading_args, *, rows_done: int,
               progress: bool, warn_idle: bool = False) -> dict:
    """One task per unfinished chunk of array ``name``: ``task(location, *leading_args(start,
    stop), index, start, stop, stage_key)``, fenced by ``stage``'s key; waits for them all.

    Returns stats: ``tasks`` run, ``skipped`` (found done by a task), ``task_seconds``
    (summed inside the tasks), ``chunks``, ``pending``, and the encoder's run stats when the
    tasks report them.
    """
    todo, n_chunks = _todo(writer, name, rows_done)
    stats = {"tasks": 0, "skipped": 0, "task_seconds": 0.0, "chunks": n_chunks,
             "pending": len(todo)}
    logger.info("%s: %d of %d chunks to do on the cluster", stage, len(todo), n_chunks)
    _warn_workers(client, len(todo), n_chunks, stage, idle=warn_idle)
    location = _task_location(writer)
    stage_key = writer.stage(stage)["key"]
    run = uuid.uuid4().hex[:8]
    futures = [client.submit(task, location, *leading_args(s, e), i, s, e, stage_key,
                             key=f"fastimg-{stage}-{run}-{i}", retries=RETRIES, pure=False)
               for i, s, e in todo]
    _drive(client, futures, stage, stats, rows=sum(e - s for _, s, e in todo),
           progress=progress)
    return stats


def encode_chunks(client, writer, texts, config, *, progress: bool = False) -> dict:
    """Encode ``texts`` into the build's ``embeddings`` array on the cluster of ``client``.

    The array exists (made by the caller with the encoder's resume record); every unfinished
    chunk is one task. Returns the stats of :func:`_run_stage` (with ``layers``, ``device``,
    ``precision`` and ``compute_dtype`` from the encoder).

    Raises
    ------
    ClusterError
        When a worker cannot load the model or reach the store (the message names the worker
        and the error).
    """
    from fastimg.embed.resume import record_rows_done, rows_done

    array = writer.group[EMBEDDINGS]
    config = dataclasses.replace(config, chunk_rows=int(array.chunks[0]))
    # the stage key holds the device and precision resolved here: every worker must run
    # those (an "auto" resolved on each worker's own hardware could mix precisions)
    settings = writer.stage("encode")["settings"]
    config_json = json.dumps({**config.to_dict(), "device": settings["device"],
                              "precision": settings["precision"]}, sort_keys=True)
    stats = _run_stage(client, writer, EMBEDDINGS, "encode", encode_chunk,
                       lambda start, stop: (list(texts[start:stop]), config_json),
                       rows_done=rows_done(array), progress=progress, warn_idle=True)
    record_rows_done(array, int(array.shape[0]))
    writer.drop_done_markers(EMBEDDINGS)
    return stats


def raster_chunks(client, writer, layout, config, *, start_row: int = 0,
                  progress: bool = False) -> dict:
    """Rasterise the build's ``embeddings`` into its ``images`` array on the cluster, one task
    per chunk of ``images``; chunks below ``start_row`` are finished. Returns stats as
    :func:`encode_chunks`."""
    dtype = str(writer.group[IMAGES].dtype)
    layout_json = []

    def leading_args(start, stop):
        if not layout_json:  # sent once to every worker; in each task while there are none
            text = json.dumps(layout.to_dict())  # (scatter would wait for one, then fail)
            layout_json.append(client.scatter(text, broadcast=True) if client.nthreads()
                               else text)
        return layout_json[0], dtype, config.raster_backend

    stats = _run_stage(client, writer, IMAGES, "images", raster_chunk, leading_args,
                       rows_done=start_row, progress=progress)
    writer.update("images", rows_done=int(writer.group[IMAGES].shape[0]))
    writer.drop_done_markers(IMAGES)
    return stats
