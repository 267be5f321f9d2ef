"""The feature space of a run: its 2-D map (embedding.csv), its stored features and the nearest training images.

Read through the confined reader (dashboard.files); the index is built once per version of features.npz.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from engine import runs
from engine.runs import CACHE, CLASSES, MANIFEST

from . import paths
from .artefacts import run_config
from .files import MAX_CSV_BYTES, LoadError, _existing, _read, read_csv, usable_rows
from .paths import OutsideOutputs, inside, relative

MAX_FEATURES_BYTES = paths.MAX_BYTES


def embedding(root: Path | str, run: Path | str, problems: list[str] | None = None) -> pd.DataFrame:
    """embedding.csv (the 2-D feature map), rows with blank or malformed fields dropped (counted in ``problems``)."""
    path = Path(run) / runs.EMBEDDING
    frame = read_csv(root, path, required=runs.EMBEDDING_COLUMNS, as_text=True)
    frame = usable_rows(frame, relative(root, path), text=("split", "sha256", "path", "true", "pred"),
                        numbers={"confidence": (0.0, 1.0), "x": (-1e12, 1e12), "y": (-1e12, 1e12)},
                        allowed={"true": CLASSES, "pred": CLASSES}, problems=problems)
    for column in ("ood_distance", "out_of_distribution"):
        frame[column] = pd.to_numeric(frame[column].str.strip(), errors="coerce")
    return frame.reset_index(drop=True)


@st.cache_resource(show_spinner=False, max_entries=8)
def _feature_space(root: str, path: str, version: tuple[int, int]) -> tuple[dict, Any]:
    from engine import features as feature_space
    from engine import similar

    stored = feature_space.load(io.BytesIO(paths.read_bytes(root, path, MAX_FEATURES_BYTES)))
    train = stored.get(similar.TRAIN)
    index = similar.TrainingIndex(train) if train is not None and len(train.features) else None
    return stored, index


def feature_space(root: Path | str, run: Path | str) -> tuple[dict, Any]:
    """The run's stored features per split and a nearest-neighbour index over the training ones (None
    without training features): ``engine.features`` / ``engine.similar`` objects, built once per file version.
    LoadError when features.npz is missing, refused or malformed."""
    full, key = _existing(root, Path(run) / runs.FEATURES, MAX_FEATURES_BYTES)
    try:
        return _read(root, full, _feature_space, key)
    except (ValueError, KeyError) as exc:
        raise LoadError(f"{relative(root, full)} is not a readable feature file ({exc})") from None


def similar_cases(root: Path | str, run: Path | str, *, sha256: str | None = None, vector: Any = None,
                  k: int = 8) -> list[dict[str, Any]]:
    """The ``k`` training images nearest to a stored image (by ``sha256``) or to a feature ``vector``
    (``engine.similar``: rank, sha256, path, stage, distance); [] when the image is not stored.
    LoadError when the run has no usable features.npz."""
    stored, index = feature_space(root, run)
    if index is None:
        raise LoadError(f"{relative(root, Path(run) / runs.FEATURES)} holds no training features")
    if vector is None:
        for part in stored.values():
            hit = np.flatnonzero(part.sha256 == sha256)
            if len(hit):
                vector = part.features[hit[0]]
                break
        else:
            return []
    try:
        return index.query(vector, k)
    except ValueError as exc:  # a vector of another width: features.npz from another model than the checkpoint
        raise LoadError(str(exc)) from None


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_images(prepared: str, size: int, view: str, sha256s: tuple[str, ...],
                   version: tuple[int, int]) -> dict[str, Any]:
    from engine import similar

    return similar.cached_images(Path(prepared), size, list(sha256s), view)


def training_images(root: Path | str, run: Path | str, sha256s: list[str]) -> dict[str, Any]:
    """Images (uint8 HWC, as the run's model saw them) of training images by sha256, from the decoded cache
    in the run's prepared folder; only those found, and nothing when that folder lies outside the outputs."""
    try:
        config = run_config(root, run)
        prepared = inside(root, str(config["data_dir"]))
        size, view = int(config["image_size"]), str(config.get("view", "field"))
        inside(root, prepared / CACHE)  # the cache too must not lead out of the outputs folder
        _, version = _existing(root, prepared / MANIFEST, MAX_CSV_BYTES)
        return _cached_images(str(prepared), size, view, tuple(sha256s), version)
    except (LoadError, OutsideOutputs, KeyError, TypeError, ValueError, OSError):
        return {}
