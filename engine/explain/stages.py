"""Per-stage summaries of the maps: pure functions over rows and arrays.

A stage's images are those whose true class is the stage. For each stage: counts, the
mean map over correctly classified images (where the model looks when it is right), how
much of the image the maps cover, the most confident correct examples and every
misclassified image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .faithfulness import mean_ci

AREA_THRESHOLD = 0.5  # a pixel is "in the map" when the map there is at least half its maximum


def area_fraction(maps: np.ndarray, threshold: float = AREA_THRESHOLD) -> np.ndarray:
    """Share of each map's pixels at or above ``threshold`` (maps are scaled to max 1)."""
    if len(maps) == 0:
        return np.zeros(0)
    return (maps >= threshold).reshape(len(maps), -1).mean(1)


def _area_stats(values: np.ndarray, seed: int) -> dict[str, Any]:
    stats = mean_ci(values.tolist(), seed=seed)
    stats["median"] = float(np.median(values)) if len(values) else None
    return stats


def _example(row: dict[str, Any], area: float) -> dict[str, Any]:
    keys = ("path", "sha256", "true", "pred", "confidence", "image", "overlay_pred", "overlay_true")
    return {**{k: row[k] for k in keys if k in row}, "area": round(float(area), 4)}


def stage_summary(rows: Sequence[dict[str, Any]], maps: np.ndarray, stage: str, *, top_k: int = 4,
                  threshold: float = AREA_THRESHOLD, seed: int = 0) -> tuple[dict[str, Any], np.ndarray | None]:
    """The summary of one stage and its mean map over correct images (None if there are none).

    ``rows[i]`` describes the image of ``maps[i]`` (the map for the predicted class) with at
    least true, pred, confidence (float) and correct (bool).
    """
    index = np.array([i for i, r in enumerate(rows) if r["true"] == stage], dtype=np.int64)
    correct = np.array([i for i in index if rows[i]["correct"]], dtype=np.int64)
    wrong = np.array([i for i in index if not rows[i]["correct"]], dtype=np.int64)
    area = area_fraction(maps, threshold)
    by_confidence = sorted(correct.tolist(), key=lambda i: -float(rows[i]["confidence"]))
    missed = sorted(wrong.tolist(), key=lambda i: -float(rows[i]["confidence"]))
    summary = {
        "n": len(index),
        "n_correct": len(correct),
        "accuracy": len(correct) / len(index) if len(index) else None,
        "area_threshold": threshold,
        "area": {
            "all": _area_stats(area[index], seed),
            "correct": _area_stats(area[correct], seed),
            "misclassified": _area_stats(area[wrong], seed),
        },
        "top_confident": [_example(rows[i], area[i]) for i in by_confidence[:top_k]],
        "misclassified": [_example(rows[i], area[i]) for i in missed],
        "predicted_as": {c: sum(rows[i]["pred"] == c for i in index) for c in sorted({rows[i]["pred"] for i in index})},
    }
    mean_map = maps[correct].mean(0) if len(correct) else None
    return summary, mean_map
