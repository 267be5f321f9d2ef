"""Confined reads: every file the dashboard opens, read only inside its outputs folder.

Every reader is cached with ``st.cache_data`` on (path, mtime, size), so a file that changes is read again
on the next rerun, and an unchanged one costs one ``stat``. Readers raise :class:`LoadError` with a readable
reason for missing, partial or corrupt files; pages turn that into a warning. ``engine_reader`` hands the
engine's rules (engine.runs) these same checks, so the dashboard applies them without copies.
"""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from engine import runs
from tuning import layout

from . import paths
from .paths import OutsideOutputs, inside, relative


class LoadError(Exception):
    """A file is missing, partial or corrupt; the message says which and why."""


class MissingFile(LoadError):
    """The file does not exist (often expected: a run not yet evaluated or explained)."""



class RefusedFile(LoadError, runs.Declined):
    """Not read at all: outside the outputs folder, not a regular file, or over its size limit."""



# Limits on what is read. The small files are the ones discovery opens for every run and sweep
# (and best.json, cams/meta.json): a few kB when the engine writes them.
MAX_SMALL_BYTES = 2**20
MAX_JSON_BYTES = 64 * 2**20
MAX_CSV_BYTES = paths.MAX_BYTES
SMALL_FILES = frozenset({runs.CONFIG, runs.COMPLETE, runs.ENV, runs.CAMS_META, layout.TRIAL_JSON,
                         layout.SWEEP_JSON, layout.BEST})


