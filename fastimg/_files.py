"""Writing a file so that a reader never finds half of it under its name."""
from __future__ import annotations

import os
import threading
from pathlib import Path


def replace_file(path, write, *, write_through: bool = True) -> None:
    """``write(tmp)`` into a new file beside ``path``, then moved onto it.

    The temporary name is this thread's own (``.NAME.PID.THREAD.tmp``) and the file is made as
    ``open`` makes one (the umask's permissions, not a private temp file's).

    Parameters
    ----------
    path : str or path
    write : callable
        Writes the whole file at the path it is given; an exception leaves nothing behind.
    write_through : bool
        A symlink, or something that is not a regular file (a pipe, ``/dev/stdout``), is
        written through (True: replacing it would cut the link or swallow the output, as for
        a user's ``--out``), or replaced like a file (False: a cache entry, which must never
        hold a cut-short write under its name).
    """
    path = Path(path)
    if write_through and (path.is_symlink() or (path.exists() and not path.is_file())):
        write(path)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
