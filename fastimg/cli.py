"""``fastimg`` command line: thin wrappers over the library; user mistakes exit 2 with one line."""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

from fastimg import __version__, store
from fastimg.cluster import ClusterError

logger = logging.getLogger("fastimg.cli")

EXIT_USAGE = 2
EXIT_BUG = 1
#: Exceptions that report a mistake in the command's input (StoreError, CorpusError and config
#: validation are ValueErrors; a missing extra is an ImportError; missing or unreadable files,
#: model and weight files included, are OSErrors). Anything else is a bug in fastimg.
#: A worker that cannot load the model (ClusterError) is the node's set-up, not a bug either.
USER_ERRORS = (ValueError, ImportError, OSError, ClusterError)


class UserError(Exception):
    """A mistake in the command's input, reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2): the usage text is one ``--help`` away."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Refuse(argparse.Action):
    """A flag that no longer exists here, with the line that says what replaced it."""

    def __init__(self, option_strings, dest, hint: str = "", **kwargs):
        self.hint = hint
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(self.hint)


def _torch_device(text: str) -> str:
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def _grid(text: str):
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return tuple(parts)
    raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")


def _storage_option(text: str):
    """``KEY=VALUE`` -> (key, value); the value is parsed as JSON when it is JSON (numbers,
    true/false, objects), else kept as a string; ``a.b=v`` sets ``{"a": {"b": v}}``. An empty
    value (``KEY=``, often an unset shell variable) is refused: ``KEY='""'`` is the empty string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if not value:
        raise argparse.ArgumentTypeError(f"{text!r} has no value (an unset shell variable?); "
                                         f"pass {key}='\"\"' for an empty string")
    try:
        value = json.loads(value)
    except json.JSONDecodeError:
        pass
    return key, value


def _storage_options(args) -> dict:
    options: dict = {}
    for key, value in getattr(args, "storage_option", None) or ():
        *parents, leaf = key.split(".")
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return options


def _locations(paths, args, *, input_url: bool = False) -> list:
    """Local paths or fsspec URLs with the command's ``--storage-option``s, said to be ignored
    for each local path when none of ``paths`` is a URL (one written without its scheme,
    perhaps) and the input is not one (``input_url``); a command that reads or writes one URL
    uses them."""
    options = _storage_options(args)
    resolved = [store.location.resolve(path, options) for path in paths]
    if (options and not input_url
            and all(store.location.is_local(location) for location in resolved)):
        for path in paths:
            logger.warning("--storage-option is for store URLs (s3://...): ignored for the "
                           "local path %s", path)
    return resolved


def _location(path: str, args):
    """The local path or fsspec URL ``path`` (:func:`_locations`)."""
    return _locations([path], args)[0]


def _add_storage_options(parser) -> None:
    parser.add_argument("--storage-option", action="append", type=_storage_option,
                        metavar="KEY=VALUE",
                        help="fsspec option for a store URL (s3://, gs://) or a corpus "
                             "URL (build-dataset --input), e.g. "
                             "endpoint_url=http://127.0.0.1:9000; repeatable; JSON values are "
                             "parsed, a.b=v nests, an empty value is refused (KEY='\"\"' is the "
                             "empty string); credentials also come from the usual environment "
                             "variables")


def _path_text(text: str) -> str:
    """A path or URL as given; an empty one (an unset shell variable) is refused: ``Path("")``
    is the current folder, which commands then read, write into or name as ``.``."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string (an unset shell "
                                         "variable?)")
    return text


def _not_a_url(text: str, why: str) -> str:
    """``text``, a path on this machine: a URL is refused, saying ``why`` (``Path`` would fold
    ``s3://b`` into ``s3:/b`` and fail later with a missing file or folder)."""
    _path_text(text)
    if "://" in text:
        raise argparse.ArgumentTypeError(f"expected a local path, got the URL {text!r} ({why})")
    return text


def _local_path(text: str) -> Path:
    """An output written on this machine (:func:`_not_a_url`)."""
    return Path(_not_a_url(text, "this output is written on this machine"))


def _local_input(text: str) -> str:
    """An input file read on this machine (:func:`_not_a_url`): only stores and the corpus
    of build-dataset are read from object storage."""
    return _not_a_url(text, "this input is read on this machine: copy it here first")


def _local_input_path(text: str) -> Path:
    return Path(_local_input(text))


def _input_path_or_url(text: str) -> str:
    """A corpus file on this machine or at a URL; a URL with a slash missing
    (``s3:/bucket/c.csv``) is refused (it would be looked for in a local folder ``s3:``)."""
    _path_text(text)
    try:
        store.location._check_not_a_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _corpus_input(text):
    """``--input`` of build-dataset: a local path as ``Path`` writes it, a URL as given."""
    if text is None or "://" in text:
        return text
    return str(Path(text))


def _local_path_or_stdout(text: str):
    """``-``: standard output (the string, not ``Path("-")``: ``./-`` is a file named so)."""
    from fastimg.train.texts_io import STDOUT

    return STDOUT if text == STDOUT else _local_path(text)


def _seed(text: str) -> int:
    """``--seed``: a whole number that every seeded library here accepts."""
    from fastimg._validation import SEED_LIMIT, check_seed

    try:
        return check_seed("seed", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {SEED_LIMIT - 1}, "
                                         f"got {text!r}") from None


def _shape(text: str):
    try:
        n, f = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NxF, e.g. 2000x768, got {text!r}") from None
    if n < 1 or f < 1:
        raise argparse.ArgumentTypeError(f"expected at least one row and one feature (NxF, "
                                         f"e.g. 2000x768), got {text!r}")
    return n, f


def _layout_config(args):
    """The layout's config; a t-SNE option given with another ``--method`` is refused (it
    was ignored, yet recorded in the layout's key: a store differing in it alone was refused
    as built with other settings, and rebuilt with --force into the same layout)."""
    from fastimg.layout import LayoutConfig

    tsne = {"perplexity": args.perplexity, "metric": args.metric, "backend": args.tsne_backend}
    given = {name: value for name, value in tsne.items() if value is not None}  # else defaults
    if args.method != "tsne" and given:
        name = next(iter(given))
        flag = "--tsne-backend" if name == "backend" else f"--{name}"
        raise UserError(f"{flag} applies to --method tsne; --method {args.method} has no use "
                        f"for it: drop it")
    return LayoutConfig(grid=args.pixels, scaling=args.scaling, method=args.method, **given,
                        assignment=args.assignment, random_state=args.seed,
                        n_jobs=args.tsne_threads)


def _cmd_images(args) -> int:
    from fastimg.images import (ImagesConfig, build_image_store, read_matrix, read_split,
                                synthetic_matrix)

    if args.synthetic:
        matrix = synthetic_matrix(*args.synthetic, seed=args.seed)
    else:
        matrix = read_matrix(args.input)
    split = None if args.split_file is None else read_split(args.split_file, matrix.shape[0])
    layout_config = _layout_config(args)
    config = ImagesConfig(fit_rows=args.fit_rows, image_dtype=args.dtype,
                          raster_backend=args.raster_backend)
    start = time.perf_counter()
    summary = build_image_store(matrix, args.out, layout_config, config, split=split,
                                force=args.force, progress=not args.quiet,
                                on_stage=_stage_announcer(args, start))
    if summary.get("up_to_date"):
        _print_up_to_date(args.out, f"{summary['rows']} images of {summary['image_shape'][0]} "
                                    f"x {summary['image_shape'][1]}")
        return 0
    fitted = {"train": "the training rows", "first_rows": "the first rows",
              "all": "every row (give --split-file to fit on the training rows only)"}

    def took(stage: str, digits: int) -> str:  # a stage a resumed build had done: reused
        seconds = summary["timings"].get(f"{stage}_s")
        return f"{stage} reused" if seconds is None else f"{stage} {seconds:.{digits}f} s"

    print(f"wrote {args.out}: {summary['rows']} images of {summary['image_shape'][0]} x "
          f"{summary['image_shape'][1]} ({summary['image_dtype']}), {summary['features']} "
          f"features on {summary['occupied_pixels']} pixels; {took('layout', 1)} "
          f"(fitted on {summary['fit_rows']} rows: {fitted[summary['fit_on']]}), "
          f"{took('raster', 2)}, total {time.perf_counter() - start:.1f} s, "
          f"{store.size_bytes(args.out) / 2**20:.1f} MiB")
    return 0


def _layers(text: str):
    if text in ("last6", "author"):
        return text
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected last6, author or comma-separated hidden-state indices, got {text!r}"
        ) from None


