"""Shortcut baselines: how far a model gets that sees only a few colour numbers of each image.

In the ALL data set each stage comes from its own smears, so the stain and the background's colour
can name the stage without any leukocyte morphology. A network's accuracy means little until it is
set beside what such a shortcut scores on the same images. ``evaluate`` fits these baselines on the
run's training split and scores them on its validation and test splits (``baselines.json``):

- background colour: per RGB channel the median, standard deviation and 10th and 90th percentiles
  (12 numbers) of the pixels *outside* the leukocyte mask, grown as ``engine.context`` grows it so
  that no cell border counts as background;
- cell colour: the same 12 numbers of the pixels *inside* the grown mask.

Each is fitted twice: a random forest (the headline: it finds any threshold on any of the 12
numbers) and a logistic regression on standardised numbers (what a linear rule on them gets).
Both are scored with the network's intervals (Wilson for accuracies, overall and per stage).

Everything here is pure: arrays in, the ``baselines.json`` structure out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .context import accuracy_block, grow_pixels
from .masks import dilate
from .runs import BASELINE_WORDS, HEADLINE_BASELINES

log = logging.getLogger(__name__)

STATISTICS = ("median", "std", "p10", "p90")
CHANNELS = ("R", "G", "B")
FEATURE_NAMES = tuple(f"{stat}_{channel}" for stat in STATISTICS for channel in CHANNELS)
FOREST_TREES = 300
# Images per step when measuring a split: bounds the copies (images, grown masks) at 224 px to ~40 MB.
CHUNK = 256
# baselines.json key -> (the region whose pixels it sees, the model)
KINDS = {"background_colour": ("background", "random_forest"), "cell_colour": ("cells", "random_forest"),
         "background_colour_linear": ("background", "logistic_regression"),
         "cell_colour_linear": ("cells", "logistic_regression")}
REGION_WORDS = {"background": "outside the leukocyte masks grown by {grow} px",
                "cells": "inside the leukocyte masks grown by {grow} px"}
MODEL_WORDS = {"random_forest": "a random forest ({trees} trees, random_state {seed})",
               "logistic_regression": "a multinomial logistic regression on the standardised numbers"}


def colour_statistics(pixels: np.ndarray) -> np.ndarray:
    """The 12 numbers of ``FEATURE_NAMES`` for (K, 3) RGB pixels: per channel median, std, p10, p90.

    Ordered statistic first (median R, G, B, then std R, G, B, ...); NaN for no pixels.
    """
    pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 3)
    if len(pixels) == 0:
        return np.full(len(FEATURE_NAMES), np.nan)
    p10, median, p90 = np.percentile(pixels, [10, 50, 90], axis=0)
    return np.concatenate([median, pixels.std(axis=0), p10, p90])


def regions(masks: np.ndarray, grow: int) -> np.ndarray:
    """The grown leukocyte masks (N, H, W): True is a cell pixel, False a background one."""
    return dilate(np.asarray(masks, dtype=bool), grow)


def colour_features(images: np.ndarray, masks: np.ndarray, grow: int) -> dict[str, np.ndarray]:
    """Per image the 12 colour numbers of its background and of its cells: {"background", "cells"}: (N, 12).

    ``masks`` are the leukocyte masks as prepared; they are grown by ``grow`` pixels first. A region
    without a pixel gets NaN (``usable`` leaves such images out).
    """
    grown = regions(masks, grow)
    out = {"background": np.empty((len(images), len(FEATURE_NAMES))),
           "cells": np.empty((len(images), len(FEATURE_NAMES)))}
    for i, (image, cell) in enumerate(zip(images, grown, strict=True)):
        out["background"][i] = colour_statistics(image[~cell])
        out["cells"][i] = colour_statistics(image[cell])
    return out


def usable(masks: np.ndarray, grow: int) -> np.ndarray:
    """Which images have both regions: a leukocyte mask, and background left around the grown mask."""
    masks = np.asarray(masks, dtype=bool)
    grown = regions(masks, grow)
    flat = masks.reshape(len(masks), -1)
    return flat.any(axis=1) & ~grown.reshape(len(masks), -1).all(axis=1)


def _split_features(images: np.ndarray, masks: np.ndarray, index: np.ndarray,
                    grow: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Which of ``index`` are ``usable``, and the colour features of those, a chunk of images at a time."""
    ok, parts = [], []
    for chunk in (index[i:i + CHUNK] for i in range(0, len(index), CHUNK)):
        chunk_masks = np.asarray(masks[chunk])
        keep = usable(chunk_masks, grow)
        ok.append(keep)
        parts.append(colour_features(np.asarray(images[chunk[keep]]), chunk_masks[keep], grow))
    empty = np.empty((0, len(FEATURE_NAMES)))
    return (np.concatenate(ok) if ok else np.zeros(0, bool),
            {r: np.concatenate([p[r] for p in parts]) if parts else empty for r in ("background", "cells")})


