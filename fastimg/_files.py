"""Writing a file so that a reader never finds half of it under its name."""
from __future__ import annotations

import os
from pathlib import Path


def replace_file(path, write) -> None:
    """``write(tmp)`` into a new file beside ``path``, then moved onto it.

    The temporary name is this process's own (``.NAME.PID.tmp``) and the file is made as
    ``open`` makes one (the umask's permissions, not a private temp file's). A symlink, or
    something that is not a regular file (a pipe, ``/dev/stdout``), is written through:
    replacing it would cut the link or swallow the output.
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        write(path)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
