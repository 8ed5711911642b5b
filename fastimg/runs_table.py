"""Several training run folders side by side (``fastimg info RUN RUN ...``): one row a run,
the figures the paper's Table I compares, and the probes beside them."""
from __future__ import annotations

from pathlib import Path

from fastimg.info import run_json

#: the columns, in order
_COLUMNS = ("run", "extractor", "weights", "preset", "epochs", "val", "test", "macro F1",
            "probe emb", "probe px", "time")


def _score(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _weights(value) -> str:
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return "random"
    if isinstance(value, str) and value.upper() == "DEFAULT":
        return "ImageNet"
    return Path(str(value)).name


def _time(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.0f} min"


def _row(run: dict) -> dict:
    """The cells of one run's row, from :func:`fastimg.info.run_json`."""
    config, metrics = run["config"] or {}, run["metrics"] or {}
    row = {"run": run["run_folder"], "extractor": config.get("extractor") or "?",
           "weights": _weights(config["weights"]) if "weights" in config else "?",
           "preset": config.get("preset") or "?"}
    if not run["finished"]:
        done = run["epochs_done"]
        row["epochs"] = ("unfinished" if done is None else
                         f"{done}/{config.get('epochs', '?')} so far")
        return row
    final = metrics.get("final") or {}
    reported = metrics.get("reported") or {}
    stop = (", early" if metrics.get("stopped_early") else "") + (
        ", resumed" if metrics.get("resumed_after_epoch") is not None else "")
    row.update({
        "epochs": f"best {metrics.get('best_epoch')} of {metrics.get('epochs_run')}{stop}",
        "val": _score((final.get("val") or {}).get("accuracy")),
        # a store without a test split reports its selection-biased val figure: not here
        "test": _score((final.get("test") or {}).get("accuracy")),
        "macro F1": _score(reported.get("macro_f1") if reported.get("split") == "test"
                           else None),
        "probe emb": _score((metrics.get("probe") or {}).get("test_accuracy")),
        "probe px": _score((metrics.get("probe_pixels") or {}).get("test_accuracy")),
        "time": _time((metrics.get("timings") or {}).get("total_s")),
    })
    return row


def compare_runs(paths) -> list[str]:
    """The lines of a table of the run folders ``paths``, one row a run, in the order given.

    ``val`` and ``test`` are the best epoch's accuracies (the best epoch chosen on val),
    ``macro F1`` the test split's, the probes' figures their test accuracies; ``-`` where a
    run has no such figure (no test split, no probe), and an unfinished run shows the epochs
    it has done. ``time`` is the run's last process's (a resumed run's, since it resumed).
    The store is named under the table, each run's when they differ.

    Raises
    ------
    ValueError
        When a folder's ``metrics.json`` or ``config.json`` is not a valid JSON object.
    """
    runs = [run_json(path) for path in paths]
    rows = [_row(run) for run in runs]
    widths = {c: max(len(c), *(len(row.get(c, "")) for row in rows)) for c in _COLUMNS}
    lines = ["  ".join(f"{c:<{widths[c]}}" for c in _COLUMNS).rstrip()]
    lines += ["  ".join(f"{row.get(c, ''):<{widths[c]}}" for c in _COLUMNS).rstrip()
              for row in rows]
    stores = [(run["metrics"] or {}).get("store") for run in runs]
    if len({s for s in stores if s}) > 1:
        lines.append("stores: " + "; ".join(f"{run['run_folder']}: {store or '?'}"
                                            for run, store in zip(runs, stores)))
    elif stores and stores[0]:
        lines.append(f"store: {stores[0]}")
    return lines
