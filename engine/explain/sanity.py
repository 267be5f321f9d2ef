"""Model-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

The weights are re-initialised cascading from the top of the network down (classifier,
then dense block 4 with norm5, block 3, ...), and after each step the maps of the same
images for the same classes are compared with the trained model's maps. A map that
explains the model must change once the model is destroyed; a method whose maps stay
similar (high rank correlation and SSIM) reflects the image, not the weights, and fails.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .methods import Method, compute_maps, get_method

log = logging.getLogger(__name__)

# Cascade steps, top first: each re-initialises these submodules of ``model.features``
# (``classifier`` is the head) in addition to every step before it.
CASCADE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("classifier", ("classifier",)),
    ("denseblock4", ("norm5", "denseblock4")),
    ("denseblock3", ("transition3", "denseblock3")),
    ("denseblock2", ("transition2", "denseblock2")),
    ("denseblock1", ("transition1", "denseblock1", "conv0", "norm0")),
)
# A method passes when, with every layer re-initialised, the maps' mean Spearman rank
# correlation with the trained maps is below this.
MAX_SIMILARITY = 0.5


def _reinitialise(module: nn.Module) -> None:
    for sub in module.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            sub.reset_running_stats()


def _submodule(model: nn.Module, name: str) -> nn.Module:
    return model.classifier if name == "classifier" else getattr(model.features, name)


def similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation and SSIM of two maps in [0, 1].

    A constant map (all-zero after the ReLU is common for a random model) has no rank
    order: its correlation counts as 0, i.e. nothing of the original map is left.
    """
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = spearmanr(a.ravel(), b.ravel()).statistic
    ssim = structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0)
    return {"spearman": 0.0 if not np.isfinite(rho) else float(rho), "ssim": float(ssim)}


def sanity_check(
    model: nn.Module, inputs: torch.Tensor, target_classes: Sequence[int], method: str | Method,
    layer: str, *, batch_size: int = 32, seed: int = 0, max_similarity: float = MAX_SIMILARITY,
) -> dict[str, Any]:
    """Similarity of the maps to the trained model's maps after each cascade step.

    Returns ``{"method", "layer", "steps": [{"randomized_from", "spearman", "ssim", ...}],
    "passed", "criterion"}``; ``model`` is left untouched (a copy is randomised).
    """
    spec = get_method(method)
    reference = compute_maps(model, inputs, spec, layer, target_classes, batch_size=batch_size)
    randomised = copy.deepcopy(model).eval()
    steps = []
    for k, (name, parts) in enumerate(CASCADE):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 100 + k)
            for part in parts:
                _reinitialise(_submodule(randomised, part))
        maps = compute_maps(randomised, inputs, spec, layer, target_classes, batch_size=batch_size)
        sims = [similarity(r, m) for r, m in zip(reference, maps, strict=True)]
        steps.append({
            "randomized_from": name,
            "spearman": float(np.mean([s["spearman"] for s in sims])),
            "ssim": float(np.mean([s["ssim"] for s in sims])),
            "spearman_per_image": [round(s["spearman"], 4) for s in sims],
            "ssim_per_image": [round(s["ssim"], 4) for s in sims],
        })
        log.info("sanity %s: randomised from %s: Spearman %.3f, SSIM %.3f", spec.name, name,
                 steps[-1]["spearman"], steps[-1]["ssim"])
    passed = steps[-1]["spearman"] < max_similarity
    if not passed:
        log.warning("sanity check failed for %s at %s: maps of a fully randomised model keep Spearman %.2f "
                    "with the trained maps", spec.name, layer, steps[-1]["spearman"])
    return {"method": spec.name, "layer": layer, "images": len(inputs), "steps": steps, "passed": passed,
            "criterion": f"mean Spearman after full randomisation < {max_similarity}"}
