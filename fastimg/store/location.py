"""Where a store lives: its final path, its unfinished build and the atomic replace.

Every filesystem operation on a store goes through this module, so that a store on another
kind of storage needs changes here only.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from fastimg.store.schema import ATTRS_KEY, COMPLETE, PARTIAL_SUFFIX, REPLACED_SUFFIX

logger = logging.getLogger("fastimg.store")


def partial_path(path) -> Path:
    """Where the unfinished build of ``path`` lives."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def replaced_path(path) -> Path:
    """Where a complete store waits while its replacement is moved in."""
    path = Path(path)
    return path.with_name(path.name + REPLACED_SUFFIX)


def read_attrs(path) -> dict | None:
    """The ``fastimg`` attrs of the group at ``path`` (its metadata only), or None."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return None
    try:
        attrs = json.loads(meta.read_text(encoding="utf-8")).get("attributes", {})
    except (OSError, json.JSONDecodeError):
        return None
    return attrs.get(ATTRS_KEY)


def is_complete(path) -> bool:
    """True when ``path`` is a finished fastimg store (reads only its metadata)."""
    recover(path)
    return bool((read_attrs(path) or {}).get(COMPLETE))


def recover(path) -> None:
    """Finish or undo a replace that was interrupted.

    A replace moves the old store aside, moves the new one in, then deletes the old one. If
    it stopped after the first step, the old store is moved back; after the second, the old
    one is deleted. Either way ``path`` ends up holding a complete store.
    """
    path, aside = Path(path), replaced_path(path)
    if not aside.exists():
        return
    if path.exists():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        logger.warning("restoring %s from %s (a replace was interrupted)", path, aside)
        os.replace(aside, path)


def _move(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def replace_with_partial(path) -> None:
    """Move the finished build at ``partial_path(path)`` to ``path``.

    An existing store is moved aside first and deleted last: a crash at any point leaves a
    complete store at ``path`` or at ``replaced_path(path)``, which :func:`recover` (run by
    every reader and writer) moves back.
    """
    path, aside = Path(path), replaced_path(path)
    recover(path)
    if path.exists():
        _move(path, aside)
    _move(partial_path(path), path)
    shutil.rmtree(aside, ignore_errors=True)


def remove(path) -> None:
    """Delete a store or an unfinished build (nothing if it is absent)."""
    shutil.rmtree(path, ignore_errors=True)


def size_bytes(path) -> int:
    """Bytes a store takes on disk (every file under it)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def open_group(path, mode: str):
    """The zarr v3 group at ``path``."""
    import zarr

    return zarr.open_group(os.fspath(path), mode=mode, zarr_format=3)
