"""Model-randomisation sanity check and per-stage summaries (pure parts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import build_config
from engine.explain.methods import Method
from engine.explain.sanity import CASCADE, sanity_check, similarity
from engine.explain.stages import area_fraction, stage_summary
from engine.models import create_model


class InputBrightnessCAM:
    """A 'method' that ignores the model: the map is the image's brightness (an edge-detector stand-in)."""

    def __init__(self, model, target_layers):
        from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients

        self.activations_and_grads = ActivationsAndGradients(model, target_layers, None)

    def __call__(self, input_tensor, targets):
        maps = input_tensor.mean(1).detach().numpy()
        maps = maps - maps.min((1, 2), keepdims=True)
        return maps / maps.max((1, 2), keepdims=True)


def test_similarity_of_identical_and_constant_maps():
    a = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    same = similarity(a, a)
    assert same["spearman"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0)
    assert similarity(a, np.zeros_like(a))["spearman"] == 0.0


def test_a_method_blind_to_the_weights_is_flagged():
    torch.manual_seed(0)
    model = create_model(build_config("tiny")).eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    blind = Method("brightness", "Brightness", InputBrightnessCAM, uses_gradients=False)
    result = sanity_check(model, x, [0, 1, 2], blind, "norm5")
    assert [s["randomized_from"] for s in result["steps"]] == [name for name, _ in CASCADE]
    assert all(s["spearman"] == pytest.approx(1.0) for s in result["steps"])
    assert result["passed"] is False


def test_gradcam_of_a_trained_model_passes(trained_tiny_run):
    from engine.explain.pipeline import load_run

    run = load_run(trained_tiny_run, device="cpu", limit=8)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    result = sanity_check(run.model, run.inputs(), run.pred, "gradcam", "norm5")
    assert result["passed"] is True
    assert result["steps"][-1]["spearman"] < 0.5
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())  # a copy was randomised


def test_stage_summary_counts_areas_and_examples():
    maps = np.zeros((4, 4, 4), dtype=np.float32)
    maps[0, :2] = 1.0  # half the map
    maps[1, :1] = 1.0  # a quarter
    rows = [{"path": f"p{i}", "sha256": f"s{i}", "true": t, "pred": p, "confidence": c, "correct": t == p}
            for i, (t, p, c) in enumerate([("pre", "pre", 0.9), ("pre", "pre", 0.99), ("pre", "pro", 0.7),
                                           ("pro", "pro", 0.8)])]
    np.testing.assert_allclose(area_fraction(maps), [0.5, 0.25, 0.0, 0.0])
    summary, mean_map = stage_summary(rows, maps, "pre", top_k=1)
    assert (summary["n"], summary["n_correct"], summary["accuracy"]) == (3, 2, pytest.approx(2 / 3))
    assert [e["path"] for e in summary["top_confident"]] == ["p1"]
    assert [e["path"] for e in summary["misclassified"]] == ["p2"]
    assert summary["area"]["correct"]["mean"] == pytest.approx(0.375)
    np.testing.assert_allclose(mean_map, (maps[0] + maps[1]) / 2)
    assert stage_summary(rows, maps, "benign")[1] is None
