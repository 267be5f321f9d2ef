"""The out-of-distribution check: the detector on known distributions, then on a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import ood
from engine.predict import Predictor

pytestmark = pytest.mark.numerics


def _clusters(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    means = np.eye(4, 16) * 6
    labels = rng.integers(0, 4, n)
    return means[labels] + rng.normal(size=(n, 16)) + shift, labels


def test_threshold_flags_about_the_quantile_of_fresh_in_distribution_points_and_all_far_ones():
    rng = np.random.default_rng(0)
    train, labels = _clusters(rng, 4000)
    val, _ = _clusters(rng, 2000)
    detector = ood.fit(train, labels, val, quantile=0.95)
    fresh, _ = _clusters(rng, 4000)
    assert 0.03 < detector.flags(fresh).mean() < 0.07
    far, _ = _clusters(rng, 200, shift=5.0)
    assert detector.flags(far).all()
    # The distance is to the nearest stage: a point at a stage mean scores about 0.
    assert detector.score(np.eye(4, 16) * 6).max() < 0.5


def test_fit_needs_every_stage_and_saved_detectors_round_trip(tmp_path: Path):
    rng = np.random.default_rng(1)
    train, labels = _clusters(rng, 400)
    with pytest.raises(ValueError, match="every stage"):
        ood.fit(train[labels != 2], labels[labels != 2], train)
    detector = ood.fit(train, labels, train)
    detector.save(tmp_path / ood.FILE)
    loaded = ood.OODDetector.load(tmp_path / ood.FILE)
    assert loaded.threshold == detector.threshold and loaded.quantile == detector.quantile
    np.testing.assert_array_equal(loaded.precision, detector.precision)
    assert not list(tmp_path.glob("*.tmp.npz"))


def test_evaluated_run_flags_images_unlike_its_training_data(trained_tiny_run: Path, tmp_path: Path):
    summary = json.loads((trained_tiny_run / "metrics.json").read_text())["ood"]
    assert (trained_tiny_run / summary["file"]).is_file() and summary["quantile"] == 0.99
    rows = [line.split(",") for line in (Path(json.loads((trained_tiny_run / "config.json").read_text())["data_dir"])
                                         / "manifest.csv").read_text().splitlines()[1:]]
    n_val = sum(r[4] == "val" for r in rows)
    # The threshold is the 99th percentile of val: on a small val split, at most its largest score is above.
    assert round(summary["flagged_fraction"]["val"] * n_val) <= 1 + 0.01 * n_val
    predictor = Predictor(trained_tiny_run, device="cpu")
    rng = np.random.default_rng(0)
    odd = {"noise.png": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
           "black.png": np.zeros((64, 64, 3), np.uint8),
           "stripes.png": np.tile(np.array([[0], [255]], np.uint8).repeat(4, 0), (8, 64))[..., None].repeat(3, 2)}
    for name, pixels in odd.items():
        Image.fromarray(pixels).save(tmp_path / name)
    results = predictor.predict_files([tmp_path / name for name in odd])
    assert all(r["out_of_distribution"] for r in results), results
    data_dir = Path(json.loads((trained_tiny_run / "config.json").read_text())["data_dir"])
    report = json.loads((data_dir / "data_report.json").read_text())
    root = Path(next(iter(report["class_dirs"].values()))).parent
    inside = predictor.predict_files([root / r[0] for r in rows if r[4] == "test"])
    # Held-out images of the training distribution all score below every image unlike it.
    assert max(r["ood_distance"] for r in inside) < min(r["ood_distance"] for r in results)
    assert np.mean([r["out_of_distribution"] for r in inside]) <= 0.25
