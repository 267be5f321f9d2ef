"""Faithfulness of maps: pytorch-grad-cam's ROAD and confidence-change metrics, per image.

All scores are changes in the softmax probability of the explained class (after minus
before), so they read in probability units:

    road_morf          remove the most relevant pixels first (ROAD imputation), averaged
                       over the removal percentiles: LOWER (a larger drop) is better
    road_lerf          remove the least relevant pixels first: HIGHER (a smaller drop) is better
    road_combined      (road_lerf - road_morf) / 2, as ROADCombined: HIGHER is better
    confidence_change  multiply the input by the map: HIGHER is better

``summarize`` aggregates them per method and per stage with a bootstrap 95% interval and
ranks methods per stage by road_combined.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..metrics import mean_ci
from ..progress import progress

log = logging.getLogger(__name__)

# The ranking score first: readers (the dashboard) show the first listed metric by default.
METRICS = ("road_combined", "road_morf", "road_lerf", "confidence_change")
HIGHER_IS_BETTER = {"road_morf": False, "road_lerf": True, "road_combined": True, "confidence_change": True}
RANK_BY = "road_combined"
# pytorch-grad-cam's ROADCombined uses 10, 20, ..., 90 (18 imputations and forward passes
# per image); three points cover the same range at a third of the cost on a 2-core CPU.
DEFAULT_PERCENTILES = (20, 50, 80)


def rank_maps(maps: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each map replaced by its pixel ranks in [0, 1), ties broken at random.

    ROAD only uses the order of the pixels (it thresholds at percentiles), but it compares
    with ``map < percentile``: a CAM whose lower half is exactly zero would lose all of it at
    the 20th percentile instead of the top 80%. Ranks make every percentile remove exactly
    the stated share of pixels.
    """
    rng = np.random.default_rng(seed)
    out = np.empty(maps.shape, dtype=np.float32)
    for i, m in enumerate(maps):
        flat = m.ravel()
        order = np.lexsort((rng.random(flat.size), flat))
        ranks = np.empty(flat.size, dtype=np.float32)
        ranks[order] = np.arange(flat.size, dtype=np.float32) / flat.size
        out[i] = ranks.reshape(m.shape)
    return out


def softmax_targets(classes: Sequence[int]) -> list[Any]:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    return [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]


def _scores(model: nn.Module, x: torch.Tensor, targets: list[Any]) -> np.ndarray:
    with torch.no_grad():
        return np.float32([t(o).cpu().numpy() for t, o in zip(targets, model(x), strict=True)])


def faithfulness_scores(
    model: nn.Module, inputs: torch.Tensor, maps: np.ndarray, target_classes: Sequence[int], *,
    percentiles: Sequence[int] = DEFAULT_PERCENTILES, batch_size: int = 32, seed: int = 0,
    desc: str | None = None,
) -> dict[str, np.ndarray]:
    """Per-image ROAD MoRF/LeRF/combined and confidence change (see the module docstring).

    Equal to pytorch-grad-cam's ``ROADCombined(percentiles)`` (same imputer, same order of
    random draws) with the maps' ties broken by ``rank_maps``; the unperturbed score is
    computed once per batch instead of once per percentile.
    """
    if len(maps) != len(inputs) or len(target_classes) != len(inputs):
        raise ValueError("inputs, maps and target_classes must have the same length")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ranked = rank_maps(maps, seed)
    out: dict[str, list[np.ndarray]] = {k: [] for k in METRICS}
    starts = range(0, len(inputs), batch_size)
    # The ROAD imputer adds torch noise: seed it (without touching the caller's RNG) so
    # that scores are reproducible.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        # The library thresholds a torch mask with NumPy (np.float32(tensor < x)), which
        # NumPy 2 answers with a DeprecationWarning per image and percentile.
        warnings.filterwarnings("ignore", message=".*__array_wrap__", category=DeprecationWarning)
        for start in progress(starts, desc=desc, unit="batch", leave=False, disable=desc is None):
            _score_batch(model, inputs[start:start + batch_size].to(device), maps[start:start + batch_size],
                         ranked[start:start + batch_size], target_classes[start:start + batch_size],
                         percentiles, out)
    model.train(was_training)
    return {k: np.concatenate(v).astype(np.float64) if v else np.zeros(0) for k, v in out.items()}


def _score_batch(model: nn.Module, x: torch.Tensor, maps: np.ndarray, ranked: np.ndarray,
                 target_classes: Sequence[int], percentiles: Sequence[int], out: dict[str, list[np.ndarray]]) -> None:
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst

    targets = softmax_targets(target_classes)
    before = _scores(model, x, targets)
    lerf = np.mean([ROADLeastRelevantFirst(p)(x, ranked, targets, model, return_diff=False)
                    for p in percentiles], axis=0) - before
    morf = np.mean([ROADMostRelevantFirst(p)(x, ranked, targets, model, return_diff=False)
                    for p in percentiles], axis=0) - before
    mult = CamMultImageConfidenceChange()(x, maps.astype(np.float32), targets, model, return_diff=False) - before
    out["road_morf"].append(morf)
    out["road_lerf"].append(lerf)
    out["road_combined"].append((lerf - morf) / 2)
    out["confidence_change"].append(mult)


def summarize(per_method: dict[str, list[dict[str, Any]]], stages: Sequence[str], *,
              percentiles: Sequence[int] = DEFAULT_PERCENTILES, seed: int = 0) -> dict[str, Any]:
    """The ``faithfulness_summary.json`` structure from each method's per-image rows.

    Rows carry ``true`` (the stage), ``layer`` and the METRICS. ``ranking`` lists, per stage
    and for ``"all"`` images, the methods best first by mean road_combined (higher is better).
    """
    methods: dict[str, Any] = {}
    for method, rows in per_method.items():
        entry: dict[str, Any] = {"layer": rows[0]["layer"] if rows else None,
                                 "overall": {m: mean_ci([float(r[m]) for r in rows], seed=seed) for m in METRICS},
                                 "per_stage": {}}
        for stage in stages:
            subset = [r for r in rows if r["true"] == stage]
            entry["per_stage"][stage] = {m: mean_ci([float(r[m]) for r in subset], seed=seed) for m in METRICS}
        methods[method] = entry

    def ranked(get) -> list[str]:
        scored = [(get(name), name) for name in methods if get(name) is not None]
        return [name for _, name in sorted(scored, key=lambda t: -t[0])]

    return {
        "metrics": list(METRICS),
        "higher_is_better": HIGHER_IS_BETTER,
        "rank_by": RANK_BY,
        "units": "change in the softmax probability of the explained (predicted) class",
        "road_percentiles": list(percentiles),
        "methods": methods,
        "ranking": {"all": ranked(lambda m: methods[m]["overall"][RANK_BY]["mean"]),
                    **{stage: ranked(lambda m, s=stage: methods[m]["per_stage"][s][RANK_BY]["mean"])
                       for stage in stages}},
    }
