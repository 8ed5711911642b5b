"""``fastimg``'s entry point: parses, sets up the log and warnings, runs the command, and ends
each way a command can end (an error, Ctrl-C, SIGTERM, a closed pipe, a full disk) with one
line and its exit code."""
from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager

from fastimg import store
from fastimg.cli import options, report
from fastimg.cli.parser import build_parser, flags_of, subparser


def _kept(args) -> tuple[str, str]:
    """What a stopped command left that a rerun resumes, in words ("" for nothing), and the
    rerun that resumes it: builds keep their finished stages, ``train`` its finished epochs
    (resumed without ``--force``, which starts over); other commands leave nothing."""
    if args.command in ("build-dataset", "relayout", "images"):
        return _unfinished_build_kept(args), "rerun"
    if args.command == "train":
        from fastimg.run_folder import is_unfinished

        return ("its finished epochs are kept" if is_unfinished(args.out) else "",
                "rerun without --force" if args.force else "rerun")
    return "", "rerun"


def _unfinished_build_kept(args) -> str:
    """What a build command that stopped keeps, in words: its unfinished store and the stages
    done there (and the rows encoded, while encoding), or "" (a Ctrl-C while the corpus is
    read leaves nothing to resume)."""
    from fastimg.info import unfinished_build

    try:
        out = store.location.resolve(args.out, options.storage_options(args))
        if not store.location.exists(store.location.partial_path(out)):
            return ""
        found = unfinished_build(out) or {}
    except Exception:  # noqa: BLE001 - cannot tell: say what a rerun would find
        return "the unfinished build is kept"
    stages = found.get("stages") or {}
    done = [name for name, finished in stages.items() if finished]
    parts = [f"{_joined(done)} done"] if done else []
    if "rows" in found and not stages.get("encode"):
        parts.append(f"{found['rows_done']:,} of {found['rows']:,} rows encoded")
    return "the unfinished build is kept" + (f", {' and '.join(parts)}" if parts else "")


def _joined(names) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


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


def _interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C (or SIGTERM) that ``exc`` was raised while handling, if any: a library
    that cleans up after an interrupted write can raise its own error instead (torch's zip
    writer, stopped inside ``torch.save``: "RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos"), which is no bug of fastimg."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None


def main(argv=None) -> int:
    """Run ``fastimg`` with ``argv`` (the process's arguments by default); the exit code."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named by the command's parser, whose --help lists what it takes
            subparser(parser, args.command).error(
                f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else report.EXIT_USAGE
    level = logging.INFO if args.verbose else logging.WARNING
    flags = flags_of(parser, args.command)
    # the level on the handler too: libraries that set their own loggers' level (dask's
    # distributed, at INFO) would otherwise print through it without --verbose
    handler = logging.StreamHandler()
    handler.setLevel(level)
    handler.addFilter(report.FlagNames(flags))
    handler.setFormatter(report.CommandFormatter(args.command))
    logging.basicConfig(level=level, handlers=[handler])
    formatwarning = warnings.formatwarning
    if not args.debug:
        warnings.formatwarning = functools.partial(report.format_own_warning, args.command, flags,
                                                   formatwarning)
    try:
        with _sigterm_as_interrupt():
            try:
                return args.func(args)
            except Exception as exc:  # noqa: BLE001 - re-raised as what it is
                raise _interruption(exc) or exc
    except BrokenPipeError:  # `fastimg info STORE | head`: the reader left, nothing to say
        _silence_stdout()
        return 141
    except KeyboardInterrupt as exc:
        # zarr's writes left pending on its event loop are destroyed at exit, and asyncio
        # logs each ("Task was destroyed but it is pending!") under the one line below
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        kept, again = _kept(args)
        kept = f" ({kept}: {again} to resume)" if kept else ""
        terminated = isinstance(exc, Terminated)
        print(f"fastimg {args.command}: {'terminated' if terminated else 'interrupted'}{kept}",
              file=sys.stderr)
        return 128 + int(signal.SIGTERM if terminated else signal.SIGINT)
    except Exception as exc:  # noqa: BLE001 - every error ends as one line and an exit code
        full = report.disk_full(exc)
        if full is not None:  # the machine's state, not a bug
            kept, again = _kept(args)
            return report.report_disk_full(args.command, exc, full, kept=kept, again=again,
                                           debug=args.debug)
        return report.report_error(args.command, exc, debug=args.debug, flags=flags)
    finally:
        warnings.formatwarning = formatwarning


def run() -> None:
    """The ``fastimg`` command (its console script, ``python -m fastimg``): :func:`main` on
    the process's arguments, then exit with its code.

    Once the command has ended (its summary printed, its files written), Ctrl-C and SIGTERM
    are ignored while Python shuts down: its teardown of torch, numba and zarr takes about a
    second after a train, with no Python code left to run, and a signal then killed the
    process by that signal, turning a finished job into a failed one."""
    code = main()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)
