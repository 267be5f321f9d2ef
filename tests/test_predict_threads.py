"""One loaded model, many dashboard sessions: maps computed at once equal maps computed alone."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from engine.decoding import load_image
from engine.manifest import read_manifest
from engine.predict import Predictor


def test_concurrent_maps_on_one_model_match_the_maps_computed_alone(trained_tiny_run: Path, prepared_tiny: Path):
    predictor = Predictor(trained_tiny_run, "best", "cpu")
    root = Path(json.loads((prepared_tiny / "data_report.json").read_text())["data_dir"])
    images = [load_image(root / r["path"], predictor.cfg.image_size) for r in read_manifest(prepared_tiny)[:8]]
    alone = [predictor.explain(image, k % 4) for k, image in enumerate(images)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda item: predictor.explain(item[1], item[0] % 4), enumerate(images * 3)))
    for k, heat in enumerate(together):
        np.testing.assert_allclose(heat, alone[k % len(images)], atol=1e-6)
    assert not any(m._forward_hooks or m._backward_hooks for m in predictor.model.modules())  # hooks released


def test_maps_stay_right_while_other_sessions_classify_and_search(trained_tiny_run: Path, prepared_tiny: Path):
    """The Predict page's call (analyse) from several sessions at once, each on its own image, while others
    classify: a forward pass of one session must reach neither another's Grad-CAM hooks nor the hook that keeps
    its features."""
    predictor = Predictor(trained_tiny_run, "best", "cpu")
    root = Path(json.loads((prepared_tiny / "data_report.json").read_text())["data_dir"])
    images = [load_image(root / r["path"], predictor.cfg.image_size) for r in read_manifest(prepared_tiny)[:6]]
    alone = [predictor.analyse(image, k % 4) for k, image in enumerate(images)]

    def session(k: int):
        k %= len(images)
        return predictor.analyse(images[k], k % 4), predictor.scores(images[(k + 1) % len(images)][None])[0][0]

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(session, range(len(images) * 6)))
    for k, (found, proba) in enumerate(together):
        want = alone[k % len(images)]
        np.testing.assert_allclose(list(found.probabilities.values()), list(want.probabilities.values()), atol=1e-6)
        np.testing.assert_allclose(found.map, want.map, atol=1e-6)
        np.testing.assert_allclose(found.features, want.features, atol=1e-5)
        np.testing.assert_allclose(proba, list(alone[(k + 1) % len(images)].probabilities.values()), atol=1e-6)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in predictor.model.modules())  # hooks released
