"""Similar cases: the training images nearest to an image in the model's feature space.

The space is the pooled DenseNet features ``evaluate`` keeps in ``features.npz``; distances are
Euclidean between those features (float16 as stored, computed in float32), the space the
classifier and the out-of-distribution check read. An image of the val or test split is looked up
by its sha256 (``stored_vector``); an upload's is ``Analysis.features`` (``engine.predict.Predictor.analyse``).
No torch at import time: the dashboard's gallery uses this without loading a model.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from . import features as feature_space
from . import runs
from .runs import CLASSES

log = logging.getLogger(__name__)

TRAIN = "train"


class TrainingIndex:
    """A nearest-neighbour index over one run's stored training features."""

    def __init__(self, stored: feature_space.SplitFeatures) -> None:
        from sklearn.neighbors import NearestNeighbors

        if len(stored.features) == 0:
            raise ValueError("no training features stored")
        self.stored = stored
        self.knn = NearestNeighbors().fit(stored.features.astype(np.float32))

    def query(self, vector: np.ndarray, k: int) -> list[dict[str, Any]]:
        """The ``k`` nearest training images, nearest first: rank, sha256, path, stage, distance."""
        x = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if x.shape[1] != self.stored.features.shape[1]:
            raise ValueError(f"a feature vector of {x.shape[1]} values, but the run's features have "
                             f"{self.stored.features.shape[1]}")
        k = max(0, min(int(k), len(self.stored.features)))
        if k == 0:
            return []
        distance, index = self.knn.kneighbors(x, n_neighbors=k)
        return [{"rank": rank + 1, "sha256": str(self.stored.sha256[i]), "path": str(self.stored.path[i]),
                 "stage": CLASSES[int(self.stored.label[i])], "distance": float(d)}
                for rank, (d, i) in enumerate(zip(distance[0], index[0], strict=True))]


def _key(run_dir: Path) -> tuple[str, int, int]:
    # (path, mtime, size): a rewritten features.npz (the run evaluated again) is read again.
    path = Path(run_dir) / runs.FEATURES
    info = path.stat()
    return str(path), info.st_mtime_ns, info.st_size


@functools.lru_cache(maxsize=8)
def _stored(path: str, mtime_ns: int, size: int) -> dict[str, feature_space.SplitFeatures]:
    del mtime_ns, size  # part of the cache key only
    return feature_space.load(Path(path))


@functools.lru_cache(maxsize=8)
def _index(path: str, mtime_ns: int, size: int) -> TrainingIndex:
    stored = _stored(path, mtime_ns, size)
    if TRAIN not in stored:
        raise ValueError(f"{path} holds no training features")
    return TrainingIndex(stored[TRAIN])


def training_index(run_dir: Path) -> TrainingIndex:
    """The run's index, built once per version of its ``features.npz`` (OSError when missing)."""
    return _index(*_key(run_dir))


def nearest(run_dir: Path, feature_vector: np.ndarray, k: int = 8) -> list[dict[str, Any]]:
    """The ``k`` training images nearest to ``feature_vector`` in the run's feature space.

    Each is ``{"rank", "sha256", "path", "stage", "distance"}`` (``path`` as in the manifest),
    nearest first. OSError when the run has no ``features.npz`` (not evaluated), ValueError when it is
    malformed or the vector does not fit it.
    """
    return training_index(run_dir).query(feature_vector, k)


def stored_vector(run_dir: Path, sha256: str) -> np.ndarray | None:
    """The stored feature vector of the image with ``sha256`` (any split), or None when it is not stored."""
    for part in _stored(*_key(run_dir)).values():
        hit = np.flatnonzero(part.sha256 == sha256)
        if len(hit):
            return part.features[hit[0]].astype(np.float32)
    return None


def cached_images(prepared: Path, size: int, sha256s: list[str], view: str = "field") -> dict[str, np.ndarray]:
    """The images with these sha256 as the model saw them (uint8 HWC), from the prepared folder's decoded cache.

    Readers such as the dashboard may not reach the raw data folder, but the cache
    (``cache/<size>px.<key>.npy``, engine.cache) lies in the prepared folder. Only images found there
    are returned: nothing is decoded or built here, and a cache of another manifest is never used.
    """
    from .cache import built_images
    from .manifest import manifest_rows

    key, rows = manifest_rows(Path(prepared))
    where = {}
    for i, row in enumerate(rows):
        where.setdefault(row["sha256"], i)
    wanted = [s for s in dict.fromkeys(sha256s) if s in where]
    array = built_images(prepared, size, key, len(rows), view) if wanted else None
    if array is None:
        return {}
    return {s: np.array(array[where[s]]) for s in wanted}
