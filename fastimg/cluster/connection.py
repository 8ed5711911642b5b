"""A dask client for ``--cluster``: ``local:N`` starts a local cluster, an address connects
to a running scheduler (checked first: dask would retry, or wait forever)."""
from __future__ import annotations

import contextlib
import logging
import re

from fastimg.cluster.errors import ClusterError, import_distributed
from fastimg.cluster.quiet import (client_logs_muted, dask_logs_muted, environ_kept,
                                   interrupt_noise_muted, quiet_resource_tracker,
                                   signal_ignoring_plugin, stop_signals_ignored)

logger = logging.getLogger("fastimg.cluster")


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
    distributed = import_distributed()
    if kind == "address":
        check_reachable(value)
        with interrupt_noise_muted(), client_logs_muted(), distributed.Client(value) as client:
            yield client
        return
    logger.info("starting a local cluster of %d worker processes", value)
    with interrupt_noise_muted(), environ_kept() as restore_environ:
        # everything on 127.0.0.1 at free ports (the scheduler's HTTP server too, which would
        # otherwise try 8787); silence_logs: a failed task is reported once, by the client,
        # and the scheduler lives in this process, so a worker that cannot reach it is
        # closing with it (a loaded machine's Ctrl-C printed a worker's failed heartbeat and
        # its traceback under the command's one line); -v keeps the workers' errors
        quiet_resource_tracker()
        verbose = logger.isEnabledFor(logging.INFO)
        with stop_signals_ignored():
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
            client.register_plugin(signal_ignoring_plugin(distributed))
            yield client
        finally:
            with dask_logs_muted():  # workers killed at close, tasks lost to a Ctrl-C
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
