"""Committing finished chunks on a background thread, in order, while the model runs on.

Writing a chunk of embeddings to zarr (compressing it, then recording ``rows_done``) takes about
23 ms per 1,024 x 2,304 float16 chunk on a 2-core Xeon. On a GPU that encodes such a chunk in a
few tens of milliseconds, writing in the model's thread would leave the GPU idle that long.
"""
from __future__ import annotations

import logging
import queue
import threading

logger = logging.getLogger("fastimg.embed")


class Committer:
    """Calls ``commit(*args)`` for each :meth:`submit`, one after another, on one thread.

    Chunks are committed in the order they are submitted, so a run interrupted at any point
    leaves a prefix of the chunks committed: what resuming relies on. After a failed commit the
    later ones are skipped, and the exception is raised in the caller's thread by the next
    :meth:`submit` or on leaving the ``with`` block.

    Parameters
    ----------
    commit : callable
    depth : int
        Submitted commits that may wait (bounds the memory held by pending chunks).
    """

    def __init__(self, commit, depth: int = 2):
        self._commit = commit
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fastimg-commit", daemon=True)

    def _run(self):
        while (args := self._queue.get()) is not None:
            if self._error is None:  # after a failure, keep draining so submit never blocks
                try:
                    self._commit(*args)
                except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                    self._error = exc

    def _raise(self):
        if self._error is not None:
            raise self._error

    def submit(self, *args) -> None:
        """Queue ``commit(*args)``; raises the exception of an earlier commit that failed."""
        self._raise()
        self._queue.put(args)

    def __enter__(self) -> "Committer":
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        # commits already submitted still happen: an interrupted run keeps what it computed
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self._raise()
        elif self._error is not None and exc is not self._error:
            # the caller's own exception propagates; keep the commit's seen too
            logger.error("committing a chunk failed too: %s: %s", type(self._error).__name__,
                         self._error)
        return False
