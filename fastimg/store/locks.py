"""Who may write a store or a training run folder: one command at a time, held for the whole
build (:func:`build_lock`), and who holds it (:func:`lock_holder`). On a local file system the
lock is ``flock`` on a file beside the folder; on object storage, an object written only if
absent (:mod:`fastimg.store.object_lock`)."""
from __future__ import annotations

import itertools
import logging
import os
import socket
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from fastimg._validation import file_in_the_way
from fastimg.store.location import Location, _access, resolve, store_around
from fastimg.store.schema import LOCK_SUFFIX, StoreError

#: fsspec protocols that read but cannot write (a store served over HTTP)
READ_ONLY_PROTOCOLS = ("http", "https")

logger = logging.getLogger("fastimg.store")


@contextmanager
def build_lock(path):
    """Hold the lock of building ``path`` for the block (a store, or a training run folder).

    Two commands building one store would write into one unfinished build: each keeps the
    build's records in memory and writes them whole, and a setting one of them changes
    (``--force``) deletes arrays the other is still writing, so a store could end complete
    with the other command's embeddings. The second command is refused instead. The lock is
    ``flock`` on ``OUT.lock`` (removed when the block ends; the system drops it when the
    holder dies, so a killed build leaves nothing to clean up); on a file system without
    locks a warning says the builds are not kept apart. On object storage it is an object
    written only if absent and renewed while held (:mod:`fastimg.store.object_lock`).

    A ``path`` inside another store is refused first (before anything is created there): a
    rebuild of that store would delete it.

    Raises
    ------
    StoreError
        Another command holds the lock (the message names its process and machine),
        ``path`` lies inside a store, or is an ``http(s)://`` URL (read-only).
    """
    path = resolve(path)
    around = store_around(path.parent) if isinstance(path, Path) else None
    if around is not None:
        raise StoreError(f"{path} lies inside the store {around}, whose rebuild would delete "
                         f"it; choose an output path outside it")
    if isinstance(path, Location) and path.protocol.lower() in READ_ONLY_PROTOCOLS:
        # "Cannot connect to host" offline, fsspec's NotImplementedError online
        raise StoreError(f"{path}: {path.protocol}:// stores can be read, not written; write "
                         f"the store to a local path or object storage, then serve it")
    if isinstance(path, Location):
        from fastimg.store.object_lock import hold

        with ExitStack() as held:
            with _access(path):  # a denied write or a missing bucket, said as such
                held.enter_context(hold(path))
            yield
        return
    blocker = file_in_the_way(path.parent)
    if blocker is not None:  # mkdir's "[Errno 17] File exists: '/abs/blocker'" named no --out
        raise StoreError(f"{path}: {blocker} is a file, not a folder")
    lock = _lock_file(path)
    created = list(itertools.takewhile(lambda folder: not folder.exists(), lock.parents))
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = None
    try:
        fd = _lock(lock, path)
        yield
    finally:
        if fd is not None:
            lock.unlink(missing_ok=True)  # still ours: it is held
            os.close(fd)
        for folder in created:  # deepest first; those the command wrote into stay
            with suppress(OSError):
                folder.rmdir()


def _fcntl():
    """The ``fcntl`` module, or None (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    return fcntl


def _lock_file(path: Path) -> Path:
    """The lock file of the local folder ``path``: one however the folder is spelt (".",
    "a/..", a symlink)."""
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + LOCK_SUFFIX) if real.name else real / LOCK_SUFFIX


def lock_holder(path) -> str | None:
    """Who holds the :func:`build_lock` of ``path`` (``"process PID on HOST"``), or None
    (nobody, or a file system without locks)."""
    fcntl = _fcntl()
    path = resolve(path)
    if isinstance(path, Location):
        from fastimg.store.object_lock import holder

        with _access(path):
            return holder(path)
    if fcntl is None:
        return None
    try:
        fd = os.open(_lock_file(path), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # let go at once, when fd is closed
    except BlockingIOError:
        return _holder(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def _lock(lock: Path, path: Path) -> int | None:
    """The descriptor of the file ``lock``, locked; None, with a warning, where no lock can
    be taken (a file system without locks, or a folder this user cannot create files in,
    such as the read-only parent of a mounted run folder)."""
    def unlocked(exc) -> None:
        logger.warning("cannot lock %s (%s): a second command writing %s at the same time "
                       "would not be refused", lock, exc, path)

    fcntl = _fcntl()
    if fcntl is None:
        unlocked("no fcntl on this system")
        return None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:  # EACCES, EROFS
            if not os.access(path, os.W_OK):  # nothing could be written there either
                raise StoreError(f"cannot write {path}: {exc.strerror or exc} (in "
                                 f"{lock.parent})") from None
            unlocked(exc)  # a writable folder under a read-only one (a mounted run folder)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StoreError(f"{path} is being written by another fastimg command "
                             f"({holder}): wait for it to end, or choose another output "
                             f"path") from None
        except OSError as exc:  # Lustre without -o flock: ENOSYS, NFS without lockd: ENOLCK
            os.close(fd)
            with suppress(OSError):  # nobody can hold it: leave nothing behind
                lock.unlink()
            unlocked(exc)
            return None
        try:  # the holder before us removed the file as it let go: lock the one there now
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
    except BaseException:
        lock.unlink(missing_ok=True)
        os.close(fd)
        raise
    return fd


def _holder(fd: int) -> str:
    """What the holder of the lock file open at ``fd`` wrote into it: who it is."""
    return os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
