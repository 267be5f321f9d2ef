"""The run folder: the contract between the engine, tuning and the dashboard.

``outputs/runs/<run-id>/`` (and one per trial inside a sweep) holds::

    config.json          the fully resolved Config, plus "data_dir", "preset" and the prepared
                         manifest's fingerprint (MANIFEST_SHA256, SPLIT_SHA256)
    env.json             versions, device, git commit, seed, host, start time
    history.csv          one row per finished epoch (HISTORY_COLUMNS)
    checkpoints/best.pt  {"model", "epoch", "val_macro_f1", "config"}   (weights_only loadable)
    checkpoints/last.pt  best.pt plus optimizer/scheduler/RNG state for --resume
    checkpoints/<name>.pt.sha256  CHECKSUM_SUFFIX: the checkpoint's sha256 as `sha256sum` writes it ("<hex>  best.pt"),
                         written atomically after the checkpoint; while a checkpoint is replaced it lists the old
                         and the new digest, so a checkpoint killed or cut off at any moment still matches one. A
                         checkpoint is read only if it matches a listed digest (garbage of the right size is
                         caught); one without a sidecar (older runs) is verified by loading it
    metrics.json         written by `evaluate`: {"classes", "checkpoint", "splits": {"val": M, "test": M}}
    predictions.csv      written by `evaluate` (PREDICTION_COLUMNS)
    ood.npz              written by `evaluate`: the out-of-distribution check's class means
    context.json/.csv    written by `evaluate` when the data has leukocyte masks
    val_context.json     VAL_CONTEXT: the context probe on the validation images, written at the end of a
                         sweep trial (engine.evaluate.probe_val_context) when the data has leukocyte masks
    baselines.json       written by `evaluate` when the data has leukocyte masks: colour-only models
    features.npz         written by `evaluate`: pooled features per split, keyed by sha256 (FEATURES_KEYS)
    embedding.csv        written by `evaluate`: PCA + t-SNE map of those features (EMBEDDING_COLUMNS)
    cams/                written by `explain` (the CAMS_* names below)
    export/model.onnx    EXPORT, EXPORT_MODEL: written by `export`, the model as ONNX (engine.export)
    export/model.json    EXPORT_SIDECAR: its sidecar: classes, preprocessing, checksums, metrics, versions and
                         the measured agreement of ONNX Runtime with PyTorch
    MODEL_CARD.md        MODEL_CARD: written by `evaluate`, again by `explain` and by `card`, from this
                         folder's files only (engine.modelcard)
    COMPLETE             JSON marker, written last by `train`: {"status": STATUS_COMPLETE or
                         STATUS_EARLY_STOPPED, "epochs", "best_epoch", ...}
    .train.lock          TRAIN_LOCK: flock-ed by the process training the run, removed when it ends
    reviews.json         REVIEWS: review marks set in the dashboard (dashboard/reviews.py), the one
                         file the dashboard writes into a run folder; .reviews.lock (REVIEWS_LOCK)
                         is flock-ed around each change

Every file is written atomically (temporary file, then rename), so a reader never sees
half a file. A file that cannot be read as what it should be is reported by name (engine.errors.DamagedFileError,
with the command that writes it again: ``remake_hint``), never silently replaced by a reader.
A folder without COMPLETE is a run still training, or one that was interrupted.

The names below are the contract: the engine writes with them and the dashboard reads with
them, so a name changes here or nowhere. This module imports only the standard library at
import time (torch and numpy inside the functions that need them), so the dashboard can use
it without torch.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import logging
import os
import platform
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from . import locks
from .config import SPLIT_MODES
from .errors import DamagedFileError, DataError

log = logging.getLogger(__name__)

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
CHECKPOINT_CHOICES = ("best", "last")  # what --checkpoint takes: best.pt or last.pt
CAMS = "cams"
COMPLETE = "COMPLETE"
# Written by `export` (engine.export): the model as ONNX and its JSON sidecar (the same name, .json).
EXPORT = "export"
EXPORT_MODEL = "model.onnx"  # inside EXPORT
EXPORT_SIDECAR = "model.json"  # inside EXPORT
# checkpoints/<name>.pt + CHECKSUM_SUFFIX: the checkpoint's sha256 (atomic_torch_save, verified_bytes).
CHECKSUM_SUFFIX = ".sha256"
CHECKPOINT_DAMAGED = "the checkpoint is damaged: truncated or not a checkpoint"
# Written by `evaluate` when the data has leukocyte masks (engine.context).
CONTEXT = "context.json"
CONTEXT_TABLE = "context.csv"
# context.json's variants (engine.context.VARIANTS), each with the words readers show for it.
CONTEXT_VARIANTS = {"original": "as they are", "cells_removed": "leukocytes removed",
                    "background_removed": "background removed",
                    "stain_swapped": "stain of another stage", "greyscale": "in greyscale"}
# Written at the end of a sweep trial (engine.evaluate.probe_val_context, called by tuning's trainable and by its
# finish step): the cells-or-context probe on the *validation* images with a leukocyte mask, with the best
# checkpoint in fp32, as they are, without the leukocytes and with another stage's stain. Its "scores" are
# VAL_CONTEXT_SCORES, which a sweep reports to Ray Tune and keeps in summary.csv (tuning.layout.PROBE_COLUMNS):
# the images probed, accuracy as they are, without leukocytes, chance (the share of the most common stage on
# those images), the context gap (accuracy without leukocytes minus chance, in accuracy units), accuracy with
# another stage's stain and the share of those answers naming the donor's stage.
VAL_CONTEXT = "val_context.json"
VAL_CONTEXT_SCORES = ("val_probe_images", "val_acc_as_is", "val_acc_without_cells", "val_chance", "val_context_gap",
                      "val_acc_stain_swapped", "val_follows_donor")
# Written by `evaluate` when the data has leukocyte masks (engine.baselines): models that see only a few
# colour statistics of each image, fitted on the training split and scored like the network. The keys of
# its "baselines", each with the words readers show for it; HEADLINE_BASELINES are the ones shown beside
# every accuracy of the network.
BASELINES = "baselines.json"
BASELINE_WORDS = {
    "background_colour": "a model that sees only the background colour",
    "cell_colour": "a model that sees only the cells' colour",
    "background_colour_linear": "a linear model that sees only the background colour",
    "cell_colour_linear": "a linear model that sees only the cells' colour",
}
HEADLINE_BASELINES = ("background_colour", "cell_colour")
# The model card (engine.modelcard): Markdown generated from this folder's files by `evaluate`, again by
# `explain` (with the localisation) and by `python -m engine card RUN`; never written by hand.
MODEL_CARD = "MODEL_CARD.md"
# Written by `evaluate` (engine.features): the pooled DenseNet features of every image (FEATURES_* keys
# per split, NumPy arrays only: load with allow_pickle=False) and their 2-D map (EMBEDDING_COLUMNS).
FEATURES = "features.npz"
EMBEDDING = "embedding.csv"
FEATURES_SPLITS = "splits"  # the splits stored, in order; then per split "<key>_<split>" for each key below
FEATURES_KEYS = ("features", "sha256", "path", "label")  # float16 N x D, str, str, int8 index into CLASSES
EMBEDDING_COLUMNS = ("split", "sha256", "path", "true", "pred", "confidence", "ood_distance", "out_of_distribution",
                     "x", "y")

# Exclusively flock-ed by the process that trains the run (engine.train.fit), from its start to its end,
# and removed then. The kernel drops a flock when its process dies however it dies, so a killed
# training leaves at most an unlocked file behind, which the next training simply takes.
TRAIN_LOCK = ".train.lock"
# Review marks (suspected label error, artefact, good example, a note) per image, keyed by sha256;
# written by the dashboard only (dashboard/reviews.py), each change under an flock on REVIEWS_LOCK.
REVIEWS = "reviews.json"
REVIEWS_LOCK = ".reviews.lock"
# config.json keys: what the run was trained on. The sha256 of the prepared manifest.csv's bytes, and
# of its sorted (sha256, class, split) rows, which stays the same when only paths, row order or mask
# columns change (the split the run trained on is still there). The split is the run's effective one
# (config keys "split" and "fold", effective_split): with split=smear, its smear folds.
MANIFEST_SHA256 = "manifest_sha256"
SPLIT_SHA256 = "split_sha256"

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

# explain builds cams/ in a hidden sibling CAMS_WORK_PREFIX + "<pid>-<ns>", flock-ed through the file
# beside it named like it plus LOCK_SUFFIX while the explain runs; the previous cams/ is renamed
# CAMS_OLD_PREFIX + "<ns>" for the moment of the swap. Whatever a killed explain leaves of these is
# removed by the next explain of the run (engine.explain.pipeline).
CAMS_WORK_PREFIX = ".cams-"
CAMS_OLD_PREFIX = ".cams-old-"
LOCK_SUFFIX = ".lock"

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
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    Whatever happens (a full disk, a signal), ``path`` holds the old bytes or the new ones. An OSError
    names ``path`` (the temporary file's own name would mean nothing to a user) and keeps its errno.
    """
    path = Path(path)
    # The temporary name is known before the file exists, so that a signal landing anywhere, even
    # between its creation and the next line, still removes it.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# Which command writes each file again, for the message about a damaged one (remake_hint).
