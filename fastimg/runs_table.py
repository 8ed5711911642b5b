"""Several training run folders side by side (``fastimg info RUN RUN ...``): one row a run,
the figures the paper's Table I compares, and the probes beside them."""
from __future__ import annotations

import os
from pathlib import Path

from fastimg.run_summary import (as_written_by_train, run_json, run_seconds, trained_store,
                                  weights_text)

#: the columns, in order
_COLUMNS = ("run", "extractor", "weights", "preset", "best/epochs", "val", "test", "macro F1",
            "probe emb", "probe px", "time")


def _score(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _time(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.0f} min"


def _name(text: str) -> str:
    """A folder name in a row: quoted when it holds a control character (a newline would
    split the row)."""
    return repr(text) if any(not ch.isprintable() for ch in text) else text


def _row(run: dict, name: str) -> dict:
    """The cells of one run's row, from :func:`fastimg.run_summary.run_json`."""
    config, metrics = run["config"] or {}, run["metrics"] or {}
    row = {"run": _name(name), "extractor": config.get("extractor") or "?",
           "weights": weights_text(config["weights"], short=True) if "weights" in config else "?",
           "preset": config.get("preset") or "?"}
    unfinished = run["unfinished"] or {}
    done = unfinished.get("epochs_done")
    pending = "" if done is None else f"{done}/{unfinished.get('epochs') or '?'}"
    if not run["finished"]:
        row["best/epochs"] = f"unfinished {pending}".rstrip()
        return row
    final = metrics.get("final") or {}
    reported = metrics.get("reported") or {}
    flags = [word for word, on in (("early", metrics.get("stopped_early")),
                                   ("resumed", metrics.get("resumed_after_epoch") is not None))
             if on]
    if run["unfinished"] is not None:  # a train --force over it, stopped
        flags.append(f"--force pending {pending or '?'}")
    row.update({
        "best/epochs": f"{metrics.get('best_epoch')}/{metrics.get('epochs_run')}"
                  + (f" ({', '.join(flags)})" if flags else ""),
        "val": _score((final.get("val") or {}).get("accuracy")),
        # a store without a test split reports its selection-biased val figure: not here
        "test": _score((final.get("test") or {}).get("accuracy")),
        "macro F1": _score(reported.get("macro_f1") if reported.get("split") == "test"
                           else None),
        "probe emb": _score((metrics.get("probe") or {}).get("test_accuracy")),
        "probe px": _score((metrics.get("probe_pixels") or {}).get("test_accuracy")),
        "time": _time(run_seconds(metrics)),
    })
    return row


def compare_runs(paths) -> list[str]:
    """The lines of a table of the run folders ``paths``, one row a run, in the order given.

    ``best/epochs`` is the best epoch of the epochs run (the best chosen on val), ``val`` and
    ``test`` are its accuracies, ``macro F1`` the test split's, the probes' figures their test
    accuracies; ``-`` where a run has no such figure (no test split, no probe), and an
    unfinished run shows the epochs it has done. ``time`` is the run's, over the processes it
    took (:func:`~fastimg.run_summary.run_seconds`). Runs in one folder are named by their
    folder's name under a line naming it; the stores are named under the table.

    Raises
    ------
    ValueError
        When a folder's ``metrics.json`` or ``config.json`` is not what ``fastimg train``
        writes (the message names the folder).
    """
    paths = [Path(path) for path in paths]
    parents = {os.path.abspath(path.parent) for path in paths}
    names = [path.name if len(parents) == 1 else str(path) for path in paths]
    rows, runs = [], []
    for path, name in zip(paths, names):
        run = run_json(path)
        with as_written_by_train(path):
            rows.append(_row(run, name))
        runs.append(run)
    widths = {c: max(len(c), *(len(row.get(c, "")) for row in rows)) for c in _COLUMNS}
    lines = [f"runs in {paths[0].parent}"] if len(parents) == 1 else []
    lines.append("  ".join(f"{c:<{widths[c]}}" for c in _COLUMNS).rstrip())
    lines += ["  ".join(f"{row.get(c, ''):<{widths[c]}}" for c in _COLUMNS).rstrip()
              for row in rows]
    stores = {}  # each run's store, with what became of it since (moved, rebuilt)
    for path, name, run in zip(paths, names, runs):
        stores[name] = trained_store(path, run["metrics"], run["unfinished"])
    known = set(stores.values()) - {None}
    if len(known) == 1 and None not in stores.values():
        lines.append(f"store: {known.pop()}")
    elif known:
        lines.append("stores:")
        lines += [f"  {_name(name)}: {store or '?'}" for name, store in stores.items()]
    return lines
