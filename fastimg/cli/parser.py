"""The ``fastimg`` parser: its global flags and every command's, in the order ``--help`` lists
them, and the flag of each config field (for messages)."""
from __future__ import annotations

import argparse
import re
import sys

from fastimg import __version__
from fastimg.cli import build, describe, report, runs


#: flags whose value may be a list of negative numbers (``--layers -2,-1``)
_LIST_FLAGS = ("--layers",)
_NEGATIVE_LIST = re.compile(r"-\d+(,-?\d+)+")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2): the usage text is one ``--help`` away."""

    def error(self, message):
        self.exit(report.EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        """As argparse's, with ``--layers -2,-1`` read as ``--layers=-2,-1`` (argparse takes a
        value that starts with a dash and is not one number for a flag: "expected one
        argument")."""
        args = list(sys.argv[1:] if args is None else args)
        for i in range(len(args) - 1, 0, -1):
            if args[i - 1] in _LIST_FLAGS and _NEGATIVE_LIST.fullmatch(args[i]):
                args[i - 1:i + 1] = [f"{args[i - 1]}={args[i]}"]
        return super().parse_known_args(args, namespace)


#: config fields whose flag is not the field's name with dashes
_FLAG_OF_FIELD = {"n_jobs": "--tsne-threads", "n_per_class": "--per-class", "grid": "--pixels",
                  "random_state": "--seed", "text_columns": "--text-column",
                  "image_dtype": "--dtype", "storage_options": "--storage-option",
                  "backend": "--tsne-backend", "out_dir": "--out"}


def build_parser() -> argparse.ArgumentParser:
    """The ``fastimg`` parser: global flags, then every command's."""
    parser = _Parser(prog="fastimg", description="Text corpora to DeepInsight images for "
                     "pretrained vision CNNs, and what comes after: train, predict, explain. A "
                     "user mistake exits with code 2 and one line.")
    parser.add_argument("--version", action="version", version=f"fastimg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log each stage (also accepted after a command)")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of any error (also accepted after a command)")
    sub = parser.add_subparsers(dest="command", required=True)

    build.add_images(sub)
    build.add_build_dataset(sub)
    build.add_relayout(sub)
    describe.add_show(sub)
    runs.add_train(sub)
    runs.add_predict(sub)
    runs.add_explain(sub)
    describe.add_info(sub)
    _add_flags_after_commands(parser)
    return parser


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


def subparser(parser, command: str) -> argparse.ArgumentParser:
    """The parser of ``command`` (``fastimg images``) in the top-level ``parser``."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[command]


def flags_of(parser, command: str) -> dict:
    """``{config field: flag}`` for ``command``: each option's dest (``chunk_rows`` ->
    ``--chunk-rows``) and :data:`_FLAG_OF_FIELD`."""
    # the first long option: --verbose of -v/--verbose, --pixel-branch of its --no- pair
    flags = {action.dest: next((o for o in action.option_strings if o.startswith("--")),
                               action.option_strings[-1])
             for action in subparser(parser, command)._actions
             if action.option_strings and action.dest != "help"}
    flags.update({field: flag for field, flag in _FLAG_OF_FIELD.items()
                  if flag in flags.values()})
    return flags