_WRITTEN_BY = {
    CONFIG: "it is written once, by `python -m engine train`: restore it from a copy, or train a new run",
    ENV: "it is written once, by `python -m engine train`: restore it from a copy, or train a new run",
    HISTORY: "it is written by `python -m engine train`: restore it from a copy, or train a new run",
    METRICS: "the rest of the run is untouched: run `python -m engine evaluate RUN` to write it again",
    PREDICTIONS: "the rest of the run is untouched: run `python -m engine evaluate RUN` to write it again",
    CONTEXT: "the rest of the run is untouched: run `python -m engine evaluate RUN` to write it again",
    BASELINES: "the rest of the run is untouched: run `python -m engine evaluate RUN` to write it again",
    COMPLETE: "the checkpoints are untouched: run `python -m engine train --resume RUN` to finish the run",
}


def remake_hint(path: Path | str) -> str:
    """What is still safe and how to write ``path`` again, for the message about a damaged file."""
    path = Path(path)
    if path.name in _WRITTEN_BY:
        return _WRITTEN_BY[path.name]
    if CAMS in path.parts:
        return "the run itself is untouched: run `python -m engine explain RUN` to write cams/ again"
    return "restore it from a copy, or run the command that writes it again"


def read_json(path: Path) -> Any:
    """A JSON file; DamagedFileError (a ValueError) naming it when it is not valid JSON."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise DamagedFileError(path, f"damaged: not valid JSON ({exc})", remake_hint(path)) from None


def write_csv(path: Path, columns: Iterable[str], rows: Iterable[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def checksum_file(checkpoint: Path) -> Path:
    """The sidecar holding a checkpoint's sha256: ``checkpoints/best.pt.sha256``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + CHECKSUM_SUFFIX)


