"""Finding the data: the class folders of an image folder, the files below them, the folder of segmented copies.

Nothing here reads an image. ``scan_folder`` lists what ``prepare`` (engine.prepare) will read: regular
files only, with every other entry (links, special files, unreadable folders) reported with its reason.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .runs import CLASSES


def _class_of(folder_name: str) -> str | None:
    name = folder_name.lower()
    if name.startswith("all_"):
        name = name[4:]
    return name if name in CLASSES else None


def _class_dirs(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    try:
        children = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"{folder}: folder not readable: {exc.strerror or exc}") from None
    for child in children:
        if child.is_dir() and not child.name.startswith("."):
            cls = _class_of(child.name)
            if cls is not None:
                if cls in found:
                    raise DataError(f"{folder}: two folders for class {cls}: {found[cls].name}, {child.name}")
                found[cls] = child
    return found


def find_class_dirs(data_dir: Path) -> dict[str, Path]:
    """Map each class to its folder, for the Kaggle, lower-case and Multi Cancer layouts."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    found = _class_dirs(data_dir)
    if not found:
        original = [c for c in data_dir.iterdir() if c.is_dir() and c.name.lower() == "original"]
        if original:
            found = _class_dirs(original[0])
    if len(found) < len(CLASSES):
        present = sorted(c.name for c in data_dir.iterdir() if not c.name.startswith("."))
        missing = [c for c in CLASSES if c not in found]
        raise DataError(
            f"{data_dir}: missing class folder(s) {', '.join(missing)}. Found: "
            f"{', '.join(present) or 'nothing'}. Expected one folder per class: "
            "benign, early, pre, pro (any case, optionally prefixed all_), directly or under Original/."
        )
    return {c: found[c] for c in CLASSES}


def class_root(class_dirs: dict[str, Path]) -> Path:
    """The folder that holds the class folders: manifest paths are relative to it."""
    return next(iter(class_dirs.values())).parent


def find_mask_dir(data_dir: Path, masks: Path | str | None) -> Path | None:
    """The folder of segmented copies: ``masks`` itself, or with "auto" a ``Segmented/`` beside ``Original/``."""
    if masks is None or masks == "none":
        return None
    if masks != "auto":
        folder = Path(masks).resolve()
        if not folder.is_dir():
            raise DataError(f"mask folder not found: {folder}")
        return folder
    if data_dir.name.lower() != "original":
        return None
    beside = [c for c in data_dir.parent.iterdir() if c.is_dir() and c.name.lower() == "segmented"]
    return beside[0] if beside else None


def mask_class_dirs(mask_dir: Path) -> dict[str, Path]:
    """Each class's folder of segmented copies (same class folder names as the images, any case)."""
    found = _class_dirs(mask_dir)
    if not found:
        raise DataError(f"mask folder {mask_dir} has no class folders (benign, early, pre, pro) like the images'")
    return found


def entry_kind(mode: int) -> str:
    """What a non-regular file-system entry is, in words ("a FIFO", "a symbolic link", ...)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def shown(path: str | os.PathLike[str]) -> str:
    """A path as text that can always be written: bytes that are not UTF-8 appear as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass
class Scan:
    """What lies below a class folder: the regular files to read, and everything else with its reason."""

    files: list[Path]
    skipped: list[tuple[Path, str]]  # (path, reason): symbolic links, special files, unreadable entries
    hidden: int = 0  # entries whose name starts with "." (and what lies below them), ignored by rule


def scan_folder(folder: Path) -> Scan:
    """Every non-hidden entry below ``folder``, in a stable order (a folder's files, then its subfolders).

    Only regular files are read later. Symbolic links are neither followed nor read, whether to
    files or folders (they could lead outside the data folder, loop, or count an image twice);
    FIFOs, sockets and devices are never opened; a folder that cannot be listed is reported.
    """
    scan = Scan([], [])

    def walk(directory: Path) -> None:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            scan.skipped.append((directory, f"folder not readable: {exc.strerror or exc}"))
            return
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                scan.hidden += 1
                continue
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                scan.skipped.append((path, f"unreadable: {exc.strerror or exc}"))
                continue
            if stat.S_ISLNK(mode):
                scan.skipped.append((path, "symbolic link: not followed (links inside class folders are never "
                                           "followed; copy the file or folder in)"))
            elif stat.S_ISDIR(mode):
                subfolders.append(path)
            elif stat.S_ISREG(mode):
                scan.files.append(path)
            else:
                scan.skipped.append((path, f"not a regular file ({entry_kind(mode)})"))
        for sub in subfolders:
            walk(sub)

    walk(Path(folder))
    return scan