def _encoder_config(args):
    from fastimg.embed import EncoderConfig, resolve_model

    if args.revision is not None and resolve_model(args.model, args.revision).from_folder:
        raise UserError(f"--revision {args.revision} picks a commit of a hub model, but --model "
                        f"{args.model} is a local folder (its files are what is encoded); "
                        f"drop --revision")
    return EncoderConfig(model=args.model, revision=args.revision, layers=args.layers,
                         pooling=args.pooling, max_length=args.max_length,
                         truncation=args.truncation, chunk_rows=args.chunk_rows,
                         device=args.device, precision=args.precision,
                         int8_engine=args.int8_engine, batching=args.batching,
                         token_budget=args.token_budget)


def _dataset_config(args):
    from fastimg.dataset import DatasetConfig

    return DatasetConfig(fit_on=args.fit_on, image_dtype=args.dtype,
                         raster_backend=args.raster_backend)


def _cmd_build_dataset(args) -> int:
    from fastimg.corpus import CorpusConfig
    from fastimg.dataset import build_dataset

    corpus = CorpusConfig(
        input=_corpus_input(args.input), dataset=args.dataset,
        text_columns=tuple(args.text_column or ("text",)), label_column=args.label_column,
        id_column=args.id_column, split_column=args.split_column, limit=args.limit,
        split=args.split, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        seed=args.seed)
    encoder = _encoder_config(args)
    layout = _layout_config(args)
    config = _dataset_config(args)
    start = time.perf_counter()
    announce = _stage_announcer(args, start)
    out, *reuse_from = _locations([args.out, *(args.reuse_from or ())], args,
                                  input_url=corpus.input is not None and "://" in corpus.input)
    if args.reuse_from and args.no_reuse:
        raise UserError("--reuse-from takes stages from other stores, which --no-reuse forbids: "
                        "give one of them")
    with _cluster(args.cluster) as client:
        summary = build_dataset(out, corpus, encoder, layout, config, force=args.force,
                                reuse=not args.no_reuse, progress=not args.quiet,
                                on_stage=announce, client=client,
                                reuse_from=reuse_from, storage_options=_storage_options(args))
    _print_dataset_summary(out, summary, time.perf_counter() - start)
    return 0


def _stage_announcer(args, start: float):
    """``on_stage`` of the build commands: each stage's name on stderr as it starts, with the
    seconds since ``start`` (nothing with ``--quiet``)."""
    def announce(stage: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - start:7.1f} s] {stage}", file=sys.stderr)

    return announce


def _cluster(spec):
    """The client of ``--cluster SPEC`` (closed after), or None without it."""
    import contextlib

    if spec is None:
        return contextlib.nullcontext(None)
    from fastimg.cluster import connect

    return connect(spec)


def _print_up_to_date(out, what: str) -> None:
    print(f"{out} is up to date: {what}, built with these settings; nothing computed (pass "
          f"--force to build it again)")


def _print_dataset_summary(out, summary: dict, seconds: float) -> None:
    if summary.get("up_to_date"):
        _print_up_to_date(out, f"{summary['rows']} rows, images {summary['image_shape'][0]} x "
                               f"{summary['image_shape'][1]}")
        return
    timings = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in summary["timings"].items())
    from fastimg.info import class_counts_text, class_names_text, reused_text

    counts = "; ".join(f"{split} {class_counts_text(per_class, '/')}"
                       for split, per_class in summary["counts"].items())
    reused = (f"reused {reused_text(summary['reused'], summary.get('reused_from') or {})}"
              if summary.get("reused") else "")
    # a rerun after a stop: its encoding went on from the last finished chunk (info says so too)
    resumed = "resumed the unfinished build" if summary.get("resumed") else ""
    work = "; ".join(part for part in (reused, resumed, timings) if part)
    print(f"wrote {out}: {summary['rows']} rows, {summary['classes']} classes "
          f"({class_names_text(summary['class_names'])}; {counts}), images "
          f"{summary['image_shape'][0]} x {summary['image_shape'][1]} {summary['image_dtype']} "
          f"from {summary['features']} features on {summary['occupied_pixels']} pixels; "
          f"{work + '; ' if work else ''}total {seconds:.1f} s; "
          f"{store.size_bytes(out) / 2**20:.1f} MiB")


