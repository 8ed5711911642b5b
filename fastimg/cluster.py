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

dask and distributed are imported only here, only when used (``pip install 'fastimg[cluster]'``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

from fastimg import store
from fastimg.store.schema import BUILD_KEY, DONE_PREFIX, EMBEDDINGS, ENCODE_RUN_STATS, IMAGES
from fastimg.store.writer import finished_chunks

logger = logging.getLogger("fastimg.cluster")

#: times a task that failed (an exception, not a lost worker) is tried again
RETRIES = 2
#: seconds between two looks at the cluster's workers while a stage waits for its tasks
WATCH_SECONDS = 15.0


class ClusterError(RuntimeError):
    """The cluster cannot do the build (bad spec, a worker that cannot load the model)."""


class ModelLoadError(RuntimeError):
    """Raised in a worker that cannot load the model; its message names the worker."""


class WorkerStorageError(RuntimeError):
    """Raised in a worker that cannot open or write the store; its message names the worker
    (its credentials and endpoint are its own, not the client's)."""


class ClusterWarning(UserWarning):
    """A cluster build that will not use its whole cluster."""


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"a cluster build needs dask.distributed ({exc}): "
                          f"pip install 'fastimg[cluster]'") from exc
    return distributed


def parse_spec(spec: str) -> tuple[str, int | str]:
    """``("local", N)`` for ``local:N``, ``("address", spec)`` for a scheduler address
    (``host:port`` without a scheme is ``tcp://host:port``, as for dask).

    Raises
    ------
    ValueError
        For anything else.
    """
    text = str(spec).strip()
    if text.startswith("local:"):
        try:
            n = int(text[len("local:"):])
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--cluster local:N needs N >= 1 worker processes, got {spec!r}")
        return "local", n
    if "://" in text and len(text.split("://", 1)[1]) > 0:
        return "address", text
    if re.fullmatch(r"(?:[\w.-]+|\[[0-9a-fA-F:]+\]):\d+", text):  # host:8786, as dask takes it
        return "address", f"tcp://{text}"
    raise ValueError(f"--cluster expects local:N or a scheduler address such as "
                     f"tcp://host:8786, got {spec!r}")


@contextlib.contextmanager
def connect(spec: str, *, threads_per_worker: int = 1):
    """A :class:`distributed.Client` for ``spec``, closed on exit.

    Parameters
    ----------
    spec : str
        ``local:N``: a :class:`distributed.LocalCluster` of N worker processes with
        ``threads_per_worker`` threads each, on 127.0.0.1, started here and closed after
        (its workers ignore SIGINT and SIGTERM: a Ctrl-C or a SIGTERM to the job stops this
        process, which closes them).
        A scheduler address (``tcp://host:8786``): connect to a running cluster.
    threads_per_worker : int
        Threads per local worker (torch in a task uses as many).

    Raises
    ------
    ValueError
        A ``spec`` of neither form.
    ClusterError
        A ``tcp://`` or ``tls://`` address where no scheduler answers.
    """
    kind, value = parse_spec(spec)
    distributed = _distributed()
    if kind == "address":
        check_reachable(value)
        with _interrupt_noise_muted(), _client_logs_muted(), distributed.Client(value) as client:
            yield client
        return
    logger.info("starting a local cluster of %d worker processes", value)
    with _interrupt_noise_muted(), _environ_kept() as restore_environ:
        # everything on 127.0.0.1 at free ports (the scheduler's HTTP server too, which would
        # otherwise try 8787); silence_logs: a failed task is reported once, by the client,
        # and the scheduler lives in this process, so a worker that cannot reach it is
        # closing with it (a loaded machine's Ctrl-C printed a worker's failed heartbeat and
        # its traceback under the command's one line); -v keeps the workers' errors
        _quiet_resource_tracker()
        verbose = logger.isEnabledFor(logging.INFO)
        with _stop_signals_ignored():
            cluster = distributed.LocalCluster(
                n_workers=value, threads_per_worker=threads_per_worker, processes=True,
                host="127.0.0.1", scheduler_port=0, dashboard_address="127.0.0.1:0",
                silence_logs=logging.ERROR if verbose else logging.CRITICAL)
        restore_environ()  # the nannies are up; each writes its variables again to respawn
        client = None
        try:
            client = distributed.Client(cluster)
            # workers the nanny starts again after a crash inherit nothing: the plugin runs on
            # every worker, now and later
            client.register_plugin(_signal_ignoring_plugin(distributed))
            yield client
        finally:
            with _dask_logs_muted():  # workers killed at close, tasks lost to a Ctrl-C
                try:
                    if client is not None:
                        client.close()
                finally:
                    cluster.close()


