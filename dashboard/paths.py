"""Where the outputs folder is, and the one check every file access goes through.

Every path the dashboard reads is resolved (symlinks and ``..`` included) and must lie
inside the outputs folder; anything else raises :class:`OutsideOutputs`. Paths that come
from files (a CSV's ``overlay`` column) or from the browser (a selected run) are never
opened without passing :func:`inside`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "ALL_OUTPUTS"
DEFAULT = "outputs"


class OutsideOutputs(ValueError):
    """A path that resolves outside the outputs folder."""


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
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise OutsideOutputs(f"{text!r} is outside the outputs folder")
    return resolved


def relative(root: Path | str, path: Path | str) -> str:
    """``path`` as shown to the user: relative to the outputs folder."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix() or "."
    except ValueError:
        return str(path)