def recorded_digests(checkpoint: Path) -> list[str] | None:
    """The digests the sidecar lists for ``checkpoint``; None where there is no sidecar.

    A sidecar that is not a list of sha256 lines is itself damaged: DamagedFileError naming it.
    """
    sidecar = checksum_file(checkpoint)
    try:
        text = sidecar.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        text = "?"
    digests = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not digests or any(len(d) != 64 or d.strip("0123456789abcdef") for d in digests):
        raise DamagedFileError(sidecar, "the checksum file is damaged",
                               f"delete it to have {Path(checkpoint).name} verified by loading it instead")
    return digests


def _sidecar_text(digests: list[str], name: str) -> str:
    return "".join(f"{digest}  {name}\n" for digest in digests)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically, with the sha256 sidecar (CHECKSUM_SUFFIX) written after the checkpoint.

    While the checkpoint is replaced the sidecar lists the old digest and the new one, so that a process
    killed, or a disk filling up, at any moment leaves a checkpoint that matches its sidecar.
    """
    import torch

    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    sidecar = checksum_file(path)
    try:
        old = recorded_digests(path) if path.is_file() else None
    except DamagedFileError:
        old = None
    if old:
        atomic_write_text(sidecar, _sidecar_text([old[-1], digest], path.name))
    else:
        sidecar.unlink(missing_ok=True)  # none, or one for another file: the checkpoint is verified by loading
    atomic_write_bytes(path, data)
    atomic_write_text(sidecar, _sidecar_text([digest], path.name))


def verified_bytes(checkpoint: Path, next_step: str = "") -> bytes:
    """The bytes of ``checkpoint``, checked against its sidecar when it has one.

    DamagedFileError (naming the file, with ``next_step``) when they match no recorded digest; an OSError
    (the file missing or unreadable) passes through. Without a sidecar the caller's load is the check.
    """
    checkpoint = Path(checkpoint)
    data = checkpoint.read_bytes()
    digests = recorded_digests(checkpoint)
    if digests is not None and hashlib.sha256(data).hexdigest() not in digests:
        raise DamagedFileError(checkpoint, f"{CHECKPOINT_DAMAGED} (its bytes do not match "
                               f"{checksum_file(checkpoint).name})", next_step)
    return data


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


class Declined(Exception):
    """Raised by a ``Reader`` that will not read a path at all (the dashboard's, for one outside its outputs
    folder or not a regular file): a check that needs the file cannot tell, rather than fails."""


# A reader: the bytes of a file. FileNotFoundError when there is none, another OSError when it cannot be read,
# Declined when this reader will not read it. The functions below that read a run's files take one, so that
# the dashboard applies the engine's rules through its own confined reader.
Reader = Callable[[Path], bytes]


def read_file(path: Path) -> bytes:
    """The default ``Reader``: the bytes of a regular file (FileNotFoundError for anything else)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
    return path.read_bytes()