def check_reachable(address: str, *, timeout: float = 10.0) -> None:
    """Fail at once, with what to do, when nothing listens at a ``tcp://`` or ``tls://``
    scheduler ``address`` (dask itself retries for 30 s, then names no cause), or when what
    listens at a ``tcp://`` one is no dask scheduler (its dashboard's port, say: dask's client
    would wait on it forever).

    Raises
    ------
    ClusterError
        When the host is unknown or refuses (or does not answer within ``timeout`` s), or a
        ``tcp://`` port sends nothing within ``timeout`` s (a dask scheduler speaks first).
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls"):
        return  # inproc://, ucx://: dask's own business
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None:
        raise ClusterError(f"--cluster {address}: expected {parts.scheme}://HOST:PORT")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(f"no dask scheduler answers at {address} ({reason}): start one "
                           f"there (dask scheduler), or check the address and port") from None
    with sock:
        if parts.scheme != "tcp":
            return  # TLS: the client speaks first
        try:
            greeting = sock.recv(8)  # a scheduler sends its handshake as a connection opens
        except OSError:
            greeting = b""
    if not greeting:
        raise ClusterError(f"something listens at {address} but it is not a dask scheduler (it "
                           f"sent no handshake in {timeout:g} s; a scheduler's port is "
                           f"usually 8786, its dashboard's 8787)")


#: Signals a local cluster's worker processes ignore: a Ctrl-C reaches every process of the
#: terminal's group, and ``timeout``, a batch scheduler's cancel or ``kill -- -PGID`` send
#: SIGTERM to every process of the job; the client's process stops the build and closes its
#: workers (gracefully, else with SIGKILL), where a worker killed at once left a traceback and
#: multiprocessing's "leaked semaphore objects" warning after the command's one line.
WORKER_IGNORED_SIGNALS = ("SIGINT", "SIGTERM")


@contextlib.contextmanager
def _stop_signals_ignored():
    """:data:`WORKER_IGNORED_SIGNALS` ignored while a local cluster starts: the worker
    processes it spawns inherit that (an ignored signal stays ignored across exec, and Python
    keeps an ignored SIGINT), so the client stops them, instead of each stopping on its own.

    A Ctrl-C or SIGTERM in those seconds is lost (send it again). A worker the nanny starts
    again later, after a crash, inherits nothing: :func:`_signal_ignoring_plugin` covers
    those."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {name: signal.signal(getattr(signal, name), signal.SIG_IGN)
                for name in WORKER_IGNORED_SIGNALS}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def _signal_ignoring_plugin(distributed):
    """A worker plugin that makes its worker process ignore :data:`WORKER_IGNORED_SIGNALS`
    (see :func:`_stop_signals_ignored`)."""

    class IgnoreStopSignals(distributed.WorkerPlugin):
        name = "fastimg-ignore-stop-signals"

        def setup(self, worker):
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                for name in WORKER_IGNORED_SIGNALS:
                    signal.signal(getattr(signal, name), signal.SIG_IGN)

    return IgnoreStopSignals()


#: The warnings of multiprocessing's resource tracker that :func:`_quiet_resource_tracker`
#: filters (the ``PYTHONWARNINGS`` form: action, message start, category)
TRACKER_WARNINGS = "ignore:resource_tracker:UserWarning"


