"""``Predictor``: a trained run's model classifying image files or bytes (``python -m engine predict``).

A file that cannot be read as an image gets a result with an ``error`` and the others
still answer. When the run was evaluated (it has ``ood.npz``), each result also says
whether the image looks out of distribution. The dashboard's Predict page uses it too.
``OnnxPredictor`` gives the same results from the run's ONNX export (``python -m engine export``)
through ONNX Runtime: the same decoding, classes and out-of-distribution check; no maps.
``Predictor.analyse`` is the Predict page's answer for one image: probabilities, map, feature vector and
out-of-distribution check from one forward pass of the network.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import ood
from .decoding import check_shape, load_image, open_rgb
from .inference import load_checkpoint, resolve_device, to_input
from .runs import CLASSES

log = logging.getLogger(__name__)


# The cells view's windows scale with the short side, so a larger upload is first brought down to this short
# side: the same view up to resampling, and its mask is derived in milliseconds.
CELLS_SOURCE_SIDE = 448


def cells_view(source: Path | bytes, size: int) -> np.ndarray:
    """An image file as a cells-view model sees it (engine.cells): its leukocyte mask derived from the stain,
    then the mosaic of its largest leukocytes; ValueError with a reason for a file that is no image."""
    from PIL import Image

    from .cells import derived_mask, mosaic

    image = open_rgb(source)
    check_shape(*image.size)
    scale = CELLS_SOURCE_SIDE / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    pixels = np.asarray(image)
    return mosaic(pixels, derived_mask(pixels), size)[0]


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

    @property
    def view(self) -> str:
        """What the model is shown of an image: "field" or "cells" (engine.cells)."""
        return "field"

    def preprocess(self, source: Path | bytes) -> np.ndarray:
        """The image as the model sees it (uint8 HWC); ValueError with a reason otherwise."""
        if self.view == "cells":
            return cells_view(source, self.image_size)
        return load_image(source, self.image_size)

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities and (when the run has ``ood.npz``) out-of-distribution distances."""
        raise NotImplementedError

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


@dataclasses.dataclass(frozen=True)
class Analysis:
    """One image through the model once (``Predictor.analyse``)."""

    probabilities: dict[str, float]  # per stage, in CLASSES order
    features: np.ndarray  # float32 (channels,): the pooled features, the vector the similar-cases search takes
    pred: str  # the stage the model predicts
    target: str  # the stage the map explains
    method: str
    layer: str
    map: np.ndarray  # float32 H x W in [0, 1]
    overlay: np.ndarray  # uint8 H x W x 3: the map over the image (engine.explain.figures.overlay)
    ood_distance: float | None  # the three are None when the run has no ood.npz
    ood_threshold: float | None
    ood_quantile: float | None

    @property
    def out_of_distribution(self) -> bool | None:
        """Farther from every stage than the threshold; None without an out-of-distribution check."""
        return None if self.ood_distance is None else self.ood_distance > self.ood_threshold


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

    @property
    def view(self) -> str:
        return self.cfg.view

    def _input(self, images: np.ndarray) -> torch.Tensor:
        return to_input(torch.from_numpy(np.array(images)), self.device, channels_last=False)  # a writable copy

    def explain(self, image: np.ndarray, target: int, method: str | None = None,
                layer: str | None = None) -> np.ndarray:
        """The map (H, W in [0, 1]) of ``target`` for one uint8 HWC image, by the engine's CAM code;
        method and layer default to the explanation defaults (engine.explain.pipeline)."""
        from .explain.methods import compute_maps
        from .explain.pipeline import DEFAULT_LAYERS, DEFAULT_METHODS

        x = self._input(image[None])
        with self._lock:
            return compute_maps(self.model, x, method or DEFAULT_METHODS[0], layer or DEFAULT_LAYERS[0], [target])[0]

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        """The pooled DenseNet features of uint8 NHWC images (the classifier's input), as ``evaluate`` computes them."""
        x = self._input(images)
        with self._lock:
            self.model.eval()
            return self.model.embed(x)

    @torch.no_grad()
    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities and (when the run has ``ood.npz``) out-of-distribution distances."""
        x = self._input(images)
        with self._lock:
            self.model.eval()
            return self._judge(self.model.embed(x))

    @torch.no_grad()
    def _judge(self, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        # Callers hold the lock: the classifier is part of the shared model, and ``analyse`` hooks it.
        proba = torch.softmax(self.model.classifier(features).double(), 1).cpu().numpy()
        distance = None if self.ood is None else self.ood.score(features.double().cpu().numpy())
        return proba, distance

    def analyse(self, image: np.ndarray, target: int | None = None, method: str | None = None,
                layer: str | None = None) -> Analysis:
        """Everything the Predict page shows for one uint8 HWC image, all from the map's forward pass.

        ``target`` is the index (in CLASSES) of the stage the map explains, by default the predicted one;
        method and layer default to the explanation defaults (engine.explain.pipeline). The probabilities
        and the out-of-distribution distance are those of ``scores``, ``features`` that of ``embed`` and
        the map that of ``explain``.
        """
        from .explain.figures import overlay
        from .explain.methods import compute_maps
        from .explain.pipeline import DEFAULT_LAYERS, DEFAULT_METHODS

        if target is not None and not 0 <= int(target) < len(CLASSES):
            raise ValueError(f"target {target}: a stage index from 0 to {len(CLASSES) - 1}")
        method, layer = method or DEFAULT_METHODS[0], layer or DEFAULT_LAYERS[0]
        x = self._input(image[None])
        seen: list[torch.Tensor] = []

        def keep(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            # The map's forward pass computes the pooled features anyway: kept from the classifier's input
            # instead of a second pass. Only the first call is the image itself (Score-CAM and Ablation-CAM
            # then score altered copies).
            if not seen:
                seen.append(inputs[0].detach())

        with self._lock:
            self.model.eval()
            hook = self.model.classifier.register_forward_pre_hook(keep)
            try:
                # No target: the CAM explains the argmax of this pass's logits, the predicted stage.
                heat = compute_maps(self.model, x, method, layer, None if target is None else [int(target)])[0]
            finally:
                hook.remove()
            proba, distance = self._judge(seen[0])
        proba = proba[0]
        pred = int(proba.argmax())
        k = pred if target is None else int(target)
        detector = self.ood
        return Analysis(
            probabilities={c: float(p) for c, p in zip(CLASSES, proba, strict=True)},
            features=seen[0][0].float().cpu().numpy(), pred=CLASSES[pred], target=CLASSES[k],
            method=method, layer=layer, map=heat, overlay=overlay(image, heat),
            ood_distance=None if distance is None else float(distance[0]),
            ood_threshold=None if detector is None else detector.threshold,
            ood_quantile=None if detector is None else detector.quantile)


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

    @property
    def view(self) -> str:
        return self.export.view

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        proba, features = self.export.scores(images)
        distance = None if self.ood is None else self.ood.score(features)
        return proba.astype(np.float64), distance
