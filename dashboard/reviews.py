"""Review marks: a person's verdict on an image of a run, kept in ``<run>/reviews.json``.

An image (keyed by its sha256, as in ``predictions.csv`` and ``cams/index.csv``) can be marked a
*suspected label error*, an *artefact* or a *good example*, with a short note. The file is the
one thing the dashboard writes into a run folder::

    {"version": 1, "marks": {"<sha256>": {"path": "...", "labels": ["artefact"], "note": "...",
                                          "updated_at": "2025-01-31T12:00:00+0000"}}}

Every change (:func:`toggle`, :func:`set_note`, :func:`clear`) takes an exclusive ``flock`` on
``.reviews.lock`` beside the file, reads the file as it is now, applies only its own change and
writes the whole file atomically (temporary file in the same folder, then a rename). So two
browser tabs, two threads of one server or two processes marking at once never lose a mark: the
second writer sees the first one's change. A tab that turns on "artefact" sends exactly that
(``toggle(..., "artefact", True)``), never the whole set of labels it last saw.

A reviews.json that cannot be understood (not JSON, another version, a malformed entry) is never
overwritten: :func:`load` and every change raise :class:`ReviewError` naming the file and the
problem, and the file stays as it is until someone fixes or removes it.

The file is read like every other file (``dashboard.paths``: inside the outputs folder, regular,
size-limited). No Streamlit here: the pages call these functions, and the tests call them directly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine import locks, runs

from . import paths
from .escape import plain

log = logging.getLogger(__name__)

VERSION = 1
# The labels a mark can carry, in the order pages and decks show them, with their display names.
LABELS = {"suspected_label_error": "suspected label error", "artefact": "artefact", "good_example": "good example"}
MAX_NOTE = 500  # characters: a short note, not a report
MAX_PATH = 4096
# A full mark is well under 1 kB, so this holds every image of the data set many times over.
MAX_BYTES = 16 * 2**20
LOCK_WAIT_S = 10.0  # a change takes milliseconds; a lock held this long belongs to a stuck writer

_SHA256 = re.compile("[0-9a-f]{64}")
_KEYS = {"path", "labels", "note", "updated_at"}


class ReviewError(ValueError):
    """A mark that cannot be read or saved; the message says which file and why."""


def is_sha256(value: Any) -> bool:
    """Whether ``value`` is 64 lowercase hex digits, as the engine writes a sha256."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def check_sha256(sha256: Any) -> str:
    """``sha256`` when it is 64 lowercase hex digits (what the engine writes), else ReviewError."""
    if not is_sha256(sha256):
        raise ReviewError(f"{plain(sha256)[:80]!r} is not a sha256 (64 lowercase hex digits)")
    return sha256


def clean_note(note: Any) -> str:
    """A note as stored: one line, no control characters, at most MAX_NOTE characters (else ReviewError)."""
    if not isinstance(note, str):
        raise ReviewError("a note must be text")
    text = " ".join(plain(note).split())
    if len(text) > MAX_NOTE:
        raise ReviewError(f"a note holds at most {MAX_NOTE} characters ({len(text)} given)")
    return text


def _file(root: Path | str, run: Path | str) -> Path:
    """``<run>/reviews.json`` for a run folder inside the outputs folder, not following a link at the end."""
    try:
        folder = paths.inside(root, run)
    except paths.OutsideOutputs as exc:
        raise ReviewError(f"no review marks for {plain(run)!r}: {exc}") from None
    if folder == Path(root).resolve() or not folder.is_dir():
        raise ReviewError(f"{paths.relative(root, folder)} is not a run folder")
    return folder / runs.REVIEWS


