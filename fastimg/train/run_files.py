"""A fit's run folder: made for the fit and cleaned up when it fails early, and its files
written with ``metrics.json`` last, so that a folder without it never looks finished."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from fastimg._files import replace_file
from fastimg.run_folder import (BUNDLE_FILE, CHECKPOINT_FILE, CONFIG_FILE, FEATURE_CACHE_DIR,
                                METRICS_FILE, NORMALISER_FILE, RESUME_FILE, is_unfinished,
                                run_files_in)
from fastimg.train.bundle import save_run_bundle

logger = logging.getLogger("fastimg.train")


@contextlib.contextmanager
def run_folder(run_dir: Path):
    """Create ``run_dir`` (and missing parents) for the block; when the block fails before the
    state of a finished epoch is written, remove its feature cache and, before any of
    :data:`RUN_FILES` is written too, the folders it created, and only those.

    The cache goes from a folder the user had too (any earlier run's was removed before the
    block): left there, it made the same ``train --out`` run again refuse the folder as not
    empty."""
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield run_dir
    except BaseException:
        # a finished epoch's state is kept, with the cache the fit run again reads: its epochs
        # read one build (checked before each save), and a store rebuilt since is refused by
        # its key, while a store that failed to read once is resumed
        if is_unfinished(run_dir):
            raise
        shutil.rmtree(run_dir / FEATURE_CACHE_DIR, ignore_errors=True)
        if created and not run_files_in(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished feature cache at most
            for parent in created[1:]:
                with contextlib.suppress(OSError):  # another process may have written there
                    parent.rmdir()
            logger.info("removed the unfinished run folder %s", created[-1])
        raise


def store_name(data) -> str:
    """The store as the run records it: a local store by its absolute path (``info`` and
    ``explain`` read it from any folder), an object store by its URL."""
    path = data.reader.path
    return os.fspath(path.resolve()) if isinstance(path, Path) else str(data.path)


def write_run_files(run, best_state: dict, metrics: dict) -> None:
    """The run folder's files: the best checkpoint, the bundle, the config, then the metrics.

    ``metrics.json`` comes last and marks a finished run, so a folder interrupted while being
    written never looks finished; over an earlier run (``overwrite``) its ``metrics.json``
    and ``bundle.json`` go first (so the new ``best.pt`` is never read with the earlier
    bundle), and files of the earlier run that this one does not write (``normaliser.npz``
    without dataset normalisation) are removed. ``run`` is the fit's state (its ``run_dir``,
    ``config``, ``data`` and ``normaliser`` are read)."""
    run_dir, config = run.run_dir, run.config
    for name in (METRICS_FILE, BUNDLE_FILE):
        (run_dir / name).unlink(missing_ok=True)
    replace_file(run_dir / CHECKPOINT_FILE, lambda tmp: save_state(best_state, tmp))
    if run.normaliser.mode != "dataset":
        (run_dir / NORMALISER_FILE).unlink(missing_ok=True)
    save_run_bundle(run_dir, run.data, run.normaliser, config)
    replace_file(run_dir / CONFIG_FILE, lambda tmp: tmp.write_text(
        json.dumps(config.to_dict(), indent=2), encoding="utf-8"))
    replace_file(run_dir / METRICS_FILE, lambda tmp: tmp.write_text(
        json.dumps(metrics, indent=2), encoding="utf-8"))
    (run_dir / RESUME_FILE).unlink(missing_ok=True)


def save_state(state: dict, path) -> None:
    """``torch.save(state)`` into ``path`` through a file object.

    Given a path, torch names the records of its zip archive after the file: here the
    temporary one, whose name holds the process and thread id (``.best.pt.PID.THREAD.tmp``),
    so two runs of one seed wrote the same tensors in different bytes. A file object gives
    the records torch's fixed prefix (``archive/``)."""
    with open(path, "wb") as fh:
        torch.save(state, fh)
