"""The build lock of a store on object storage: an object beside the store (``URL.lock``),
written only if absent (a conditional write, ``If-None-Match: *`` on S3), renewed while the
build runs (on S3 only while it is still the object written: ``If-Match``) and deleted when
it ends. A stale lock is taken over the same way: on S3 only while it is still the stale one.

Object storage has no ``flock`` and no process to watch: a command that dies leaves its lock
object behind. A lock not renewed for :data:`LEASE_SECONDS` is stale, and the next build takes
it over with a warning. Its age is the object's last-modified time (the storage's clock)
against this machine's clock, so the clocks must agree to well within the lease (NTP does).
A lock whose holder was a process of this machine that no longer runs (killed, out of memory)
is stale at once: the record names the host and the PID namespace, so a process of another
container of the same name is never taken for a dead one.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime

from fastimg.store.schema import LOCK_SUFFIX, StoreError

logger = logging.getLogger("fastimg.store")

#: seconds after its last renewal when a lock is stale (its holder died)
LEASE_SECONDS = 120.0
#: seconds between two renewals of a held lock
RENEW_SECONDS = 30.0


def _lock_object(location):
    """``(filesystem, key)`` of the lock object of the store at ``location``."""
    fs, root = location.fs()
    return fs, root.rstrip("/") + LOCK_SUFFIX


def _pid_namespace() -> str | None:
    """This process's PID namespace (``pid:[4026531836]``), or None where there is no
    ``/proc`` to say."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _record(token: str) -> bytes:
    return json.dumps({"holder": f"process {os.getpid()} on {socket.gethostname()}",
                       "token": token, "pid": os.getpid(), "host": socket.gethostname(),
                       "pid_namespace": _pid_namespace()}).encode("utf-8")


def _holder_died_here(record: dict) -> bool:
    """Whether the lock's holder was a process of this machine (same host name and PID
    namespace) that no longer runs; False whenever that cannot be told."""
    pid, namespace = record.get("pid"), _pid_namespace()
    if (namespace is None or record.get("pid_namespace") != namespace
            or record.get("host") != socket.gethostname() or not isinstance(pid, int)
            or pid <= 0):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # running as another user
        return False
    return False


def _stale(record: dict, age: float) -> bool:
    return age > LEASE_SECONDS or _holder_died_here(record)


def _age(info: dict) -> float:
    """Seconds since the object ``info`` describes was last written (0 when the storage does
    not say: such a lock never turns stale)."""
    for key in ("LastModified", "last_modified", "mtime", "updated", "created"):
        value = info.get(key)
        if isinstance(value, str):
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if isinstance(value, datetime):
            value = value.timestamp()
        if isinstance(value, (int, float)):
            return max(0.0, time.time() - float(value))
    return 0.0


def _read(fs, key) -> tuple[dict | None, float, str | None]:
    """The lock's record, age and ETag (None where the storage gives none), or
    ``(None, 0, None)`` when there is no lock."""
    fs.invalidate_cache(key)  # s3fs keeps listings: the lock is read fresh
    try:
        info, data = fs.info(key), fs.cat_file(key)
    except FileNotFoundError:
        return None, 0.0, None
    try:
        record = json.loads(data)
    except ValueError:
        record = {}
    return (record if isinstance(record, dict) else {}), _age(info), info.get("ETag")


def holder(location) -> str | None:
    """Who holds the build lock of the store at ``location`` (``"process PID on HOST"``), or
    None (nobody, or a stale lock)."""
    record, age, _ = _read(*_lock_object(location))
    if record is None or _stale(record, age):
        return None
    return record.get("holder") or "another process"


def _conditional(fs) -> bool:
    """Whether ``fs`` writes conditionally on an ETag (``If-Match``: s3fs)."""
    return hasattr(fs, "_call_s3")