def _refuse_odd(root: Path | str, path: Path) -> None:
    """ReviewError when ``path`` exists as anything but a regular file (a link would lead the write elsewhere)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
        raise ReviewError(f"{paths.relative(root, path)} is {kind}: review marks are neither read nor written "
                          "there; remove it to start a new file")


def _problem(document: Any) -> str | None:
    """What is wrong with a parsed reviews.json, or None."""
    if not isinstance(document, dict):
        return "not a JSON object"
    if document.get("version") != VERSION:
        return f"version {plain(document.get('version'))[:20]}, this dashboard reads version {VERSION}"
    marks = document.get("marks")
    if not isinstance(marks, dict):
        return "'marks' is not an object"
    for sha, mark in marks.items():
        where = f"mark {plain(sha)[:70]!r}"
        if not _SHA256.fullmatch(sha):
            return f"{where}: the key is not a sha256"
        if not isinstance(mark, dict) or not set(mark) <= _KEYS:
            return f"{where}: not an object of {', '.join(sorted(_KEYS))}"
        labels = mark.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) and x in LABELS for x in labels):
            return f"{where}: labels must be a list of {', '.join(LABELS)}"
        note = mark.get("note", "")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            return f"{where}: the note must be text of at most {MAX_NOTE} characters"
        if not isinstance(mark.get("path", ""), str) or not isinstance(mark.get("updated_at", ""), str):
            return f"{where}: path and updated_at must be text"
    return None


def _read(root: Path | str, path: Path) -> dict[str, Any]:
    """The document at ``path`` (an empty one when there is none); ReviewError when it is malformed."""
    _refuse_odd(root, path)
    name = paths.relative(root, path)
    try:
        data = paths.read_bytes(root, path, MAX_BYTES)
    except FileNotFoundError:
        return {"version": VERSION, "marks": {}}
    except (OSError, ValueError) as exc:
        raise ReviewError(f"{name} cannot be read ({exc}); it is left as it is") from None
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ReviewError(f"{name} is not valid JSON ({exc}); it is left as it is and no review mark is saved "
                          "until it is fixed or removed") from None
    problem = _problem(document)
    if problem:
        raise ReviewError(f"{name} is malformed ({problem}); it is left as it is and no review mark is saved "
                          "until it is fixed or removed")
    return document


def load(root: Path | str, run: Path | str) -> dict[str, dict[str, Any]]:
    """The marks of a run, by sha256 ({} when it has none); ReviewError when reviews.json is malformed."""
    return _read(root, _file(root, run))["marks"]


def matches(mark: dict[str, Any] | None, wanted: str) -> bool:
    """Whether an image with ``mark`` passes the filter ``wanted``: "all", "any", "unmarked" or a label."""
    labels = (mark or {}).get("labels") or []
    if wanted == "all":
        return True
    if wanted == "any":
        return bool(mark)
    if wanted == "unmarked":
        return not mark
    return wanted in labels


class _Held:
    """The review lock of one run folder, taken with a bounded wait."""

    def __init__(self, root: Path | str, path: Path) -> None:
        self.root, self.path = root, path
        self.lock: locks.Lock | None = None

    def __enter__(self) -> _Held:
        _refuse_odd(self.root, self.path)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                self.lock = locks.try_lock(self.path, purpose="review mark")
                return self
            except locks.LockUnsupported as exc:
                # Without flock, refusing every mark would be worse than an unguarded write (still atomic:
                # at worst a change made at the same instant by someone else is lost).
                log.warning("%s; review marks are written without a lock", exc)
                return self
            except locks.LockHeld as exc:
                if time.monotonic() > deadline:
                    raise ReviewError(f"{paths.relative(self.root, self.path)} has been held for "
                                      f"{LOCK_WAIT_S:.0f} s ({exc}): the mark was not saved, try again") from None
                time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        if self.lock is not None:
            self.lock.release()


def _change(root: Path | str, run: Path | str, sha256: str,
            edit: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Apply ``edit`` to one image's mark under the lock, on the file as it is now; returns all marks after."""
    check_sha256(sha256)
    path = _file(root, run)
    _refuse_odd(root, path)  # before the lock, so that a refused change leaves no lock file behind
    with _Held(root, path.parent / runs.REVIEWS_LOCK):
        document = _read(root, path)
        marks = document["marks"]
        before = marks.get(sha256)
        after = edit(dict(before or {"path": "", "labels": [], "note": ""}))
        after["labels"] = [x for x in LABELS if x in after["labels"]]  # one order, no repeats
        if not after["labels"] and not after["note"]:
            if before is None:
                return marks
            del marks[sha256]  # an image with no label and no note is unmarked: no entry
        else:
            if before is not None and all(before.get(k) == after.get(k) for k in ("path", "labels", "note")):
                return marks  # nothing changed: no write
            after["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            marks[sha256] = after
        runs.atomic_write_text(path, json.dumps(document, indent=1, ensure_ascii=False) + "\n")
        return marks


def _with_path(mark: dict[str, Any], path: str | None) -> dict[str, Any]:
    if path:
        mark["path"] = plain(path)[:MAX_PATH]
    return mark


def toggle(root: Path | str, run: Path | str, sha256: str, label: str, on: bool, *,
           path: str | None = None) -> dict[str, dict[str, Any]]:
    """Turn one label of one image on or off, leaving its other labels and note as they are now.

    ``path`` (the image's path, as in predictions.csv) is recorded for people and decks. Returns all
    marks of the run after the change.
    """
    if label not in LABELS:
        raise ReviewError(f"{plain(label)[:40]!r} is not a review label ({', '.join(LABELS)})")

    def edit(mark: dict[str, Any]) -> dict[str, Any]:
        labels = [x for x in mark["labels"] if x != label] + ([label] if on else [])
        return _with_path({**mark, "labels": labels}, path)

    return _change(root, run, sha256, edit)


def set_note(root: Path | str, run: Path | str, sha256: str, note: str, *,
             path: str | None = None) -> dict[str, dict[str, Any]]:
    """Replace one image's note (control characters dropped, one line, at most MAX_NOTE characters)."""
    text = clean_note(note)
    return _change(root, run, sha256, lambda mark: _with_path({**mark, "note": text}, path))


def clear(root: Path | str, run: Path | str, sha256: str) -> dict[str, dict[str, Any]]:
    """Remove one image's mark (its labels and note)."""
    return _change(root, run, sha256, lambda mark: {**mark, "labels": [], "note": ""})
