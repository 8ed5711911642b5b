"""The commands that describe a store or a run: ``show`` (a figure) and ``info`` (a
summary), with their flags."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from fastimg import store
from fastimg.cli import options
from fastimg.cli.report import UserError

logger = logging.getLogger("fastimg.cli")


def cmd_show(args) -> int:
    """``fastimg show``: the figure of a store."""
    from fastimg.show import show_store

    show_store(options.location(args.store, args), args.out, n_per_class=args.per_class,
               seed=args.seed)
    print(f"wrote {args.out}")
    return 0


def cmd_info(args) -> int:
    """``fastimg info``: a store's, an unfinished build's or a run folder's summary; several
    run folders side by side."""
    from fastimg import info, run_summary
    from fastimg.run_folder import is_run_folder

    if len(args.store) > 1:
        return _compare_runs(args)
    path = args.store[0]
    target = options.location(path, args)  # warns of --storage-option with a local path
    if "://" not in path and is_run_folder(Path(path)):
        print(json.dumps(run_summary.run_json(path), indent=2) if args.json
              else "\n".join(run_summary.describe_run(Path(path))))
        return 0
    try:
        reader = store.StoreReader(target)
    except store.StoreError:
        found = info.unfinished_build(target)
        if found is None:
            raise
        print(json.dumps(found, indent=2) if args.json
              else "\n".join(info.describe_unfinished(found)))
        return 0
    # a forced build that failed late keeps its unfinished store beside the complete one
    beside = None if not store.location.is_local(target) else info.unfinished_build(target)
    if args.json:
        print(json.dumps({**info.store_json(reader), "unfinished_beside": beside}, indent=2))
    else:
        print("\n".join(info.describe_store(reader)
                        + (info.describe_unfinished_beside(beside) if beside else [])))
    return 0


def _compare_runs(args) -> int:
    """``fastimg info RUN RUN ...``: a table of the runs (``--json``: their summaries). What
    is not a run folder (a stray file that ``runs/*`` matched) is left out with a warning;
    a folder given twice is shown once."""
    from fastimg.run_folder import is_run_folder
    from fastimg.run_summary import run_json
    from fastimg.runs_table import compare_runs

    runs, seen = [], set()
    for path in args.store:
        what = ("a URL (info reads run folders on this machine)" if "://" in path else
                "missing" if not Path(path).exists() else
                "a file" if not Path(path).is_dir() else
                None if is_run_folder(Path(path)) else "not a training run folder")
        if what is not None:
            logger.warning("%s is %s: left out", path, what)
        elif os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            runs.append(path)
    if not runs:
        raise UserError("none of the paths is a training run folder: info shows several run "
                        "folders side by side, and a store one at a time")
    print(json.dumps([run_json(path) for path in runs], indent=2) if args.json
          else "\n".join(compare_runs(runs)))
    return 0


def add_show(sub) -> None:
    """The ``show`` command and its flags."""
    show = sub.add_parser(
        "show", help="a figure (PNG, PDF, SVG) of sample images, class means and the layout",
        description="Draw a labelled store: per class, sample images (raw, and standardised "
                    "per pixel with the training rows' statistics), the class means and their "
                    "difference, and the feature layout (features per pixel, the encoder "
                    "layer that dominates each pixel).")
    show.add_argument("store", type=options.path_text, help="a store (path or URL)")
    options.add_storage_options(show)
    show.add_argument("--out", type=options.local_path, required=True,
                      help="image file to write (.png; .pdf, .svg also; PNG without a suffix)")
    show.add_argument("--per-class", type=int, default=4,
                      help="sample images per class (default 4, at most 16)")
    show.add_argument("--seed", type=options.seed, default=0,
                      help="which samples are drawn (default 0)")
    _add_quiet(show)
    show.set_defaults(func=cmd_show)


def add_info(sub) -> None:
    """The ``info`` command and its flags."""
    info = sub.add_parser("info", help="summary of a store or a training run folder",
                          description="A short summary of a store (rows and classes per split, "
                                      "features, images, encoder, layout, timings, size) or of "
                                      "a training run folder (extractor, epochs, accuracy, "
                                      "probe); several run folders side by side, one row a "
                                      "run.")
    info.add_argument("store", type=options.path_text, nargs="+",
                      help="a store (path or URL), or a run folder of fastimg train; or "
                           "several run folders (runs/*), compared in a table")
    info.add_argument("--json", action="store_true",
                      help="as JSON, for scripts: a store's full attributes, or a run "
                           "folder's config.json and metrics.json (a list of them for "
                           "several run folders)")
    options.add_storage_options(info)
    _add_quiet(info)
    info.set_defaults(func=cmd_info)


def _add_quiet(command) -> None:
    """``--quiet``, as every command takes it (a script passes it to each): these draw no
    progress bar."""
    command.add_argument("--quiet", action="store_true",
                         help="no progress bars (this command draws none; taken as every "
                              "command takes it)")
