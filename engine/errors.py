"""The errors a command line turns into one line, and the exit statuses they map to.

Library code raises these (or lets an ``OSError`` through, with the file it concerns as its
``filename``); only the command lines (``engine/cli.py``, ``tuning/cli.py``, ``dashboard/__main__.py``)
format them, through ``run_cli``. Standard library only, so the dashboard's launcher can use it
without torch.

Exit statuses (docs/robustness.md#exit-statuses):

    0    done
    1    an unexpected error (a bug): the traceback is shown
    2    bad input: options, presets, data folders, a file that is not there
    3    a damaged file: a checkpoint, metrics.json, a sweep's state ... (named in the message)
    4    resources: the disk is full, a quota, permission denied, a read-only file system
    128+N  interrupted by signal N (130 Ctrl+C, 143 SIGTERM), after leaving resumable state
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

EXIT_OK = 0
EXIT_BUG = 1
EXIT_INPUT = 2
EXIT_DAMAGED = 3
EXIT_RESOURCES = 4

# ENGINE_DEBUG=1 (or --debug on any command line) shows the traceback under the one line.
DEBUG_ENV = "ENGINE_DEBUG"


class EngineError(Exception):
    """An error the command line reports in one line, exiting with ``status``."""

    status = EXIT_INPUT


class ConfigError(EngineError, ValueError):
    """A preset or override that does not describe a valid config."""


class DataError(EngineError, ValueError):
    """The data folder cannot be turned into a data set; the message says why."""


class WeightsError(EngineError, RuntimeError):
    """Requested weights that cannot be had without the internet."""


class DamagedFileError(EngineError, ValueError):
    """A file the project wrote that can no longer be read as what it should be.

    ``what`` is the cause in words ("the checkpoint is damaged: truncated or not a checkpoint"),
    ``next_step`` what is still safe and how to go on. A ValueError too, so that readers that already
    skip unreadable files (``except (OSError, ValueError)``) keep doing so.
    """

    status = EXIT_DAMAGED

    def __init__(self, path: Path | str, what: str, next_step: str = "") -> None:
        self.path, self.what, self.next_step = Path(path), what, next_step
        super().__init__(f"{path}: {what}" + (f"; {next_step}" if next_step else ""))


class ResourceError(EngineError):
    """The disk, a quota or a permission stopped the work; what was kept and how to go on are in the message."""

    status = EXIT_RESOURCES

    def __init__(self, doing: str, path: Path | str | None, cause: str, next_step: str = "") -> None:
        self.doing, self.path, self.cause, self.next_step = doing, path, cause, next_step
        where = f"{path}: " if path else ""
        super().__init__(f"{doing}: {where}{cause}" + (f"; {next_step}" if next_step else ""))


class Interrupted(EngineError):
    """SIGINT or SIGTERM arrived; raised from the signal handler of ``interruptible``."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum, self.message = signum, message
        self.where: Path | None = None  # what was stopped, where a command line needs it for its advice
        self.status = 128 + signum
        super().__init__(message or f"stopped by {signal_name(signum)}")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ----------------------------------------------------------------------------- operating-system errors in words

_WORDS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is larger than this process or file system allows",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.EROFS: "the file system is read-only",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EIO: "an input/output error (a failing disk or network file system)",
    errno.EMFILE: "too many open files",
    errno.ENAMETOOLONG: "the file name is too long",
}
# Errors of the machine's resources, not of what the user typed: EXIT_RESOURCES.
_RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                    errno.EMFILE}
_FREE_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def describe_oserror(exc: OSError) -> str:
    """The cause of an operating-system error in words, e.g. "the disk is full"."""
    words = _WORDS.get(exc.errno or 0)
    if words:
        return words
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def needs_space(exc: OSError) -> bool:
    """Does freeing disk space (or quota) cure this error?"""
    return exc.errno in _FREE_SPACE_ERRNOS


