"""Fabricated outputs in the engine's and tuning's folder contracts, for the dashboard's render benchmark.

``make_outputs(root, n_trials)`` writes a prepared folder, a sweep of ``n_trials`` trials
(complete, stopped early, cut by ASHA, running, errored and pending ones) whose best trial is
evaluated and has ``cams/``, and a second evaluated run to compare with. Every file and column
name comes from the contract modules (engine.runs, tuning.layout), so this data
cannot drift from what the engine and tuning write; the dashboard tests use real runs instead
(tests/support/fixture.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from PIL import Image

from engine import runs
from engine.metrics import classification_metrics
from engine.runs import CLASSES, MANIFEST, MANIFEST_COLUMNS, REPORT, SAMPLES
from tuning import layout, liveness

METHODS = ("gradcam", "gradcampp")
LAYERS = ("norm5",)


def _png(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    runs.atomic_write_bytes(path, buffer.getvalue())


def cell_image(cls: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A stand-in smear crop: a stained disc whose size and colour depend on the stage."""
    k = CLASSES.index(cls)
    pixels = rng.integers(200, 235, (size, size, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size * (0.12 + 0.07 * k)) ** 2
    colour = np.array([[120, 40, 160], [60, 60, 200], [160, 40, 90], [40, 120, 120]][k])
    pixels[disc] = np.clip(colour + rng.integers(-20, 20, 3), 0, 255)
    return pixels


def blob(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / size
    cy, cx = rng.uniform(0.3, 0.7, 2)
    heat = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(0.01, 0.05)))
    return (heat / heat.max()).astype(np.float32)


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The usual jet overlay (what pytorch_grad_cam's show_cam_on_image draws)."""
    colours = matplotlib.colormaps["jet"](heat)[..., :3]
    return (np.clip(0.5 * image / 255 + 0.5 * colours, 0, 1) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- cams


def write_cams(run: Path, *, seed: int = 0, image_size: int = 64) -> Path:
    """Fill ``run/cams`` from ``run/predictions.csv`` (test split) in the explain contract, with fabricated maps."""
    run = Path(run)
    cams = run / runs.CAMS
    rng = np.random.default_rng(seed)
    with (run / runs.PREDICTIONS).open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
    index, per_method = [], {m: [] for m in METHODS}
    sums = {c: np.zeros((image_size, image_size)) for c in CLASSES}
    seen = {c: 0 for c in CLASSES}
    for row in rows:
        image = cell_image(row["true"], rng, image_size)
        picture = runs.cam_image(row["sha256"])
        _png(cams / picture, image)
        correct = int(row["true"] == row["pred"])
        for method in METHODS:
            for layer in LAYERS:
                for target in runs.TARGETS:
                    heat = blob(image_size, rng)
                    buffer = io.BytesIO()
                    np.save(buffer, heat.astype(np.float16))
                    cam_map, cam_overlay = (runs.cam_map(method, layer, target, row["sha256"]),
                                            runs.cam_overlay(method, layer, target, row["sha256"]))
                    runs.atomic_write_bytes(cams / cam_map, buffer.getvalue())
                    _png(cams / cam_overlay, overlay(image, heat))
                    if target == "pred" and method == METHODS[0]:
                        sums[row["true"]] += heat
                        seen[row["true"]] += 1
                    index.append({"split": "test", "path": row["path"], "sha256": row["sha256"], "true": row["true"],
                                  "pred": row["pred"], "confidence": row["confidence"], "correct": correct,
                                  "method": method, "layer": layer, "target": target, "target_class": row[target],
                                  "image": picture, "overlay": cam_overlay, "map": cam_map})
            morf, lerf = float(rng.uniform(0, 0.5)), float(rng.uniform(0.3, 0.9))
            per_method[method].append({"path": row["path"], "sha256": row["sha256"], "true": row["true"],
                                       "pred": row["pred"], "correct": correct, "layer": LAYERS[0],
                                       "road_morf": morf, "road_lerf": lerf, "road_combined": lerf - morf,
                                       "confidence_change": float(rng.uniform(-0.2, 0.2))})
    runs.write_csv(cams / runs.CAMS_INDEX, runs.INDEX_COLUMNS, index)
    summary: dict[str, Any] = {"metrics": ["road_combined", "road_morf", "road_lerf"], "methods": {}, "ranking": {}}
    for i, method in enumerate(METHODS):
        runs.write_csv(cams / runs.CAMS_FAITHFULNESS / f"{method}.csv", runs.FAITHFULNESS_COLUMNS,
                       per_method[method])

        def stat(base: float) -> dict[str, Any]:
            return {"mean": base, "ci95": [base - 0.04, base + 0.04], "n": len(rows)}

        summary["methods"][method] = {
            "layer": LAYERS[0],
            "overall": {"road_combined": stat(0.30 - 0.05 * i), "road_morf": stat(0.2), "road_lerf": stat(0.6)},
            "per_stage": {c: {"road_combined": stat(0.25 + 0.03 * k - 0.05 * i), "road_morf": stat(0.2),
                              "road_lerf": stat(0.55)} for k, c in enumerate(CLASSES)},
        }
    summary["ranking"] = {s: list(METHODS) for s in ("all", *CLASSES)}
    runs.write_json(cams / runs.FAITHFULNESS_SUMMARY, summary)
    # Same shape as engine/explain writes: keyed by method.
    runs.write_json(cams / runs.SANITY, {m: {"method": m, "layer": LAYERS[0], "passed": True, "steps": []}
                                         for m in METHODS})
    stages = cams / runs.CAMS_STAGES
    for cls in CLASSES:
        mean = sums[cls] / max(1, seen[cls])
        mean = mean / mean.max() if mean.max() > 0 else mean
        _png(stages / cls / runs.STAGE_MEAN_MAP, (matplotlib.colormaps["jet"](mean)[..., :3] * 255).astype(np.uint8))
        picks = [r for r in index if r["true"] == cls and r["method"] == METHODS[0] and r["target"] == "pred"][:4]
        tiles = [np.concatenate([np.asarray(Image.open(cams / r["image"]).convert("RGB")),
                                 np.asarray(Image.open(cams / r["overlay"]).convert("RGB"))], 0) for r in picks]
        if tiles:
            _png(stages / cls / runs.STAGE_PANEL, np.concatenate(tiles, 1))
    runs.write_json(stages / runs.STAGES_SUMMARY, {c: {"n": seen[c]} for c in CLASSES})
    runs.write_json(cams / runs.CAMS_META, {
        "checkpoint": "best", "checkpoint_epoch": 1, "checkpoint_sha256": "0" * 64, "split": "test",
        "image_size": image_size, "methods": list(METHODS), "layers": list(LAYERS), "targets": list(runs.TARGETS),
        "images": len(rows), "images_per_s": {m: 10.0 for m in METHODS},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "synthetic": True})
    return cams


# ----------------------------------------------------------------------------- runs and sweeps


def write_history(run: Path, epochs: int, rng: np.random.Generator, final_f1: float, lr: float = 1e-3) -> None:
    rows = []
    for e in range(1, epochs + 1):
        progress_ = e / max(1, epochs)
        f1 = final_f1 * (0.5 + 0.5 * progress_) + rng.normal(0, 0.01)
        rows.append({"epoch": e, "train_loss": 1.4 * (1 - 0.6 * progress_), "train_acc": min(1, f1 + 0.05),
                     "val_loss": 1.3 * (1 - 0.5 * progress_), "val_acc": min(1, f1 + 0.02), "val_macro_f1": f1,
                     "lr": lr, "epoch_seconds": 10.0, "train_images_per_s": 300.0})
    runs.write_csv(run / runs.HISTORY, runs.HISTORY_COLUMNS, rows)


def write_evaluated_run(run: Path, rng: np.random.Generator, n: int = 80, skill: float = 1.5) -> None:
    """predictions.csv and metrics.json (computed by engine.metrics) for a fabricated run."""
    metrics: dict[str, Any] = {"classes": list(CLASSES), "checkpoint": "best", "checkpoint_epoch": 3, "splits": {}}
    all_rows = []
    for split in ("val", "test"):
        y = np.arange(n) % len(CLASSES)
        logits = rng.normal(0, 1, (n, len(CLASSES)))
        logits[np.arange(n), y] += skill
        proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        rows = []
        for i in range(n):
            cls = CLASSES[y[i]]
            sha = hashlib.sha256(f"{cls}-{i}".encode()).hexdigest()
            k = int(proba[i].argmax())
            rows.append({"split": split, "path": f"Original/{cls.title()}/{split}-{i:03d}.jpg", "sha256": sha,
                         "true": cls, "pred": CLASSES[k], "confidence": f"{proba[i, k]:.10f}",
                         **{f"prob_{c}": f"{proba[i, j]:.10f}" for j, c in enumerate(CLASSES)}})
        all_rows += rows
        m = classification_metrics(y, proba, CLASSES, n_bootstrap=100)
        m["misclassified"] = [{"path": r["path"], "sha256": r["sha256"], "true": r["true"], "pred": r["pred"],
                               "confidence": float(r["confidence"])} for r in rows if r["true"] != r["pred"]]
        metrics["splits"][split] = m
    runs.write_json(run / runs.METRICS, metrics)
    runs.write_csv(run / runs.PREDICTIONS, runs.PREDICTION_COLUMNS, all_rows)


def write_run(run: Path, rng: np.random.Generator, *, epochs: int, final_f1: float, lr: float,
              data_dir: str, status: str | None = runs.STATUS_COMPLETE) -> None:
    """A trained run's folder; ``status`` is COMPLETE's (one of runs.STATUSES), None for a run still training."""
    runs.write_json(run / runs.CONFIG, {"model": "densenet-tiny", "image_size": 64, "lr": lr, "epochs": epochs,
                                        "data_dir": data_dir, "preset": "tiny"})
    runs.write_json(run / runs.ENV, {"python": "3", "device": "cpu"})
    write_history(run, epochs, rng, final_f1, lr)
    if status is not None:
        runs.mark_complete(run, status=status, epochs=epochs)


def make_prepared(folder: Path, rng: np.random.Generator, per_class: int = 12) -> Path:
    rows = []
    for cls in CLASSES:
        for i in range(per_class):
            split = ("train", "train", "val", "test")[i % 4]
            sha = hashlib.sha256(f"{cls}{i}".encode()).hexdigest()
            rows.append({"path": f"Original/{cls.title()}/{i:03d}.jpg", "class": cls, "sha256": sha,
                         "group": sha[:16], "split": split, "width": 224, "height": 224})
        for i in range(4):
            _png(folder / SAMPLES / cls / f"{i:02d}.png", cell_image(cls, rng, 96))
    runs.write_csv(folder / MANIFEST, MANIFEST_COLUMNS, rows)
    counts = {c: {s: sum(r["class"] == c and r["split"] == s for r in rows) for s in runs.SPLITS} for c in CLASSES}
    runs.write_json(folder / REPORT, {
        "data_dir": "/data/ALL", "files_found": len(rows) + 1, "images": len(rows), "counts": counts,
        "modes_converted": {"RGBA": 1},
        "duplicate_groups": [{"sha256": rows[0]["sha256"], "paths": [rows[0]["path"], "Original/Benign/copy.jpg"],
                              "split": "train"}],
        "near_duplicates": [{"a": rows[1]["path"], "b": rows[2]["path"], "distance": 3}],
        "label_conflicts": [],
        "rejected": [{"path": "Original/Pro/broken.jpg", "class": "pro", "reason": "corrupt or truncated image"}],
    })
    return folder


def make_sweep(folder: Path, n_trials: int, rng: np.random.Generator, data_dir: str,
               name: str = "synthetic", status: str = layout.SWEEP_RUNNING) -> dict[str, Any]:
    """A sweep folder of ``n_trials`` trials in every state, as tuning writes them; {"best": trial_id or None}."""
    # Seven in ten complete (one of them ended by early stopping), then one each cut by ASHA, running, errored;
    # the last trial has not started.
    cycle = [layout.TRIAL_COMPLETE] * 7 + [layout.TRIAL_STOPPED, layout.TRIAL_RUNNING, layout.TRIAL_ERROR]
    epochs_of = {layout.TRIAL_COMPLETE: 6, layout.TRIAL_STOPPED: 2, layout.TRIAL_RUNNING: 3, layout.TRIAL_ERROR: 1,
                 layout.TRIAL_PENDING: 0}
    rows, best = [], None
    for i in range(n_trials):
        trial_id = f"trial_{i:04d}"
        state = cycle[i % len(cycle)] if i < n_trials - 1 else layout.TRIAL_PENDING
        lr = float(10 ** rng.uniform(-4, -2))
        params = {"lr": lr, "batch_size": int(rng.choice([16, 32, 64])),
                  "model": str(rng.choice(["densenet121", "densenet-tiny"])),
                  "dropout": round(float(rng.uniform(0, 0.5)), 3)}
        trial = folder / layout.TRIALS / trial_id
        epochs = epochs_of[state]
        f1 = float(np.clip(0.9 - abs(np.log10(lr) + 3) * 0.2 + rng.normal(0, 0.03), 0.1, 0.99))
        error = "CUDA out of memory" if state == layout.TRIAL_ERROR else None
        runs.write_json(trial / layout.TRIAL_JSON, {"trial_id": trial_id, "params": params, "status": state,
                                                    "gpu_ids": [], "error": error})
        row = {"trial_id": trial_id, "status": state,
               **{f"{layout.PARAM_PREFIX}{k}": v for k, v in params.items()},
               "val_macro_f1": "", "best_val_macro_f1": "", "val_acc": "", "epochs": epochs, "seconds": epochs * 10,
               "run_dir": f"{layout.TRIALS}/{trial_id}", "error": error or ""}
        if epochs:
            # Only a trial that finished training has COMPLETE; one cut by ASHA says so in trial.json alone.
            finished = None
            if state == layout.TRIAL_COMPLETE:
                finished = runs.STATUS_EARLY_STOPPED if i % 20 == 3 else runs.STATUS_COMPLETE
            write_run(trial, rng, epochs=epochs, final_f1=f1, lr=lr, data_dir=data_dir, status=finished)
            row.update(val_macro_f1=round(f1, 4), best_val_macro_f1=round(f1, 4), val_acc=round(f1 + 0.02, 4))
            if state == layout.TRIAL_COMPLETE and (best is None or f1 > best[1]):
                best = (trial_id, f1, params)
        rows.append(row)
    runs.write_csv(folder / layout.SUMMARY, layout.summary_columns(list(params)), rows)  # every trial has these keys
    runs.write_json(folder / layout.SWEEP_JSON, {
        "name": name, "space": "synthetic", "search": "random", "scheduler": "asha", "metric": "val_macro_f1",
        "mode": "max", "num_samples": n_trials, "status": status, "started_at": "2026-01-01T00:00:00",
        # A running sweep is driven by someone: here, the process that made it (tuning/liveness.py).
        **(liveness.driver_fields() if status == layout.SWEEP_RUNNING else {})})
    if best:
        runs.write_json(folder / layout.BEST, {"trial_id": best[0], "run_dir": f"{layout.TRIALS}/{best[0]}",
                                               "params": best[2], "best_val_macro_f1": best[1], "test": {}})
    return {"best": best[0] if best else None}


def make_outputs(root: Path, n_trials: int = 200, seed: int = 0) -> dict[str, Path]:
    """A complete fabricated outputs folder; returns the paths of its parts."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    prepared = make_prepared(root / "prepared", rng)
    sweep = root / "sweeps" / "synthetic"
    info = make_sweep(sweep, n_trials, rng, str(prepared))
    best = sweep / layout.TRIALS / info["best"]
    write_evaluated_run(best, rng, skill=2.0)
    write_cams(best, seed=seed)
    other = root / "runs" / "baseline"
    write_run(other, rng, epochs=5, final_f1=0.6, lr=1e-3, data_dir=str(prepared))
    write_evaluated_run(other, rng, skill=1.0)
    write_cams(other, seed=seed + 1)
    return {"root": root, "prepared": prepared, "sweep": sweep, "best": best, "other": other}