def _quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker, if it is not running, with its own warnings
    filtered: a local cluster's workers share it with this process, and one still running a
    task when the build stops (Ctrl-C, SIGTERM) is killed by its nanny after a few seconds;
    the tracker then printed "There appear to be 1 leaked semaphore objects to clean up at
    shutdown" under the command's one line, and cleaned them up, as it does, itself.

    Call it where the environment is put back after (:func:`_environ_kept`)."""
    from multiprocessing import resource_tracker

    given = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = f"{given},{TRACKER_WARNINGS}" if given else TRACKER_WARNINGS
    resource_tracker.ensure_running()


@contextlib.contextmanager
def _dask_logs_muted():
    """dask's warnings and errors hidden while a local cluster closes (kept with ``-v``):
    workers still exiting are killed, and tasks a Ctrl-C cut short are lost on purpose."""
    if logger.isEnabledFor(logging.INFO):
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


class _SyncCancelNoise(logging.Filter):
    """Drops what tornado logs when dask's ``sync()`` fails to cancel its call after a Ctrl-C.

    A Ctrl-C in a blocking client call makes ``distributed.utils.sync`` schedule a cancel of
    the call's future on the event loop; when the call had not started yet, that future is
    unset, the cancel raises, and tornado logs the traceback ("Exception in callback
    functools.partial(<function sync.<locals>.cancel ...>)") over the one line of a Ctrl-C.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "sync.<locals>.cancel" not in record.getMessage()


@contextlib.contextmanager
def _interrupt_noise_muted():
    """:class:`_SyncCancelNoise` on tornado's logger while a client is used (kept with
    ``-v``). The event loop logs it on its own thread, possibly before the KeyboardInterrupt
    reaches any handler of ours, so the filter is on for the whole session."""
    if logger.isEnabledFor(logging.INFO):
        yield
        return
    tornado_logger = logging.getLogger("tornado.application")
    noise = _SyncCancelNoise()
    tornado_logger.addFilter(noise)
    try:
        yield
    finally:
        tornado_logger.removeFilter(noise)


@contextlib.contextmanager
def _client_logs_muted():
    """distributed.client's errors and tracebacks hidden (kept with ``-v``): a scheduler lost
    mid-build is reported once, as one line (:func:`_drive`), not as its reconnect attempts."""
    if logger.isEnabledFor(logging.INFO):
        yield
        return
    client_logger = logging.getLogger("distributed.client")
    previous = client_logger.level
    client_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        client_logger.setLevel(previous)


@contextlib.contextmanager
def _environ_kept():
    """Yields a function that puts this process's environment back as it was; also called on
    exit.

    A nanny writes its workers' variables (``distributed.nanny.pre-spawn-environ``:
    ``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``, ``OPENBLAS_NUM_THREADS=1``,
    ``MALLOC_TRIM_THRESHOLD_``; and ``PYTHONHASHSEED``) into the process that starts it, and
    leaves them there: every process started by this one afterwards ran torch on one thread.
    """
    before = dict(os.environ)

    def restore():
        for name in set(os.environ) - set(before):
            del os.environ[name]
        for name, value in before.items():
            if os.environ.get(name) != value:
                os.environ[name] = value

    try:
        yield restore
    finally:
        restore()


# -- worker side ---------------------------------------------------------------------------
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


def _task_location(writer):
    """The unfinished store as workers must open it: a URL, or an absolute path (a relative
    one would be resolved in each worker's own working directory)."""
    location = store.location.partial_path(writer.path)
    return location.absolute() if isinstance(location, Path) else location


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
    by the images stage's ``stage_key`` as :func:`encode_chunk` is by the encode stage's)."""
    def compute(group):
        from fastimg.raster import rasterize, to_image_dtype

        block = np.asarray(group[EMBEDDINGS][start:stop])
        images = rasterize(block, _layout(layout_json).raster_plan(), backend=backend)
        return to_image_dtype(images, dtype), {}

    return _write_chunk(location, IMAGES, "images", index, start, stop, stage_key, compute)


# -- client side ---------------------------------------------------------------------------
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
    model or reach the store, a lost scheduler or a task that killed every worker it ran on
    stops the build (:class:`ClusterError`)."""
    from tqdm.auto import tqdm

    distributed = _distributed()
    bar = tqdm(total=rows, unit="row", desc=f"{stage} on the cluster", disable=not progress,
               leave=False)
    stop_watching = _watch_workers(client, stage)
    try:
        for future in distributed.as_completed(futures):
            try:
                result = future.result()
            except (ModelLoadError, WorkerStorageError) as exc:
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
