"""Errors and warnings of the command line as one line each, naming the command's flags
where a message names a config field; the exit code of each kind of error."""
from __future__ import annotations

import logging
import re
import sys
import traceback

from fastimg import store
from fastimg.cluster import ClusterError


EXIT_USAGE = 2
EXIT_BUG = 1
#: Exceptions that report a mistake in the command's input (StoreError, CorpusError and config
#: validation are ValueErrors; a missing extra is an ImportError; missing or unreadable files,
#: model and weight files included, are OSErrors). Anything else is a bug in fastimg.
#: A worker that cannot load the model (ClusterError) is the node's set-up, not a bug either.
USER_ERRORS = (ValueError, ImportError, OSError, ClusterError)


class UserError(Exception):
    """A mistake in the command's input, reported as one line with exit code 2."""


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line; an operating system's error as ``PATH: reason`` (Python
    says ``[Errno 30] Read-only file system: 'PATH'``)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
        if exc.filename2 is not None:
            text += f" (and {exc.filename2})"
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


#: what the library's messages advise (its keyword arguments, an output path), as the
#: command line's flags
_ARGUMENT_FLAGS = {"force=True": "--force", "reuse=False": "--no-reuse",
                   # fit's: train --force is passed to it as overwrite=True
                   "overwrite=True": "--force",
                   # every command names its output --out
                   "another output path": "another --out", "an output path": "an --out",
                   # remedies said in prose by the library
                   "a larger limit": "a larger --limit",
                   "lower the perplexity": "lower --perplexity"}


def as_flag(message: str, flags: dict) -> str:
    """``message`` with config fields named by their flags: the leading one (``chunk_rows must
    be ...``, ``limit 90 keeps ...``), those of a list of differences (``(epochs: 30 -> 31;
    seed: 0 -> 1)``) and any other with an underscore (``... at least max_length``), which
    prose never has; a field given with a quoted or numeric value anywhere
    (``layers='author'``, ``use scaling='norm2'``, ``upsample=4``) is the flag and the value.
    Dotted settings (``encoder.max_length: 96 -> 64``), paths and quoted values
    (``'label_column.csv'``, ``"max_length":``) and keywords of a quoted call
    (``fit(store, out_dir=RUN)``) keep their names, and a flag is not said to
    take ``None`` (leaving it out is that). The leading value is a whole number word: a path
    that opens a message (``dataset 2024.csv is not valid UTF-8``) keeps its name. The keyword
    arguments a message advises (``pass force=True``) are the flags that set them (``pass
    --force``)."""
    for argument, flag in _ARGUMENT_FLAGS.items():
        message = re.sub(rf"\b{re.escape(argument)}\b", flag, message)
    # a setting with its value, anywhere: "layers='author' takes", "use scaling='norm2'"
    message = re.sub(r"(?<![\w.'\"])([a-z]\w*)=(?:'([^']*)'|(\d+(?:\.\d+)?)\b)",
                     lambda m: (f"{flags[m.group(1)]} {m.group(2) or m.group(3)}"
                                if m.group(1) in flags else m.group(0)), message)
    field = re.match(r"([a-z]\w*)(?: \([^)]*\))? "
                     r"(?:must\b|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w/]|\.\w))", message)
    if field and field.group(1) in flags:
        # a flag's "None" is leaving it out: "--fit-rows must be a whole number >= 2, got 0"
        message = flags[field.group(1)] + message[field.end(1):].replace(" or None,", ",", 1)
    # the settings of a list of differences: "(epochs: 30 -> 31; seed: 0 -> 1)"
    message = re.sub(r"(?:(?<=\()|(?<=; ))([a-z]\w*)(?=: )",
                     lambda m: flags.get(m.group(1), m.group(1)), message)
    # not a keyword of a call the message quotes: "or fit(store, out_dir=RUN)"
    return re.sub(r"(?<![\w./'\"-])[a-z]\w*_\w+\b(?![\w'\"/=]|\.\w)",
                  lambda m: flags.get(m.group(0), m.group(0)), message)