def make_model(model: str, seed: int) -> Any:
    """An unfitted scikit-learn classifier: ``random_forest`` or ``logistic_regression``."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if model == "random_forest":
        # One job: the same forest whatever the machine, and evaluate's other work keeps its cores.
        return RandomForestClassifier(n_estimators=FOREST_TREES, random_state=seed, n_jobs=1)
    if model == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    raise ValueError(f"unknown baseline model {model!r}")


def score(true: np.ndarray, pred: np.ndarray, stage_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy with its Wilson 95% interval, balanced accuracy, and accuracy per (true) stage.

    The same blocks as ``context.json``'s, so the network and a baseline read alike.
    """
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    true, pred = np.asarray(true), np.asarray(pred)
    correct = pred == true
    with warnings.catch_warnings():  # a stage predicted but absent from these images is no error here
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(true, pred)) if len(true) else None
    return {**accuracy_block(correct), "balanced_accuracy": balanced,
            "per_stage": {s: accuracy_block(correct[true == k]) for k, s in enumerate(stage_names)}}


def chance(true: np.ndarray, n_classes: int) -> float | None:
    """What always answering the most common stage scores on these images."""
    counts = np.bincount(np.asarray(true, dtype=int), minlength=n_classes)
    return float(counts.max() / counts.sum()) if counts.sum() else None


def measure(images: np.ndarray, masks: np.ndarray, labels: np.ndarray, splits: Mapping[str, np.ndarray],
            stage_names: Sequence[str], *, seed: int, fit_split: str = "train",
            network: Mapping[str, np.ndarray] | None = None) -> dict[str, Any] | None:
    """Fit every baseline on ``fit_split`` and score it on the other splits: the ``baselines.json`` structure.

    ``images`` (N, H, W, 3) uint8 and ``masks`` (N, H, W) bool are the whole manifest's; ``labels`` (N,)
    their stage indices; ``splits`` maps a split name to its indices into them. Only images with both
    regions (``usable``) take part. ``network``, when given, maps a scored split to the network's
    predicted stage index of each of that split's images (in ``splits`` order): it is scored on the
    same images as the baselines, so the two stand side by side. None when the fitting split has
    fewer than two stages among its usable images.
    """
    grow = grow_pixels(images.shape[1])
    labels = np.asarray(labels, dtype=int)
    kept: dict[str, np.ndarray] = {}  # split -> positions within splits[split] that take part
    left_out: dict[str, int] = {}
    features: dict[str, dict[str, np.ndarray]] = {}
    for split, index in splits.items():
        index = np.asarray(index, dtype=np.int64)
        ok, features[split] = _split_features(images, masks, index, grow)
        kept[split], left_out[split] = np.flatnonzero(ok), int(len(index) - ok.sum())
    train_true = labels[np.asarray(splits[fit_split], dtype=np.int64)[kept[fit_split]]]
    if len(np.unique(train_true)) < 2:
        log.info("fewer than two stages among the %s images with masks: no baselines fitted", fit_split)
        return None
    scored = [s for s in splits if s != fit_split and len(kept[s])]
    truth = {s: labels[np.asarray(splits[s], dtype=np.int64)[kept[s]]] for s in scored}
    n_fit = len(train_true)
    baselines: dict[str, Any] = {}
    for key, (region, model_name) in KINDS.items():
        model = make_model(model_name, seed)
        model.fit(features[fit_split][region], train_true)
        how = (f"{MODEL_WORDS[model_name].format(trees=FOREST_TREES, seed=seed)} fitted on the {n_fit} {fit_split} "
               f"images, each described by 12 numbers: the median, standard deviation and 10th and 90th percentiles "
               f"of R, G and B over its pixels {REGION_WORDS[region].format(grow=grow)}")
        baselines[key] = {"words": BASELINE_WORDS[key], "region": region, "model": model_name,
                          "headline": key in HEADLINE_BASELINES, "how": how,
                          "splits": {s: score(truth[s], model.predict(features[s][region]), stage_names)
                                     for s in scored}}
    summary: dict[str, Any] = {
        "fitted_on": fit_split, "mask_grow_px": grow, "features": list(FEATURE_NAMES),
        "images": {s: len(kept[s]) for s in splits}, "images_left_out": left_out,
        "chance": {s: chance(truth[s], len(stage_names)) for s in scored},
    }
    if network is not None:
        summary["network"] = {"words": "the network", "splits": {
            s: score(truth[s], np.asarray(network[s])[kept[s]], stage_names) for s in scored if s in network}}
    summary["baselines"] = baselines
    return summary
