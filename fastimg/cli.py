"""``fastimg`` command line: thin wrappers over the library; user mistakes exit 2 with one line."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from fastimg import store

EXIT_USAGE = 2


class UserError(Exception):
    """A mistake in the command's input, reported as one line with exit code 2."""


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


def _shape(text: str):
    try:
        n, f = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NxF, e.g. 2000x768, got {text!r}") from None
    return n, f


def _load_matrix(path: Path):
    """A feature matrix from ``.npy`` (memory-mapped) or a zarr array, without reading it all."""
    import numpy as np

    if not path.exists():
        raise UserError(f"input {path} does not exist")
    if path.suffix == ".npy":
        try:
            matrix = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise UserError(f"cannot read {path} as a .npy matrix: {exc}") from None
    elif path.is_dir():
        import zarr

        try:
            matrix = zarr.open_array(str(path), mode="r")
        except Exception as exc:  # noqa: BLE001 - zarr raises several types for a bad store
            raise UserError(f"cannot open {path} as a zarr array: {exc}") from None
    else:
        raise UserError(f"unsupported input {path}: give a .npy file or a zarr array folder")
    if len(matrix.shape) != 2:
        raise UserError(f"input must be a 2-D matrix (samples x features), got shape "
                        f"{tuple(matrix.shape)}")
    return matrix


def _layout_config(args):
    from fastimg.layout import LayoutConfig

    return LayoutConfig(grid=args.pixels, scaling=args.scaling, method=args.method,
                        backend=args.tsne_backend, perplexity=args.perplexity,
                        assignment=args.assignment, random_state=args.seed)


def _cmd_images(args) -> int:
    from fastimg.images import ImagesConfig, build_image_store, synthetic_matrix

    if args.synthetic:
        matrix = synthetic_matrix(*args.synthetic, seed=args.seed)
    else:
        matrix = _load_matrix(args.input)
    layout_config = _layout_config(args)
    config = ImagesConfig(fit_rows=args.fit_rows, image_dtype=args.dtype,
                          raster_backend=args.device)
    start = time.perf_counter()
    summary = build_image_store(matrix, args.out, layout_config, config, force=args.force,
                                progress=not args.quiet)
    print(f"wrote {args.out}: {summary['rows']} images of {summary['image_shape'][0]} x "
          f"{summary['image_shape'][1]} ({summary['image_dtype']}), {summary['features']} "
          f"features on {summary['occupied_pixels']} pixels; layout "
          f"{summary['timings']['layout_s']:.1f} s, raster {summary['timings']['raster_s']:.2f} s,"
          f" total {time.perf_counter() - start:.1f} s, "
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


def _cmd_build_dataset(args) -> int:
    from fastimg.corpus import CorpusConfig
    from fastimg.dataset import DatasetConfig, build_dataset
    from fastimg.embed import EncoderConfig

    corpus = CorpusConfig(
        input=None if args.input is None else str(args.input), dataset=args.dataset,
        text_columns=tuple(args.text_column or ("text",)), label_column=args.label_column,
        id_column=args.id_column, split_column=args.split_column, limit=args.limit,
        split=args.split, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        seed=args.seed)
    encoder = EncoderConfig(model=args.model, revision=args.revision, layers=args.layers,
                            pooling=args.pooling, max_length=args.max_length,
                            truncation=args.truncation, chunk_rows=args.chunk_rows,
                            device=args.device)
    layout = _layout_config(args)
    config = DatasetConfig(fit_on=args.fit_on, image_dtype=args.dtype,
                           raster_backend=args.raster_backend)
    start = time.perf_counter()

    def announce(stage):
        if not args.quiet:
            print(f"[{time.perf_counter() - start:7.1f} s] {stage}", file=sys.stderr)

    summary = build_dataset(args.out, corpus, encoder, layout, config, force=args.force,
                            reuse=not args.no_reuse, progress=not args.quiet, on_stage=announce)
    _print_dataset_summary(args.out, summary, time.perf_counter() - start)
    return 0


def _print_dataset_summary(out, summary: dict, seconds: float) -> None:
    timings = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in summary["timings"].items())
    counts = "; ".join(f"{split} " + "/".join(str(n) for n in per_class.values())
                       for split, per_class in summary["counts"].items())
    reused = f"reused {', '.join(summary['reused'])}; " if summary.get("reused") else ""
    print(f"wrote {out}: {summary['rows']} rows, {summary['classes']} classes "
          f"({', '.join(summary['class_names'])}; {counts}), images "
          f"{summary['image_shape'][0]} x {summary['image_shape'][1]} {summary['image_dtype']} "
          f"from {summary['features']} features on {summary['occupied_pixels']} pixels; "
          f"{reused}{timings}; total {seconds:.1f} s; {store.size_bytes(out) / 2**20:.1f} MiB")


def _cmd_relayout(args) -> int:
    from fastimg.dataset import DatasetConfig, relayout

    config = DatasetConfig(fit_on=args.fit_on, image_dtype=args.dtype,
                           raster_backend=args.raster_backend)
    start = time.perf_counter()
    summary = relayout(args.src, args.out, _layout_config(args), config, force=args.force,
                       progress=not args.quiet)
    _print_dataset_summary(args.out, summary, time.perf_counter() - start)
    return 0


