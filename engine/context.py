"""Cells or context: how much of a model's accuracy survives with the leukocytes removed.

``evaluate`` classifies the test images three times: as they are, with the leukocytes removed
and with the background removed. A model that decides from the cells falls to chance without
them; one that reads the slide's context (stain hue, red-cell density, illumination, which
differ between the data set's stages) keeps much of its accuracy.

- cells removed: each mask grown by ``CELL_GROW_AT_224`` px (at 224 px, scaled with the image)
  so no cell border is left, then filled from the surrounding background by OpenCV's Telea
  inpainting: the filled area looks like background, not like a painted patch.
- background removed: every pixel outside the grown mask set to the image's median background
  colour, so the cells stay and the scene around them is gone.

The image transforms are pure functions; ``reliance`` turns predictions into the
``context.json`` structure (accuracies with Wilson 95% intervals, per stage and overall).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .masks import dilate
from .metrics import proportion_ci
from .runs import CONTEXT_VARIANTS

VARIANTS = tuple(CONTEXT_VARIANTS)
TABLE_COLUMNS = ("split", "path", "sha256", "true",
                 *(f"{kind}_{v}" for v in VARIANTS for kind in ("pred", "p_true")))
CELL_GROW_AT_224 = 6
HOW = {
    "original": "the test images as they are",
    "cells_removed": "leukocyte masks grown by {grow} px, filled from the surrounding background (OpenCV Telea "
                     "inpainting, radius {radius} px)",
    "background_removed": "every pixel outside the leukocyte masks grown by {grow} px set to the image's median "
                          "background colour",
}


def grow_pixels(size: int) -> int:
    return max(1, round(CELL_GROW_AT_224 * size / 224))


def remove_cells(images: np.ndarray, masks: np.ndarray, grow: int, radius: int = 3) -> np.ndarray:
    """uint8 (N, H, W, 3) images with the (grown) masked cells inpainted from their surroundings."""
    import cv2

    grown = dilate(np.asarray(masks, dtype=bool), grow)
    out = np.empty_like(images)
    for i, (image, mask) in enumerate(zip(images, grown, strict=True)):
        out[i] = cv2.inpaint(np.ascontiguousarray(image), mask.astype(np.uint8), radius, cv2.INPAINT_TELEA) \
            if mask.any() else image
    return out


def remove_background(images: np.ndarray, masks: np.ndarray, grow: int) -> np.ndarray:
    """uint8 (N, H, W, 3) images with everything outside the (grown) masks set to the median background colour."""
    grown = dilate(np.asarray(masks, dtype=bool), grow)
    out = np.array(images, copy=True)
    for i, mask in enumerate(grown):
        background = ~mask
        if background.any():
            out[i][background] = np.median(images[i][background], axis=0).astype(np.uint8)
    return out


def accuracy_block(correct: np.ndarray) -> dict[str, Any]:
    n, k = len(correct), int(np.sum(correct))
    return {"n": n, "correct": k, "accuracy": k / n if n else None, "ci95": proportion_ci(k, n)}


def reliance(true: np.ndarray, preds: dict[str, np.ndarray], stage_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy of each variant's predictions, overall and per (true) stage, and how much survives.

    ``survival`` is cells-removed accuracy over original accuracy; ``chance`` is what always
    answering the most common stage scores on these images.
    """
    true = np.asarray(true)
    variants: dict[str, Any] = {}
    for name, pred in preds.items():
        correct = np.asarray(pred) == true
        variants[name] = {"all": accuracy_block(correct),
                          "per_stage": {s: accuracy_block(correct[true == k]) for k, s in enumerate(stage_names)}}
    counts = np.bincount(true, minlength=len(stage_names))

    def ratio(a: str, b: str) -> float | None:
        if a not in variants or b not in variants or not variants[b]["all"]["accuracy"]:
            return None
        return variants[a]["all"]["accuracy"] / variants[b]["all"]["accuracy"]

    return {"variants": variants, "chance": float(counts.max() / counts.sum()) if counts.sum() else None,
            "survival_without_cells": ratio("cells_removed", "original"),
            "survival_without_background": ratio("background_removed", "original")}


def measure(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, masks: np.ndarray, true: np.ndarray,
            stage_names: Sequence[str], *, radius: int = 3) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Classify the images as they are, without cells and without background.

    ``predict`` maps uint8 (N, H, W, 3) images to class probabilities (N, classes). Returns the
    ``reliance`` summary (with how each variant was made) and each variant's probabilities.
    """
    grow = grow_pixels(images.shape[1])
    variants = {"original": images, "cells_removed": remove_cells(images, masks, grow, radius),
                "background_removed": remove_background(images, masks, grow)}
    proba = {name: predict(batch) for name, batch in variants.items()}
    summary = reliance(true, {name: p.argmax(1) for name, p in proba.items()}, stage_names)
    summary["how"] = {name: text.format(grow=grow, radius=radius) for name, text in HOW.items()}
    return summary, proba