def _write_if_match(fs, key, token: str, etag: str):
    """Write the lock over the object whose ETag is ``etag`` only (S3's ``If-Match``); the
    storage's answer, or None when the object is another by now or gone."""
    try:
        return fs.pipe_file(key, _record(token), IfMatch=etag)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # S3's PreconditionFailed: another ETag
            return None
        raise


def _rewrite_if_ours(fs, key, token: str, etag: str | None) -> bool:
    """Write the lock again if it is still ours; False when it was taken over or deleted.

    On S3 (s3fs) the write is conditional on the object's ``etag`` (``If-Match``), so a
    command taking the lock over meanwhile is never overwritten; elsewhere the lock is read
    and compared just before (a narrow race)."""
    if etag is not None and _conditional(fs):
        return _write_if_match(fs, key, token, etag) is not None
    if (_read(fs, key)[0] or {}).get("token") != token:
        return False
    fs.pipe_file(key, _record(token))
    return True


def _take_over(fs, key, token: str, etag: str | None):
    """Replace a stale lock; the storage's answer to the write, or None when the caller must
    try to create the lock again.

    On S3 the stale object is overwritten only if it is still the one read (``If-Match``), so
    of two commands taking it over at once one wins and the other finds a fresh lock. Elsewhere
    it is deleted, and the next create decides (a narrow race)."""
    if etag is not None and _conditional(fs):
        return _write_if_match(fs, key, token, etag)
    fs.rm_file(key)
    return None


def _renew(fs, key, token: str, etag: str | None, stop: threading.Event, where) -> None:
    """Rewrite the lock every :data:`RENEW_SECONDS` until ``stop``, while it is still ours."""
    while not stop.wait(RENEW_SECONDS):
        try:
            if not _rewrite_if_ours(fs, key, token, etag):
                logger.warning("the build lock of %s was taken over or deleted while this "
                               "command held it: another command may be writing it too", where)
                return
        except Exception as exc:  # noqa: BLE001 - the next renewal tries again
            logger.warning("cannot renew the build lock of %s: %s", where, exc)


@contextmanager
def hold(location):
    """Hold the build lock of the store at ``location`` for the block.

    Raises
    ------
    StoreError
        Another command holds it (the message names its process and machine).
    """
    fs, key = _lock_object(location)
    token = uuid.uuid4().hex
    for attempt in range(3):
        try:
            written = fs.pipe_file(key, _record(token), mode="create")
            break
        except FileExistsError:
            record, age, etag = _read(fs, key)
            if record is None:  # let go meanwhile
                continue
            who = record.get("holder") or "another process"
            if not _stale(record, age) or attempt:
                raise StoreError(
                    f"{location} is being written by another fastimg command ({who}, its lock "
                    f"{location}{LOCK_SUFFIX} last written {age:.0f} s ago): wait for it to "
                    f"end, or choose another output path (a lock not renewed for "
                    f"{LEASE_SECONDS:.0f} s is taken over)") from None
            if age > LEASE_SECONDS:
                logger.warning("taking over the build lock of %s: %s has not renewed it for "
                               "%.0f s (it died?)", location, who, age)
            else:
                logger.warning("taking over the build lock of %s: %s no longer runs (killed?)",
                               location, who)
            written = _take_over(fs, key, token, etag)
            if written is not None:
                break
    else:
        raise StoreError(f"cannot take the build lock {location}{LOCK_SUFFIX}: it keeps "
                         f"changing")
    # s3fs answers with the object's ETag (the same for every write of the same record)
    etag = written.get("ETag") if isinstance(written, dict) else None
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(fs, key, token, etag, stop, location),
                               name="fastimg-lock", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        try:
            if (_read(fs, key)[0] or {}).get("token") == token:
                fs.rm_file(key)
        except Exception as exc:  # noqa: BLE001 - never hide the block's own error
            logger.warning("cannot remove the build lock %s%s: %s (it turns stale in %.0f s)",
                           location, LOCK_SUFFIX, exc, LEASE_SECONDS)
