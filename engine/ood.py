"""Out-of-distribution check: is an image like the images the model was trained on?

The Mahalanobis detector of Lee et al. (2018), "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks": an image's pooled DenseNet features are
compared with each stage's mean feature under one shared covariance (Ledoit-Wolf shrinkage,
fitted on the training images); its score is the distance to the nearest stage. The threshold
is a high quantile (default 99%) of the validation images' scores, so about 1 in 100 images
like the training data is flagged, and an image unlike it (another stain or magnification,
another cell type, not a smear) far more often. ``evaluate`` fits it and writes ``ood.npz``
into the run folder; ``predict`` and the dashboard's Predict page read it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import runs
from .inference import map_batches

FILE = runs.OOD  # the run folder name, defined in engine.runs


@dataclasses.dataclass(frozen=True)
class OODDetector:
    means: np.ndarray  # (stages, features)
    precision: np.ndarray  # (features, features), inverse of the shared covariance
    threshold: float
    quantile: float

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` to the nearest stage mean."""
        diff = np.asarray(features, dtype=np.float64)[:, None, :] - self.means[None]
        squared = np.einsum("nkd,nkd->nk", diff @ self.precision, diff)  # the matmul goes to BLAS
        return np.sqrt(np.maximum(squared.min(1), 0))

    def flags(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) > self.threshold

    def save(self, path: Path) -> None:
        tmp = Path(path).with_suffix(".tmp.npz")
        np.savez(tmp, means=self.means, precision=self.precision, threshold=self.threshold, quantile=self.quantile)
        tmp.replace(path)  # atomic: a reader never sees half a file

    @classmethod
    def load(cls, path: Path) -> OODDetector:
        with np.load(path, allow_pickle=False) as saved:
            return cls(saved["means"], saved["precision"], float(saved["threshold"]), float(saved["quantile"]))


def fit(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
        quantile: float = 0.99) -> OODDetector:
    """Stage means and a shared shrunk covariance from the training images; the threshold from validation."""
    from sklearn.covariance import LedoitWolf

    labels = np.asarray(train_labels)
    stages = np.unique(labels)
    if not np.array_equal(stages, np.arange(len(stages))):
        raise ValueError(f"every stage needs training images to fit the out-of-distribution check, got {stages}")
    x = np.asarray(train_features, dtype=np.float64)
    means = np.stack([x[labels == k].mean(0) for k in stages])
    precision = LedoitWolf(assume_centered=True).fit(x - means[labels]).precision_
    unfitted = OODDetector(means, precision, threshold=np.inf, quantile=quantile)
    threshold = float(np.quantile(unfitted.score(val_features), quantile))
    return dataclasses.replace(unfitted, threshold=threshold)


def features(model: nn.Module, images: torch.Tensor, indices: np.ndarray, device: torch.device, *,
             batch_size: int, channels_last: bool, desc: str | None = None) -> np.ndarray:
    """Pooled features (float64, N x channels) of ``images[indices]`` (uint8 NHWC), in full precision."""
    model.eval()
    return map_batches(model.embed, images, indices, device, batch_size=batch_size, channels_last=channels_last,
                       desc=desc)
