"""The commands that build a store: ``images`` (a feature matrix), ``build-dataset`` (a text
corpus) and ``relayout`` (another store's embeddings), with their flags."""
from __future__ import annotations

import sys
import time

from fastimg import store
from fastimg.cli import options
from fastimg.cli.report import UserError


def layout_config(args):
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


def encoder_config(args):
    """The encoder's config; ``--revision`` with a local ``--model`` folder is refused."""
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


def dataset_config(args):
    """The layout-fit rows, image dtype and raster kernel of a dataset build."""
    from fastimg.dataset import DatasetConfig

    return DatasetConfig(fit_on=args.fit_on, image_dtype=args.dtype,
                         raster_backend=args.raster_backend)


def cmd_images(args) -> int:
    """``fastimg images``: a feature matrix's images, and a one-line summary."""
    from fastimg.images import (ImagesConfig, build_image_store, read_matrix, read_split,
                                synthetic_matrix)

    if args.fit_rows is not None and args.split_file is not None:  # before reading the matrix
        raise UserError("--fit-rows and --split-file: give one, not both (with a split, the "
                        "layout is fitted on its train rows)")
    if args.synthetic:
        matrix = synthetic_matrix(*args.synthetic, seed=args.seed)
    else:
        matrix = read_matrix(args.input)
    split = None if args.split_file is None else read_split(args.split_file, matrix.shape[0])
    layout = layout_config(args)
    config = ImagesConfig(fit_rows=args.fit_rows, image_dtype=args.dtype,
                          raster_backend=args.raster_backend)
    start = time.perf_counter()
    summary = build_image_store(matrix, args.out, layout, config, split=split,
                                force=args.force, progress=not args.quiet,
                                on_stage=stage_announcer(args, start))
    if summary.get("up_to_date"):
        print_up_to_date(args.out, f"{summary['rows']} images of {summary['image_shape'][0]} "
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


def cmd_build_dataset(args) -> int:
    """``fastimg build-dataset``: a corpus's store, and its summary."""
    from fastimg.corpus import CorpusConfig
    from fastimg.dataset import build_dataset

    corpus = CorpusConfig(
        input=options.corpus_input(args.input), dataset=args.dataset,
        text_columns=tuple(args.text_column or ("text",)), label_column=args.label_column,
        id_column=args.id_column, split_column=args.split_column, limit=args.limit,
        split=args.split, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        seed=args.seed)
    encoder = encoder_config(args)
    layout = layout_config(args)
    config = dataset_config(args)
    start = time.perf_counter()
    announce = stage_announcer(args, start)
    input_url = corpus.input is not None and "://" in corpus.input
    out, *reuse_from = options.locations([args.out, *(args.reuse_from or ())], args,
                                         input_url=input_url)
    if args.reuse_from and args.no_reuse:
        raise UserError("--reuse-from takes stages from other stores, which --no-reuse forbids: "
                        "give one of them")
    with _cluster(args.cluster) as client:
        summary = build_dataset(out, corpus, encoder, layout, config, force=args.force,
                                reuse=not args.no_reuse, progress=not args.quiet,
                                on_stage=announce, client=client,
                                reuse_from=reuse_from,
                                storage_options=options.storage_options(args))
    print_dataset_summary(out, summary, time.perf_counter() - start)
    return 0


def stage_announcer(args, start: float):
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


def print_up_to_date(out, what: str) -> None:
    """Say that ``out`` already holds ``what``, built with these settings."""
    print(f"{out} is up to date: {what}, built with these settings; nothing computed (pass "
          f"--force to build it again)")


def print_dataset_summary(out, summary: dict, seconds: float) -> None:
    """The one-line summary of a dataset build that took ``seconds``."""
    if summary.get("up_to_date"):
        print_up_to_date(out, f"{summary['rows']} rows, images {summary['image_shape'][0]} x "
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


def cmd_relayout(args) -> int:
    """``fastimg relayout``: a store laid out again from another's embeddings."""
    from fastimg.dataset import relayout

    config = dataset_config(args)
    start = time.perf_counter()
    # once: a local path's ignored options warn once
    src, out = options.locations([args.src, args.out], args)
    summary = relayout(src, out, layout_config(args), config, force=args.force,
                       progress=not args.quiet, on_stage=stage_announcer(args, start))
    print_dataset_summary(out, summary, time.perf_counter() - start)
    return 0


def add_map_options(parser) -> None:
    """The pixel-map options of every command that fits a layout (images, build-dataset,
    relayout)."""
    parser.add_argument("--pixels", type=options.grid, default=(50, 50), metavar="N|HxW",
                        help="image size (default 50)")
    parser.add_argument("--scaling", default="norm2", choices=["norm2", "minmax", "none"],
                        help="feature scaling fitted on the layout's rows: norm2 (default, "
                             "DeepInsight's log scaling), minmax (per feature to [0, 1]) or "
                             "none")
    parser.add_argument("--method", default="tsne", choices=["tsne", "pca", "kpca"],
                        help="2-D map of the features: tsne (default, DeepInsight's), pca or "
                             "kpca (kernel PCA)")
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


def add_layout_options(parser) -> None:
    """The layout and image options shared by build-dataset and relayout."""
    add_map_options(parser)
    parser.add_argument("--fit-on", default="train", choices=["train", "all"],
                        help="rows the layout is fitted on; all = the author's leaky variant")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32", "uint8"],
                        help="stored image dtype (default float16)")
    parser.add_argument("--raster-backend", default="auto",
                        choices=["auto", "cpu", "cuda", "numpy"],
                        help="rasterisation kernel (auto: the CPU kernel, fastest for images "
                             "that go to disk; cpu and cuda compute in float32, numpy in "
                             "float64, so a stored value can differ between them by float32's "
                             "rounding: at most one step of a float16 image, rarely)")


def add_images(sub) -> None:
    """The ``images`` command and its flags."""
    images = sub.add_parser(
        "images", help="feature matrix -> DeepInsight layout -> zarr image store",
        description="Fit a DeepInsight layout on a feature matrix and write every row's image "
                    "into a zarr store.")
    source = images.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=options.local_input_path,
                        help=".npy file or zarr array, samples x features")
    source.add_argument("--synthetic", type=options.shape, metavar="NxF",
                        help="a seeded low-rank demo matrix instead of --input (works offline)")
    images.add_argument("--out", type=options.local_path, required=True,
                        help="zarr store to write (a local path)")
    add_map_options(images)
    images.add_argument("--split-file", type=options.local_input_path, metavar="FILE",
                        help="split of each row (.npy of codes 0/1/2 or names train/val/test, or "
                             "a text file with one per line): the layout is fitted on the train "
                             "rows and the split is stored")
    images.add_argument("--fit-rows", type=int, default=None,
                        help="fit the layout on the first N rows (the training rows); default: "
                             "the train rows of --split-file, else every row")
    images.add_argument("--dtype", default="float16", choices=["float16", "float32", "uint8"],
                        help="stored image dtype (default float16)")
    images.add_argument("--raster-backend", default="auto",
                        choices=["auto", "cpu", "cuda", "numpy"],
                        help="rasterisation kernel (auto: the CPU kernel)")
    images.add_argument("--device", action=options.Refuse,
                        hint="--device is the torch device in fastimg and images has no model: "
                             "choose the raster kernel with --raster-backend")
    images.add_argument("--seed", type=options.seed, default=0,
                        help="seeds the layout, and --synthetic's matrix (default 0)")
    images.add_argument("--force", action="store_true", help="overwrite an existing store")
    images.add_argument("--quiet", action="store_true", help="no progress bars")
    images.set_defaults(func=cmd_images)


