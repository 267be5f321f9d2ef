"""Acquisition ("smear") groups: which images probably share one smear, and folds that keep them together.

In the ALL data set each stage comes from its own smears (89 patients, no patient or slide ids), so
a split by image puts images of one smear on both sides, and a model can name the stage from the
smear's look (stain, background tint, illumination) instead of the leukocytes: a random forest on
the background colour alone scores about 98% under an image split. ``prepare`` therefore groups
the images of each stage by what one smear shares and writes folds that hold out whole groups.

- **Statistics** (``colour_statistics``, computed in prepare's decoding pool): per RGB channel the
  median, standard deviation and 10th and 90th percentiles of the background, i.e. the pixels outside
  the leukocyte mask grown as ``engine.context`` grows cells (the whole image where there is no mask
  or too little background), and the mean brightness of the whole image: ``FEATURES``.
- **Duplicates first** (``units``): exact duplicates (same SHA-256) and near-duplicate pairs are joined
  (union-find, across stages too) into units, and each unit is clustered as one point (its mean
  statistics) in the stage most of its images carry: a duplicate never straddles two groups, and a
  pair on the border of two clusters does not drag both whole clusters into one.
- **Groups per stage** (``cluster_stage``): Ward agglomerative clustering (scikit-learn) of the
  statistics as they are, in grey levels (a distance is a difference of colour; standardised, the
  spreads would weigh as much as the tint). Ward has no random start, so the groups depend on the images
  alone, and one tree gives every number of groups. Each cut from ``folds`` (every stage must be able
  to reach every fold) to ``MAX_GROUPS`` groups (or one per ``MIN_MEAN_GROUP`` units) has its outliers
  (groups under ``MIN_FOLD_SHARE`` of a fold's share of the stage, which alone would be all a test fold
  sees of it) joined to the nearest group, and the cut with the best silhouette that keeps at least
  ``folds`` groups wins: the silhouette asks for finer groups only where the colours show them, and
  erring towards few groups keeps a smear whole (two smears in one group cost fold balance, one smear
  in two groups leaks it across the split). On the ALL data set the silhouette is low (0.25-0.35) at
  every number of groups, so it stays near the lower bound (5-9 groups per stage with 5 folds): a
  coarse, pessimistic grouping.
- **Folds** (``assign_folds``): scikit-learn's StratifiedGroupKFold over the groups, stratified by
  stage, shuffled with the prepare seed.
- **The check** (``shortcut_check``): a random forest on the same statistics, cross-validated once
  under an image-level StratifiedKFold and once under these folds. If the groups catch smears, its
  accuracy falls sharply. The groups are made from those very statistics, so the fall shows that the
  colour shortcut is held out, not that the groups are exactly the smears; generated smears, whose
  truth is known, test that (tests/test_smears.py).

This is a stress test against smear appearance never seen in training, a pessimistic stand-in for a
patient-level split; it is not a patient split (there are no patient ids).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .baselines import CHANNELS, STATISTICS
from .baselines import colour_statistics as pixel_statistics
from .context import grow_pixels
from .masks import dilate

log = logging.getLogger(__name__)

# The 13 numbers per image: the background's per-channel statistics (statistic first), then brightness.
FEATURES = (*(f"background_{s}_{c}" for s in STATISTICS for c in CHANNELS), "brightness")
# Below this share of background pixels the statistics of the whole image are used instead.
MIN_BACKGROUND = 0.05
# Statistics are taken on every n-th pixel of an image larger than this on its short side: the same
# numbers within a fraction of a grey level, without sorting millions of pixels.
STATS_SIDE = 256
# At most this many groups per stage (a stage of the ALL data set holds some 20-25 patients' smears),
# and at least this many units (images, duplicates counted once) per group on average.
MAX_GROUPS = 30
MIN_MEAN_GROUP = 3
# A group holding less than this share of what one fold gets of its stage (units / folds) is an outlier (an odd
# image or a few) and joins its nearest group: alone it could be all a test or validation fold sees of a stage.
MIN_FOLD_SHARE = 0.25
DEFAULT_FOLDS = 5
FOREST_TREES = 100
METHOD = ("exact duplicates and near-duplicate pairs joined first (union-find), each such unit one point (its "
          "mean statistics) in the stage most of its images carry; per stage Ward agglomerative clustering "
          "(scikit-learn) of the 13 background colour and brightness statistics in grey levels, "
          f"cut at every number of groups from the number of folds to min({MAX_GROUPS}, units/{MIN_MEAN_GROUP}), "
          f"groups under {MIN_FOLD_SHARE:g} of a fold's share of the stage joined to the nearest group, the cut "
          "with the best silhouette and at least as many groups as folds kept; folds by StratifiedGroupKFold "
          "(stratified by stage, shuffled with the seed)")


def colour_statistics(image: np.ndarray, mask: np.ndarray | None) -> tuple[tuple[float, ...], bool]:
    """``FEATURES`` of one RGB uint8 image (H, W, 3) and its leukocyte mask (H, W) or None.

    Returns the 13 numbers and whether they come from the background (False: the whole image, because
    there was no mask or less than ``MIN_BACKGROUND`` of the image is left around it).
    """
    image = np.asarray(image)
    step = max(1, min(image.shape[:2]) // STATS_SIDE)
    pixels = image[::step, ::step].astype(np.float64)
    background = None
    if mask is not None:
        small = np.asarray(mask, dtype=bool)[::step, ::step]
        # Grown as engine.context grows cells before removing them, so no cell border counts as background.
        outside = ~dilate(small, grow_pixels(min(small.shape)))
        if outside.mean() >= MIN_BACKGROUND:
            background = pixels[outside]
    from_background = background is not None
    if background is None:
        background = pixels.reshape(-1, 3)
    values = np.concatenate([pixel_statistics(background), [float(pixels.mean())]])
    # Rounded so that the numbers, and so the groups, do not hang on the last bits of a sum's order.
    return tuple(round(float(v), 4) for v in values), from_background


@dataclass
class StageClusters:
    """One stage's clustering: a label per image, and how the number of groups was chosen."""

    labels: np.ndarray  # int, 0..groups-1, in the order of the images given
    groups: int
    silhouette: float | None  # of the chosen groups; None where it is undefined
    # per Ward cut tried: the groups left once its outliers are joined to their nearest group, and their silhouette
    tried: dict[int, dict[str, Any]] = field(default_factory=dict)


