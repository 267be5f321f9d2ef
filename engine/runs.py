"""The run folder: the contract between the engine, tuning and the dashboard.

``outputs/runs/<run-id>/`` (and one per trial inside a sweep) holds::

    config.json          the fully resolved Config, plus "data_dir" and "preset"
    env.json             versions, device, git commit, seed, host, start time
    history.csv          one row per finished epoch (HISTORY_COLUMNS)
    checkpoints/best.pt  {"model", "epoch", "val_macro_f1", "config"}   (weights_only loadable)
    checkpoints/last.pt  best.pt plus optimizer/scheduler/RNG state for --resume
    metrics.json         written by `evaluate`: {"classes", "checkpoint", "splits": {"val": M, "test": M}}
    predictions.csv      written by `evaluate` (PREDICTION_COLUMNS)
    ood.npz              written by `evaluate`: the out-of-distribution check's class means
    context.json/.csv    written by `evaluate` when the data has leukocyte masks
    cams/                written by `explain` (the CAMS_* names below)
    COMPLETE             JSON marker, written last by `train`: {"status": STATUS_COMPLETE or
                         STATUS_EARLY_STOPPED, "epochs", "best_epoch", ...}

Every file is written atomically (temporary file, then rename), so a reader never sees
half a file. A folder without COMPLETE is a run still training, or one that was interrupted.

The names below are the contract: the engine writes with them and the dashboard reads with
them, so a name changes here or nowhere. This module imports only the standard library at
import time (torch and numpy inside the functions that need them), so the dashboard can use
it without torch.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CLASSES = ("benign", "early", "pre", "pro")
SPLITS = ("train", "val", "test")

# ----------------------------------------------------------------------------- a run folder's files
CONFIG = "config.json"
ENV = "env.json"
HISTORY = "history.csv"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
OOD = "ood.npz"
CHECKPOINTS = "checkpoints"
BEST_CHECKPOINT = "best.pt"  # inside CHECKPOINTS
LAST_CHECKPOINT = "last.pt"  # inside CHECKPOINTS
CAMS = "cams"
COMPLETE = "COMPLETE"
# Written by `evaluate` when the data has leukocyte masks (engine.context).
CONTEXT = "context.json"
CONTEXT_TABLE = "context.csv"
# context.json's variants (engine.context.VARIANTS), each with the words readers show for it.
CONTEXT_VARIANTS = {"original": "as they are", "cells_removed": "leukocytes removed",
                    "background_removed": "background removed"}

# The "status" COMPLETE records: every planned epoch trained, or early stopping (patience) ended the run.
STATUS_COMPLETE = "complete"
STATUS_EARLY_STOPPED = "early_stopped"
STATUSES = (STATUS_COMPLETE, STATUS_EARLY_STOPPED)

HISTORY_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1",
    "lr", "epoch_seconds", "train_images_per_s",
)
PREDICTION_COLUMNS = ("split", "path", "sha256", "true", "pred", "confidence", *(f"prob_{c}" for c in CLASSES))

# ----------------------------------------------------------------------------- cams/, written by `explain`
# Paths are relative to cams/; the ones in index.csv (image, overlay, map) are relative to cams/ too.
CAMS_META = "meta.json"
CAMS_INDEX = "index.csv"
CAMS_IMAGES = "images"  # images/<sha256[:16]>.png: the image as the model saw it
CAMS_MULTILAYER = "multilayer"  # multilayer/<sha256[:16]>.png
CAMS_PAIRS = "pairs"  # <method>/<layer>/pairs/<sha256[:16]>.png: misclassified image, both maps
CAMS_FAITHFULNESS = "faithfulness"  # faithfulness/<method>.csv (FAITHFULNESS_COLUMNS)
FAITHFULNESS_SUMMARY = "faithfulness_summary.json"
SANITY = "sanity.json"
LOCALISATION = "localisation.json"
LOCALISATION_TABLE = "localisation.csv"
CAMS_MASKS = "masks"  # masks/<sha256[:16]>.png: the leukocyte mask at the model's resolution
CAMS_STAGES = "stages"  # stages/<stage>/{STAGE_MEAN_MAP, STAGE_MEAN_MAP_ARRAY, STAGE_PANEL}, stages/STAGES_SUMMARY
STAGE_MEAN_MAP = "mean_map.png"
STAGE_MEAN_MAP_ARRAY = "mean_map.npy"
STAGE_PANEL = "panel.png"
STAGES_SUMMARY = "summary.json"
CAMS_COMPARE = "compare"  # compare/<other run>/{COMPARE_TABLE, COMPARE_FIGURE, CAMS_META}
COMPARE_TABLE = "compare.csv"
COMPARE_FIGURE = "compare.png"
TARGETS = ("pred", "true")  # the class a map explains: the predicted one, or the true one

INDEX_COLUMNS = ("split", "path", "sha256", "true", "pred", "confidence", "correct", "method", "layer", "target",
                 "target_class", "image", "overlay", "map")
FAITHFULNESS_COLUMNS = ("path", "sha256", "true", "pred", "correct", "layer", "road_morf", "road_lerf",
                        "road_combined", "confidence_change")
COMPARE_COLUMNS = ("path", "sha256", "true", "pred_a", "confidence_a", "pred_b", "confidence_b", "spearman",
                   "overlay_a", "overlay_b")
# The verdicts localisation.json gives each method x layer and stage, by key.


def image_key(sha256: str) -> str:
    """The file stem of an image inside ``cams/``: byte-identical copies share one picture and map."""
    return sha256[:16]


def cam_image(sha256: str) -> str:
    """``cams/``-relative path of the image as the model saw it."""
    return f"{CAMS_IMAGES}/{image_key(sha256)}.png"


def cam_overlay(method: str, layer: str, target: str, sha256: str) -> str:
    """``cams/``-relative path of a map's overlay PNG; the map itself is ``cam_map`` (same stem, .npy)."""
    return f"{method}/{layer}/{target}/{image_key(sha256)}.png"