def _cmd_show(args) -> int:
    from fastimg.show import show_store

    show_store(args.store, args.out, n_per_class=args.per_class, seed=args.seed)
    print(f"wrote {args.out}")
    return 0


def _cmd_info(args) -> int:
    reader = store.StoreReader(args.store)
    attrs = dict(reader.attrs)
    attrs["layout"] = {k: v for k, v in attrs["layout"].items()
                       if k not in ("pixel_index", "coords", "scaler")}
    attrs["arrays"] = reader.array_info()
    attrs["size_MiB"] = round(reader.size_bytes() / 2**20, 2)
    print(json.dumps(attrs, indent=2))
    return 0


def _cmd_train(args) -> int:
    from fastimg.train import TrainConfig, fit

    if not args.store.exists():
        raise UserError(f"store {args.store} does not exist")
    weights = None if args.weights.lower() == "none" else args.weights
    config = TrainConfig(
        preset=args.preset, extractor=args.extractor, weights=weights, epochs=args.epochs,
        batch_size=args.batch_size, lr_head=args.lr_head, lr_classifier=args.lr_classifier,
        optimizer=args.optimizer, weight_decay=args.weight_decay, schedule=args.schedule,
        patience=args.patience, normalize=args.normalize, upsample=args.upsample, cut=args.cut,
        unfreeze_fraction=args.unfreeze_fraction, fuse_embedding=args.fuse_embedding,
        cache=args.cache, cache_budget=args.cache_budget, loader=args.loader,
        device=args.device, amp=not args.no_amp, probe=not args.no_probe,
        num_workers=args.num_workers, seed=args.seed, progress=not args.quiet)
    result = fit(args.store, config, out_dir=args.out)
    metrics = result.metrics
    test = ("absent (no test split: the validation figure chose the best epoch and is "
            "selection-biased; build with --test-fraction to carve one)"
            if result.test_accuracy is None else f"{result.test_accuracy:.4f}")
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