def oserror_status(exc: OSError) -> int:
    return EXIT_RESOURCES if exc.errno in _RESOURCE_ERRNOS else EXIT_INPUT


def oserror_path(exc: OSError) -> str | None:
    return os.fsdecode(exc.filename) if exc.filename is not None else None


def resource_error(exc: OSError, doing: str, next_step: str = "") -> ResourceError:
    """``exc`` as a ResourceError of ``doing``, naming its file; the caller adds what is safe and what to do."""
    return ResourceError(doing, oserror_path(exc), describe_oserror(exc), next_step)


# ----------------------------------------------------------------------------- the command lines' one error path


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(--debug given or ENGINE_DEBUG set, argv without --debug)."""
    rest = [arg for arg in argv if arg != "--debug"]
    return len(rest) != len(argv) or os.environ.get(DEBUG_ENV, "") not in ("", "0"), rest


def format_error(exc: BaseException, doing: str) -> tuple[str, int] | None:
    """The one line and the exit status for an error a command line reports; None for a bug (traceback)."""
    if isinstance(exc, Interrupted):
        return f"interrupted: {exc.message or f'{doing} was stopped by {signal_name(exc.signum)}'}", exc.status
    if isinstance(exc, ResourceError):  # it names what was being done itself
        return f"error: {exc}", exc.status
    if isinstance(exc, EngineError):
        return f"error: {doing}: {exc}", exc.status
    if isinstance(exc, OSError):
        path = oserror_path(exc)
        where = f"{path}: " if path else ""
        advice = "; free space and run the command again" if needs_space(exc) else ""
        return f"error: {doing}: {where}{describe_oserror(exc)}{advice}", oserror_status(exc)
    if isinstance(exc, KeyboardInterrupt):  # a Ctrl+C outside ``interruptible``
        return f"interrupted: {doing} was stopped by SIGINT", 128 + signal.SIGINT
    return None


def run_cli(main: Callable[[list[str]], int], argv: list[str], doing: str) -> int:
    """Run a command's ``main(argv)``; an expected error becomes one line on stderr and its exit status.

    ``--debug`` (or ENGINE_DEBUG=1) adds the traceback. An unexpected exception is a bug: it propagates,
    traceback and all, and Python exits with 1.
    """
    debug, argv = debug_requested(argv)
    try:
        return main(argv)
    except (EngineError, OSError, KeyboardInterrupt) as exc:
        line, status = format_error(exc, doing) or ("", EXIT_BUG)
        if debug:
            traceback.print_exc()
        print(line, file=sys.stderr, flush=True)
        return status


# ----------------------------------------------------------------------------- SIGINT and SIGTERM


@contextlib.contextmanager
def interruptible(message: Callable[[int], str] | None = None) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into ``Interrupted`` for the ``with`` block (main thread only).

    The exception unwinds the current step like Ctrl+C does: files are written atomically, so what is
    on disk is the state of the last finished step; ``message(signum)`` says how to resume. A second
    signal while unwinding is ignored, so the cleanup (locks, temporary folders) completes.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        received.append(signum)
        logging.getLogger(__name__).info("%s received: stopping", signal_name(signum))
        raise Interrupted(signum, message(signum) if message else "")

    def unraisable(info: Any) -> None:
        # The exception landed where Python cannot raise it (a __del__, an at-fork callback such as
        # logging's lock release) and would print as "Exception ignored"; it is re-raised below instead.
        if not isinstance(info.exc_value, Interrupted):
            previous_hook(info)

    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)
        sys.unraisablehook = previous_hook
    if received:
        # The exception can land where Python swallows it (a __del__, logging's lock release) and the work
        # then ran on to its end: the user asked to stop, so the command still ends as interrupted.
        raise Interrupted(received[0], message(received[0]) if message else "")


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the ``with`` block (a few writes that belong together); they are
    delivered, and handled as usual, when it ends."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
