"""The same image in two runs' tables: by content (sha256), else by stage and path inside the class folder.

An original and its segmented copy differ in content but not in name, so a model trained on the originals
and one trained on the segmented copies are still compared on the same cases. One rule, used by
``engine.explain.pipeline.compare_runs`` and the dashboard's Compare page; standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def class_path(row: Mapping[str, Any], stage: str = "class") -> str:
    """An image's stage (the row's ``stage`` field) and its path inside the class folder: the same for an image
    and its segmented copy."""
    return f"{row[stage]}/{str(row['path']).split('/', 1)[-1]}"


def match_images(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]],
                 stage: str = "class") -> dict[int, int]:
    """Pairs (index in ``a`` -> index in ``b``) of the same image: by sha256, else by stage and path.

    Rows are mappings with ``sha256``, ``path`` and the stage under ``stage`` ("class" in a manifest,
    "true" in predictions.csv and cams/index.csv).
    """
    by_sha = {r["sha256"]: j for j, r in enumerate(b)}
    by_path = {class_path(r, stage): j for j, r in enumerate(b)}
    pairs = {}
    for i, row in enumerate(a):
        j = by_sha.get(row["sha256"], by_path.get(class_path(row, stage)))
        if j is not None:
            pairs[i] = j
    return pairs