def stamp(path: Path | str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


@st.cache_data(show_spinner=False, max_entries=4096)
def _read_json(root: str, path: str, version: tuple[int, int], limit: int) -> Any:
    return json.loads(paths.read_bytes(root, path, limit))


@st.cache_data(show_spinner=False, max_entries=2048)
def _read_csv(root: str, path: str, version: tuple[int, int], as_text: bool) -> pd.DataFrame:
    data = io.BytesIO(paths.read_bytes(root, path, MAX_CSV_BYTES))
    # As text, a blank field stays "" and nothing is guessed: the caller checks each column itself.
    return pd.read_csv(data, dtype=str, keep_default_na=False) if as_text else pd.read_csv(data)


def _limit(path: Path | str, default: int) -> int:
    return MAX_SMALL_BYTES if Path(path).name in SMALL_FILES else default


def _existing(root: Path | str, path: Path | str, limit: int) -> tuple[Path, tuple[int, int]]:
    """A regular file inside ``root`` within ``limit`` bytes, and its cache key (mtime, size)."""
    try:
        full = inside(root, path)
    except OutsideOutputs as exc:
        raise RefusedFile(str(exc)) from None
    try:
        info = paths.regular_file(root, full, limit)
    except FileNotFoundError:
        raise MissingFile(f"{relative(root, full)} not found") from None
    except paths.RefusedFile as exc:
        raise RefusedFile(f"{relative(root, full)} {exc}") from None
    except OSError as exc:
        raise LoadError(f"{relative(root, full)} cannot be read ({exc.strerror})") from None
    return full, (info.st_mtime_ns, info.st_size)


def _read(root: Path | str, full: Path, reader: Any, *args: Any) -> Any:
    try:
        return reader(str(Path(root).resolve()), str(full), *args)
    except (OutsideOutputs, paths.RefusedFile) as exc:  # swapped for something else since the check
        raise RefusedFile(f"{relative(root, full)}: {exc}") from None
    except OSError as exc:
        raise LoadError(f"{relative(root, full)} cannot be read ({exc.strerror})") from None


@st.cache_data(show_spinner=False, max_entries=256)
def _read_bytes(root: str, path: str, version: tuple[int, int], limit: int) -> bytes:
    return paths.read_bytes(root, path, limit)


def read_bytes(root: Path | str, path: Path | str, limit: int | None = None) -> bytes:
    """A file's bytes inside ``root``; LoadError when missing or refused."""
    limit = limit or _limit(path, MAX_CSV_BYTES)
    full, key = _existing(root, path, limit)
    return _read(root, full, _read_bytes, key, limit)


def engine_reader(root: Path | str) -> runs.Reader:
    """An ``engine.runs.Reader`` confined to ``root``: the engine's rules, read through these checks.

    A missing file is FileNotFoundError, an unreadable one another OSError; a refused one raises RefusedFile
    (an ``engine.runs.Declined``), as does a relative path: the engine wrote it relative to wherever it ran.
    """
    def read(path: Path) -> bytes:
        if not Path(path).is_absolute():
            raise RefusedFile(f"{path} is relative to wherever the engine ran")
        try:
            return read_bytes(root, path)
        except MissingFile as exc:
            raise FileNotFoundError(errno.ENOENT, str(exc), str(path)) from None
        except RefusedFile:
            raise
        except LoadError as exc:
            raise OSError(errno.EIO, str(exc), str(path)) from None

    return read


def read_json(root: Path | str, path: Path | str, limit: int | None = None) -> Any:
    """A JSON file inside ``root``; LoadError when missing, refused or corrupt."""
    limit = limit or _limit(path, MAX_JSON_BYTES)
    full, key = _existing(root, path, limit)
    try:
        return _read(root, full, _read_json, key, limit)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise LoadError(f"{relative(root, full)} is not valid JSON ({exc})") from None


@st.cache_data(show_spinner=False, max_entries=256)
def _read_text(root: str, path: str, version: tuple[int, int], limit: int) -> str:
    return paths.read_bytes(root, path, limit).decode("utf-8")


def read_text(root: Path | str, path: Path | str, limit: int = MAX_SMALL_BYTES) -> str:
    """A UTF-8 text file inside ``root``; LoadError when missing, refused or not UTF-8."""
    full, key = _existing(root, path, limit)
    try:
        return _read(root, full, _read_text, key, limit)
    except UnicodeDecodeError as exc:
        raise LoadError(f"{relative(root, full)} is not UTF-8 text ({exc})") from None


def read_csv(root: Path | str, path: Path | str, required: tuple[str, ...] = (), *,
             as_text: bool = False) -> pd.DataFrame:
    """A CSV file inside ``root`` as a DataFrame; LoadError when missing, refused, corrupt or lacking columns.

    ``as_text``: every column as strings, blank fields as "" (for :func:`usable_rows`).
    """
    full, key = _existing(root, path, MAX_CSV_BYTES)
    try:
        frame = _read(root, full, _read_csv, key, as_text)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise LoadError(f"{relative(root, full)} is not a readable CSV ({exc})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise LoadError(f"{relative(root, full)} lacks column(s) {', '.join(missing)}")
    return frame


def usable_rows(frame: pd.DataFrame, name: str, text: tuple[str, ...], numbers: dict[str, tuple[float, float]],
                allowed: dict[str, tuple[str, ...]] | None = None,
                problems: list[str] | None = None) -> pd.DataFrame:
    """The rows of a text-read CSV (``read_csv(as_text=True)``) whose fields a page can use.

    ``text`` columns must not be blank, ``numbers`` must parse as finite numbers within their
    (low, high) range (they become floats), ``allowed`` columns must hold one of their values.
    The other rows are dropped and one line in ``problems`` says how many and why; LoadError when
    no row is left, since a page has nothing to show then.
    """
    bad = pd.Series(False, index=frame.index)
    reasons = []
    frame = frame.copy()

    def flag(column: str, wrong: pd.Series, what: str) -> None:
        nonlocal bad
        if wrong.any():
            reasons.append(f"{column}: {int(wrong.sum())} {what}")
            bad |= wrong

    for column in text:
        flag(column, frame[column].str.strip() == "", "blank")
    for column, (low, high) in numbers.items():
        values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
        flag(column, ~values.between(low, high), "blank or malformed")  # NaN, inf and strings fail between
        frame[column] = values
    for column, values in (allowed or {}).items():
        flag(column, ~frame[column].isin(values), "not one of " + "/".join(values))
    usable = frame[~bad]
    if len(usable) < len(frame) and problems is not None:
        problems.append(f"{name}: {len(frame) - len(usable)} of {len(frame)} rows skipped "
                        f"(blank or malformed fields: {'; '.join(reasons)})")
    if usable.empty:
        raise LoadError(f"{name} has no usable row" + (f" ({'; '.join(reasons)})" if reasons else ""))
    return usable


def file_in(root: Path | str, base: Path | str, rel: str) -> Path:
    """``base/rel`` for a relative path taken from a file; LoadError unless it stays inside ``root``."""
    if not isinstance(rel, str) or not rel:
        raise LoadError("empty path")
    try:
        full = inside(root, Path(base) / rel)
    except OutsideOutputs as exc:
        raise LoadError(str(exc)) from None
    return full


def _regular(root: Path | str, path: Path | str, limit: int = paths.MAX_BYTES) -> bool:
    """Whether ``path`` is a regular file inside ``root`` within ``limit`` (stat only: nothing is opened)."""
    try:
        paths.regular_file(root, path, limit)
    except (OSError, ValueError):
        return False
    return True

