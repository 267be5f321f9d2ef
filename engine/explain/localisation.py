"""Do the maps point at the leukocytes? Scores of maps against leukocyte masks: pure functions.

Per image and map:

    mass_in        share of the map's mass inside the mask
    concentration  mass_in divided by the mask's share of the image: 1.0 is what a uniform map
                   scores, above 1 the map concentrates on the cells, below 1 it avoids them
    pointing       1 when the map's maximum falls inside the mask grown by a tolerance (the
                   pointing game, Zhang et al. 2018: 15 px at 224 px), else 0

The same scores for two baselines on the same images say what "good" means here: a centred
Gaussian (what a map scores that knows nothing of the image but that cells tend to sit
mid-frame) and the maps of other images of the same stage (what a map scores that knows
the stage's usual layout but not this image). A method and layer point at the leukocytes
when their concentration and pointing beat both baselines beyond the 95% intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..masks import dilate
from ..metrics import mean_ci
from ..runs import LOCALISATION_VERDICTS

SCORES = ("concentration", "pointing", "mass_in")
BASELINES = ("centre", "shuffled")
POINTING_TOLERANCE_AT_224 = 15
CENTRE_SIGMA = 0.25  # of the image side
VERDICTS = LOCALISATION_VERDICTS


def pointing_tolerance(size: int) -> int:
    return max(1, round(POINTING_TOLERANCE_AT_224 * size / 224))


def scores(maps: np.ndarray, masks: np.ndarray, tolerance: int) -> dict[str, np.ndarray]:
    """Per-image scores of maps (N, H, W, non-negative) against boolean masks (N, H, W).

    A map with no mass, or an image with an empty mask, scores NaN (left out of means).
    """
    maps = np.clip(np.asarray(maps, dtype=np.float64), 0, None)
    masks = np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
    total = maps.sum(axis=(1, 2))
    area = masks.mean(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mass_in = np.where(total > 0, (maps * masks).sum(axis=(1, 2)) / total, np.nan)
        concentration = np.where(area > 0, mass_in / area, np.nan)
    grown = dilate(masks, tolerance)
    # The first maximum in raster order, as argmax takes it: a flat map gains nothing from its ties.
    peak = maps.reshape(len(maps), -1).argmax(axis=1)
    hit = grown.reshape(len(grown), -1)[np.arange(len(grown)), peak]
    pointing = np.where((total > 0) & (area > 0), hit.astype(np.float64), np.nan)
    return {"concentration": concentration, "pointing": pointing, "mass_in": mass_in}


def centre_map(shape: tuple[int, int], sigma: float = CENTRE_SIGMA) -> np.ndarray:
    """A centred Gaussian in [0, 1], ``sigma`` a fraction of the image side."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    s = sigma * min(h, w)
    return np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * s * s))).astype(np.float32)


def shuffled_within(groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """For each item, the index of another item of the same group (-1 where the group has one item).

    A random cycle through each group: no item keeps its own map, and every map is used once.
    """
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    out = np.full(len(groups), -1, dtype=np.int64)
    for g in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == g))
        if len(members) > 1:
            out[members] = np.roll(members, -1)
    return out


def baseline_scores(maps: np.ndarray, masks: np.ndarray, groups: np.ndarray, tolerance: int,
                    seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Scores of the centred Gaussian and of same-group shuffled maps on the same masks."""
    centre = np.broadcast_to(centre_map(maps.shape[1:]), maps.shape)
    other = shuffled_within(groups, seed)
    shuffled = scores(maps[np.maximum(other, 0)], masks, tolerance)
    for values in shuffled.values():
        values[other < 0] = np.nan
    return {"centre": scores(centre, masks, tolerance), "shuffled": shuffled}


def verdict(summary: dict[str, Any]) -> str:
    """A VERDICTS key from one summary block (the map's and the baselines' concentration and pointing)."""
    def ci(source: str, score: str) -> tuple[float | None, float | None]:
        low, high = summary[source][score]["ci95"]
        return low, high

    lows = {s: ci("map", s)[0] for s in ("concentration", "pointing")}
    if lows["concentration"] is None or lows["pointing"] is None:
        return "unknown"
    conc_high = ci("map", "concentration")[1]
    if conc_high is not None and conc_high < 1:
        return "away"
    beats = all(
        ci(base, s)[1] is not None and lows[s] > ci(base, s)[1]
        for base in BASELINES for s in ("concentration", "pointing")
        if summary[base][s]["n"] >= 2
    )
    return "points" if beats else "baseline"


def summarize(per_image: dict[str, np.ndarray], baselines: dict[str, dict[str, np.ndarray]], stages: np.ndarray,
              stage_names: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """Means with bootstrap 95% intervals per stage and over all images, and a verdict for each."""
    def block(index: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {"n": int(np.isfinite(per_image["concentration"][index]).sum())}
        out["map"] = {s: mean_ci(per_image[s][index], seed=seed) for s in SCORES}
        for name, values in baselines.items():
            out[name] = {s: mean_ci(values[s][index], seed=seed) for s in SCORES}
        out["verdict"] = verdict(out)
        return out

    stages = np.asarray(stages)
    result = {"all": block(np.arange(len(stages)))}
    result["per_stage"] = {name: block(np.flatnonzero(stages == k)) for k, name in enumerate(stage_names)}
    return result


def rank(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Method x layer entries, best first: mean concentration over stages (each stage counts once), then pointing."""
    def macro(entry: dict[str, Any], score: str) -> float:
        means = [s["map"][score]["mean"] for s in entry["per_stage"].values() if s["map"][score]["mean"] is not None]
        return float(np.mean(means)) if means else float("-inf")

    table = [{"method": e["method"], "layer": e["layer"], "concentration": macro(e, "concentration"),
              "pointing": macro(e, "pointing"), "verdict": e["all"]["verdict"]} for e in results]
    return sorted(table, key=lambda t: (-t["concentration"], -t["pointing"]))
