"""An unfinished fit's state after its last finished epoch, and the same fit going on from it.

After each epoch :func:`fastimg.train.fit` with a run folder writes :data:`RESUME_FILE` there:
the model's, optimiser's, schedules' and gradient scaler's states, the torch random state, the
history and the best epoch so far, under a key of the fit's settings and the store's
attributes. Run again into the folder with the same settings on the same store, the fit loads
it and trains the remaining epochs: every epoch's order comes from ``[seed, epoch]`` and the
random state is the one the next epoch would have started with, so the run ends with the
numbers of an uninterrupted one (on the same machine and device). The file goes once the run's
files are written.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastimg._files import replace_file
from fastimg.run_folder import RESUME_FILE
from fastimg.store.keys import differences
from fastimg.train.run_files import save_state, store_name

logger = logging.getLogger("fastimg.train")

#: settings that change how a fit runs, not what it computes (the probe runs after the
#: epochs; the cache budget chooses the cache's place, which a resumed fit keeps); the device,
#: loader, AMP and channels_last are keyed as they resolve (``auto`` is the CPU on one machine
#: and CUDA on another)
_NOT_KEYED = ("progress", "num_workers", "probe", "cache_budget", "device", "loader", "amp",
              "channels_last")
#: what :func:`save` writes and :func:`load` needs
_FIELDS = ("key", "config", "done", "history", "best", "best_state", "stopped_early", "cache",
           "model", "optimizer", "scaler", "step_scheduler", "epoch_scheduler", "rng",
           "cuda_rng")


@dataclass
class Epochs:
    """Where a fit's epochs stand: ``done`` epochs, their ``history``, the ``best`` epoch's
    index and its weights (on the CPU), whether early stopping ended them, and the seconds
    the fit ran to get there (``elapsed_s``, over the processes it took)."""

    done: int = 0
    history: list = field(default_factory=list)
    best: int | None = None
    best_state: dict | None = None
    stopped_early: bool = False
    elapsed_s: float = 0.0


def resume_key(config, data, device, loader: str) -> dict:
    """What must match for a run folder's state to be resumed: the fit's settings (all but
    :data:`_NOT_KEYED`; the ``device`` and ``loader`` as resolved, AMP and channels_last as
    they apply there) and a digest of the store's attributes (a store rebuilt since has other
    attributes: its timings, if nothing else)."""
    attrs = json.dumps(data.reader.attrs, sort_keys=True, default=str)
    cuda = device.type == "cuda"
    settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_KEYED}
    settings.update(device=device.type, loader=loader, amp=bool(config.amp and cuda),
                    channels_last=bool(config.channels_last and cuda))
    return {"config": settings,
            "store_attrs_sha256": hashlib.sha256(attrs.encode("utf-8")).hexdigest()}


def key_digest(key: dict) -> str:
    """A resume key as one string (what the fit's on-disk feature cache records)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def load(run_dir: Path, key: dict) -> dict | None:
    """The state saved in ``run_dir`` for ``key``, or None when there is none.

    Raises
    ------
    FileExistsError
        The folder holds the state of a fit with other settings or on another store (the
        message names them), or a state that cannot be read.
    """
    path = Path(run_dir) / RESUME_FILE
    if not path.is_file():
        return None
    state = _read(path)
    if state is None:
        raise FileExistsError(f"{run_dir} holds an unfinished run whose {RESUME_FILE} cannot "
                              f"be read (cut short, or of another fastimg); pass "
                              f"overwrite=True to start over")
    saved = json.loads(state["key"])
    if saved == key:
        return state
    done = f"{state['done']} epoch{'s' * (state['done'] != 1)} done"
    found = differences("", saved["config"], key["config"])
    if not found:  # the settings match: the store does not
        raise FileExistsError(f"{run_dir} holds an unfinished run ({done}) on a store that was "
                              f"rebuilt since, or on another store: pass overwrite=True to "
                              f"start over")
    if saved["store_attrs_sha256"] != key["store_attrs_sha256"]:
        found.append("the store was rebuilt since, or is another store")
    more = f"; and {len(found) - 6} more" if len(found) > 6 else ""
    raise FileExistsError(f"{run_dir} holds an unfinished run ({done}) with other settings "
                          f"({'; '.join(found[:6])}{more}): run it again with its own settings "
                          f"to resume it, or pass overwrite=True to start over")


def _read(path: Path) -> dict | None:
    """The state saved at ``path``, or None when it cannot be read or lacks a field."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        key = json.loads(state["key"])
        if (all(name in state for name in _FIELDS) and isinstance(key, dict)
                and isinstance(key.get("config"), dict) and "store_attrs_sha256" in key):
            return state
    except Exception:  # noqa: BLE001 - any unreadable file is one answer
        pass
    return None


def saved_epochs(run_dir: Path) -> dict | None:
    """What the state in ``run_dir`` says of its run, for ``fastimg info``: ``done`` (epochs),
    ``history``, ``best`` (index), ``stopped_early``, ``config`` (the fit's settings, as
    ``config.json`` holds them) and ``store`` (as ``metrics.json`` names it; None in a state
    saved before fastimg recorded it); None without a state, or with one that cannot be
    read."""
    state = _read(Path(run_dir) / RESUME_FILE)
    if state is None:
        return None
    return {name: state[name] for name in ("done", "history", "best", "stopped_early")} | {
        "config": json.loads(state["config"]), "store": state.get("store")}


def save(run_dir: Path, key: dict, run, epochs: Epochs) -> None:
    """Write the state of ``run`` (a fit's model, optimiser, schedules, scaler) after
    ``epochs.done`` epochs, replacing the one before."""
    device = run.device
    state = {
        "key": json.dumps(key, sort_keys=True), "config": json.dumps(run.config.to_dict()),
        "store": store_name(run.data), "done": epochs.done,
        "history": epochs.history, "best": epochs.best, "best_state": epochs.best_state,
        "stopped_early": epochs.stopped_early, "elapsed_s": epochs.elapsed_s,
        "cache": run.cache_mode,
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
        "step_scheduler": _state_of(run.step_scheduler),
        "epoch_scheduler": _state_of(run.epoch_scheduler),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }

    replace_file(Path(run_dir) / RESUME_FILE, lambda tmp: save_state(state, tmp),
                 write_through=False)


def restore(state: dict, run) -> Epochs:
    """Put ``run``'s model, optimiser, schedules and scaler where the saved ``state`` left
    them (before its feature cache is built: the extractor is the saved one, whatever its
    weights file holds now); the epochs to go on from. The random state comes last
    (:func:`restore_random_state`)."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    for scheduler, saved in ((run.step_scheduler, state["step_scheduler"]),
                             (run.epoch_scheduler, state["epoch_scheduler"])):
        if scheduler is not None:
            scheduler.load_state_dict(saved)
    logger.info("resuming %s after epoch %d", run.run_dir, state["done"])
    return Epochs(done=state["done"], history=state["history"], best=state["best"],
                  best_state=state["best_state"], stopped_early=state["stopped_early"],
                  elapsed_s=state.get("elapsed_s", 0.0))  # a state saved before it was kept


def restore_random_state(state: dict, run) -> None:
    """The torch random state the next epoch of an uninterrupted run would have found."""
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] is not None and run.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], run.device)


def _state_of(scheduler):
    return None if scheduler is None else scheduler.state_dict()
