"""Cells or context: how much of a model's accuracy survives with the leukocytes removed.

``evaluate`` classifies the test images five times: as they are, with the leukocytes removed,
with the background removed, with the stain of another stage and in greyscale. A model that
decides from the cells falls to chance without them; one that reads the slide's context (stain
hue, red-cell density, illumination, which differ between the data set's stages) keeps much of
its accuracy. The two stain probes ask the same of colour: a model that reads the stain follows
the donor's stage when given another stage's colours, and loses its footing in greyscale.

- cells removed: each mask grown by ``CELL_GROW_AT_224`` px (at 224 px, scaled with the image)
  so no cell border is left, then filled from the surrounding background by OpenCV's Telea
  inpainting: the filled area looks like background, not like a painted patch.
- background removed: every pixel outside the grown mask set to the image's median background
  colour, so the cells stay and the scene around them is gone.
- stain of another stage: each image recoloured to the colour statistics of a donor test image of
  another stage (Reinhard et al. 2001: per-channel mean and standard deviation matched in CIE Lab);
  every pixel keeps its place, so cells, shapes and layout are the image's own, only the colours
  are the donor's. Donors are drawn with a seed: first one of the other stages present, then one of
  its images, so every other stage donates about equally often.
- greyscale: the luminance (ITU-R BT.601 weights, as Pillow's "L") copied to all three channels.

The image transforms are pure functions; ``reliance`` turns predictions into the
``context.json`` structure (accuracies with Wilson 95% intervals, per stage and overall).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .masks import dilate
from .metrics import proportion_ci
from .runs import CONTEXT_VARIANTS

VARIANTS = tuple(CONTEXT_VARIANTS)
TABLE_COLUMNS = ("split", "path", "sha256", "true",
                 *(f"{kind}_{v}" for v in VARIANTS for kind in ("pred", "p_true")), "donor_stage", "donor_sha256")
CELL_GROW_AT_224 = 6
HOW = {
    "original": "the test images as they are",
    "cells_removed": "leukocyte masks grown by {grow} px, filled from the surrounding background (OpenCV Telea "
                     "inpainting, radius {radius} px)",
    "background_removed": "every pixel outside the leukocyte masks grown by {grow} px set to the image's median "
                          "background colour",
    "stain_swapped": "each image recoloured to the colours of a test image of another stage (Reinhard transfer: "
                     "per-channel mean and standard deviation matched in CIE Lab; layout and cells untouched); "
                     "donors drawn with seed {seed}, a stage among the other stages, then an image of it",
    "greyscale": "the luminance (0.299 R + 0.587 G + 0.114 B) copied to all three channels",
}
# ITU-R BT.601 luma, as Pillow's "L" conversion: the greyscale image a microscope camera would give.
LUMA = (0.299, 0.587, 0.114)


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


def lab_statistics(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each CIE Lab channel over an RGB uint8 image's pixels."""
    from skimage.color import rgb2lab

    lab = rgb2lab(np.asarray(image)).reshape(-1, 3)
    return lab.mean(axis=0), lab.std(axis=0)