def _cmd_relayout(args) -> int:
    from fastimg.dataset import relayout

    config = _dataset_config(args)
    start = time.perf_counter()
    # once: a local path's ignored options warn once
    src, out = _locations([args.src, args.out], args)
    summary = relayout(src, out, _layout_config(args), config, force=args.force,
                       progress=not args.quiet, on_stage=_stage_announcer(args, start))
    _print_dataset_summary(out, summary, time.perf_counter() - start)
    return 0


def _cmd_show(args) -> int:
    from fastimg.show import show_store

    show_store(_location(args.store, args), args.out, n_per_class=args.per_class, seed=args.seed)
    print(f"wrote {args.out}")
    return 0


def _cmd_info(args) -> int:
    from fastimg import info
    from fastimg.run_folder import is_run_folder

    target = _location(args.store, args)  # warns of --storage-option with a local path
    if "://" not in args.store and is_run_folder(Path(args.store)):
        if args.json:
            raise UserError("--json is for stores; a run folder's metrics.json is JSON already")
        print("\n".join(info.describe_run(Path(args.store))))
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


def _cmd_train(args) -> int:
    from fastimg.train import TrainConfig, fit

    location = _location(args.store, args)
    _check_run_folder(args.out, force=args.force)
    config = TrainConfig(
        preset=args.preset, extractor=args.extractor, weights=args.weights, epochs=args.epochs,
        batch_size=args.batch_size, lr_head=args.lr_head, lr_classifier=args.lr_classifier,
        optimizer=args.optimizer, weight_decay=args.weight_decay, schedule=args.schedule,
        patience=args.patience, normalize=args.normalize, upsample=args.upsample, cut=args.cut,
        unfreeze_fraction=args.unfreeze_fraction, fuse_embedding=args.fuse_embedding,
        pixel_branch=args.pixel_branch, cache=args.cache, cache_budget=args.cache_budget,
        loader=args.loader,
        device=args.device, amp=not args.no_amp, probe=not args.no_probe,
        num_workers=args.num_workers, seed=args.seed, progress=not args.quiet)
    result = fit(location, config, out_dir=args.out, overwrite=args.force)
    metrics = result.metrics
    test = ("absent (no test split: the validation figure chose the best epoch and is "
            "selection-biased; build with --test-fraction to carve one)"
            if result.test_accuracy is None else
            f"{result.test_accuracy:.4f} (macro F1 {metrics['reported']['macro_f1']:.4f})")
    probes = []
    for name, probe in (("embeddings", result.probe), ("pixels", result.probe_pixels)):
        if probe:
            probes.append(f"{name} val {probe['val_accuracy']:.4f}" + (
                "" if probe.get("test_accuracy") is None else
                f", test {probe['test_accuracy']:.4f}") + f" (C={probe['C']:g})")
    stop = " (stopped early)" if metrics["stopped_early"] else ""
    print(f"trained {args.extractor} ({config.preset} preset) on {args.store}: best epoch "
          f"{result.best_epoch}/{metrics['epochs_run']}{stop}, val accuracy "
          f"{result.val_accuracy:.4f}, test accuracy {test}; linear probe "
          f"{'; '.join(probes) if probes else 'not run'}; "
          f"{metrics['timings']['epoch_s']:.1f} s/epoch, {metrics['timings']['total_s']:.1f} s; "
          f"run folder {args.out}")
    return 0


def _cmd_predict(args) -> int:
    from fastimg._validation import check_can_write, file_in_the_way
    from fastimg.train import load_run
    from fastimg.train.texts_io import (STDOUT, MissingColumnError, read_input_texts,
                                        read_lines, write_predictions, writes_to)

    to_stdout = args.out == STDOUT
    if str(args.input) == "-" and (args.text_column or args.id_column):
        flag = "--text-column" if args.text_column else "--id-column"
        raise UserError(f"{flag} is for a table --input (CSV, TSV, JSONL, Parquet); --input - "
                        f"reads one text per line, its id the line number (a table on stdin: "
                        f"save it to a file and pass its path)")
    if not to_stdout and args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder; give the path of the CSV to write")
    blocker = None if to_stdout else file_in_the_way(args.out.parent)  # before the encoding
    if blocker is not None:
        raise UserError(f"--out {args.out}: {blocker} is a file, not a folder")
    if not to_stdout:
        check_can_write(args.out, f"--out {args.out}", replaced=True)
        _check_out_is_not_input(args.out, args.input)
        _check_out_is_not_a_run_file(args.out, args.run_dir)
        store.location.check_outside_stores(args.out, deleted="the predictions",
                                            instead="an --out outside it")
    run = load_run(args.run_dir, device=args.device, model=args.model)
    if str(args.input) == "-":
        ids, texts = read_lines(sys.stdin)
    else:
        # by default the columns the run's store was built from, joined as the build did
        columns = args.text_column or run.text_columns or ["text"]
        try:
            ids, texts = read_input_texts(args.input, columns, args.id_column)
        except MissingColumnError as exc:
            if args.text_column or exc.column not in columns:  # given, or the id column
                raise
            raise UserError(f"{exc}; without --text-column the texts are read from the "
                            f"column{'s' if len(columns) > 1 else ''} the run's store was "
                            f"built from ({', '.join(columns)}): give --text-column for "
                            f"another") from None
    if not texts:
        raise UserError(f"no texts in {'stdin' if str(args.input) == '-' else args.input}")
    prediction = run.predict(texts, batch_size=args.batch_size, progress=not args.quiet)
    # the CSV on stdout (-, /dev/stdout) keeps stdout to itself: the summary goes to stderr
    csv_on_stdout = writes_to(args.out, sys.stdout)
    write_predictions(args.out, ids, prediction)
    from fastimg.info import class_counts_text

    counts = class_counts_text({name: prediction.names.count(name) for name in run.class_names})
    print(f"predicted {len(texts)} texts with {args.run_dir} ({counts}); wrote "
          f"{'stdout' if to_stdout else args.out}",
          file=sys.stderr if csv_on_stdout else sys.stdout)
    return 0


def _check_out_is_not_input(out: Path, source: str) -> None:
    """Refuse a predictions CSV written over the input file (the texts would be replaced by
    the predictions), however either is spelled (``a.csv``, ``sub/../a.csv``, a link)."""
    if source == "-" or not out.exists():
        return
    try:
        same = os.path.samefile(out, source)
    except OSError:  # no such input: read_input_texts says so
        return
    if same:
        raise UserError(f"--out {out} is the --input file: the predictions would replace its "
                        f"texts; give another --out")