def complete_status(run_dir: Path, read: Reader = read_file) -> str | None:
    """The status COMPLETE records (one of STATUSES), or None when the run has no COMPLETE.

    A marker without a status (or an unreadable one) counts as STATUS_COMPLETE: it exists, so training ended.
    Declined (a marker ``read`` will not read) passes through.
    """
    try:
        data = read(Path(run_dir) / COMPLETE)
    except FileNotFoundError:
        return None
    except OSError:
        return STATUS_COMPLETE
    try:
        status = json.loads(data).get("status")
    except (ValueError, AttributeError, RecursionError):
        return STATUS_COMPLETE
    return status if status in STATUSES else STATUS_COMPLETE


# ----------------------------------------------------------------------------- locks


class RunBusyError(RuntimeError):
    """Another process is training this run folder."""


@contextlib.contextmanager
def training_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/TRAIN_LOCK`` for the ``with`` block, or raise ``RunBusyError`` at once.

    The file says who holds it (pid, host, since), for the message another training gets.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = locks.try_lock(run_dir / TRAIN_LOCK, remove=True, purpose="training")
    except locks.LockHeld as held:
        who = (f"pid {held.holder.get('pid')} on {held.holder.get('host')}, since {held.holder.get('since')}"
               if held.holder else "which one is not recorded")
        raise RunBusyError(f"{run_dir} is being trained by another process ({who}): wait for it to finish, or stop "
                           "it first (a stopped or killed training releases the run at once)") from None
    except locks.LockUnsupported as exc:
        # Some file systems (Lustre mounted without flock, a few FUSE ones) have no flock at all: refusing
        # every training there would be worse than not refusing concurrent ones.
        log.warning("%s; another training of the same run at the same time is not refused", exc)
        yield
        return
    with lock:
        yield


# ----------------------------------------------------------------------------- the prepared data folder
# ``python -m engine prepare`` (engine.prepare) writes it; training, evaluation, sweeps and the dashboard read
# it (engine.manifest, engine.cache). Paths inside it are relative to it.
MANIFEST = "manifest.csv"  # one row per usable image: MANIFEST_COLUMNS, then MASK_COLUMNS and SMEAR_COLUMNS
REPORT = "data_report.json"  # what prepare found, refused and decided, and the data folder it read
MANIFEST_COLUMNS = ("path", "class", "sha256", "group", "split", "width", "height")
# Leukocyte mask of each image (engine.masks): a PNG in the prepared folder, its source and area.
# Empty for an image without a usable mask, and absent from manifests prepared without masks.
MASK_COLUMNS = ("mask", "mask_source", "mask_fraction")
# Acquisition ("smear") groups (engine.smears): images that probably share one smear, and the fold (0..K-1)
# each whole group is held out in by a run with split=smear (``effective_split``). Absent from manifests
# prepared before them, or where the data cannot fill the folds (data_report.json's "smear" says why).
SMEAR_GROUP = "smear_group"
SMEAR_FOLD = "smear_fold"
SMEAR_COLUMNS = (SMEAR_GROUP, SMEAR_FOLD)
MIN_FOLDS = 3  # smear folds: test, validation and at least one training fold
MASKS = "masks"  # masks/<sha256[:16]>.png: the MASK_COLUMNS "mask" files
SAMPLES = "samples"  # samples/<stage>/<nn>.png: a few thumbnails per stage, for the dashboard
CACHE = "cache"  # decoded images: cache/<size>px.<key>.npy, cache/<size>px-masks.<key>.npy (engine.cache)
CACHE_KEY_CHARS = 16  # of the manifest's SHA-256 in a cache file's name


