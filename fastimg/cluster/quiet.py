"""What a local cluster and a client session keep off the command's terminal: stop signals
in the workers (the client stops them), dask's and tornado's logs of a build that stops, the
resource tracker's warnings, and the environment variables a nanny leaves behind."""
from __future__ import annotations

import contextlib
import logging
import os

logger = logging.getLogger("fastimg.cluster")


#: Signals a local cluster's worker processes ignore: a Ctrl-C reaches every process of the
#: terminal's group, and ``timeout``, a batch scheduler's cancel or ``kill -- -PGID`` send
#: SIGTERM to every process of the job; the client's process stops the build and closes its
#: workers (gracefully, else with SIGKILL), where a worker killed at once left a traceback and
#: multiprocessing's "leaked semaphore objects" warning after the command's one line.
WORKER_IGNORED_SIGNALS = ("SIGINT", "SIGTERM")


@contextlib.contextmanager
def stop_signals_ignored():
    """:data:`WORKER_IGNORED_SIGNALS` ignored while a local cluster starts: the worker
    processes it spawns inherit that (an ignored signal stays ignored across exec, and Python
    keeps an ignored SIGINT), so the client stops them, instead of each stopping on its own.

    A Ctrl-C or SIGTERM in those seconds is lost (send it again). A worker the nanny starts
    again later, after a crash, inherits nothing: :func:`signal_ignoring_plugin` covers
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


def signal_ignoring_plugin(distributed):
    """A worker plugin that makes its worker process ignore :data:`WORKER_IGNORED_SIGNALS`
    (see :func:`stop_signals_ignored`)."""

    class IgnoreStopSignals(distributed.WorkerPlugin):
        name = "fastimg-ignore-stop-signals"

        def setup(self, worker):
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                for name in WORKER_IGNORED_SIGNALS:
                    signal.signal(getattr(signal, name), signal.SIG_IGN)

    return IgnoreStopSignals()


#: The warnings of multiprocessing's resource tracker that :func:`quiet_resource_tracker`
#: filters (the ``PYTHONWARNINGS`` form: action, message start, category)
TRACKER_WARNINGS = "ignore:resource_tracker:UserWarning"


def quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker, if it is not running, with its own warnings
    filtered: a local cluster's workers share it with this process, and one still running a
    task when the build stops (Ctrl-C, SIGTERM) is killed by its nanny after a few seconds;
    the tracker then printed "There appear to be 1 leaked semaphore objects to clean up at
    shutdown" under the command's one line, and cleaned them up, as it does, itself.

    Call it where the environment is put back after (:func:`environ_kept`)."""
    from multiprocessing import resource_tracker

    given = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = f"{given},{TRACKER_WARNINGS}" if given else TRACKER_WARNINGS
    resource_tracker.ensure_running()


@contextlib.contextmanager
def dask_logs_muted():
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


class SyncCancelNoise(logging.Filter):
    """Drops what tornado logs when dask's ``sync()`` fails to cancel its call after a Ctrl-C.

    A Ctrl-C in a blocking client call makes ``distributed.utils.sync`` schedule a cancel of
    the call's future on the event loop; when the call had not started yet, that future is
    unset, the cancel raises, and tornado logs the traceback ("Exception in callback
    functools.partial(<function sync.<locals>.cancel ...>)") over the one line of a Ctrl-C.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "sync.<locals>.cancel" not in record.getMessage()


@contextlib.contextmanager
def interrupt_noise_muted():
    """:class:`SyncCancelNoise` on tornado's logger while a client is used (kept with
    ``-v``). The event loop logs it on its own thread, possibly before the KeyboardInterrupt
    reaches any handler of ours, so the filter is on for the whole session."""
    if logger.isEnabledFor(logging.INFO):
        yield
        return
    tornado_logger = logging.getLogger("tornado.application")
    noise = SyncCancelNoise()
    tornado_logger.addFilter(noise)
    try:
        yield
    finally:
        tornado_logger.removeFilter(noise)


@contextlib.contextmanager
def client_logs_muted():
    """distributed.client's errors and tracebacks hidden (kept with ``-v``): a scheduler lost
    mid-build is reported once, as one line (:func:`fastimg.cluster.driver._drive`), not as
    its reconnect attempts."""
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
def environ_kept():
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