def group_range(n: int, folds: int) -> tuple[int, int]:
    """The numbers of groups tried for a stage of ``n`` images (both included): from ``folds`` to
    min(MAX_GROUPS, n // MIN_MEAN_GROUP), and never below ``folds``."""
    low = folds
    return low, max(low, min(MAX_GROUPS, n // MIN_MEAN_GROUP))


def _ward_cuts(children: np.ndarray, n: int, sizes: Iterable[int]) -> dict[int, np.ndarray]:
    """Labels for each number of groups in ``sizes``, replaying Ward's merges (in the order made) up to it."""
    parent = list(range(2 * n - 1))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    wanted = sorted(set(sizes), reverse=True)
    cuts: dict[int, np.ndarray] = {}
    clusters = n
    for k in wanted:
        while clusters > k:
            step = n - clusters  # merges made so far; the next creates node n + step
            a, b = children[step]
            parent[find(int(a))] = n + step
            parent[find(int(b))] = n + step
            clusters -= 1
        roots = [find(i) for i in range(n)]
        # Numbered by first appearance, so the labels depend on the images' order only.
        order: dict[int, int] = {}
        cuts[k] = np.array([order.setdefault(r, len(order)) for r in roots], dtype=np.int64)
    return cuts


def absorb_small(z: np.ndarray, labels: np.ndarray, min_size: int) -> np.ndarray:
    """Join every group of fewer than ``min_size`` points to the group whose centroid is nearest, smallest first
    (ties: the lower label); labels renumbered by first appearance."""
    labels = np.asarray(labels).copy()
    while True:
        ids, counts = np.unique(labels, return_counts=True)
        if len(ids) < 2 or counts.min() >= min_size:
            break
        small = ids[np.lexsort((ids, counts))[0]]
        centre = z[labels == small].mean(axis=0)
        others = [i for i in ids if i != small]
        nearest = min(others, key=lambda i: (float(np.linalg.norm(z[labels == i].mean(axis=0) - centre)), int(i)))
        labels[labels == small] = nearest
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(x), len(order)) for x in labels], dtype=np.int64)


