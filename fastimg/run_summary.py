"""What ``fastimg info`` says about a training run folder: a short human summary (a list of
lines) or its files, config and metrics as JSON-ready data (several runs side by side:
:mod:`fastimg.runs_table`)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from fastimg.info import number_text, seconds_text
from fastimg.run_folder import (BUNDLE_FILE, CONFIG_FILE, METRICS_FILE, NORMALISER_FILE,
                                RESUME_ADVICE, RESUME_FILE, RUN_FILES, is_unfinished,
                                run_files_in)


def _accuracy(value) -> str:
    return "absent" if value is None else f"{value:.4f}"


def _class_scores_line(metrics: dict) -> str | None:
    """``by class`` of the reported split: macro F1, balanced accuracy and the class recalled
    least (what accuracy hides when the classes are imbalanced); None for runs saved before
    fastimg scored classes."""
    split = (metrics.get("reported") or {}).get("split")
    scores = ((metrics.get("final") or {}).get(split) or {})
    per_class = scores.get("per_class")
    if not per_class or scores.get("macro_f1") is None:
        return None
    name, worst = min(((n, c) for n, c in per_class.items() if c["support"]),
                      key=lambda item: item[1]["recall"])
    return (f"by class   {split}: macro F1 {scores['macro_f1']:.4f}, balanced accuracy "
            f"{scores['balanced_accuracy']:.4f}; lowest recall {name!r} {worst['recall']:.4f} "
            f"(of {plural(worst['support'], 'row')}); "
            + (f"classes {', '.join(per_class)}" if len(per_class) <= 8 else
               f"{len(per_class)} classes"))


def plural(count, noun: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``; ``"? epochs"`` when the count is not recorded."""
    if count is None:
        return f"? {noun}s"
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _optimiser_line(config: dict) -> str:
    """The optimiser, its rates and schedule and early stopping, of a run's config (the
    settings an older run did not record left out)."""
    rates = (f"lr head {config.get('lr_head') or 'default'} / classifier "
             f"{config.get('lr_classifier') or 'default'}")
    parts = [f"{config['optimizer']}, {rates}" if config.get("optimizer") else rates]
    if config.get("weight_decay") is not None:
        parts.append(f"weight decay {config['weight_decay']:g}")
    if config.get("schedule") is not None:
        parts.append(f"schedule {config['schedule']}")
    patience = config.get("patience")
    if patience is not None:
        parts.append(f"early stop after {plural(patience, 'epoch')} without a val gain"
                     if patience else "no early stop")
    return ", ".join(parts)


def _head_line(config: dict) -> str:
    """Where the run cuts its extractor and what it adds around it (upsampling, branches);
    empty for a config that records none of it."""
    parts = []
    if config.get("cut") is not None:
        parts.append(f"{config['cut']} cut")
    if config.get("upsample") is not None:
        parts.append(f"upsample {config['upsample']}x")
    if config.get("pixel_branch"):
        parts.append("pixel branch")
    if config.get("fuse_embedding"):
        parts.append("embedding fused")
    return ", ".join(parts)


