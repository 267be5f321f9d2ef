"""Evidence with a known answer: generated smears with the stage planted where a test wants it, and the
summaries the engine's own functions compute from them (baselines.json, context.json, localisation.json)."""

from __future__ import annotations

import numpy as np

from engine import baselines, context
from engine.explain import localisation as loc
from engine.runs import CLASSES
from tests.support.images import cells


def planted(where: str, n_per_stage: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generated smears whose stage lies in the background tint ("tint") or only in the cell's shape under a
    random stain ("shape": a disc with a bud, turned by 90 degrees per stage: the same pixels, other places)."""
    rng = np.random.default_rng(seed)
    tints = np.array([(225, 225, 225), (240, 215, 190), (190, 215, 240), (215, 240, 200)])
    yy, xx = np.mgrid[:size, :size]
    images, masks, labels = [], [], []
    for stage in np.repeat(np.arange(4), n_per_stage):
        if where == "tint":
            background, cell = tints[stage], np.array([150, 40, 170])
        else:
            background, cell = rng.uniform(170, 245, 3), rng.uniform(40, 200, 3)
        image = np.clip(background + rng.normal(0, 8, (size, size, 3)), 0, 255)
        mask = (yy - 16) ** 2 + (xx - 16) ** 2 <= 36
        mask |= (yy - 16) ** 2 + (xx - 23) ** 2 <= 4
        mask = np.rot90(mask, k=stage if where == "shape" else 0)
        image[mask] = np.clip(cell + rng.normal(0, 8, (mask.sum(), 3)), 0, 255)
        images.append(image.astype(np.uint8))
        masks.append(mask)
        labels.append(stage)
    return np.stack(images), np.stack(masks), np.array(labels)


def splits_of(n: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(0).permutation(n)
    return {"train": order[: n // 2], "val": order[n // 2: 3 * n // 4], "test": order[3 * n // 4:]}


def shortcut_summary(where: str) -> dict:
    """baselines.json's content for generated smears whose stage lies in the tint or only in the cells' shape."""
    images, masks, labels = planted(where, 40, seed=1)
    splits = splits_of(len(labels))
    return baselines.measure(images, masks, labels, splits, CLASSES, seed=0,
                             network={s: labels[splits[s]] for s in ("val", "test")})


def stain_context(follow: bool) -> dict:
    """context.json's content for a model that reads the stain (follows every donor) or the cells (never does)."""
    true = np.repeat(np.arange(4), 10)
    donor = (true + 1) % 4
    swapped = donor if follow else true
    summary = context.reliance(true, {"original": true, "cells_removed": true, "background_removed": true,
                                      "stain_swapped": swapped, "greyscale": true}, CLASSES)
    summary["stain_swapped"] = {"follows_donor": context.follows_donor(swapped, donor, true, CLASSES), "seed": 0}
    summary["split"] = "test"
    return summary


def localisation_summary() -> dict:
    """localisation.json's structure, made by the engine from maps that point and maps that do not."""
    masks = cells(40, seed=2)
    stages = np.arange(40) % 4
    results = []
    for method, maps in (("good", masks.astype(float)), ("blob", np.broadcast_to(
            loc.centre_map(masks.shape[1:]), masks.shape))):
        result = loc.summarize(loc.scores(maps, masks, 2), loc.baseline_scores(np.asarray(maps), masks, stages, 2),
                               stages, CLASSES)
        results.append({"method": method, "layer": "norm5", **result})
    return {"results": results, "ranking": loc.rank(results), "images": 40, "images_without_mask": 0}
