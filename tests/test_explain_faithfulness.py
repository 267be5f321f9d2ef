"""Faithfulness scores measure something: a map on the planted evidence beats a random map."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from engine.explain.faithfulness import (
    HIGHER_IS_BETTER,
    METRICS,
    faithfulness_scores,
    mean_ci,
    rank_maps,
    softmax_targets,
    summarize,
)
from engine.explain.methods import compute_maps

SIZE, PATCH = 32, 8


class PlantedPatchModel(nn.Module):
    """Class 1 exactly when a red patch is present; nothing else in the image matters.

    A 1x1 convolution (named ``features.norm5`` so the CAM code finds it) responds to
    red-minus-green above 1 (background noise almost never reaches it); the class-1 logit
    is the mean response. The evidence for class 1 is therefore the patch and only it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(norm5=nn.Conv2d(3, 1, 1)))
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.features.norm5.weight.copy_(torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1))
            self.features.norm5.bias.fill_(-1.0)
            self.head.weight.copy_(torch.tensor([[0.0], [40.0]]))
            self.head.bias.copy_(torch.tensor([0.0, -4.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)).mean((2, 3)))


def planted_images(n: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Normalised-looking noise images with a red patch at a random place, and the patch masks."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, SIZE, SIZE, generator=gen) * 0.3
    masks = np.zeros((n, SIZE, SIZE), dtype=np.float32)
    corners = torch.randint(0, SIZE - PATCH, (n, 2), generator=gen)
    for i, (top, left) in enumerate(corners.tolist()):
        x[i, 0, top:top + PATCH, left:left + PATCH] = 2.0
        x[i, 1, top:top + PATCH, left:left + PATCH] = -2.0
        masks[i, top:top + PATCH, left:left + PATCH] = 1.0
    return x, masks


@pytest.fixture(scope="module")
def planted():
    model = PlantedPatchModel().eval()
    x, masks = planted_images(8)
    assert (model(x).argmax(1) == 1).all()  # the model sees the patch in every image
    return model, x, masks


def test_a_map_on_the_evidence_scores_better_than_a_random_map(planted):
    model, x, masks = planted
    classes = [1] * len(x)
    random_maps = np.random.default_rng(0).random(masks.shape).astype(np.float32)
    gradcam = compute_maps(model, x, "gradcam", "norm5", classes)
    assert (gradcam * masks).sum() / gradcam.sum() > 0.8  # Grad-CAM finds the patch
    scores = {name: faithfulness_scores(model, x, maps, classes, percentiles=(20, 50, 80))
              for name, maps in {"oracle": masks, "gradcam": gradcam, "random": random_maps}.items()}
    for name in ("oracle", "gradcam"):
        good, bad = scores[name], scores["random"]
        # Removing the evidence first destroys the prediction; removing random pixels
        # barely does, because ROAD's imputation refills them from their neighbours.
        assert good["road_morf"].mean() < bad["road_morf"].mean() - 0.3, name
        assert good["road_lerf"].mean() > bad["road_lerf"].mean(), name
        assert good["road_combined"].mean() > bad["road_combined"].mean() + 0.2, name
        assert (good["road_combined"] > bad["road_combined"]).mean() >= 0.75, name


@pytest.mark.filterwarnings("ignore:.*__array_wrap__:DeprecationWarning")  # inside pytorch-grad-cam
def test_scores_equal_pytorch_grad_cams_road_combined(planted):
    from pytorch_grad_cam.metrics.road import ROADCombined

    model, x, masks = planted
    classes = [1] * len(x)
    ranked = rank_maps(masks)
    ours = faithfulness_scores(model, x, ranked, classes, percentiles=(20, 50, 80), batch_size=len(x), seed=3)
    torch.manual_seed(3)
    library = ROADCombined(percentiles=[20, 50, 80])(x, ranked, softmax_targets(classes), model)
    np.testing.assert_allclose(ours["road_combined"], library, atol=1e-5)


def test_rank_maps_breaks_ties_so_percentiles_remove_the_stated_share():
    maps = np.zeros((1, 10, 10), dtype=np.float32)
    maps[0, :2] = 1.0  # 80% of the map is tied at zero
    ranked = rank_maps(maps)
    assert np.unique(ranked).size == 100
    assert (ranked[0, :2] >= 0.8).all()  # order between distinct values is kept
    threshold = np.percentile(ranked, 20)
    assert (ranked < threshold).mean() == pytest.approx(0.2, abs=0.01)


def test_mean_ci_brackets_the_mean_and_handles_small_samples():
    stats = mean_ci(np.random.default_rng(0).normal(1.0, 0.1, 200))
    low, high = stats["ci95"]
    assert low < stats["mean"] < high and high - low < 0.05 and stats["n"] == 200
    assert mean_ci([]) == {"mean": None, "ci95": [None, None], "n": 0}
    assert mean_ci([2.0])["ci95"] == [None, None]
    assert mean_ci([2.0, 2.0])["ci95"] == [2.0, 2.0]


def test_summary_ranks_methods_per_stage_by_road_combined_higher_first():
    def rows(value: float) -> list[dict]:
        return [{"true": stage, "layer": "norm5", "road_morf": -value, "road_lerf": 0.0, "road_combined": value,
                 "confidence_change": 0.0} for stage in ("benign", "pro") for _ in range(3)]

    summary = summarize({"weak": rows(0.1), "strong": rows(0.5)}, ["benign", "pro"])
    assert summary["metrics"] == list(METRICS) and summary["higher_is_better"] == HIGHER_IS_BETTER
    assert summary["ranking"] == {"all": ["strong", "weak"], "benign": ["strong", "weak"], "pro": ["strong", "weak"]}
    assert summary["methods"]["strong"]["per_stage"]["pro"]["road_combined"]["mean"] == pytest.approx(0.5)
    assert summary["methods"]["weak"]["overall"]["road_morf"]["n"] == 6
