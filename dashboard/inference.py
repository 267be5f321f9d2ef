"""Classify one uploaded image with a run's model and draw its Grad-CAM map (the only torch user).

Imported by the Predict page only, so the other pages start without PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from engine import ood
from engine.data import load_image
from engine.models import get_layer
from engine.runs import CLASSES
from engine.train import load_checkpoint, to_input

MAX_UPLOAD_BYTES = 25 * 1024 * 1024
CAM_LAYER = "norm5"


def load_model(run_dir: Path | str) -> tuple[Any, torch.nn.Module, ood.OODDetector | None]:
    """(config, model in eval mode on the CPU, out-of-distribution check or None) of a run's best checkpoint."""
    cfg, model = load_checkpoint(Path(run_dir), "best", "cpu")
    path = Path(run_dir) / ood.FILE
    return cfg, model.eval(), ood.OODDetector.load(path) if path.is_file() else None


def preprocess(data: bytes, size: int) -> np.ndarray:
    """The upload as the model sees it; ValueError with a reason for anything that is not a usable image."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"file too large ({len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB)")
    return load_image(data, size)


def predict(model: torch.nn.Module, image: np.ndarray, target: int | None = None,
            detector: ood.OODDetector | None = None) -> dict[str, Any]:
    """Stage probabilities, the Grad-CAM (layer norm5) of ``target`` (default: the predicted stage)
    and, with a ``detector``, the image's out-of-distribution distance and threshold."""
    x = to_input(torch.from_numpy(np.array(image[None])), torch.device("cpu"), channels_last=False)
    with torch.no_grad():
        features = model.embed(x)
        proba = torch.softmax(model.classifier(features).double(), 1)[0].numpy()
    distance = None if detector is None else float(detector.score(features.double().numpy())[0])
    k = int(proba.argmax()) if target is None else int(target)
    with GradCAM(model=model, target_layers=[get_layer(model, CAM_LAYER)]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(k)])[0]
    overlay = show_cam_on_image(image.astype(np.float32) / 255, heat, use_rgb=True)
    return {"probabilities": {c: float(p) for c, p in zip(CLASSES, proba, strict=False)},
            "pred": CLASSES[int(proba.argmax())],
            "target": CLASSES[k], "map": heat, "overlay": overlay, "ood_distance": distance,
            "ood_threshold": None if detector is None else detector.threshold,
            "ood_quantile": None if detector is None else detector.quantile}
