"""Argument types of the command line (each refuses a bad value with one line) and the
``--storage-option`` flags, turned into the locations the library takes."""
from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

from fastimg import store
from fastimg.cli.report import UserError

logger = logging.getLogger("fastimg.cli")


class Refuse(argparse.Action):
    """A flag that no longer exists here, with the line that says what replaced it."""

    def __init__(self, option_strings, dest, hint: str = "", **kwargs):
        self.hint = hint
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(self.hint)


def torch_device(text: str) -> str:
    """``--device`` of a torch model: auto, cpu, cuda or cuda:N."""
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def grid(text: str):
    """``--pixels``: N (a square) or HxW -> (height, width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return tuple(parts)
    raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")


def storage_option(text: str):
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


def storage_options(args) -> dict:
    """The command's ``--storage-option``s as the nested dict fsspec takes."""
    options: dict = {}
    for key, value in getattr(args, "storage_option", None) or ():
        *parents, leaf = key.split(".")
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return options


def locations(paths, args, *, input_url: bool = False) -> list:
    """Local paths or fsspec URLs with the command's ``--storage-option``s, said to be ignored
    for each local path when none of ``paths`` is a URL (one written without its scheme,
    perhaps) and the input is not one (``input_url``); a command that reads or writes one URL
    uses them."""
    options = storage_options(args)
    resolved = [store.location.resolve(path, options) for path in paths]
    for location in resolved:
        if not store.location.is_local(location) and location.protocol == "memory":
            # a build there printed "wrote memory://x.zarr" and was gone with the process
            raise UserError(f"{location}: a memory:// store lives only as long as one Python "
                            f"process; give a local path or an object-storage URL")
    if (options and not input_url
            and all(store.location.is_local(location) for location in resolved)):
        for path in paths:
            logger.warning("--storage-option is for store URLs (s3://...): ignored for the "
                           "local path %s", path)
    return resolved


def location(path: str, args):
    """The local path or fsspec URL ``path`` (:func:`locations`)."""
    return locations([path], args)[0]


def add_storage_options(parser) -> None:
    """The ``--storage-option`` flag of a command that reads or writes a URL."""
    parser.add_argument("--storage-option", action="append", type=storage_option,
                        metavar="KEY=VALUE",
                        help="fsspec option for a store URL (s3://, gs://) or a corpus "
                             "URL (build-dataset --input), e.g. "
                             "endpoint_url=http://127.0.0.1:9000; repeatable; JSON values are "
                             "parsed, a.b=v nests, an empty value is refused (KEY='\"\"' is the "
                             "empty string); credentials also come from the usual environment "
                             "variables")


def path_text(text: str) -> str:
    """A path or URL as given; an empty one (an unset shell variable) is refused: ``Path("")``
    is the current folder, which commands then read, write into or name as ``.``."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string (an unset shell "
                                         "variable?)")
    return text


def _not_a_url(text: str, why: str) -> str:
    """``text``, a path on this machine (a ``file://`` URL as its path, as stores take it): any
    other URL is refused, saying ``why`` (``Path`` would fold ``s3://b`` into ``s3:/b`` and
    fail later with a missing file or folder)."""
    path_text(text)
    if text.startswith(("file://", "local://")):
        return path_text(text.split("://", 1)[1])
    if "://" in text:
        raise argparse.ArgumentTypeError(f"expected a local path, got the URL {text!r} ({why})")
    return text


def local_path(text: str) -> Path:
    """An output written on this machine (:func:`_not_a_url`); ``-`` is refused: only
    predict writes to standard output (show wrote a file named ``-``)."""
    if text == "-":
        raise argparse.ArgumentTypeError("'-' (standard output) is not an output of this "
                                         "command: give a path (./- for one named '-')")
    return Path(_not_a_url(text, "this output is written on this machine"))


def local_input(text: str) -> str:
    """An input file read on this machine (:func:`_not_a_url`): only stores and the corpus
    of build-dataset are read from object storage."""
    return _not_a_url(text, "this input is read on this machine: copy it here first")


def local_input_path(text: str) -> Path:
    """An input file read on this machine, as a ``Path``."""
    return Path(local_input(text))


def input_path_or_url(text: str) -> str:
    """A corpus file on this machine or at a URL; a URL with a slash missing
    (``s3:/bucket/c.csv``) is refused (it would be looked for in a local folder ``s3:``), and
    so is standard input (``-`` was "input - does not exist")."""
    path_text(text)
    if text in ("-", "/dev/stdin"):
        raise argparse.ArgumentTypeError("a corpus is not read from standard input: save it to "
                                         "a file (CSV, TSV, JSONL, Parquet) and give its path")
    try:
        store.location._check_not_a_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def corpus_input(text):
    """``--input`` of build-dataset: a local path as ``Path`` writes it, a URL as given."""
    if text is None or "://" in text:
        return text
    return str(Path(text))


def local_path_or_stdout(text: str):
    """``-``: standard output (the string, not ``Path("-")``: ``./-`` is a file named so)."""
    from fastimg.train.texts_io import STDOUT

    return STDOUT if text == STDOUT else local_path(text)


def seed(text: str) -> int:
    """``--seed``: a whole number that every seeded library here accepts."""
    from fastimg._validation import SEED_LIMIT, check_seed

    try:
        return check_seed("seed", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {SEED_LIMIT - 1}, "
                                         f"got {text!r}") from None


def shape(text: str):
    """``--synthetic``: NxF -> (rows, features), each at least 1."""
    try:
        n, f = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NxF, e.g. 2000x768, got {text!r}") from None
    if n < 1 or f < 1:
        raise argparse.ArgumentTypeError(f"expected at least one row and one feature (NxF, "
                                         f"e.g. 2000x768), got {text!r}")
    return n, f


def layers(text: str):
    """``--layers``: last6, author or comma-separated hidden-state indices."""
    if text in ("last6", "author"):
        return text
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected last6, author or comma-separated hidden-state indices, got {text!r}"
        ) from None
