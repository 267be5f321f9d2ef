"""The feature space: the pooled DenseNet features of every image, kept, and a 2-D map of them.

``evaluate`` computes the features once per split for the classifier and the out-of-distribution
check; ``save`` keeps them in the run folder (``features.npz``: float16 rows keyed by sha256, NumPy
arrays only) and ``embed`` maps them to two dimensions (PCA, then t-SNE) for ``embedding.csv``. The
map is computed from the float16 features as stored, so anyone recomputing it from
``features.npz`` with the same seed gets the same points. ``engine.similar`` searches the stored
training features for the nearest training images.
"""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from . import runs
from .runs import CLASSES

log = logging.getLogger(__name__)

FILE = runs.FEATURES
PCA_COMPONENTS = 50  # t-SNE on a few dozen principal components: the usual speed-up, and less noise


@dataclasses.dataclass(frozen=True)
class SplitFeatures:
    """One split's stored features: row i is the image with ``sha256[i]``, ``path[i]``, ``label[i]``."""

    features: np.ndarray  # float16, N x D
    sha256: np.ndarray  # str, N
    path: np.ndarray  # str, N (as in the manifest)
    label: np.ndarray  # int8, N: index into CLASSES

    def __post_init__(self) -> None:
        n = len(self.features)
        if self.features.ndim != 2 or not all(len(a) == n for a in (self.sha256, self.path, self.label)):
            raise ValueError(f"inconsistent feature arrays: {self.features.shape}, {len(self.sha256)} sha256, "
                             f"{len(self.path)} paths, {len(self.label)} labels")

    @classmethod
    def build(cls, features: np.ndarray, rows: list[dict], labels: np.ndarray) -> SplitFeatures:
        """From float features, the split's manifest rows and their class indices."""
        return cls(np.asarray(features, dtype=np.float16), np.array([str(r["sha256"]) for r in rows], dtype=str),
                   np.array([str(r["path"]) for r in rows], dtype=str), np.asarray(labels, dtype=np.int8))


def save(path: Path, splits: dict[str, SplitFeatures]) -> None:
    """Write ``features.npz`` atomically (a temporary file, then a rename)."""
    arrays: dict[str, np.ndarray] = {runs.FEATURES_SPLITS: np.array(list(splits), dtype=str)}
    for split, part in splits.items():
        for key in runs.FEATURES_KEYS:
            arrays[f"{key}_{split}"] = getattr(part, key)
    tmp = Path(path).with_suffix(".tmp.npz")
    # Plain str arrays are fixed-width unicode (dtype <U), never objects: no pickle is written or needed.
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def load(source: Path | IO[bytes]) -> dict[str, SplitFeatures]:
    """Read ``features.npz`` (a path, or its bytes as a file object) without pickles; ValueError when malformed."""
    name = str(source) if isinstance(source, (str, Path)) else runs.FEATURES
    try:
        with np.load(source, allow_pickle=False) as saved:
            return {str(split): SplitFeatures(*(saved[f"{key}_{split}"] for key in runs.FEATURES_KEYS))
                    for split in saved[runs.FEATURES_SPLITS]}
    except KeyError as exc:
        raise ValueError(f"{name} lacks {exc}") from None
    except (EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{name} is not a readable .npz ({exc})") from None


def embed(features: np.ndarray, seed: int) -> np.ndarray:
    """A 2-D map (N x 2, float64) of feature rows: PCA to at most 50 components, then t-SNE, seeded.

    Deterministic for a given input and seed. Fewer than 3 rows cannot be mapped by t-SNE; they get
    their first two principal components (or zeros).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.zeros((0, 2))
    components = min(PCA_COMPONENTS, n, x.shape[1])
    reduced = PCA(components, random_state=seed).fit_transform(x) if n > 1 else np.zeros((1, 1))
    if n < 4:
        out = np.zeros((n, 2))
        out[:, :min(2, reduced.shape[1])] = reduced[:, :2]
        return out
    # Perplexity must stay below the number of points; 30 (the usual value) from 91 images on.
    perplexity = float(min(30.0, (n - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=1000).fit_transform(reduced)


def embedding_rows(splits: dict[str, SplitFeatures], proba: dict[str, np.ndarray],
                   ood_distance: dict[str, np.ndarray] | None, ood_threshold: float | None,
                   seed: int) -> list[dict]:
    """The rows of ``embedding.csv``: every stored image, mapped together (one map, comparable positions)."""
    names = [s for s in splits if len(splits[s].features)]
    if not names:
        return []
    xy = embed(np.concatenate([splits[s].features for s in names]), seed)
    out, start = [], 0
    for split in names:
        part, p = splits[split], proba[split]
        distance = None if ood_distance is None else ood_distance.get(split)
        for i in range(len(part.features)):
            k = int(p[i].argmax())
            row = {"split": split, "sha256": part.sha256[i], "path": part.path[i], "true": CLASSES[part.label[i]],
                   "pred": CLASSES[k], "confidence": f"{p[i, k]:.6f}", "ood_distance": "", "out_of_distribution": "",
                   "x": f"{xy[start + i, 0]:.5f}", "y": f"{xy[start + i, 1]:.5f}"}
            if distance is not None and ood_threshold is not None:
                row["ood_distance"] = f"{distance[i]:.4f}"
                row["out_of_distribution"] = int(distance[i] > ood_threshold)
            out.append(row)
        start += len(part.features)
    log.info("feature map (PCA + t-SNE, seed %d) of %d images: %s", seed, start,
             ", ".join(f"{s} {len(splits[s].features)}" for s in names))
    return out
