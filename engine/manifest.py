"""Reading a prepared folder: its manifest's rows (with a run's effective split), which have masks, the data folder.

The names of the folder's files and columns, and the split rule itself (``effective_split``), are the
contract in engine.runs; ``prepare`` (engine.prepare) writes the folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DamagedFileError, DataError
from .runs import MANIFEST, MANIFEST_COLUMNS, MASK_COLUMNS, REPORT, effective_split, read_json


def read_manifest(prepared: Path, split: str = "image", fold: int = 0) -> list[dict[str, Any]]:
    """The manifest's rows; the mask columns are '' where the data was prepared without masks.

    Each row's ``split`` is the one a run with ``split`` and ``fold`` (``Config.split``, ``Config.fold``)
    trains and is scored on (``effective_split``): every reader of a run's split reads it through here.
    """
    path = Path(prepared) / MANIFEST
    rows = manifest_rows(prepared)[1]
    if split != "image":
        for row, effective in zip(rows, effective_split(rows, split, fold, source=str(path)), strict=True):
            row["split"] = effective
    return rows


def manifest_rows(prepared: Path) -> tuple[str, list[dict[str, Any]]]:
    """The manifest's SHA-256 and its rows, both from one read (a new prepare may replace it meanwhile).

    The rows carry the manifest's own ``split`` column (``read_manifest`` applies a run's split); the hash
    keys what is derived from this manifest (the decoded cache, engine.cache).
    """
    path = Path(prepared) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: run `python -m engine prepare` first")
    data = path.read_bytes()
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DamagedFileError(path, f"damaged: not a CSV manifest ({exc})",
                               "run `python -m engine prepare` again to write it") from None
    missing = set(MANIFEST_COLUMNS) - set(rows[0] if rows else MANIFEST_COLUMNS)
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    for row in rows:
        for column in MASK_COLUMNS:
            row[column] = row.get(column) or ""
    return hashlib.sha256(data).hexdigest(), rows


def has_masks(rows: list[dict[str, Any]]) -> np.ndarray:
    """Which manifest rows have a usable leukocyte mask."""
    return np.array([bool(r["mask"]) for r in rows], dtype=bool)


def data_root(prepared: Path) -> Path:
    """The folder the manifest's paths are relative to: the one holding the class folders (data_report.json)."""
    return Path(read_json(Path(prepared) / REPORT)["data_dir"])
