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
IDS = "ids"
LABELS = "labels"
SPLIT = "split"
EMBEDDINGS = "embeddings"
#: ``split`` holds int8 codes: indices into this tuple
SPLIT_NAMES = ("train", "val", "test")
ATTRS_KEY = "fastimg"
#: attrs of an unfinished dataset build: its settings and the stages done so far
BUILD_KEY = "fastimg_build"
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


def size_bytes(path) -> int:
    """Bytes a store takes on disk (every file under it)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def create_images(group, n_rows: int, grid, dtype: str):
    """The ``images`` array [N, H, W] of a store, chunked by ``IMAGE_CHUNK_ROWS`` rows (the
    layout every reader expects)."""
    height, width = grid
    return group.create_array(IMAGES, shape=(n_rows, height, width), dtype=dtype,
                              chunks=(max(1, min(IMAGE_CHUNK_ROWS, n_rows)), height, width),
                              fill_value=0)


def _json_normalised(value):
    return json.loads(json.dumps(value, sort_keys=True))


def resume_or_create_partial(path, settings: dict, *, force: bool = False):
    """Open the unfinished build of ``path`` when it was started with the same ``settings``,
    otherwise start a new one.

    Returns
    -------
    (zarr.Group, bool)
        The ``.partial`` group and whether it resumes an earlier run.

    Raises
    ------
    StoreError
        When a store already exists at ``path``, or an unfinished build with other settings
        does, and ``force`` is false.
    """
    import zarr

    path = Path(path)
    if path.exists() and not force:
        what = "a complete fastimg store" if is_complete(path) else "something that is not a store"
        raise StoreError(f"{path} already exists ({what}); pass --force to overwrite it")
    settings = _json_normalised(settings)
    tmp = partial_path(path)
    if tmp.exists() and not force:
        try:
            group = zarr.open_group(os.fspath(tmp), mode="r+")
            old = group.attrs.get(BUILD_KEY, {}).get("settings")
        except Exception:  # noqa: BLE001 - an unreadable leftover is not resumable
            old = None
        if old == settings:
            return group, True
        if old is None:
            raise StoreError(f"{tmp} exists but is not an unfinished fastimg build; remove it or "
                             f"pass --force")
        diffs = [f"{key}" for key in sorted(set(old) | set(settings))
                 if old.get(key) != settings.get(key)]
        raise StoreError(f"an unfinished build with other settings is at {tmp} (they differ in: "
                         f"{', '.join(diffs)}); rerun with the same settings to resume it, or pass "
                         f"--force to start over")
    if tmp.exists():
        shutil.rmtree(tmp)
    group = zarr.open_group(os.fspath(tmp), mode="w", zarr_format=3)
    group.attrs[BUILD_KEY] = {"settings": settings}
    return group, False


def update_build_state(group, **state) -> dict:
    """Merge ``state`` into the unfinished build's attrs (written at once, JSON only)."""
    build = dict(group.attrs.get(BUILD_KEY, {}))
    build.update(_json_normalised(state))
    group.attrs[BUILD_KEY] = build
    return build


def discard_partial(path) -> None:
    """Remove the unfinished build of ``path``, if any."""
    shutil.rmtree(partial_path(path), ignore_errors=True)


def finish(group, path, attrs: dict) -> None:
    """Write the final attributes with the completion marker, then move the store in place."""
    if BUILD_KEY in group.attrs:
        del group.attrs[BUILD_KEY]
    group.attrs[ATTRS_KEY] = {**attrs, "format_version": FORMAT_VERSION, COMPLETE: True}
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    os.replace(partial_path(path), path)