def reinhard(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``image`` (H, W, 3 uint8) recoloured so that each Lab channel has ``mean`` and ``std`` (Reinhard et al. 2001).

    Each channel is shifted and scaled as a whole, so every pixel keeps its place and the order of
    its values: the layout is the image's own. A channel without spread in the image is only shifted.
    """
    from skimage.color import lab2rgb, rgb2lab

    lab = rgb2lab(np.asarray(image))
    own_mean, own_std = lab.reshape(-1, 3).mean(axis=0), lab.reshape(-1, 3).std(axis=0)
    scale = np.divide(std, own_std, out=np.ones(3), where=own_std > 1e-6)
    moved = (lab - own_mean) * scale + np.asarray(mean, dtype=np.float64)
    # L outside [0, 100] has no colour; lab2rgb clips what falls outside sRGB.
    moved[..., 0] = np.clip(moved[..., 0], 0, 100)
    with warnings.catch_warnings():  # "negative Z values clipped": colours outside sRGB, clipped as intended
        warnings.simplefilter("ignore", UserWarning)
        rgb = lab2rgb(moved)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def swap_stain(images: np.ndarray, donors: np.ndarray) -> np.ndarray:
    """Each image recoloured to the Lab statistics of ``images[donors[i]]``; a donor of -1 leaves it as it is."""
    stats = {int(d): lab_statistics(images[d]) for d in np.unique(donors) if d >= 0}
    out = np.array(images, copy=True)
    for i, donor in enumerate(donors):
        if donor >= 0:
            out[i] = reinhard(images[i], *stats[int(donor)])
    return out


def greyscale(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) images with their luminance (``LUMA``) in all three channels."""
    luma = np.rint(np.asarray(images, dtype=np.float64) @ np.asarray(LUMA))
    return np.repeat(np.clip(luma, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def choose_donors(true: np.ndarray, seed: int) -> np.ndarray:
    """For each image the index of a donor image of another stage, drawn with ``seed``; -1 where there is none.

    First a stage among the other stages present, then an image of it, both uniformly: each other
    stage donates about equally often, however many images it has.
    """
    true = np.asarray(true)
    rng = np.random.default_rng(seed)
    by_stage = {int(k): np.flatnonzero(true == k) for k in np.unique(true)}
    donors = np.full(len(true), -1, dtype=np.int64)
    for i, stage in enumerate(true):
        others = [k for k in by_stage if k != stage]
        if others:
            donors[i] = rng.choice(by_stage[others[rng.integers(len(others))]])
    return donors


def follows_donor(pred: np.ndarray, donor_stage: np.ndarray, true: np.ndarray,
                  stage_names: Sequence[str]) -> dict[str, Any]:
    """How often the prediction is the donor's stage, overall and per (true) stage, with Wilson 95% intervals.

    Images without a donor (-1) are left out. A model that ignores the colour would almost never
    follow the donor (the donor's stage is never the true one); one that reads only the stain always would.
    """
    pred, donor_stage, true = np.asarray(pred), np.asarray(donor_stage), np.asarray(true)
    has = donor_stage >= 0

    def block(rows: np.ndarray) -> dict[str, Any]:
        n, k = int(rows.sum()), int(np.sum(pred[rows] == donor_stage[rows]))
        return {"n": n, "followed": k, "share": k / n if n else None, "ci95": proportion_ci(k, n)}

    return {"all": block(has), "per_stage": {s: block(has & (true == k)) for k, s in enumerate(stage_names)}}


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
            "survival_without_background": ratio("background_removed", "original"),
            "survival_with_swapped_stain": ratio("stain_swapped", "original"),
            "survival_in_greyscale": ratio("greyscale", "original")}


def measure(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, masks: np.ndarray, true: np.ndarray,
            stage_names: Sequence[str], *, radius: int = 3,
            seed: int = 0) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
    """Classify the images as they are, without cells, without background, with another stage's stain, in grey.

    ``predict`` maps uint8 (N, H, W, 3) images to class probabilities (N, classes). Returns the
    ``reliance`` summary (with how each variant was made and, under ``stain_swapped``, how often the
    prediction follows the donor's stage), each variant's probabilities, and each image's donor
    (an index into ``images``, -1 for none).
    """
    true = np.asarray(true)
    grow = grow_pixels(images.shape[1])
    donors = choose_donors(true, seed)
    variants = {"original": images, "cells_removed": remove_cells(images, masks, grow, radius),
                "background_removed": remove_background(images, masks, grow),
                "stain_swapped": swap_stain(images, donors), "greyscale": greyscale(images)}
    proba = {name: predict(batch) for name, batch in variants.items()}
    summary = reliance(true, {name: p.argmax(1) for name, p in proba.items()}, stage_names)
    donor_stage = np.where(donors >= 0, true[np.maximum(donors, 0)], -1)
    summary["stain_swapped"] = {"follows_donor": follows_donor(proba["stain_swapped"].argmax(1), donor_stage, true,
                                                               stage_names),
                                "donor_stages": {s: int(np.sum(donor_stage == k)) for k, s in enumerate(stage_names)},
                                "seed": seed}
    summary["how"] = {name: text.format(grow=grow, radius=radius, seed=seed) for name, text in HOW.items()}
    return summary, proba, donors


def probe(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, masks: np.ndarray, true: np.ndarray,
          stage_names: Sequence[str], *, stain: bool = True, radius: int = 3, seed: int = 0) -> dict[str, Any]:
    """The short cells-or-context probe of a sweep trial: the images as they are, without leukocytes and (``stain``)
    with another stage's stain, made exactly as ``measure`` makes them.

    Returns the ``reliance`` summary of those variants (accuracies with Wilson intervals, per stage, ``chance``),
    ``context_gap`` (accuracy without leukocytes minus chance: how far above chance the model stays with nothing
    but the slide to go on) and, with ``stain``, how often the answers follow the donor's stage.
    """
    true = np.asarray(true)
    grow = grow_pixels(images.shape[1])
    variants = {"original": images, "cells_removed": remove_cells(images, masks, grow, radius)}
    donors = choose_donors(true, seed) if stain else None
    if donors is not None:
        variants["stain_swapped"] = swap_stain(images, donors)
    pred = {name: predict(batch).argmax(1) for name, batch in variants.items()}
    summary = reliance(true, pred, stage_names)
    without = summary["variants"]["cells_removed"]["all"]["accuracy"]
    chance = summary["chance"]
    summary["context_gap"] = without - chance if without is not None and chance is not None else None
    if donors is not None:
        donor_stage = np.where(donors >= 0, true[np.maximum(donors, 0)], -1)
        summary["stain_swapped"] = {"follows_donor": follows_donor(pred["stain_swapped"], donor_stage, true,
                                                                   stage_names), "seed": seed}
    summary["how"] = {name: HOW[name].format(grow=grow, radius=radius, seed=seed) for name in variants}
    return summary
