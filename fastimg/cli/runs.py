"""The commands of a training run: ``train`` (writes its run folder), ``predict`` and
``explain`` (use one), with their flags."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fastimg import store
from fastimg.cli import options
from fastimg.cli.report import UserError

logger = logging.getLogger("fastimg.cli")


def cmd_train(args) -> int:
    """``fastimg train``: a run folder, and the run's one-line summary."""
    from fastimg.train import TrainConfig, fit

    location = options.location(args.store, args)
    if args.cache != "auto" and args.cache_budget != TrainConfig.cache_budget:  # not its default
        logger.warning("--cache-budget %s ignored: it sizes --cache auto's choice, and --cache "
                       "%s is chosen", args.cache_budget, args.cache)
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
    if metrics["resumed_after_epoch"] is not None:
        stop += f" (resumed after epoch {metrics['resumed_after_epoch']})"
    print(f"trained {args.extractor} ({config.preset} preset) on {args.store}: best epoch "
          f"{result.best_epoch}/{metrics['epochs_run']}{stop}, val accuracy "
          f"{result.val_accuracy:.4f}, test accuracy {test}; linear probe "
          f"{'; '.join(probes) if probes else 'not run'}; "
          f"{metrics['timings']['epoch_s']:.1f} s/epoch, {metrics['timings']['total_s']:.1f} s; "
          f"run folder {args.out}")
    return 0


