"""``Predictor``: a trained run's model classifying image files or bytes (``python -m engine predict``).

A file that cannot be read as an image gets a result with an ``error`` and the others
still answer. When the run was evaluated (it has ``ood.npz``), each result also says
whether the image looks out of distribution. The dashboard's Predict page uses it too.
``OnnxPredictor`` gives the same results from the run's ONNX export (``python -m engine export``)
through ONNX Runtime: the same decoding, classes and out-of-distribution check; no maps.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import ood
from .decoding import load_image
from .inference import load_checkpoint, resolve_device, to_input
from .runs import CLASSES

log = logging.getLogger(__name__)


def load_ood(run_dir: Path) -> ood.OODDetector | None:
    """The run's out-of-distribution check (``ood.npz``), or None with a warning when it was not evaluated."""
    path = Path(run_dir) / ood.FILE
    if path.is_file():
        return ood.OODDetector.load(path)
    log.warning("%s has no %s: no out-of-distribution check (run `python -m engine evaluate %s`)",
                run_dir, ood.FILE, run_dir)
    return None


class FilePredictor:
    """Image files in, one result each out; ``scores`` (the model) is the subclass's."""

    ood: ood.OODDetector | None = None

    @property
    def image_size(self) -> int:
        raise NotImplementedError

    def preprocess(self, source: Path | bytes) -> np.ndarray:
        """The image as the model sees it (uint8 HWC); ValueError with a reason otherwise."""
        return load_image(source, self.image_size)

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities and (when the run has ``ood.npz``) out-of-distribution distances."""
        raise NotImplementedError

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.scores(images)[0]

    def predict_files(self, paths: list[Path], batch_size: int = 32) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = [{} for _ in paths]
        good: list[tuple[int, np.ndarray]] = []
        for i, path in enumerate(paths):
            try:
                good.append((i, self.preprocess(Path(path))))
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                results[i] = {"path": str(path), "error": reason}
        for start in range(0, len(good), batch_size):
            chunk = good[start:start + batch_size]
            proba, distance = self.scores(np.stack([image for _, image in chunk]))
            for n, ((i, _), p) in enumerate(zip(chunk, proba, strict=True)):
                k = int(p.argmax())
                results[i] = {"path": str(paths[i]), "pred": CLASSES[k], "confidence": round(float(p[k]), 6),
                              "probabilities": {c: round(float(v), 6) for c, v in zip(CLASSES, p, strict=True)}}
                if distance is not None:
                    results[i]["ood_distance"] = round(float(distance[n]), 3)
                    results[i]["out_of_distribution"] = bool(distance[n] > self.ood.threshold)
        return results


class Predictor(FilePredictor):
    """A trained run's model, ready to classify image files or bytes."""

    def __init__(self, run_dir: Path, checkpoint: str = "best", device: str = "auto") -> None:
        self.device = resolve_device(device)
        self.cfg, self.model = load_checkpoint(run_dir, checkpoint, self.device)
        self.run_dir = Path(run_dir)
        self.ood = load_ood(self.run_dir)
        # Maps attach hooks to the one shared model, and a forward pass run meanwhile (another session's
        # scores) would feed those hooks its activations: every use of the model takes turns.
        self._lock = threading.Lock()

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def explain(self, image: np.ndarray, target: int, method: str | None = None,
                layer: str | None = None) -> np.ndarray:
        """The map (H, W in [0, 1]) of ``target`` for one uint8 HWC image, by the engine's CAM code;
        method and layer default to the explanation defaults (engine.explain.pipeline)."""
        from .explain.methods import compute_maps
        from .explain.pipeline import DEFAULT_LAYERS, DEFAULT_METHODS

        x = to_input(torch.from_numpy(np.array(image[None])), self.device, channels_last=False)
        with self._lock:
            return compute_maps(self.model, x, method or DEFAULT_METHODS[0], layer or DEFAULT_LAYERS[0], [target])[0]

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        """The pooled DenseNet features of uint8 NHWC images (the classifier's input), as ``evaluate`` computes them."""
        x = to_input(torch.from_numpy(np.array(images)), self.device, channels_last=False)  # a writable copy
        with self._lock:
            self.model.eval()
            return self.model.embed(x)

    @torch.no_grad()
    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities and (when the run has ``ood.npz``) out-of-distribution distances."""
        features = self.embed(images)
        proba = torch.softmax(self.model.classifier(features).double(), 1).cpu().numpy()
        distance = None if self.ood is None else self.ood.score(features.double().cpu().numpy())
        return proba, distance


class OnnxPredictor(FilePredictor):
    """A run's ONNX export (``RUN/export/model.onnx``) in ONNX Runtime on the CPU, answering like ``Predictor``.

    The graph also gives the pooled features, so the out-of-distribution check is the same; maps need
    gradients and are PyTorch's only (``Predictor.explain``).
    """

    def __init__(self, run_dir: Path, checkpoint: str = "best") -> None:
        from .export import load_export

        self.run_dir = Path(run_dir)
        self.export = load_export(self.run_dir, checkpoint)
        self.ood = load_ood(self.run_dir)

    @property
    def image_size(self) -> int:
        return self.export.image_size

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        proba, features = self.export.scores(images)
        distance = None if self.ood is None else self.ood.score(features)
        return proba.astype(np.float64), distance