def cam_map(method: str, layer: str, target: str, sha256: str) -> str:
    """``cams/``-relative path of a map (float16 .npy at the model's resolution)."""
    return f"{method}/{layer}/{target}/{image_key(sha256)}.npy"


def cam_mask(sha256: str) -> str:
    """``cams/``-relative path of an image's leukocyte mask (PNG, 0 or 255)."""
    return f"{CAMS_MASKS}/{image_key(sha256)}.png"


LOCALISATION_VERDICTS = {
    "points": "points at the leukocytes",
    "baseline": "not clearly better than a centred blob or another image's map",
    "away": "points away from the leukocytes",
    "unknown": "too few images with masks to tell",
}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(path: Path, columns: Iterable[str], rows: Iterable[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def new_run_id(prefix: str = "") -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    suffix = os.urandom(2).hex()
    return f"{prefix}{stamp}-{suffix}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            # "-dirty" when tracked files differ from the commit: the figures then came from other code.
            ["git", "describe", "--always", "--dirty", "--abbrev=40"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str, seed: int) -> dict[str, Any]:
    import numpy
    import torch
    import torchvision

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "seed": seed,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.startswith("cuda"):
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / COMPLETE).is_file()


def mark_complete(run_dir: Path, **info: Any) -> None:
    write_json(Path(run_dir) / COMPLETE, {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info})


def complete_status(run_dir: Path) -> str | None:
    """The status COMPLETE records (one of STATUSES), or None when the run has no readable COMPLETE.

    A marker without a status (or an unreadable one) counts as STATUS_COMPLETE: it exists, so training ended.
    """
    marker = Path(run_dir) / COMPLETE
    if not marker.is_file():
        return None
    try:
        status = json.loads(marker.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return STATUS_COMPLETE
    return status if status in STATUSES else STATUS_COMPLETE
