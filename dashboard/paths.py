"""Where the outputs folder is, and the one check every file access goes through.

Every path the dashboard reads is resolved (symlinks and ``..`` included) and must lie
inside the outputs folder; anything else raises :class:`OutsideOutputs`. Paths that come
from files (a CSV's ``overlay`` column) or from the browser (a selected run) are never
opened without passing :func:`inside`. Files are read with :func:`read_bytes`: regular files
only, below a size limit, so a FIFO, a device or a huge file in a run folder cannot block or
exhaust the app (:class:`RefusedFile`).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

ENV = "ALL_OUTPUTS"
DEFAULT = "outputs"


MAX_BYTES = 256 * 2**20  # a bound on memory, far above any file the engine writes for the full data set

# S_IFMT kinds a run folder should never hold in place of a file, named for the warning.
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link"}


class OutsideOutputs(ValueError):
    """A path that resolves outside the outputs folder."""


class RefusedFile(ValueError):
    """A path inside the outputs folder that is not a regular file, or is larger than its limit."""


def outputs_dir(argv: list[str] | None = None) -> Path:
    """The outputs folder: ``--outputs DIR`` after ``--`` on the command line, else $ALL_OUTPUTS, else outputs/."""
    argv = sys.argv[1:] if argv is None else argv
    value = None
    for i, arg in enumerate(argv):
        if arg == "--outputs" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--outputs="):
            value = arg.split("=", 1)[1]
    value = value or os.environ.get(ENV) or DEFAULT
    return Path(value).expanduser().resolve()


def inside(root: Path | str, path: Path | str) -> Path:
    """``path`` (absolute, or relative to ``root``) resolved; raises OutsideOutputs unless inside ``root``."""
    root = Path(root).resolve()
    text = str(path)
    if "\x00" in text:
        raise OutsideOutputs("path contains a NUL byte")
    candidate = Path(text)
    try:
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (RuntimeError, OSError) as exc:  # a symbolic link loop (RuntimeError before Python 3.13)
        raise OutsideOutputs(f"{text!r} cannot be resolved ({exc})") from None
    if resolved != root and not resolved.is_relative_to(root):
        raise OutsideOutputs(f"{text!r} is outside the outputs folder")
    return resolved


def _check(info: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise RefusedFile(f"is not a regular file ({_KINDS.get(stat.S_IFMT(info.st_mode), 'of an unknown kind')})")
    if info.st_size > limit:
        raise RefusedFile(f"is larger than its {_size(limit)} limit ({_size(info.st_size)})")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def regular_file(root: Path | str, path: Path | str, limit: int = MAX_BYTES) -> os.stat_result:
    """``os.stat`` of ``path`` after the checks :func:`read_bytes` makes, without opening it.

    Raises OutsideOutputs, RefusedFile, or OSError (FileNotFoundError when it does not exist).
    """
    info = os.stat(inside(root, path))  # stat never blocks, whatever the path names
    _check(info, limit)
    return info


def read_bytes(root: Path | str, path: Path | str, limit: int = MAX_BYTES) -> bytes:
    """The content of a regular file inside ``root`` of at most ``limit`` bytes.

    Checked with ``stat`` before opening, so a FIFO or a device is never opened; opened without
    following a link and without blocking, then checked again on the open descriptor, so a file
    swapped in between is refused too; never more than ``limit`` bytes are read. Raises
    OutsideOutputs, RefusedFile, or OSError.
    """
    full = inside(root, path)
    _check(os.stat(full), limit)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(full, flags)
    with os.fdopen(fd, "rb") as handle:
        _check(os.fstat(handle.fileno()), limit)
        data = handle.read(limit + 1)
    if len(data) > limit:  # it grew after the check
        raise RefusedFile(f"is larger than its {_size(limit)} limit")
    return data


def relative(root: Path | str, path: Path | str) -> str:
    """``path`` as shown to the user: relative to the outputs folder."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix() or "."
    except ValueError:
        return str(path)
