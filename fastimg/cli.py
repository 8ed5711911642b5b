"""``fastimg`` command line: thin wrappers over the library; user mistakes exit 2 with one line."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

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


def _cmd_images(args) -> int:
    from fastimg.images import ImagesConfig, build_image_store, synthetic_matrix
    from fastimg.layout import LayoutConfig

    if args.synthetic:
        matrix = synthetic_matrix(*args.synthetic, seed=args.seed)
    else:
        matrix = _load_matrix(args.input)
    layout_config = LayoutConfig(grid=args.pixels, scaling=args.scaling, method=args.method,
                                 backend=args.backend, perplexity=args.perplexity,
                                 assignment=args.assignment, random_state=args.seed)
    config = ImagesConfig(fit_rows=args.fit_rows, image_dtype=args.dtype,
                          raster_backend=args.device)
    start = time.perf_counter()
    summary = build_image_store(matrix, args.out, layout_config, config, force=args.force,
                                progress=not args.quiet)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out}: {summary['rows']} images of {summary['image_shape'][0]} x "
          f"{summary['image_shape'][1]} ({summary['image_dtype']}), {summary['features']} "
          f"features on {summary['occupied_pixels']} pixels; layout "
          f"{summary['timings']['layout_s']:.1f} s, raster {summary['timings']['raster_s']:.2f} s,"
          f" total {time.perf_counter() - start:.1f} s, {size / 2**20:.1f} MiB")
    return 0


def _cmd_info(args) -> int:
    from fastimg import store

    group = store.open_store(args.store)
    attrs = dict(group.attrs[store.ATTRS_KEY])
    attrs["layout"] = {k: v for k, v in attrs["layout"].items()
                       if k not in ("pixel_index", "coords", "scaler")}
    print(json.dumps(attrs, indent=2))
    return 0


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
    images.add_argument("--backend", default="auto", help="t-SNE backend: auto|opentsne|sklearn|cuml")
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
    except (UserError, ValueError, TypeError, ImportError, FileNotFoundError) as exc:
        print(f"fastimg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"fastimg {args.command}: interrupted (an unfinished store stays *.partial)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