def cluster_stage(features: np.ndarray, folds: int) -> StageClusters:
    """Group one stage's images or units (rows of ``features``) by Ward clustering, the number by silhouette.

    Each Ward cut from ``folds`` to ``group_range``'s upper bound groups is taken, its outliers (groups under
    ``MIN_FOLD_SHARE`` of one fold's share of the stage) joined to their nearest group, and the result with
    the best silhouette that still has at least ``folds`` groups is chosen (ties: fewer groups).
    """
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import pairwise_distances, silhouette_score

    n = len(features)
    if n <= folds:  # one group per image: nothing to choose
        return StageClusters(np.arange(n, dtype=np.int64), n, None)
    # Not standardised: every statistic is in grey levels, so a distance is a difference of colour. Scaled to
    # unit variance, the spreads (std, which vary with the cells in view more than with the smear) would
    # weigh as much as the tint itself.
    z = np.asarray(features, dtype=np.float64)
    low, high = group_range(n, folds)
    high = min(high, n - 1)  # the silhouette needs at least one group of two
    tree = AgglomerativeClustering(n_clusters=None, distance_threshold=0.0, linkage="ward",
                                   compute_full_tree=True).fit(z)
    cuts = _ward_cuts(tree.children_, n, range(low, high + 1))
    distances = pairwise_distances(z)
    min_size = max(1, math.ceil(MIN_FOLD_SHARE * n / folds))
    tried: dict[int, dict[str, Any]] = {}
    chosen: dict[int, np.ndarray] = {}
    for k in range(low, high + 1):
        labels = absorb_small(z, cuts[k], min_size)
        groups = int(labels.max()) + 1
        score = None
        if groups >= max(2, folds):
            score = round(float(silhouette_score(distances, labels, metric="precomputed")), 4)
            chosen[k] = labels
        tried[k] = {"groups": groups, "silhouette": score}
    if not chosen:
        return StageClusters(cuts[low], low, None, tried)
    best = max(chosen, key=lambda k: (tried[k]["silhouette"], -tried[k]["groups"], -k))
    return StageClusters(chosen[best], tried[best]["groups"], tried[best]["silhouette"], tried)


class _Union:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[max(ra, rb)] = min(ra, rb)  # the smaller index roots: independent of the order of joins
        return True


@dataclass
class Grouping:
    """The smear group of every image, and what the report says about it."""

    group: list[str]  # per image: "<stage>-<nn>", the stage its unit was clustered in
    fold: list[int]  # per image: 0..folds-1
    report: dict[str, Any]


def units(n: int, links: Iterable[tuple[int, int]]) -> list[int]:
    """Union-find over ``n`` images joined by ``links`` (exact and near duplicates): a root index per image.

    The root is the smallest index of its set, so the result does not depend on the order of the links.
    """
    sets = _Union(n)
    for a, b in links:
        sets.join(a, b)
    return [sets.find(i) for i in range(n)]


def assign_folds(groups: Sequence[str], stages: Sequence[str], folds: int, seed: int) -> list[int]:
    """StratifiedGroupKFold: every group in exactly one fold, the stages spread over the folds alike."""
    from sklearn.model_selection import StratifiedGroupKFold

    fold = np.full(len(groups), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(groups)), list(stages), list(groups))):
        fold[test] = k
    return fold.tolist()


def make_groups(features: np.ndarray, stages: Sequence[str], links: Iterable[tuple[int, int]], *,
                classes: Sequence[str], folds: int, seed: int) -> Grouping:
    """Smear groups and folds of the images (rows of ``features``, their stages), duplicates joined by ``links``.

    Duplicates are joined first (``units``), and each unit is clustered as one point (its mean statistics)
    within the stage most of its images carry, so a duplicate pair can never straddle two groups and
    never drags two whole clusters together either. Raises ValueError with the reason when ``folds``
    folds cannot be made (a stage with fewer units than folds).
    """
    features = np.asarray(features, dtype=np.float64)
    stages = list(stages)
    roots = units(len(stages), links)
    members: dict[int, list[int]] = {}
    for i, root in enumerate(roots):
        members.setdefault(root, []).append(i)
    unit_stage = {}
    for root, images in members.items():
        counts = {cls: sum(stages[i] == cls for i in images) for cls in classes}
        unit_stage[root] = max(classes, key=lambda c: (counts[c], -list(classes).index(c)))  # ties: class order
    per_stage: dict[str, Any] = {}
    label_of: dict[int, str] = {}
    for cls in classes:
        mine = [r for r in members if unit_stage[r] == cls]  # in order of first image
        if len(mine) < folds:
            raise ValueError(f"stage {cls} has {len(mine)} distinct image(s) (duplicates counted once), fewer than "
                             f"the {folds} folds")
        found = cluster_stage(np.array([features[members[r]].mean(axis=0) for r in mine]), folds)
        for root, label in zip(mine, found.labels, strict=True):
            label_of[root] = f"{cls}-{int(label):02d}"
        per_stage[cls] = {"images": sum(s == cls for s in stages), "units": len(mine), "groups": found.groups,
                          "silhouette": found.silhouette, "cuts_tried": list(group_range(len(mine), folds)),
                          "min_group_units": max(1, math.ceil(MIN_FOLD_SHARE * len(mine) / folds)),
                          "ward_cuts": {str(k): v for k, v in found.tried.items()}}
    group = [label_of[r] for r in roots]
    fold = assign_folds(group, stages, folds, seed)
    duplicates = [m for m in members.values() if len(m) > 1]
    report = grouping_report(group, fold, stages, classes=classes, folds=folds, per_stage=per_stage)
    report["duplicate_units"] = {"units": len(duplicates), "images": sum(len(m) for m in duplicates),
                                 "across_stages": sum(len({stages[i] for i in m}) > 1 for m in duplicates)}
    return Grouping(group, fold, report)