def smear_folds(rows: list[dict[str, Any]], source: str = MANIFEST) -> int:
    """How many smear folds the manifest's rows hold (SMEAR_FOLD is 0..K-1); DataError where it has none."""
    if not rows or SMEAR_FOLD not in rows[0]:
        raise DataError(f"{source} has no smear folds (no {SMEAR_FOLD} column), which split=smear needs: run "
                        "`python -m engine prepare` again to add them (data_report.json's \"smear\" says why a "
                        "prepared folder has none)")
    try:
        found = {int(r[SMEAR_FOLD]) for r in rows}
    except (TypeError, ValueError):
        raise DataError(f"{source}: {SMEAR_FOLD} holds a value that is not a fold number: run "
                        "`python -m engine prepare` again") from None
    count = max(found) + 1
    if found != set(range(count)) or count < MIN_FOLDS:
        raise DataError(f"{source}: smear folds {sorted(found)} are not 0..K-1 with K >= {MIN_FOLDS}: run "
                        "`python -m engine prepare` again")
    return count


def effective_split(rows: list[dict[str, Any]], split: str = "image", fold: int = 0, *,
                    source: str = MANIFEST) -> list[str]:
    """The split of each manifest row for a run's ``split`` and ``fold``: the one rule, used by every reader.

    ``split="image"``: the manifest's own ``split`` column (the 70/15/15 split by exact-duplicate group).
    ``split="smear"``: whole smear groups held out: test is smear fold ``fold``, validation fold
    ``(fold + 1) % K``, training the other K - 2 folds. DataError (naming ``source``) for a manifest
    without smear folds or a fold out of range.
    """
    if split == "image":
        return [r["split"] for r in rows]
    if split not in SPLIT_MODES:
        raise DataError(f"split={split!r}: one of {', '.join(SPLIT_MODES)}")
    count = smear_folds(rows, source)
    if not 0 <= fold < count:
        raise DataError(f"fold={fold} is out of range: {source} has {count} smear folds, 0 to {count - 1} (prepare "
                        "with --folds to change how many)")
    val = (fold + 1) % count
    return ["test" if f == fold else "val" if f == val else "train" for f in (int(r[SMEAR_FOLD]) for r in rows)]


# ----------------------------------------------------------------------------- the data a run trained on

# (manifest sha256, split, fold) -> split sha256, or None where the manifest cannot hold that split: the
# dashboard asks for every trial of a sweep, and they share one manifest.
_SPLIT_DIGESTS: dict[tuple[str, str, int], str | None] = {}


def _manifest_path(prepared: Path) -> Path:
    return Path(prepared) / MANIFEST


def _split_digest_of(data: bytes, whole: str, split: tuple[str, int], source: str) -> str | None:
    """SPLIT_SHA256 of a manifest's bytes (``whole``: their sha256) for ``split`` = (split, fold), remembered by
    content; None where the manifest cannot hold that split (engine.errors.DataError)."""
    key = (whole, *split)
    if key not in _SPLIT_DIGESTS:
        try:
            digest: str | None = split_digest(data, *split, source=source)
        except DataError:
            digest = None
        if len(_SPLIT_DIGESTS) > 64:
            _SPLIT_DIGESTS.clear()
        _SPLIT_DIGESTS[key] = digest
    return _SPLIT_DIGESTS[key]