def weights_text(value, *, short: bool = False) -> str:
    """The extractor's starting weights in words (the run's ``weights`` setting); ``short``:
    one word for a table's cell (a weights file by its name)."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return "random" if short else "random init (none)"
    if isinstance(value, str) and value.upper() == "DEFAULT":
        return "ImageNet" if short else "ImageNet (DEFAULT)"
    return Path(str(value)).name if short else f"from {value}"


def _run_files(path: Path, config: dict) -> dict:
    """``{name: present}`` of the run files the folder should hold (``normaliser.npz`` only
    with ``dataset`` normalisation, or when it is there)."""
    files = {name: (path / name).is_file() for name in RUN_FILES}
    if not files[NORMALISER_FILE] and config.get("normalize") != "dataset":
        del files[NORMALISER_FILE]
    return files


def _read_json(path: Path, missing):
    """The JSON object at ``path``, or ``missing`` when there is no such file.

    Raises
    ------
    ValueError
        When the file is not valid JSON, or holds something other than an object.
    """
    if not path.is_file():
        return missing
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the run's JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path} holds a JSON {type(document).__name__}, not the object "
                         f"fastimg train writes (edited or cut short?)")
    return document


def describe_run(path) -> list[str]:
    """A short human summary of a training run folder (:data:`RUN_FILES`), one string per line.

    Raises
    ------
    ValueError
        When the folder's ``metrics.json`` or ``config.json`` is not valid JSON, or does not
        hold what ``fastimg train`` writes.
    """
    path = Path(path)
    metrics, config, saved = _run_documents(path)
    with as_written_by_train(path):
        return _run_lines(path, metrics or {}, config or {}, saved)


@contextlib.contextmanager
def as_written_by_train(path):
    """Report a field of the run folder ``path``'s documents of another type than ``fastimg
    train`` writes (``"final": {"val": 1}``: hand-edited), met while reading it, as one
    ValueError naming the folder."""
    try:
        yield
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{path}: its {METRICS_FILE} or {CONFIG_FILE} does not hold what "
                         f"fastimg train writes ({type(exc).__name__}: {exc}; edited?)") from None


def run_json(path) -> dict:
    """A training run folder for scripts (``fastimg info RUN --json``): ``run_folder``,
    ``files`` (the :data:`RUN_FILES` it holds, and ``resume.pt`` while a run is unfinished),
    ``finished`` (``metrics.json`` is written last), ``unfinished`` (the unfinished run whose
    state is there, ``{"epochs_done", "epochs"}``, else None; a train ``--force`` over a
    finished run, stopped, leaves both), and the ``config`` and ``metrics`` that ``fastimg
    train`` wrote (None where absent; an unfinished run's config from its state).

    Raises
    ------
    ValueError
        When the folder's ``metrics.json`` or ``config.json`` is not a valid JSON object.
    """
    path = Path(path)
    metrics, config, saved = _run_documents(path)
    files = run_files_in(path) + ([RESUME_FILE] if saved is not None else [])
    return {"run_folder": str(path), "files": files, "finished": metrics is not None,
            "unfinished": None if saved is None else {
                "epochs_done": saved.get("done"),
                "epochs": (saved.get("config") or {}).get("epochs"), "store": saved.get("store")},
            "config": config, "metrics": metrics}


def _run_documents(path: Path) -> tuple[dict | None, dict | None, dict | None]:
    """``(metrics, config, saved)`` of a run folder: its ``metrics.json`` and config (None
    where absent), and its unfinished run's state (:func:`_saved_epochs`). An unfinished
    run's config is its state's: its ``config.json`` may be that of the run a ``--force`` of
    it overwrites."""
    metrics = _read_json(path / METRICS_FILE, None)
    saved = _saved_epochs(path)
    config = (saved or {}).get("config") if metrics is None else None
    return metrics, config or _read_json(path / CONFIG_FILE, (metrics or {}).get("config")), saved


def _saved_epochs(path: Path) -> dict | None:
    """The unfinished run's state in ``path`` (:func:`fastimg.train.resume.saved_epochs`; torch
    is imported only for a folder that holds one): None without one, ``{}`` for one that
    cannot be read."""
    if not is_unfinished(path):
        return None
    from fastimg.train.resume import saved_epochs

    return saved_epochs(path) or {}


def _unfinished_text(saved: dict, config: dict) -> str:
    """The epochs an unfinished run's state says are done, in words."""
    if not saved:
        return (f"its {RESUME_FILE} cannot be read (cut short, or of another fastimg): "
                f"fastimg train --force starts over")
    history, best = saved["history"], saved["best"]
    return (f"{saved['done']} of {plural(config.get('epochs'), 'epoch')} done"
            + (f" (best val accuracy {_accuracy(history[best]['val_accuracy'])} at epoch "
               f"{best + 1})" if history and best is not None else ""))


def run_seconds(metrics: dict) -> float | None:
    """The seconds a finished run took, over its processes: the last one's (``total_s``) and,
    for a resumed run, those of the processes before it up to their last saved epoch; None
    when not recorded."""
    timings = metrics.get("timings") or {}
    if timings.get("total_s") is None:
        return None
    return timings["total_s"] + timings.get("before_resume_s", 0.0)


def trained_store(run_dir, metrics: dict | None, saved: dict | None) -> str | None:
    """The store the run in ``run_dir`` was trained on, as its ``metrics`` record it or else
    its unfinished run's ``saved`` state, followed by what became of it since
    (:func:`store_state`); None when neither records one."""
    recorded = (metrics or {}).get("store") or (saved or {}).get("store")
    return f"{recorded}{store_state(run_dir, recorded)}" if recorded else None


def store_state(run_dir, recorded) -> str:
    """What became of the run folder ``run_dir``'s local training store ``recorded`` since,
    to follow its name: `` (not there now: ...)`` when it is no longer a complete store
    there, `` (rebuilt since with another layout: ...)`` when its layout is not the one the
    run was trained on (explain refuses it), else ``""`` (a URL is not looked up: info reads
    no object storage for a run)."""
    from fastimg.store import ATTRS_KEY, location

    where = location.resolve(recorded)
    if not location.is_local(where):
        return ""
    if not location.is_complete(where):
        return (" (not there now: moved or deleted? explain reads the split from it; give the "
                "new path with --store)")
    try:
        trained_on = (_read_json(Path(run_dir) / BUNDLE_FILE, {}).get("layout") or {})
    except ValueError:  # a bundle that cannot be read: predict and explain say so
        return ""
    now = (location.read_attrs(where, ATTRS_KEY) or {}).get("layout") or {}
    if "pixel_index" in trained_on and now.get("pixel_index") != trained_on["pixel_index"]:
        return (" (rebuilt since with another layout: its images no longer fit this run, and "
                "explain refuses it)")
    return ""