def grouping_report(group: Sequence[str], fold: Sequence[int], stages: Sequence[str], *, classes: Sequence[str],
                    folds: int, per_stage: dict[str, Any]) -> dict[str, Any]:
    """Per stage the group sizes and the fold sizes; per group its images, stages and fold; folds lacking a stage."""
    from collections import Counter

    groups: dict[str, dict[str, Any]] = {}
    for g, f, s in zip(group, fold, stages, strict=True):
        entry = groups.setdefault(g, {"images": 0, "fold": f, "stages": Counter()})
        entry["images"] += 1
        entry["stages"][s] += 1
    for cls in classes:
        sizes = {g: e["stages"][cls] for g, e in groups.items() if e["stages"][cls]}
        per_stage[cls].update(
            group_sizes=dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))),
            fold_sizes=[sum(1 for f, s in zip(fold, stages, strict=True) if f == k and s == cls)
                        for k in range(folds)])
    missing = [{"fold": k, "stage": cls} for cls in classes for k in range(folds)
               if not per_stage[cls]["fold_sizes"][k]]
    if missing:
        log.warning("smear folds without a stage: %s", ", ".join(f"fold {m['fold']} has no {m['stage']}"
                                                                for m in missing))
    return {
        "method": METHOD,
        "features": list(FEATURES),
        "folds": folds,
        "groups": len(groups),
        "per_stage": per_stage,
        "fold_sizes": [sum(1 for f in fold if f == k) for k in range(folds)],
        "folds_missing_a_stage": missing,
        "group_list": {g: {"images": e["images"], "fold": e["fold"], "stages": dict(e["stages"])}
                       for g, e in sorted(groups.items())},
    }


def shortcut_check(features: np.ndarray, stages: Sequence[str], fold: Sequence[int], *, classes: Sequence[str],
                   seed: int) -> dict[str, Any]:
    """A random forest on the background statistics, cross-validated by image and by smear fold.

    Accuracy per fold and their mean, for an image-level StratifiedKFold with as many folds, and for the
    smear folds; plus the share of the most frequent stage (what always naming it would score).
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(features, dtype=np.float64)
    y = np.array([list(classes).index(s) for s in stages])
    fold = np.asarray(fold)
    folds = int(fold.max()) + 1

    def scores(splits: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
        per_fold = []
        for train, test in splits:
            # One job: the same forest on any machine, and prepare's 2 cores are not all taken.
            forest = RandomForestClassifier(n_estimators=FOREST_TREES, random_state=seed, n_jobs=1)
            forest.fit(x[train], y[train])
            per_fold.append(round(float((forest.predict(x[test]) == y[test]).mean()), 4))
        return {"mean": round(float(np.mean(per_fold)), 4), "min": min(per_fold), "max": max(per_fold),
                "per_fold": per_fold}

    image_folds = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y)
    smear_folds = ((np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(folds))
    return {
        "model": f"random forest ({FOREST_TREES} trees, random_state {seed}) on the 13 statistics",
        "image_split": scores(image_folds),
        "smear_split": scores(smear_folds),
        "majority_stage_share": round(float(np.bincount(y).max() / len(y)), 4),
    }