def _check_out_is_not_a_run_file(out: Path, run_dir: Path) -> None:
    """Refuse a predictions CSV written over a file of the run folder it predicts with
    (``best.pt``, ``bundle.json``, ...: the run would be destroyed; a ``metrics.json`` written
    into an unfinished run would mark it finished), however either is spelled."""
    from fastimg.run_folder import RUN_FILES

    if out.name in RUN_FILES and out.parent.resolve() == run_dir.resolve():
        raise UserError(f"--out {out} is the run's own {out.name}: the predictions would "
                        f"replace it; give another --out")


def _cmd_explain(args) -> int:
    from fastimg.train.explain import explain

    # explain says when --storage-option has no URL to go to (--store, or the run's store)
    result = explain(args.run_dir, split=args.split, out_dir=args.out, method=args.method,
                     max_rows=args.max_rows, batch_size=args.batch_size, device=args.device,
                     seed=args.seed, progress=not args.quiet, store=args.store,
                     storage_options=_storage_options(args))
    origins = [(f, *result.feature_origin(f)) for f in result.top(5).tolist()]
    top = ", ".join(f"{f} (encoder layer {encoder_layer}, dim {dim})"
                    for f, _, encoder_layer, dim in origins)
    print(f"explained {args.run_dir} with {result.method} over {result.rows} {result.split} "
          f"images; top features: {top}; wrote {result.files['features']} and "
          f"{result.files['image']}")
    return 0


def _check_run_folder(out: Path, *, force: bool) -> None:
    """Refuse to train into a store or a folder inside one, and into a folder that holds a run
    (or any other file) unless ``force``."""
    from fastimg._validation import check_can_write, file_in_the_way
    from fastimg.run_folder import check_outside_stores, run_files_in
    from fastimg.store.location import lock_holder

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a run folder")
    blocker = file_in_the_way(out.parent)
    if blocker is not None:
        raise UserError(f"--out {out}: {blocker} is a file, not a folder")
    check_outside_stores(out)
    check_can_write(out, f"the run folder {out}")
    holder = lock_holder(out)  # before its files: a train writing them is no run to --force
    if holder is not None:
        raise UserError(f"{out} is being written by another fastimg command ({holder}): wait "
                        f"for it to end, or choose another --out")
    if force or not out.is_dir():
        return

    found = run_files_in(out)
    if found:
        raise UserError(f"{out} already holds a run ({', '.join(found)}); pass --force to "
                        f"overwrite it, or choose another --out")
    if any(out.iterdir()):
        raise UserError(f"{out} is not empty; pass --force to train into it anyway, or choose "
                        f"another --out")


def _add_map_options(parser) -> None:
    """The pixel-map options of every command that fits a layout (images, build-dataset,
    relayout)."""
    parser.add_argument("--pixels", type=_grid, default=(50, 50), metavar="N|HxW",
                        help="image size (default 50)")
    parser.add_argument("--scaling", default="norm2", choices=["norm2", "minmax", "none"])
    parser.add_argument("--method", default="tsne", choices=["tsne", "pca", "kpca"])
    parser.add_argument("--tsne-backend", choices=["auto", "opentsne", "sklearn", "cuml"],
                        help="t-SNE implementation (default auto; --method tsne only)")
    parser.add_argument("--perplexity", type=float,
                        help="t-SNE perplexity (default 30; --method tsne only)")
    parser.add_argument("--metric", choices=["cosine", "euclidean", "manhattan"],
                        help="t-SNE distance between features (default cosine, DeepInsight's; "
                             "--method tsne only)")
    parser.add_argument("--tsne-threads", type=int, default=1, metavar="N",
                        help="threads of the layout fit (t-SNE, and BLAS in its PCA; -1: all "
                             "cores; default 1: the layout depends on the thread count, and 1 "
                             "gives the same one whatever the machine's cores)")
    parser.add_argument("--assignment", default="assignment", choices=["assignment", "bin"],
                        help="assignment (default): every feature a pixel of its own (features "
                             "grouped by k-means first when there are more features than "
                             "pixels); bin: DeepInsight's own, features that fall on one pixel "
                             "are averaged (pyDeepInsight's images)")