def add_build_dataset(sub) -> None:
    """The ``build-dataset`` command and its flags."""
    build = sub.add_parser(
        "build-dataset", help="text corpus -> embeddings -> layout -> zarr image dataset",
        description="Encode a labelled text corpus with a BERT-family model, fit a DeepInsight "
                    "layout on the training rows and write every row's image into one zarr "
                    "store. Rerunning an interrupted build resumes it.")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=["imdb"],
                        help="built-in recipe (looks in $FASTIMG_DATA, then the user cache)")
    source.add_argument("--input", type=options.input_path_or_url,
                        help="CSV, TSV, JSONL or Parquet file (optionally .gz), or an aclImdb "
                             "folder or tarball; a file may be a URL (s3://bucket/x.csv, read "
                             "with --storage-option)")
    build.add_argument("--out", required=True, type=options.path_text,
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
                       help="auto (default): the split column if any, else random; column: "
                            "the split column's train/val/test (val carved from train when it "
                            "has none); random: pool all rows, --val-fraction of them val; "
                            "paper: pool all rows, 80/20 train/val (40k/10k on IMDB)")
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
    build.add_argument("--layers", type=options.layers, default="last6",
                       help="last6 (paper), author (hidden_states[6:12]) or hidden-state "
                            "indices, e.g. 1,2,3 or -2,-1 (from the last)")
    build.add_argument("--pooling", default="cls", choices=["cls", "mean"],
                       help="vector of a text in each layer: cls, the first token's (default, "
                            "the paper's), or mean, over its tokens (what sentence-transformers "
                            "such as MiniLM are trained for)")
    build.add_argument("--max-length", type=int, default=512, help="tokens per text (512)")
    build.add_argument("--truncation", default="head", choices=["head", "head+tail"],
                       help="a text longer than --max-length keeps its first tokens (head, "
                            "default) or its first quarter and its end (head+tail)")
    build.add_argument("--chunk-rows", type=int, default=1024,
                       help="texts per encoding chunk: the unit an interrupted build resumes "
                            "at (it shapes the batches, so it moves fp32 values by float "
                            "rounding; not part of the stage key)")
    add_layout_options(build)
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
    build.add_argument("--seed", type=options.seed, default=0,
                       help="seeds --limit's sample, the random split and the layout "
                            "(default 0)")
    build.add_argument("--force", action="store_true",
                       help="replace an existing store (its stages whose settings match are "
                            "reused)")
    build.add_argument("--no-reuse", action="store_true",
                       help="recompute every stage, even those an earlier build has")
    build.add_argument("--reuse-from", metavar="STORE", action="append", type=options.path_text,
                       help="also take matching stages from this complete store: its "
                            "embeddings of the same texts and encoder settings, whatever its "
                            "labels, split or layout (repeatable)")
    build.add_argument("--cluster", metavar="SPEC", default=None,
                       help="encode and rasterise on a dask cluster: local:N (N worker "
                            "processes, one thread each) or a scheduler address "
                            "(tcp://host:8786); the store must be reachable from every worker")
    options.add_storage_options(build)
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=cmd_build_dataset)


def add_relayout(sub) -> None:
    """The ``relayout`` command and its flags."""
    again = sub.add_parser(
        "relayout", help="a new store from an existing store's embeddings, with a new layout",
        description="Lay out the embeddings of a store again (new image size, map, scaling, "
                    "dtype) without encoding: the images equal those of a fresh build-dataset "
                    "with the same settings.")
    again.add_argument("src", type=options.path_text,
                       help="a store written by build-dataset (path or URL)")
    again.add_argument("--out", required=True, type=options.path_text,
                       help="zarr store to write (path or URL)")
    options.add_storage_options(again)
    add_layout_options(again)
    again.add_argument("--seed", type=options.seed, default=0,
                       help="seed of the layout (default 0, whatever seed SRC was built with: "
                            "pass that one to repeat SRC's layout)")
    again.add_argument("--force", action="store_true", help="replace an existing store")
    again.add_argument("--quiet", action="store_true", help="no progress bars")
    again.set_defaults(func=cmd_relayout)