def _add_layout_options(parser) -> None:
    """The layout and image options shared by build-dataset and relayout."""
    parser.add_argument("--pixels", type=_grid, default=(50, 50), metavar="N|HxW",
                        help="image size (default 50)")
    parser.add_argument("--scaling", default="norm2", choices=["norm2", "minmax", "none"])
    parser.add_argument("--method", default="tsne", choices=["tsne", "pca", "kpca"])
    parser.add_argument("--tsne-backend", default="auto",
                        choices=["auto", "opentsne", "sklearn", "cuml"])
    parser.add_argument("--perplexity", type=float, default=30.0)
    parser.add_argument("--assignment", default="bin", choices=["bin", "assignment"])
    parser.add_argument("--fit-on", default="train", choices=["train", "all"],
                        help="rows the layout is fitted on; all = the author's leaky variant")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32", "uint8"],
                        help="stored image dtype")
    parser.add_argument("--raster-backend", default="auto",
                        choices=["auto", "cpu", "cuda", "numpy"],
                        help="rasterisation kernel (auto: the CPU kernel, fastest for images "
                             "that go to disk; the backend does not change the images)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastimg", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log each stage")
    sub = parser.add_subparsers(dest="command", required=True)

    images = sub.add_parser(
        "images", help="feature matrix -> DeepInsight layout -> zarr image store",
        description="Fit a DeepInsight layout on a feature matrix and write every row's image "
                    "into a zarr store.")
    source = images.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help=".npy file or zarr array, samples x features")
    source.add_argument("--synthetic", type=_shape, metavar="NxF",
                        help="a seeded low-rank demo matrix instead of --input (works offline)")
    images.add_argument("--out", type=Path, required=True, help="zarr store to write")
    images.add_argument("--pixels", type=_grid, default=(50, 50), metavar="N|HxW",
                        help="image size (default 50)")
    images.add_argument("--scaling", default="norm2", choices=["norm2", "minmax", "none"])
    images.add_argument("--method", default="tsne", choices=["tsne", "pca", "kpca"])
    images.add_argument("--tsne-backend", "--backend", dest="tsne_backend", default="auto",
                        help="t-SNE backend: auto|opentsne|sklearn|cuml")
    images.add_argument("--perplexity", type=float, default=30.0)
    images.add_argument("--assignment", default="bin", choices=["bin", "assignment"])
    images.add_argument("--fit-rows", type=int, default=None,
                        help="fit the layout on the first N rows (the training rows); default all")
    images.add_argument("--dtype", default="float16", choices=["float16", "float32", "uint8"])
    images.add_argument("--device", default="auto", help="raster backend: auto|cpu|cuda|numpy")
    images.add_argument("--seed", type=int, default=0)
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
    source.add_argument("--input", type=Path,
                        help="CSV, TSV, JSONL or Parquet file (optionally .gz), or an aclImdb "
                             "folder or tarball")
    build.add_argument("--out", type=Path, required=True, help="zarr store to write")
    build.add_argument("--text-column", action="append", metavar="NAME",
                       help="text column; repeat to join several (default: text)")
    build.add_argument("--label-column", default="label")
    build.add_argument("--id-column", default=None)
    build.add_argument("--split-column", default=None)
    build.add_argument("--split", default="auto", choices=["auto", "column", "paper", "random"],
                       help="auto: the split column if any, else random; paper: pool all rows, "
                            "80/20 train/val (40k/10k on IMDB)")
    build.add_argument("--val-fraction", type=float, default=0.2)
    build.add_argument("--test-fraction", type=float, default=0.0,
                       help="carve this share of train as a test split when there is none")
    build.add_argument("--limit", type=int, default=None,
                       help="seeded sample of N rows, stratified by split and label")
    build.add_argument("--model", default="minilm",
                       help="alias (minilm: offline default), hub id or local folder")
    build.add_argument("--revision", default=None, help="hub revision of --model")
    build.add_argument("--layers", type=_layers, default="last6",
                       help="last6 (paper), author (hidden_states[6:12]) or indices, e.g. 1,2,3")
    build.add_argument("--pooling", default="cls", choices=["cls", "mean"])
    build.add_argument("--max-length", type=int, default=512, help="tokens per text (512)")
    build.add_argument("--truncation", default="head", choices=["head", "head+tail"])
    build.add_argument("--chunk-rows", type=int, default=1024,
                       help="texts per encoding chunk: the unit an interrupted build resumes at")
    _add_layout_options(build)
    build.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="encoder device")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--force", action="store_true",
                       help="replace an existing store (its stages whose settings match are "
                            "reused)")
    build.add_argument("--no-reuse", action="store_true",
                       help="recompute every stage, even those an earlier build has")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=_cmd_build_dataset)

    again = sub.add_parser(
        "relayout", help="a new store from an existing store's embeddings, with a new layout",
        description="Lay out the embeddings of a store again (new image size, map, scaling, "
                    "dtype) without encoding: the images equal those of a fresh build-dataset "
                    "with the same settings.")
    again.add_argument("src", type=Path, help="a store written by build-dataset")
    again.add_argument("--out", type=Path, required=True, help="zarr store to write")
    _add_layout_options(again)
    again.add_argument("--seed", type=int, default=0)
    again.add_argument("--force", action="store_true", help="replace an existing store")
    again.add_argument("--quiet", action="store_true", help="no progress bars")
    again.set_defaults(func=_cmd_relayout)

    show = sub.add_parser("show", help="PNG of sample images, class means and the layout")
    show.add_argument("store", type=Path)
    show.add_argument("--out", type=Path, required=True, help="PNG file to write")
    show.add_argument("--per-class", type=int, default=4, help="sample images per class")
    show.add_argument("--seed", type=int, default=0)
    show.set_defaults(func=_cmd_show)

    train = sub.add_parser(
        "train", help="train a frozen pretrained extractor + conv head on a dataset store",
        description="Train the paper's image route on a store written by build-dataset: a "
                    "frozen ImageNet extractor, a conv head and a dense classifier; writes "
                    "metrics.json, best.pt and config.json into --out and reports the "
                    "validation and test accuracy beside a linear probe on the embeddings.")
    train.add_argument("store", type=Path)
    train.add_argument("--extractor", default="alexnet",
                       choices=["alexnet", "wide_resnet50_2", "resnext50_32x4d",
                                "shufflenet_v2_x1_0", "vgg16"])
    train.add_argument("--weights", default="DEFAULT",
                       help="DEFAULT (torchvision ImageNet weights), none (random init) or "
                            "the path of a state_dict")
    train.add_argument("--out", type=Path, required=True, help="run folder to write")
    train.add_argument("--preset", default="ours", choices=["ours", "paper"],
                       help="defaults of the options left unset: ours (what measured best on "
                            "validation) or paper (Table I learning rates, Adam, per-image "
                            "z-normalisation, 15 epochs)")
    train.add_argument("--epochs", type=int, default=None, help="most epochs (preset)")
    train.add_argument("--batch-size", type=int, default=128)
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
                       help="also train the last fraction of the extractor's blocks (preset: "
                            "ours 1, paper 0; 0 allows the feature cache)")
    train.add_argument("--fuse-embedding", action="store_true",
                       help="concatenate an MLP of the stored embedding before the classifier")
    train.add_argument("--cache", default="auto", choices=["auto", "memory", "zarr", "none"],
                       help="frozen-feature cache; auto: memory within --cache-budget, "
                            "else zarr on disk; none recomputes the extractor every epoch")
    train.add_argument("--cache-budget", default="25%",
                       help="memory the auto cache may use: a share of RAM or a size (6GiB)")
    train.add_argument("--loader", default="auto", choices=["auto", "dali", "torch"])
    train.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    train.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    train.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    train.add_argument("--num-workers", type=int, default=0)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_cmd_train)

    info = sub.add_parser("info", help="summary of a store")
    info.add_argument("store", type=Path)
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (UserError, ValueError, TypeError, ImportError, OSError) as exc:
        print(f"fastimg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"fastimg {args.command}: interrupted (an unfinished store stays *.partial)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
