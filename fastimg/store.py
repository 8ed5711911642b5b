"""The store schema shared by every writer and reader: array names, dtypes, markers.

A store is one zarr v3 group. Writers build it under a temporary name and rename it when
complete, and set the completion marker last, so a store that was not finished never looks
finished.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

FORMAT_VERSION = 1
IMAGES = "images"
ATTRS_KEY = "fastimg"
COMPLETE = "complete"
PARTIAL_SUFFIX = ".partial"
IMAGE_CHUNK_ROWS = 1024


class StoreError(ValueError):
    """A store is missing, unfinished or of another format."""


def partial_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def is_complete(path) -> bool:
    """True when ``path`` is a finished fastimg store (reads only its metadata)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text(encoding="utf-8")).get("attributes", {})
    except (OSError, json.JSONDecodeError):
        return False
    return bool(attrs.get(ATTRS_KEY, {}).get(COMPLETE))


def open_store(path):
    """Open a finished store read-only, or raise :class:`StoreError`."""
    import zarr

    if not is_complete(path):
        raise StoreError(f"{path} is not a complete fastimg store (missing, or its build did not "
                         f"finish: rerun the command that builds it)")
    group = zarr.open_group(os.fspath(path), mode="r")
    version = group.attrs[ATTRS_KEY].get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(f"{path} has store format {version}, this fastimg reads {FORMAT_VERSION}")
    return group


def create_partial(path, *, force: bool = False):
    """Start a new store at ``path + '.partial'`` and return the zarr group.

    Raises :class:`StoreError` when a complete store already exists and ``force`` is false.
    """
    import zarr

    path = Path(path)
    if path.exists() and not force:
        raise StoreError(f"{path} already exists; pass --force to overwrite it")
    tmp = partial_path(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    return zarr.open_group(os.fspath(tmp), mode="w", zarr_format=3)


def discard_partial(path) -> None:
    """Remove the unfinished build of ``path``, if any."""
    shutil.rmtree(partial_path(path), ignore_errors=True)


def finish(group, path, attrs: dict) -> None:
    """Write the final attributes with the completion marker, then move the store in place."""
    group.attrs[ATTRS_KEY] = {**attrs, "format_version": FORMAT_VERSION, COMPLETE: True}
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    os.replace(partial_path(path), path)