def _run_lines(path: Path, metrics: dict, config: dict, saved: dict | None) -> list[str]:
    """:func:`describe_run`'s lines of a run's parsed ``metrics`` and ``config``, and of the
    ``saved`` state of its finished epochs while it is unfinished."""
    files = _run_files(path, config)
    present = [n for n, ok in files.items() if ok] + ([RESUME_FILE] if saved is not None else [])
    missing = ", ".join(n for n, ok in files.items() if not ok)
    lines = [f"{path}: fastimg training run (" + "; ".join(
        part for part in (", ".join(present), missing and f"missing {missing}") if part) + ")"]
    trained_on = trained_store(path, metrics, saved)
    if trained_on:
        lines.append(f"store      {trained_on}")
    extractor = metrics.get("extractor") or {"name": config.get("extractor"),
                                              "weights": config.get("weights")}
    shape = extractor.get("feature_shape")
    if extractor.get("name") is None:  # neither file says: not "random init"
        lines.append("extractor  not recorded")
    else:
        lines.append(f"extractor  {extractor.get('name')}, weights "
                     f"{weights_text(extractor.get('weights'))}"
                     + (f", features {' x '.join(map(str, shape))}" if shape else "")
                     + ("" if extractor.get("frozen", True) else ", partly trained"))
    preset = f" (preset {config['preset']})" if config.get("preset") else ""
    lines.append(f"training   {plural(config.get('epochs'), 'epoch')}, batch "
                 f"{config.get('batch_size')}, normalise {config.get('normalize')}, seed "
                 f"{config.get('seed')}{preset}")
    lines.append(f"optimiser  {_optimiser_line(config)}")
    head = _head_line(config)
    if head:
        lines.append(f"head       {head}")
    if metrics.get("device"):
        lines.append(f"ran on     {metrics['device']}, loader {metrics.get('loader')}, cache "
                     f"{metrics.get('cache')}, amp {metrics.get('amp')}")
    rows = metrics.get("rows")
    if rows:
        lines.append("rows       " + ", ".join(f"{s} {number_text(n)}" for s, n in rows.items()))
    epochs = metrics.get("epochs") or []
    if epochs:
        best = metrics.get("best_epoch")
        # why fewer epochs ran than the config's: train's own summary says so
        stopped = (f", stopped early (no val gain in {plural(config.get('patience'), 'epoch')})"
                   if metrics.get("stopped_early") else "")
        if metrics.get("resumed_after_epoch") is not None:  # a stopped run run again
            stopped += f", resumed after epoch {metrics['resumed_after_epoch']}"
        lines.append(f"epochs     {len(epochs)} run{stopped}, best epoch {best} (val accuracy "
                     f"{_accuracy(epochs[best - 1]['val_accuracy'] if best else None)}), "
                     f"last train loss {epochs[-1]['train_loss']:.4f}")
    final = metrics.get("final") or {}
    if final:
        biased = ("; no test split: the val figure chose the best epoch (selection-biased)"
                  if metrics.get("selection_biased") else "")
        lines.append(f"accuracy   val {_accuracy((final.get('val') or {}).get('accuracy'))}, "
                     f"test {_accuracy((final.get('test') or {}).get('accuracy'))} "
                     f"(best epoch's weights{biased})")
        scores = _class_scores_line(metrics)
        if scores:
            lines.append(scores)
    probe = metrics.get("probe")
    if metrics:
        lines.append("probe      " + ("not run" if not probe else
                                      f"val {_accuracy(probe.get('val_accuracy'))}, test "
                                      f"{_accuracy(probe.get('test_accuracy'))} "
                                      f"({probe.get('model', 'linear')})"))
    pixels = metrics.get("probe_pixels")
    if pixels:
        lines.append(f"  pixels   val {_accuracy(pixels.get('val_accuracy'))}, test "
                     f"{_accuracy(pixels.get('test_accuracy'))} (the same probe on the image "
                     f"pixels)")
    total = run_seconds(metrics)
    if total is not None:
        before = (metrics.get("timings") or {}).get("before_resume_s")
        lines.append(f"time       {seconds_text(total)}" + (
            f" ({seconds_text(before)} of it before it was stopped and resumed)"
            if before else ""))
    if not metrics:
        from fastimg.store.locks import lock_holder

        holder = lock_holder(path)
        done = "" if saved is None else f", {_unfinished_text(saved, config)}"
        lines.append("no metrics.json: " + (
            f"being trained now by another fastimg command ({holder}){done}" if holder else
            f"the run did not finish{done}" + (f"; {RESUME_ADVICE}" if saved else "")))
    elif saved is not None:  # a train --force over this run, stopped: it replaces this one
        lines.append(f"unfinished a train over this run (--force) stopped, "
                     f"{_unfinished_text(saved, saved.get('config') or {})}"
                     + ("; the same command without --force resumes it and replaces this run "
                        "when it ends" if saved else ""))
    return lines
