"""The files of a training run folder: one list for the trainer that writes them and for the
commands that read them (``info``, ``predict``, ``train --force``), without torch."""
from __future__ import annotations

import os
from pathlib import Path

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "best.pt"
BUNDLE_FILE = "bundle.json"
#: ``dataset`` normalisation only
NORMALISER_FILE = "normaliser.npz"
#: the on-disk feature cache's folder (``cache="zarr"``)
FEATURE_CACHE_DIR = "feature_cache"
#: Every file :func:`fastimg.train.fit` writes into a run folder; the first two mark a folder
#: as a run. :data:`FEATURE_CACHE_DIR` comes beside them with an on-disk feature cache.
RUN_FILES = (METRICS_FILE, CONFIG_FILE, CHECKPOINT_FILE, BUNDLE_FILE, NORMALISER_FILE)
#: An unfinished run's state after its last finished epoch (:mod:`fastimg.train.resume`): the
#: same fit run again goes on from there. Removed once the run's files are written.
RESUME_FILE = "resume.pt"
#: how an unfinished run is resumed, as the messages about one say
RESUME_ADVICE = "fastimg train with its settings, without --force, resumes it"


def is_unfinished(path) -> bool:
    """True when the folder ``path`` holds an unfinished run's state (:data:`RESUME_FILE`):
    the same fit resumes it (and checks that it is its own); whatever else is there, the
    folder was accepted when that fit began."""
    return (Path(path) / RESUME_FILE).is_file()


def _cut_short_write(name: str) -> bool:
    return any(name.startswith(f".{run_file}.") and name.endswith(".tmp")
               for run_file in (*RUN_FILES, RESUME_FILE))


def holds_only_leftovers(path) -> bool:
    """True when all the folder ``path`` holds is what a fit killed before its first epoch's
    state leaves (no handler ran): its on-disk feature cache (``train``, ``val``, ``test``
    arrays) and writes cut short. The next fit into the folder removes them."""
    for entry in Path(path).iterdir():
        if entry.name == FEATURE_CACHE_DIR and entry.is_dir():
            if any(split.name not in ("train", "val", "test") for split in entry.iterdir()):
                return False
        elif not _cut_short_write(entry.name):
            return False
    return True


def remove_cut_short_writes(path) -> None:
    """Remove the temporary files of run-file writes that a kill cut short (``replace_file``'s
    ``.NAME.PID.THREAD.tmp``) from the folder ``path``."""
    for entry in Path(path).iterdir():
        if _cut_short_write(entry.name):
            entry.unlink(missing_ok=True)


def run_files_in(path) -> list[str]:
    """The names of :data:`RUN_FILES` that the folder ``path`` holds (none for a missing one)."""
    path = Path(path)
    return [name for name in RUN_FILES if (path / name).exists()]


def model_type(path) -> str | None:
    """The ``model_type`` of the folder ``path`` when it is a model saved by transformers (its
    ``config.json`` names one; a run's names its trainer's settings), else None."""
    import json

    try:
        config = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = config.get("model_type") if isinstance(config, dict) else None
    return kind if isinstance(kind, str) else None


def is_run_folder(path) -> bool:
    """True when ``path`` is a training run folder (it holds ``metrics.json``, an unfinished
    run's state, or a ``config.json`` that is not a transformers model's) rather than a
    store."""
    path = Path(path)
    if not path.is_dir():
        return False
    return (path / METRICS_FILE).is_file() or is_unfinished(path) or (
        (path / CONFIG_FILE).is_file() and model_type(path) is None)


def runs_inside(path) -> list[str]:
    """The names of the training run folders directly inside the folder ``path``, sorted (a
    folder of runs given where one run goes)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(entry.name for entry in path.iterdir() if is_run_folder(entry))


def listed_runs(names) -> str:
    """``a, b and 3 more``: the run folders :func:`runs_inside` found, for a message."""
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def why_not_a_run(path) -> str:
    """Why the folder ``path``, which holds no run's files, is not a training run folder, in
    one line: a store, a model folder, a folder of runs, or none of these."""
    from fastimg.store import location

    store = location.store_around(path)
    if store is not None:
        return (f"{path} is a fastimg store, not a training run folder: train a run on it "
                f"(`fastimg train {path} --out RUN`, or fit(store, out_dir=RUN))"
                if store == Path(os.path.abspath(path))
                else f"{path} lies inside the fastimg store {store}, not a training run folder")
    kind = model_type(path)
    if kind is not None:
        return f"{path} is a model folder (a {kind!r} model), not a training run folder"
    runs = runs_inside(path)
    if runs:
        return (f"{path} holds training run folders ({listed_runs(runs)}), not a run: give one "
                f"of them")
    return (f"{path} has no {BUNDLE_FILE} (a run from an older fastimg, or not a run folder): "
            f"train it again with `fastimg train`")


def check_outside_stores(path) -> None:
    """Refuse a run folder that is a fastimg store or lies inside one: a rebuild of the store
    would delete the run, and ``info`` would show the run in its place
    (:func:`fastimg.store.location.check_outside_stores`); and one that is a model folder,
    whose ``config.json`` the run would overwrite (even with ``--force``).

    Raises
    ------
    fastimg.store.StoreError
        For a store, a folder inside one, or a model folder.
    """
    from fastimg.store import StoreError, location

    location.check_outside_stores(path, deleted="the run", instead="a run folder outside it")
    kind = model_type(path) if Path(path).is_dir() else None
    if kind is not None:
        raise StoreError(f"{path} is a model folder (a {kind!r} model): a run written there "
                         f"would overwrite its {CONFIG_FILE}; choose another output path")
