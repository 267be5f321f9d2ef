"""Checks before long work: is the output folder writable, and is there room for what the work will write?

``train``, ``explain`` and ``tuning sweep`` call these before their first epoch or map, so that a full disk
or a folder the user may not write is refused in one line at once, not an hour later. The estimates are
documented in docs/robustness.md#before-long-work; each one is generous (a temporary copy of every file
that is replaced atomically is counted) and a fixed margin (``MARGIN_BYTES``) comes on top.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .errors import ResourceError, describe_oserror

MARGIN_BYTES = 32 * 2**20  # logs, small JSON and CSV files, and room for the file system's own bookkeeping
MB = 2**20


def size_words(n: int) -> str:
    """Bytes as people read them in a message: "0.4 MB", "38 MB", "2.1 GB"."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GB"
    return f"{n / MB:.1f} MB" if n < 10 * MB else f"{n / MB:.0f} MB"


def _existing(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists (the one whose file system will hold it)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def require_writable(folder: Path, doing: str) -> None:
    """Write a file in ``folder``, or in its nearest existing ancestor when it is not there yet (which the work
    will create it in), or raise ResourceError naming it. Nothing is created: a command refused later for
    another reason leaves no empty folder behind.

    Trying is the only sure test: permissions, ACLs, read-only mounts and root squash all answer it.
    """
    folder = _existing(Path(folder))
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        path = exc.filename if exc.filename and not str(exc.filename).startswith(str(folder / ".write-check-")) \
            else folder
        raise ResourceError(doing, path, f"{describe_oserror(exc)}: the folder cannot be written",
                            "nothing was written: choose another folder, or make this one writable") from None


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(_existing(folder)).free


def require_space(folder: Path, need: int, doing: str, what: str) -> None:
    """Raise ResourceError unless ``folder``'s file system has ``need`` bytes (plus MARGIN_BYTES) free.

    ``what`` says what the bytes are for, in words ("two checkpoints of 8 MB ...").
    """
    try:
        free = free_bytes(folder)
    except OSError:
        return  # cannot tell (a network file system without statvfs): the write itself will say
    wanted = need + MARGIN_BYTES
    if free < wanted:
        raise ResourceError(doing, folder, f"the disk is nearly full: {size_words(free)} free, about "
                            f"{size_words(wanted)} needed ({what}, plus {MARGIN_BYTES // MB} MB to spare)",
                            "nothing was written: free space, or choose a folder on another disk")