def cmd_predict(args) -> int:
    """``fastimg predict``: the predictions CSV of new texts."""
    from fastimg._validation import check_can_write, file_in_the_way
    from fastimg.train import load_run
    from fastimg.train.texts_io import (STDOUT, MissingColumnError, read_input_texts,
                                        read_lines, write_predictions, writes_to)

    to_stdout = args.out == STDOUT
    for flag, value in (("--id-column", args.id_column), ("--label-column", args.label_column)):
        if value == "":  # was taken as not given: no ids read, or no scores
            raise UserError(f"{flag} must be a column name, got ''")
    if str(args.input) == "-" and (args.text_column or args.id_column or args.label_column):
        flag = ("--text-column" if args.text_column else "--id-column" if args.id_column
                else "--label-column")
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
    targets = None
    if str(args.input) == "-":
        ids, texts = read_lines(sys.stdin)
    else:
        # by default the columns the run's store was built from, joined as the build did
        columns = args.text_column or run.text_columns or ["text"]
        if args.label_column in columns:  # every label a text: refused, each shown
            where = ("--text-column" if args.text_column
                     else "the store's text column" + "s" * (len(columns) > 1))
            raise UserError(f"--label-column {args.label_column} is a text column, not labels "
                            f"(texts: {where}, {', '.join(columns)}); name the column of "
                            f"each text's true class")
        try:
            read = read_input_texts(args.input, columns, args.id_column,
                                    label_column=args.label_column)
        except MissingColumnError as exc:
            if args.text_column or exc.column not in columns:  # given, or the id column
                raise
            raise UserError(f"{exc}; without --text-column the texts are read from the "
                            f"column{'s' if len(columns) > 1 else ''} the run's store was "
                            f"built from ({', '.join(columns)}): give --text-column for "
                            f"another") from None
        ids, texts = read[:2]
        if args.label_column:  # every label a class of the run, before the encoding
            from fastimg.corpus.cells import is_missing_label

            if read[2] and all(is_missing_label(label) for label in read[2]):
                raise UserError(f"--label-column {args.label_column} of {args.input} holds no "
                                f"labels (every row's is empty); predict without "
                                f"--label-column, or name the column of the true classes")
            try:
                targets = run.targets(read[2])
            except ValueError as exc:
                raise UserError(f"--label-column {args.label_column} of {args.input}: "
                                f"{exc}") from None
    if not texts:
        raise UserError(f"no texts in {'stdin' if str(args.input) == '-' else args.input}")
    prediction = run.predict(texts, batch_size=args.batch_size, progress=not args.quiet)
    # the CSV on stdout (-, /dev/stdout) keeps stdout to itself: the summary goes to stderr
    csv_on_stdout = writes_to(args.out, sys.stdout)
    # the true class by name, as predicted: a file's 0 / 1.0 / ' pos' is comparable with it
    true = None if targets is None else [run.class_names[k] for k in targets]
    write_predictions(args.out, ids, prediction, labels=true)
    from fastimg.info import class_counts_text
    from fastimg.run_summary import plural

    counts = class_counts_text({name: prediction.names.count(name) for name in run.class_names})
    scored = ""
    if targets is not None:
        scores = prediction.score(targets)
        scored = (f"; against {args.label_column}: accuracy {scores['accuracy']:.4f}, macro F1 "
                  f"{scores['macro_f1']:.4f}, balanced accuracy "
                  f"{scores['balanced_accuracy']:.4f}")
    print(f"predicted {plural(len(texts), 'text')} with {args.run_dir} ({counts}){scored}; wrote "
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


def cmd_explain(args) -> int:
    """``fastimg explain``: which features a run uses, and where they come from."""
    from fastimg.train.explain import explain

    # explain says when --storage-option has no URL to go to (--store, or the run's store)
    result = explain(args.run_dir, split=args.split, out_dir=args.out, method=args.method,
                     max_rows=args.max_rows, batch_size=args.batch_size, device=args.device,
                     seed=args.seed, progress=not args.quiet, store=args.store,
                     storage_options=options.storage_options(args))
    origins = [(f, *result.feature_origin(f)) for f in result.top(5).tolist()]
    top = ", ".join(f"{f} (encoder layer {encoder_layer}, dim {dim})"
                    for f, _, encoder_layer, dim in origins)
    print(f"explained {args.run_dir} with {result.method} over {result.rows} {result.split} "
          f"images; top features: {top}; wrote {result.files['features']} and "
          f"{result.files['image']}")
    return 0


def add_train(sub) -> None:
    """The ``train`` command and its flags."""
    train = sub.add_parser(
        "train", help="train a frozen pretrained extractor + conv head on a dataset store",
        description="Train the paper's image route on a store written by build-dataset: a "
                    "frozen ImageNet extractor, a conv head and a dense classifier; writes "
                    "the run folder --out (metrics.json, best.pt, config.json, and what "
                    "predict and explain need: bundle.json, plus normaliser.npz with "
                    "--normalize dataset; feature_cache/ with an on-disk feature cache) and "
                    "reports the validation and test accuracy beside a linear probe on the "
                    "embeddings. Stopped after an epoch, the same command run again resumes "
                    "after the last finished one (resume.pt in --out).")
    train.add_argument("store", type=options.path_text, help="a store (path or URL)")
    options.add_storage_options(train)
    train.add_argument("--extractor", default="alexnet",
                       choices=["alexnet", "wide_resnet50_2", "resnext50_32x4d",
                                "shufflenet_v2_x1_0", "vgg16"],
                       help="ImageNet CNN whose frozen early layers extract features "
                            "(default alexnet)")
    train.add_argument("--weights", default="DEFAULT", type=options.local_input,
                       help="DEFAULT (the default: torchvision's ImageNet weights, from "
                            "torch's cache or downloaded), none (random init) or the path of "
                            "a state_dict")
    train.add_argument("--out", type=options.local_path, required=True, help="run folder to write")
    train.add_argument("--preset", default="ours", choices=["ours", "paper"],
                       help="defaults of the options left unset: ours (what measured best on "
                            "validation) or paper (Table I learning rates, Adam, per-image "
                            "z-normalisation, 15 epochs)")
    train.add_argument("--epochs", type=int, default=None, help="most epochs (preset: 15)")
    train.add_argument("--batch-size", type=int, default=128,
                       help="rows per step (default 128; at least 2, as BatchNorm needs)")
    train.add_argument("--lr-head", type=float, default=None, help="(preset, per extractor)")
    train.add_argument("--lr-classifier", type=float, default=None,
                       help="(preset, per extractor)")
    train.add_argument("--optimizer", default=None, choices=["adamw", "adam"],
                       help="(preset: ours adamw, paper adam)")
    train.add_argument("--weight-decay", type=float, default=None,
                       help="(preset: ours 0.1, paper 0)")
    train.add_argument("--schedule", default=None, choices=["cosine", "plateau", "none"],
                       help="learning-rate schedule (preset: ours cosine, paper none)")
    train.add_argument("--patience", type=int, default=None,
                       help="stop after this many epochs without a validation gain; 0: never "
                            "(preset: ours 8, paper 0)")
    train.add_argument("--normalize", default=None, choices=["dataset", "image", "none"],
                       help="dataset: per-pixel statistics of the training split (ours); "
                            "image: per-image z-normalisation (paper)")
    train.add_argument("--upsample", type=int, default=None,
                       help="integer upsampling (preset: 1; the author's code: 3)")
    train.add_argument("--cut", default=None, choices=["paper", "nopool"],
                       help="extractor cut: the paper's, or without its max-pools (preset: "
                            "paper)")
    train.add_argument("--unfreeze-fraction", type=float, default=None,
                       help="also train the last fraction of the extractor's blocks (both "
                            "presets: 0, frozen, which allows the feature cache)")
    train.add_argument("--fuse-embedding", action="store_true",
                       help="concatenate an MLP of the stored embedding before the classifier")
    train.add_argument("--pixel-branch", action=argparse.BooleanOptionalAction, default=None,
                       help="also feed the image's pixels straight to the classifier, around "
                            "the extractor (preset: ours on, paper off)")
    train.add_argument("--cache", default="auto", choices=["auto", "memory", "zarr", "none"],
                       help="frozen-feature cache; auto: memory within --cache-budget, "
                            "else zarr on disk (none when --unfreeze-fraction is above 0); "
                            "none recomputes the extractor every epoch")
    train.add_argument("--cache-budget", default="25%",
                       help="memory the auto cache may use: a share of RAM (default 25%%) or a "
                            "size (6GiB)")
    train.add_argument("--loader", default="auto", choices=["auto", "dali", "torch"],
                       help="image loader; auto: DALI with a GPU and DALI installed, else torch")
    train.add_argument("--device", type=options.torch_device, default="auto",
                       help="torch device: auto|cpu|cuda|cuda:N")
    train.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    train.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    train.add_argument("--num-workers", type=int, default=0,
                       help="torch loader worker processes, 0 to 256 (default 0: in the main "
                            "process)")
    train.add_argument("--seed", type=options.seed, default=0,
                       help="seeds the head's initialisation, shuffling, dropout and the "
                            "probe: the same seed gives the same run on the same machine, "
                            "torch thread count and feature cache")
    train.add_argument("--force", action="store_true",
                       help="train into --out even when it already holds a run or other "
                            "files (which are kept); start an unfinished run over instead of "
                            "resuming it")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)