#: the options that size each command's memory, named when it runs out
_MEMORY_FLAGS = {"images": "--pixels, --synthetic",
                 "build-dataset": "--pixels, --chunk-rows, --token-budget", "relayout": "--pixels",
                 "train": "--batch-size, --upsample, --cache-budget",
                 "predict": "--batch-size", "explain": "--batch-size", "show": "--per-class"}


def _undecodable_chunk(exc: BaseException) -> bool:
    """Whether ``exc`` came out of a codec decoding a chunk (numcodecs' "Zstd decompression
    error: invalid input data"): a damaged file, not a bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    return any("numcodecs" in frame.filename and "decode" in frame.name.lower()
               for frame in frames)


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
    ``flags`` (:func:`fastimg.cli.parser.flags_of`) names a config field that opens the
    message by the command's flag.
    """
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if store.location.from_object_storage(exc):  # credentials, endpoint, bucket: the user's setup
        print(f"fastimg {command}: error: object storage: "
              f"{as_flag(store.location.storage_error_message(exc), flags or {})}",
              file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, (UserError, *USER_ERRORS)):
        print(f"fastimg {command}: error: {as_flag(one_line(exc), flags or {})}",
              file=sys.stderr)
        return EXIT_USAGE
    if _undecodable_chunk(exc):
        print(f"fastimg {command}: error: stored data could not be decoded "
              f"({type(exc).__name__}: {one_line(exc)}): a file of the store (or of a feature "
              f"cache) is damaged, cut short or overwritten; build it again", file=sys.stderr)
        return EXIT_USAGE
    if _out_of_memory(exc):
        flags = _MEMORY_FLAGS.get(command)
        print(f"fastimg {command}: error: out of memory: {one_line(exc)} (lower the setting "
              f"that sizes it{f', such as {flags}' if flags else ''}, or free memory)",
              file=sys.stderr)
        return EXIT_USAGE
    print(f"fastimg {command}: internal error (a bug, please report it): "
          f"{type(exc).__name__}: {one_line(exc)}"
          + ("" if debug else "; rerun with --debug for the traceback"), file=sys.stderr)
    return EXIT_BUG


def disk_full(exc: BaseException) -> OSError | None:
    """The ``OSError`` of a full disk (or quota) in ``exc``'s chain of causes, if any."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def report_disk_full(command: str, exc: BaseException, full: OSError, *, kept: str,
                     again: str = "rerun", debug: bool = False) -> int:
    """Print ``exc``, with the full disk ``full`` among its causes (:func:`disk_full`), as one
    line that says what to do and what a rerun resumes (``kept``: "the unfinished build is
    kept", or "" for nothing; ``again``: the rerun that resumes it); the exit code."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    where = f" (writing {full.filename})" if full.filename else ""
    print(f"fastimg {command}: error: no space left on the device{where}: free some space, "
          f"then {again if kept else 'rerun'}{f' to resume ({kept})' if kept else ''}",
          file=sys.stderr)
    return EXIT_USAGE


def format_own_warning(command, flags, default, message, category, filename, lineno,
                        line=None):
    """fastimg's own warnings as one line naming the command's flags, as its errors are;
    others as Python prints them.

    Only the formatting is replaced, so ``pytest.warns`` and
    ``warnings.catch_warnings(record=True)`` still see every warning."""
    if category.__module__.split(".")[0] == "fastimg":
        return f"fastimg {command}: warning: {as_flag(' '.join(str(message).split()), flags)}\n"
    return default(message, category, filename, lineno, line)


class CommandFormatter(logging.Formatter):
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


class FlagNames(logging.Filter):
    """fastimg's logged warnings name config fields by the command's flags (as its errors
    do: ``test_fraction 0.1 ignored`` -> ``--test-fraction 0.1 ignored``)."""

    def __init__(self, flags: dict):
        super().__init__()
        self.flags = flags

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and record.name.split(".")[0] == "fastimg":
            record.msg, record.args = as_flag(record.getMessage(), self.flags), ()
        return True