def split_digest(manifest: bytes, split: str = "image", fold: int = 0, *, source: str = "manifest.csv") -> str:
    """SPLIT_SHA256 of a manifest's bytes: the sha256 of its sorted ``sha256, class, split`` rows, with each
    row's split the effective one of a run's ``split`` and ``fold`` (effective_split; "image":
    the manifest's own column). engine.errors.DataError, naming ``source``, where the manifest lacks that split."""
    try:
        rows = list(csv.DictReader(io.StringIO(manifest.decode())))
        if rows and not {"sha256", "class", "split"} <= rows[0].keys():
            raise ValueError("it lacks the sha256, class or split column")
    except (UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise DamagedFileError(source, f"damaged: not a CSV manifest ({exc})",
                               "run `python -m engine prepare` again to write it") from None
    if split != "image":
        for row, effective in zip(rows, effective_split(rows, split, fold, source=source), strict=True):
            row["split"] = effective
    lines = sorted(f"{r['sha256']},{r['class']},{r['split']}" for r in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def run_split(config: dict[str, Any]) -> tuple[str, int]:
    """(split, fold) of a run's config.json (a run from before these keys: the image split)."""
    split, fold = config.get("split", "image"), config.get("fold", 0)
    return (split if isinstance(split, str) else "image"), (fold if isinstance(fold, int) else 0)


def split_changed(run_dir: Path | str, manifest: Path | str) -> str:
    """The sentence for a run whose prepared ``manifest`` no longer holds the split it was trained on."""
    return (f"{run_dir} was trained on another split: {manifest} has changed since (prepared again with "
            "another seed or other images), so its validation and test images may include images it was "
            "trained on. Prepare the data again as it was (same images, same --seed) to use this run, or "
            "train a new run on the new split")


def split_unreadable(run_dir: Path | str, manifest: Path | str) -> str:
    return (f"{run_dir} was trained on {manifest}, which is no longer there or no longer readable: "
            "its split cannot be checked")


def manifest_record(prepared: Path, split: str = "image", fold: int = 0) -> dict[str, str]:
    """What ``config.json`` records of the prepared data a run trains on: {MANIFEST_SHA256, SPLIT_SHA256},
    the split digest of the run's effective split (its config's ``split`` and ``fold``)."""
    manifest = _manifest_path(prepared)
    data = manifest.read_bytes()
    return {MANIFEST_SHA256: hashlib.sha256(data).hexdigest(),
            SPLIT_SHA256: split_digest(data, split, fold, source=str(manifest))}


def manifest_check(run_dir: Path, read: Reader = read_file,
                   shown: Callable[[Path], str] = str) -> tuple[bool | None, str | None]:
    """(``manifest_matches``, ``manifest_problem``) of a run, its files read with ``read`` and named in the
    sentence by ``shown``. (None, None) where it cannot be told: no readable config.json, a run from before the
    record, or a manifest ``read`` declines (Declined)."""
    try:
        config = json.loads(read(Path(run_dir) / CONFIG))
        recorded, prepared = config[MANIFEST_SHA256], Path(str(config["data_dir"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, Declined):
        return None, None  # no run, or one trained before the record existed: nothing to compare
    manifest = _manifest_path(prepared)
    name = shown(Path(run_dir)), shown(manifest)
    try:
        data = read(manifest)
        current = hashlib.sha256(data).hexdigest()
        if current == recorded:
            return True, None
        split = _split_digest_of(data, current, run_split(config), str(manifest))
    except Declined:
        return None, None
    except (OSError, ValueError, KeyError):
        return False, split_unreadable(*name)
    if split is not None and split == config.get(SPLIT_SHA256):
        return True, None
    return False, split_changed(*name)


def manifest_matches(run_dir: Path) -> bool | None:
    """Is the prepared data's split still the one the run was trained on?

    True: yes (the manifest is unchanged, or only its bytes changed, not its split). False: the split
    changed or the manifest is gone, so the run's val/test scores on it would not be held out
    (``manifest_problem`` says which, in a sentence). None: cannot tell (no readable config.json, or a
    run trained before the record existed). Without torch, and the hash of one small file (its split digest
    remembered by content): cheap enough to ask for every run of a sweep.
    """
    return manifest_check(run_dir)[0]


def manifest_problem(run_dir: Path) -> str | None:
    """Why the run no longer matches its prepared data, as a sentence for the reader; None when it matches
    or cannot be told (``manifest_matches``)."""
    return manifest_check(run_dir)[1]


def require_same_split(run_dir: Path) -> None:
    """Raise ``engine.errors.DataError`` (``manifest_problem``) when the run's prepared data no longer holds
    the split it was trained on: its validation and test images could then include training images, and
    every score would look better than it is, silently. A run from before the record passes with a warning.
    """
    problem = manifest_problem(run_dir)
    if problem:
        raise DataError(problem)
    if manifest_matches(run_dir) is None and (Path(run_dir) / CONFIG).is_file():
        log.warning("%s does not record the manifest it was trained on: whether its prepared data still holds "
                    "its split cannot be checked", run_dir)