def _add_layout_options(parser) -> None:
    """The layout and image options shared by build-dataset and relayout."""
    _add_map_options(parser)
    parser.add_argument("--fit-on", default="train", choices=["train", "all"],
                        help="rows the layout is fitted on; all = the author's leaky variant")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32", "uint8"],
                        help="stored image dtype")
    parser.add_argument("--raster-backend", default="auto",
                        choices=["auto", "cpu", "cuda", "numpy"],
                        help="rasterisation kernel (auto: the CPU kernel, fastest for images "
                             "that go to disk; cpu and cuda compute in float32, numpy in "
                             "float64, so a stored value can differ between them by float32's "
                             "rounding: at most one step of a float16 image, rarely)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastimg", description="Text corpora to DeepInsight images for "
                     "pretrained vision CNNs, and what comes after: train, predict, explain. A "
                     "user mistake exits with code 2 and one line.")
    parser.add_argument("--version", action="version", version=f"fastimg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log each stage (also accepted after a command)")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of any error (also accepted after a command)")
    sub = parser.add_subparsers(dest="command", required=True)

    images = sub.add_parser(
        "images", help="feature matrix -> DeepInsight layout -> zarr image store",
        description="Fit a DeepInsight layout on a feature matrix and write every row's image "
                    "into a zarr store.")
    source = images.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=_local_input_path,
                        help=".npy file or zarr array, samples x features")
    source.add_argument("--synthetic", type=_shape, metavar="NxF",
                        help="a seeded low-rank demo matrix instead of --input (works offline)")
    images.add_argument("--out", type=_local_path, required=True,
                        help="zarr store to write (a local path)")
    _add_map_options(images)
    images.add_argument("--split-file", type=_local_input_path, metavar="FILE",
                        help="split of each row (.npy of codes 0/1/2 or names train/val/test, or "
                             "a text file with one per line): the layout is fitted on the train "
                             "rows and the split is stored")
    images.add_argument("--fit-rows", type=int, default=None,
                        help="fit the layout on the first N rows (the training rows); default: "
                             "the train rows of --split-file, else every row")
    images.add_argument("--dtype", default="float16", choices=["float16", "float32", "uint8"])
    images.add_argument("--raster-backend", default="auto",
                        choices=["auto", "cpu", "cuda", "numpy"],
                        help="rasterisation kernel (auto: the CPU kernel)")
    images.add_argument("--device", action=_Refuse,
                        hint="--device is the torch device in fastimg and images has no model: "
                             "choose the raster kernel with --raster-backend")
    images.add_argument("--seed", type=_seed, default=0)
    images.add_argument("--force", action="store_true", help="overwrite an existing store")
    images.add_argument("--quiet", action="store_true", help="no progress bars")
    images.set_defaults(func=_cmd_images)

    build = sub.add_parser(
        "build-dataset", help="text corpus -> embeddings -> layout -> zarr image dataset",
        description="Encode a labelled text corpus with a BERT-family model, fit a DeepInsight "
                    "layout on the training rows and write every row's image into one zarr "
                    "store. Rerunning an interrupted build resumes it.")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=["imdb"],
                        help="built-in recipe (looks in $FASTIMG_DATA, then the user cache)")
    source.add_argument("--input", type=_input_path_or_url,
                        help="CSV, TSV, JSONL or Parquet file (optionally .gz), or an aclImdb "
                             "folder or tarball; a file may be a URL (s3://bucket/x.csv, read "
                             "with --storage-option)")
    build.add_argument("--out", required=True, type=_path_text,
                       help="zarr store to write: a path or an fsspec URL (s3://bucket/x.zarr)")
    build.add_argument("--text-column", action="append", metavar="NAME",
                       help="text column; repeat to join several (default: text)")
    build.add_argument("--label-column", default="label", help="label column (default: label)")
    build.add_argument("--id-column", default=None,
                       help="row-id column (default: 'id' when the file has one, else the row "
                            "number)")
    build.add_argument("--split-column", default=None,
                       help="column of train/val/test names (default: 'split' when the file "
                            "has one)")
    build.add_argument("--split", default="auto", choices=["auto", "column", "paper", "random"],
                       help="auto: the split column if any, else random; paper: pool all rows, "
                            "80/20 train/val (40k/10k on IMDB)")
    build.add_argument("--val-fraction", type=float, default=0.2,
                       help="validation share: of the pooled rows (--split random), or of train "
                            "when the split column has no val rows (default 0.2, the only value "
                            "--split paper takes)")
    build.add_argument("--test-fraction", type=float, default=0.0,
                       help="carve this share of train as a test split when there is none")
    build.add_argument("--limit", type=int, default=None,
                       help="seeded sample of N rows, stratified by split and label")
    build.add_argument("--model", default="minilm",
                       help="alias (minilm: offline default), hub id or local folder")
    build.add_argument("--revision", default=None,
                       help="hub commit, branch or tag of --model (not for a local folder)")
    build.add_argument("--layers", type=_layers, default="last6",
                       help="last6 (paper), author (hidden_states[6:12]) or indices, e.g. 1,2,3")
    build.add_argument("--pooling", default="cls", choices=["cls", "mean"])
    build.add_argument("--max-length", type=int, default=512, help="tokens per text (512)")
    build.add_argument("--truncation", default="head", choices=["head", "head+tail"])
    build.add_argument("--chunk-rows", type=int, default=1024,
                       help="texts per encoding chunk: the unit an interrupted build resumes "
                            "at (it shapes the batches, so it moves fp32 values by float "
                            "rounding; not part of the stage key)")
    _add_layout_options(build)
    build.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="encoder device")
    build.add_argument("--precision", default="auto",
                       choices=["auto", "fp32", "int8", "fp16", "bf16"],
                       help="encoder precision: fp32 | int8 (CPU: dynamic int8 Linear layers, "
                            "the pooled [CLS] row of BERT encoders in fp32) | "
                            "fp16 | bf16 (CUDA, autocast); auto: fp16 on CUDA, fp32 on the CPU")
    build.add_argument("--int8-engine", default="auto", choices=["auto", "onnxruntime", "torch"],
                       help="whose kernels int8 runs on: onnxruntime (BERT encoders, padded "
                            "batches; 1.5-1.7x fp32 on a 2-core CPU) | torch (any model; "
                            "1.2-1.4x); auto: onnxruntime where it covers the run")
    build.add_argument("--batching", default="padded", choices=["padded", "packed"],
                       help="encoder batches: padded rectangles (default) or texts packed end "
                            "to end with variable-length attention (FlashAttention on CUDA with "
                            "fp16/bf16); BERT encoders only")
    build.add_argument("--token-budget", type=int, default=None, metavar="N",
                       help="tokens per encoder batch (padded ones, or real ones when packed "
                            "with FlashAttention); "
                            "default 8192 on the CPU, 65536 on CUDA; lower it if a GPU runs "
                            "out of memory; like --chunk-rows it moves fp32 values by float "
                            "rounding only and is part of the stage key in int8 only")
    build.add_argument("--seed", type=_seed, default=0)
    build.add_argument("--force", action="store_true",
                       help="replace an existing store (its stages whose settings match are "
                            "reused)")
    build.add_argument("--no-reuse", action="store_true",
                       help="recompute every stage, even those an earlier build has")
    build.add_argument("--reuse-from", metavar="STORE", action="append", type=_path_text,
                       help="also take matching stages from this complete store: its "
                            "embeddings of the same texts and encoder settings, whatever its "
                            "labels, split or layout (repeatable)")
    build.add_argument("--cluster", metavar="SPEC", default=None,
                       help="encode and rasterise on a dask cluster: local:N (N worker "
                            "processes, one thread each) or a scheduler address "
                            "(tcp://host:8786); the store must be reachable from every worker")
    _add_storage_options(build)
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=_cmd_build_dataset)

    again = sub.add_parser(
        "relayout", help="a new store from an existing store's embeddings, with a new layout",
        description="Lay out the embeddings of a store again (new image size, map, scaling, "
                    "dtype) without encoding: the images equal those of a fresh build-dataset "
                    "with the same settings.")
    again.add_argument("src", type=_path_text,
                       help="a store written by build-dataset (path or URL)")
    again.add_argument("--out", required=True, type=_path_text,
                       help="zarr store to write (path or URL)")
    _add_storage_options(again)
    _add_layout_options(again)
    again.add_argument("--seed", type=_seed, default=0,
                       help="seed of the layout (default 0, whatever seed SRC was built with: "
                            "pass that one to repeat SRC's layout)")
    again.add_argument("--force", action="store_true", help="replace an existing store")
    again.add_argument("--quiet", action="store_true", help="no progress bars")
    again.set_defaults(func=_cmd_relayout)

    show = sub.add_parser(
        "show", help="PNG of sample images, class means and the layout",
        description="Draw a labelled store: per class, sample images (raw, and standardised "
                    "per pixel with the training rows' statistics), the class means and their "
                    "difference, and the feature layout (features per pixel, the encoder "
                    "layer that dominates each pixel).")
    show.add_argument("store", type=_path_text, help="a store (path or URL)")
    _add_storage_options(show)
    show.add_argument("--out", type=_local_path, required=True,
                      help="image file to write (.png; .pdf, .svg also; PNG without a suffix)")
    show.add_argument("--per-class", type=int, default=4,
                      help="sample images per class (default 4, at most 16)")
    show.add_argument("--seed", type=_seed, default=0,
                      help="which samples are drawn (default 0)")
    show.set_defaults(func=_cmd_show)

    train = sub.add_parser(
        "train", help="train a frozen pretrained extractor + conv head on a dataset store",
        description="Train the paper's image route on a store written by build-dataset: a "
                    "frozen ImageNet extractor, a conv head and a dense classifier; writes "
                    "the run folder --out (metrics.json, best.pt, config.json, and what "
                    "predict and explain need: bundle.json, plus normaliser.npz with "
                    "--normalize dataset; feature_cache/ with an on-disk feature cache) and "
                    "reports the validation and test accuracy beside a linear probe on the "
                    "embeddings.")
    train.add_argument("store", type=_path_text, help="a store (path or URL)")
    _add_storage_options(train)
    train.add_argument("--extractor", default="alexnet",
                       choices=["alexnet", "wide_resnet50_2", "resnext50_32x4d",
                                "shufflenet_v2_x1_0", "vgg16"],
                       help="ImageNet CNN whose frozen early layers extract features "
                            "(default alexnet)")
    train.add_argument("--weights", default="DEFAULT", type=_local_input,
                       help="DEFAULT (torchvision ImageNet weights), none (random init) or "
                            "the path of a state_dict")
    train.add_argument("--out", type=_local_path, required=True, help="run folder to write")
    train.add_argument("--preset", default="ours", choices=["ours", "paper"],
                       help="defaults of the options left unset: ours (what measured best on "
                            "validation) or paper (Table I learning rates, Adam, per-image "
                            "z-normalisation, 15 epochs)")
    train.add_argument("--epochs", type=int, default=None, help="most epochs (preset)")
    train.add_argument("--batch-size", type=int, default=128,
                       help="rows per step (default 128; at least 2, as BatchNorm needs)")
    train.add_argument("--lr-head", type=float, default=None, help="(preset, per extractor)")
    train.add_argument("--lr-classifier", type=float, default=None,
                       help="(preset, per extractor)")
    train.add_argument("--optimizer", default=None, choices=["adamw", "adam"], help="(preset)")
    train.add_argument("--weight-decay", type=float, default=None, help="(preset)")
    train.add_argument("--schedule", default=None, choices=["cosine", "plateau", "none"],
                       help="learning-rate schedule (preset)")
    train.add_argument("--patience", type=int, default=None,
                       help="stop after this many epochs without a validation gain; 0: never "
                            "(preset)")
    train.add_argument("--normalize", default=None, choices=["dataset", "image", "none"],
                       help="dataset: per-pixel statistics of the training split (ours); "
                            "image: per-image z-normalisation (paper)")
    train.add_argument("--upsample", type=int, default=None,
                       help="integer upsampling (author: 3; preset)")
    train.add_argument("--cut", default=None, choices=["paper", "nopool"],
                       help="extractor cut: the paper's, or without its max-pools (preset)")
    train.add_argument("--unfreeze-fraction", type=float, default=None,
                       help="also train the last fraction of the extractor's blocks (both "
                            "presets: 0, frozen, which allows the feature cache)")
    train.add_argument("--fuse-embedding", action="store_true",
                       help="concatenate an MLP of the stored embedding before the classifier")
    train.add_argument("--pixel-branch", action=argparse.BooleanOptionalAction, default=None,
                       help="also feed the image's pixels straight to the classifier, around "
                            "the extractor (preset)")
    train.add_argument("--cache", default="auto", choices=["auto", "memory", "zarr", "none"],
                       help="frozen-feature cache; auto: memory within --cache-budget, "
                            "else zarr on disk (none when --unfreeze-fraction is above 0); "
                            "none recomputes the extractor every epoch")
    train.add_argument("--cache-budget", default="25%",
                       help="memory the auto cache may use: a share of RAM (default 25%%) or a "
                            "size (6GiB)")
    train.add_argument("--loader", default="auto", choices=["auto", "dali", "torch"],
                       help="image loader; auto: DALI with a GPU and DALI installed, else torch")
    train.add_argument("--device", type=_torch_device, default="auto",
                       help="torch device: auto|cpu|cuda|cuda:N")
    train.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    train.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    train.add_argument("--num-workers", type=int, default=0,
                       help="torch loader worker processes, 0 to 256 (default 0: in the main "
                            "process)")
    train.add_argument("--seed", type=_seed, default=0,
                       help="seeds the head's initialisation, shuffling, dropout and the "
                            "probe: the same seed gives the same run on the same machine, "
                            "torch thread count and feature cache")
    train.add_argument("--force", action="store_true",
                       help="train into --out even when it already holds a run")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_cmd_train)

    predict = sub.add_parser(
        "predict", help="classify new texts with a trained run folder",
        description="Encode texts with the training store's encoder settings, rasterise them "
                    "with its layout and apply the run's best.pt; writes a CSV of id, "
                    "predicted class and the probability of each class. Needs only the run "
                    "folder (not the store), and refuses an encoder whose weights differ.")
    predict.add_argument("run_dir", type=_local_input_path,
                         help="run folder written by fastimg train")
    predict.add_argument("--input", required=True, type=_local_input,
                         help="CSV / TSV / JSONL / Parquet file, or - for one text per line "
                              "on stdin (ids: line numbers from 0; blank lines skipped)")
    predict.add_argument("--text-column", action="append",
                         help="text column of a table --input (repeat to join several; "
                              "default: the columns the run's store was built from, text "
                              "for older runs)")
    predict.add_argument("--id-column", help="id column of a table --input (default: id when "
                                             "present, else the row number)")
    predict.add_argument("--out", type=_local_path_or_stdout, required=True,
                         help="predictions CSV to write; - for stdout (the summary line then "
                              "goes to stderr)")
    predict.add_argument("--batch-size", type=int, default=256,
                         help="images per classifier pass (default 256); texts are encoded and "
                              "classified about 4,096 at a time, in whole batches")
    predict.add_argument("--model", help="the encoder's folder (or hub id) when it is no longer "
                                         "where the store was built from it; its weights must "
                                         "be the recorded ones (checked)")
    predict.add_argument("--device", type=_torch_device, default="auto",
                         help="torch device of the encoder and the classifier: "
                              "auto|cpu|cuda|cuda:N (int8 encodes on the CPU)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=_cmd_predict)

    explain = sub.add_parser(
        "explain", help="which embedding features a trained run uses",
        description="Attribution maps (integrated gradients, captum) of the run's classifier "
                    "over a split of its store, averaged per class and mapped back through "
                    "the layout to features: writes features.csv (ranked: feature, layer, "
                    "dimension, pixel, importance per class) and importance.png. Needs "
                    "pip install 'fastimg[explain]'.")
    explain.add_argument("run_dir", type=_local_input_path,
                         help="run folder written by fastimg train")
    explain.add_argument("--split", default="val", choices=["val", "train", "test"])
    explain.add_argument("--store", type=_path_text,
                         help="the store (path or URL) to read the split from when the run's "
                              "training store has moved (default: the one recorded in the run; "
                              "its layout and classes must be the run's)")
    explain.add_argument("--out", type=_local_path, required=True, help="folder to write")
    explain.add_argument("--method", default="integrated_gradients",
                         choices=["integrated_gradients", "input_x_gradient", "gradcam"],
                         help="attribution method (default integrated_gradients)")
    explain.add_argument("--max-rows", type=int, default=None,
                         help="a seeded random sample of at most this many rows")
    explain.add_argument("--batch-size", type=int, default=64,
                         help="images per attribution batch (default 64)")
    explain.add_argument("--device", type=_torch_device, default="auto",
                         help="torch device: auto|cpu|cuda|cuda:N")
    explain.add_argument("--seed", type=_seed, default=0,
                         help="seeds the --max-rows sample (default 0)")
    explain.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_storage_options(explain)
    explain.set_defaults(func=_cmd_explain)

    info = sub.add_parser("info", help="summary of a store or a training run folder",
                          description="A short summary of a store (rows and classes per split, "
                                      "features, images, encoder, layout, timings, size) or of "
                                      "a training run folder (extractor, epochs, accuracy, "
                                      "probe).")
    info.add_argument("store", type=_path_text,
                      help="a store (path or URL), or a run folder of fastimg train")
    info.add_argument("--json", action="store_true",
                      help="the store's full attributes as JSON (for scripts)")
    _add_storage_options(info)
    info.set_defaults(func=_cmd_info)
    _add_flags_after_commands(parser)
    return parser


def _kept(args) -> bool:
    """Whether a stopped command left something a rerun resumes: builds keep their finished
    stages; other commands leave nothing to resume."""
    return (args.command in ("build-dataset", "relayout", "images")
            and _unfinished_build_written(args))


def _disk_full(exc: BaseException) -> OSError | None:
    """The ``OSError`` of a full disk (or quota) in ``exc``'s chain of causes, if any."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _unfinished_build_written(args) -> bool:
    """Whether a build command stopped with its unfinished store written (a Ctrl-C while the
    corpus is read leaves nothing to resume)."""
    try:
        out = store.location.resolve(args.out, _storage_options(args))
        return store.location.exists(store.location.partial_path(out))
    except Exception:  # noqa: BLE001 - cannot tell: say what a rerun would find
        return True


def _add_flags_after_commands(parser) -> None:
    """``--debug`` and ``-v`` after any command too (SUPPRESS: neither resets one given
    before the command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                     help="print the traceback of any error")
                command.add_argument("-v", "--verbose", action="store_true",
                                     default=argparse.SUPPRESS, help="log each stage")


def _one_line(exc: BaseException) -> str:
    """``exc``'s message on one line; an operating system's error as ``PATH: reason`` (Python
    says ``[Errno 30] Read-only file system: 'PATH'``)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
        if exc.filename2 is not None:
            text += f" (and {exc.filename2})"
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


#: config fields whose flag is not the field's name with dashes
_FLAG_OF_FIELD = {"n_jobs": "--tsne-threads", "n_per_class": "--per-class", "grid": "--pixels",
                  "random_state": "--seed", "text_columns": "--text-column",
                  "image_dtype": "--dtype", "storage_options": "--storage-option"}


def _subparser(parser, command: str) -> argparse.ArgumentParser:
    """The parser of ``command`` (``fastimg images``) in the top-level ``parser``."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[command]


def flags_of(parser, command: str) -> dict:
    """``{config field: flag}`` for ``command``: each option's dest (``chunk_rows`` ->
    ``--chunk-rows``) and :data:`_FLAG_OF_FIELD`."""
    flags = {action.dest: action.option_strings[-1]
             for action in _subparser(parser, command)._actions
             if action.option_strings and action.dest != "help"}
    flags.update({field: flag for field, flag in _FLAG_OF_FIELD.items()
                  if flag in flags.values()})
    return flags


def _as_flag(message: str, flags: dict) -> str:
    """``message`` with config fields named by their flags: the leading one (``chunk_rows must
    be ...``, ``limit 90 keeps ...``) and any other with an underscore (``... at least
    max_length``), which prose never has; dotted settings (``encoder.max_length: 96 -> 64``),
    paths and quoted values (``'label_column.csv'``, ``"max_length":``) keep theirs, a leading
    ``layers='author'`` is ``--layers author``, and a
    flag is not said to take ``None`` (leaving it out is that). The
    leading value is a whole number word: a path that opens a message (``dataset 2024.csv is
    not valid UTF-8``) keeps its name."""
    setting = re.match(r"([a-z]\w*)='([^']*)' ", message)  # layers='author' takes ...
    if setting and setting.group(1) in flags:
        message = f"{flags[setting.group(1)]} {setting.group(2)}{message[setting.end() - 1:]}"
    field = re.match(r"([a-z]\w*)(?: \([^)]*\))? "
                     r"(?:must\b|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w/]|\.\w))", message)
    if field and field.group(1) in flags:
        # a flag's "None" is leaving it out: "--fit-rows must be a whole number >= 2, got 0"
        message = flags[field.group(1)] + message[field.end(1):].replace(" or None,", ",", 1)
    return re.sub(r"(?<![\w./'\"-])[a-z]\w*_\w+\b(?![\w'\"/]|\.\w)",
                  lambda m: flags.get(m.group(0), m.group(0)), message)


#: the options that size each command's memory, named when it runs out
_MEMORY_FLAGS = {"images": "--pixels, --synthetic",
                 "build-dataset": "--pixels, --chunk-rows, --token-budget", "relayout": "--pixels",
                 "train": "--batch-size, --upsample, --cache-budget",
                 "predict": "--batch-size", "explain": "--batch-size", "show": "--per-class"}


def _out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError (numpy), torch's OutOfMemoryError (CUDA) and its CPU allocator's
    RuntimeError: a setting too large for the machine, not a bug."""
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)))


def report_error(command: str, exc: Exception, *, debug: bool = False,
                 flags: dict | None = None) -> int:
    """Print ``exc`` as one line (the traceback above it when ``debug``); the exit code.

    User mistakes (:data:`USER_ERRORS`, :class:`UserError`, object storage's own errors:
    credentials, endpoint, and running out of memory: a setting too large) exit 2; anything
    else is a bug in fastimg and exits 1 (a TypeError or KeyError is never the user's fault).
    ``flags`` (:func:`flags_of`) names a config field that opens the message by the command's
    flag.
    """
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if store.location.from_object_storage(exc):  # credentials, endpoint, bucket: the user's setup
        print(f"fastimg {command}: error: object storage: "
              f"{store.location.storage_error_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, (UserError, *USER_ERRORS)):
        print(f"fastimg {command}: error: {_as_flag(_one_line(exc), flags or {})}",
              file=sys.stderr)
        return EXIT_USAGE
    if _out_of_memory(exc):
        flags = _MEMORY_FLAGS.get(command)
        print(f"fastimg {command}: error: out of memory: {_one_line(exc)} (lower the setting "
              f"that sizes it{f', such as {flags}' if flags else ''}, or free memory)",
              file=sys.stderr)
        return EXIT_USAGE
    print(f"fastimg {command}: internal error (a bug, please report it): "
          f"{type(exc).__name__}: {_one_line(exc)}"
          + ("" if debug else "; rerun with --debug for the traceback"), file=sys.stderr)
    return EXIT_BUG


def _format_own_warning(command, flags, default, message, category, filename, lineno,
                        line=None):
    """fastimg's own warnings as one line naming the command's flags, as its errors are;
    others as Python prints them.

    Only the formatting is replaced, so ``pytest.warns`` and
    ``warnings.catch_warnings(record=True)`` still see every warning."""
    if category.__module__.split(".")[0] == "fastimg":
        return f"fastimg {command}: warning: {_as_flag(' '.join(str(message).split()), flags)}\n"
    return default(message, category, filename, lineno, line)


class _CommandFormatter(logging.Formatter):
    """fastimg's logged warnings and errors as ``fastimg COMMAND: warning: ...``, the form of
    its :mod:`warnings` and errors; other records (``--verbose`` progress, libraries) as
    ``LEVEL logger: message``."""

    def __init__(self, command: str):
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING and record.name.split(".")[0] == "fastimg":
            return (f"fastimg {self.command}: {record.levelname.lower()}: "
                    f"{record.getMessage()}")
        return super().format(record)


class _FlagNames(logging.Filter):
    """fastimg's logged warnings name config fields by the command's flags (as its errors
    do: ``test_fraction 0.1 ignored`` -> ``--test-fraction 0.1 ignored``)."""

    def __init__(self, flags: dict):
        super().__init__()
        self.flags = flags

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and record.name.split(".")[0] == "fastimg":
            record.msg, record.args = _as_flag(record.getMessage(), self.flags), ()
        return True


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit finds no closed pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout (captured, replaced)
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a batch scheduler cancelling the job) raised as Ctrl-C
    is: the command stops the same way, its lock let go and its finished stages kept."""


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    raise Terminated


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises :class:`Terminated` in the block, where it would end the process with
    nothing said and, on object storage, the build lock left behind; only in the main thread
    and only where no one else handles SIGTERM (an application embedding :func:`main`)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named by the command's parser, whose --help lists what it takes
            _subparser(parser, args.command).error(
                f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    level = logging.INFO if args.verbose else logging.WARNING
    flags = flags_of(parser, args.command)
    # the level on the handler too: libraries that set their own loggers' level (dask's
    # distributed, at INFO) would otherwise print through it without --verbose
    handler = logging.StreamHandler()
    handler.setLevel(level)
    handler.addFilter(_FlagNames(flags))
    handler.setFormatter(_CommandFormatter(args.command))
    logging.basicConfig(level=level, handlers=[handler])
    formatwarning = warnings.formatwarning
    if not args.debug:
        warnings.formatwarning = functools.partial(_format_own_warning, args.command, flags,
                                                   formatwarning)
    try:
        with _sigterm_as_interrupt():
            return args.func(args)
    except BrokenPipeError:  # `fastimg info STORE | head`: the reader left, nothing to say
        _silence_stdout()
        return 141
    except KeyboardInterrupt as exc:
        # zarr's writes left pending on its event loop are destroyed at exit, and asyncio
        # logs each ("Task was destroyed but it is pending!") under the one line below
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        kept = " (the unfinished build is kept: rerun to resume)" if _kept(args) else ""
        terminated = isinstance(exc, Terminated)
        print(f"fastimg {args.command}: {'terminated' if terminated else 'interrupted'}{kept}",
              file=sys.stderr)
        return 128 + int(signal.SIGTERM if terminated else signal.SIGINT)
    except Exception as exc:  # noqa: BLE001 - every error ends as one line and an exit code
        full = _disk_full(exc)
        if full is not None:  # the machine's state, not a bug: what to do, and what is kept
            if args.debug:
                traceback.print_exception(exc, file=sys.stderr)
            where = f" (writing {full.filename})" if full.filename else ""
            print(f"fastimg {args.command}: error: no space left on the device{where}: free "
                  f"some space, then rerun"
                  f"{' to resume (the unfinished build is kept)' if _kept(args) else ''}",
                  file=sys.stderr)
            return EXIT_USAGE
        return report_error(args.command, exc, debug=args.debug, flags=flags)
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