def add_predict(sub) -> None:
    """The ``predict`` command and its flags."""
    predict = sub.add_parser(
        "predict", help="classify new texts with a trained run folder",
        description="Encode texts with the training store's encoder settings, rasterise them "
                    "with its layout and apply the run's best.pt; writes a CSV of id, "
                    "predicted class and the probability of each class. Needs only the run "
                    "folder (not the store), and refuses an encoder whose weights differ.")
    predict.add_argument("run_dir", type=options.local_input_path,
                         help="run folder written by fastimg train")
    predict.add_argument("--input", required=True, type=options.local_input,
                         help="CSV / TSV / JSONL / Parquet file (.gz too), an aclImdb folder "
                              "or tarball, or - for one text per line on stdin (ids: line "
                              "numbers from 0; blank lines skipped)")
    predict.add_argument("--text-column", action="append",
                         help="text column of a table --input (repeat to join several; "
                              "default: the columns the run's store was built from, text "
                              "for older runs)")
    predict.add_argument("--id-column", help="id column of a table --input (default: id when "
                                             "present, else the row number)")
    predict.add_argument("--label-column",
                         help="true class of each row of a table --input (a class name of "
                              "the run, or its integer label): the CSV gets a label column "
                              "and the summary the accuracy, macro F1 and balanced accuracy")
    predict.add_argument("--out", type=options.local_path_or_stdout, required=True,
                         help="predictions CSV to write; - for stdout (the summary line then "
                              "goes to stderr)")
    predict.add_argument("--batch-size", type=int, default=256,
                         help="images per classifier pass (default 256); texts are encoded and "
                              "classified about 4,096 at a time, in whole batches")
    predict.add_argument("--model", help="the encoder's folder (or hub id) when it is no longer "
                                         "where the store was built from it; its weights must "
                                         "be the recorded ones (checked)")
    predict.add_argument("--device", type=options.torch_device, default="auto",
                         help="torch device of the encoder and the classifier: "
                              "auto|cpu|cuda|cuda:N (int8 encodes on the CPU)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=cmd_predict)


def add_explain(sub) -> None:
    """The ``explain`` command and its flags."""
    explain = sub.add_parser(
        "explain", help="which embedding features a trained run uses",
        description="Attribution maps (integrated gradients, captum) of the run's classifier "
                    "over a split of its store, averaged per class and mapped back through "
                    "the layout to features: writes features.csv (ranked: feature, layer, "
                    "dimension, pixel, importance per class) and importance.png. Needs "
                    "pip install 'fastimg[explain]'.")
    explain.add_argument("run_dir", type=options.local_input_path,
                         help="run folder written by fastimg train")
    explain.add_argument("--split", default="val", choices=["val", "train", "test"],
                         help="the split of the store whose images are attributed (default val)")
    explain.add_argument("--store", type=options.path_text,
                         help="the store (path or URL) to read the split from when the run's "
                              "training store has moved (default: the one recorded in the run; "
                              "its layout and classes must be the run's)")
    explain.add_argument("--out", type=options.local_path, required=True, help="folder to write")
    explain.add_argument("--method", default="integrated_gradients",
                         choices=["integrated_gradients", "input_x_gradient", "gradcam"],
                         help="attribution method (default integrated_gradients)")
    explain.add_argument("--max-rows", type=int, default=None,
                         help="a seeded random sample of at most this many rows")
    explain.add_argument("--batch-size", type=int, default=64,
                         help="images per attribution batch (default 64)")
    explain.add_argument("--device", type=options.torch_device, default="auto",
                         help="torch device: auto|cpu|cuda|cuda:N")
    explain.add_argument("--seed", type=options.seed, default=0,
                         help="seeds the --max-rows sample (default 0)")
    explain.add_argument("--quiet", action="store_true", help="no progress bar")
    options.add_storage_options(explain)
    explain.set_defaults(func=cmd_explain)
