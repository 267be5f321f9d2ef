"""Classify one uploaded image with a run's model and draw its Grad-CAM map (the only torch user).

Imported by the Predict page only, so the other pages start without PyTorch. Classification and
the out-of-distribution check are the engine's ``Predictor``; this adds the map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.decoding import load_image
from engine.explain.figures import overlay as draw_overlay
from engine.predict import Predictor
from engine.runs import CLASSES

MAX_UPLOAD_BYTES = 25 * 1024 * 1024


def load_model(run_dir: Path | str) -> Predictor:
    """A run's best checkpoint on the CPU, with its out-of-distribution check when the run has one."""
    return Predictor(Path(run_dir), "best", "cpu")


def preprocess(data: bytes, size: int) -> np.ndarray:
    """The upload as the model sees it; ValueError with a reason for anything that is not a usable image."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"file too large ({len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB)")
    return load_image(data, size)


def predict(predictor: Predictor, image: np.ndarray, target: int | None = None) -> dict[str, Any]:
    """Stage probabilities, the map (the explanation defaults' first method and layer) of ``target``
    (default: the predicted stage) and, when the run has one, the image's out-of-distribution distance."""
    proba, distance = predictor.scores(image[None])
    proba = proba[0]
    k = int(proba.argmax()) if target is None else int(target)
    from engine.explain.pipeline import DEFAULT_LAYERS, DEFAULT_METHODS

    method, layer = DEFAULT_METHODS[0], DEFAULT_LAYERS[0]
    heat = predictor.explain(image, k, method, layer)
    overlay = draw_overlay(image, heat)
    detector = predictor.ood
    return {"probabilities": {c: float(p) for c, p in zip(CLASSES, proba, strict=False)},
            "pred": CLASSES[int(proba.argmax())],
            "target": CLASSES[k], "method": method, "layer": layer, "map": heat, "overlay": overlay,
            "ood_distance": None if distance is None else float(distance[0]),
            "ood_threshold": None if detector is None else detector.threshold,
            "ood_quantile": None if detector is None else detector.quantile}
