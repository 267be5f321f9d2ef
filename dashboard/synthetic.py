"""Synthetic outputs in the engine's and tuning's file contracts, for the benchmark and tests.

``make_outputs(root, n_trials)`` writes a prepared folder, a sweep of ``n_trials`` trials
(complete, running, stopped, errored and pending ones) whose best trial is evaluated and has
``cams/``, and a second evaluated run to compare with. ``write_cams(run)`` fills ``run/cams``
following the ``engine explain`` contract from an evaluated run's predictions; it is the
stand-in used while ``engine explain`` is not available.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CLASSES = ("benign", "early", "pre", "pro")
METHODS = ("gradcam", "gradcampp")
LAYERS = ("norm5",)
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr",
                   "epoch_seconds", "train_images_per_s")


def _json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _csv(path: Path, columns: list[str] | tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


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
    import matplotlib

    colours = matplotlib.colormaps["jet"](heat)[..., :3]
    return (np.clip(0.5 * image / 255 + 0.5 * colours, 0, 1) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- cams


def write_cams(run: Path, image_source: Any = None, *, seed: int = 0, image_size: int = 64) -> Path:
    """Fill ``run/cams`` from ``run/predictions.csv`` (test split) following the explain contract.

    ``image_source(row) -> uint8 HWC`` gives each image as the model saw it; by default a
    synthetic cell of the row's true stage.
    """
    run = Path(run)
    cams = run / "cams"
    rng = np.random.default_rng(seed)
    with (run / "predictions.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
    index, per_method = [], {m: [] for m in METHODS}
    sums = {c: np.zeros((image_size, image_size)) for c in CLASSES}
    seen = {c: 0 for c in CLASSES}
    for row in rows:
        image = image_source(row) if image_source else cell_image(row["true"], rng, image_size)
        sha16 = row["sha256"][:16]
        _png(cams / "images" / f"{sha16}.png", image)
        for method in METHODS:
            for layer in LAYERS:
                for target in ("pred", "true"):
                    heat = blob(image_size, rng)
                    stem = f"{method}/{layer}/{target}/{sha16}"
                    (cams / "maps" / stem).parent.mkdir(parents=True, exist_ok=True)
                    np.save(cams / "maps" / f"{stem}.npy", heat.astype(np.float16))
                    _png(cams / "overlays" / f"{stem}.png", overlay(image, heat))
                    if target == "pred" and method == METHODS[0]:
                        sums[row["true"]] += heat
                        seen[row["true"]] += 1
                    index.append({"split": "test", "path": row["path"], "sha256": row["sha256"], "true": row["true"],
                                  "pred": row["pred"], "confidence": row["confidence"],
                                  "correct": int(row["true"] == row["pred"]), "method": method, "layer": layer,
                                  "target": target, "target_class": row[target], "image": f"images/{sha16}.png",
                                  "overlay": f"overlays/{stem}.png", "map": f"maps/{stem}.npy"})
            per_method[method].append({"path": row["path"], "sha256": row["sha256"], "true": row["true"],
                                       "road_morf": float(rng.uniform(0, 0.5)),
                                       "road_lerf": float(rng.uniform(0.3, 0.9))})
    _csv(cams / "index.csv", ["split", "path", "sha256", "true", "pred", "confidence", "correct", "method", "layer",
                              "target", "target_class", "image", "overlay", "map"], index)
    summary: dict[str, Any] = {"metrics": ["road_combined", "road_morf", "road_lerf"], "methods": {}, "ranking": {}}
    for i, method in enumerate(METHODS):
        _csv(cams / "faithfulness" / f"{method}.csv", ["path", "sha256", "true", "road_morf", "road_lerf"],
             per_method[method])

        def stat(base: float) -> dict[str, Any]:
            return {"mean": base, "ci95": [base - 0.04, base + 0.04], "n": len(rows)}

        summary["methods"][method] = {
            "layer": "norm5",
            "overall": {"road_combined": stat(0.30 - 0.05 * i), "road_morf": stat(0.2), "road_lerf": stat(0.6)},
            "per_stage": {c: {"road_combined": stat(0.25 + 0.03 * k - 0.05 * i), "road_morf": stat(0.2),
                              "road_lerf": stat(0.55)} for k, c in enumerate(CLASSES)},
        }
    summary["ranking"] = {s: list(METHODS) for s in ("all", *CLASSES)}
    _json(cams / "faithfulness_summary.json", summary)
    # Same shapes as engine/explain writes: keyed by method and by stage.
    _json(cams / "sanity.json", {m: {"method": m, "layer": "norm5", "passed": True, "steps": []} for m in METHODS})
    import matplotlib

    for cls in CLASSES:
        mean = sums[cls] / max(1, seen[cls])
        mean = mean / mean.max() if mean.max() > 0 else mean
        _png(cams / "stages" / cls / "mean_map.png",
             (matplotlib.colormaps["jet"](mean)[..., :3] * 255).astype(np.uint8))
        picks = [r for r in index if r["true"] == cls and r["method"] == METHODS[0] and r["target"] == "pred"][:4]
        tiles = [np.concatenate([np.asarray(Image.open(cams / r["image"]).convert("RGB")),
                                 np.asarray(Image.open(cams / r["overlay"]).convert("RGB"))], 0) for r in picks]
        if tiles:
            _png(cams / "stages" / cls / "panel.png", np.concatenate(tiles, 1))
    _json(cams / "stages" / "summary.json", {c: {"n": seen[c]} for c in CLASSES})
    _json(cams / "meta.json", {"checkpoint": "best", "checkpoint_epoch": 1, "checkpoint_sha256": "0" * 64,
                               "split": "test", "image_size": image_size, "methods": list(METHODS),
                               "layers": list(LAYERS), "targets": ["pred", "true"], "images": len(rows),
                               "images_per_s": {m: 10.0 for m in METHODS},
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
    _csv(run / "history.csv", HISTORY_COLUMNS, rows)


def write_evaluated_run(run: Path, rng: np.random.Generator, n: int = 80, skill: float = 1.5) -> None:
    """predictions.csv and metrics.json (computed by engine.metrics) for a synthetic run."""
    from engine.metrics import classification_metrics

    rows, all_rows = [], []
    for split in ("val", "test"):
        y = np.arange(n) % 4
        logits = rng.normal(0, 1, (n, 4))
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
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {
            "classes": list(CLASSES), "checkpoint": "best", "checkpoint_epoch": 3, "splits": {}}
        metrics["splits"][split] = m
        _json(run / "metrics.json", metrics)
    _csv(run / "predictions.csv", ["split", "path", "sha256", "true", "pred", "confidence",
                                   *(f"prob_{c}" for c in CLASSES)], all_rows)


def write_run(run: Path, rng: np.random.Generator, *, epochs: int, final_f1: float, lr: float,
              data_dir: str, status: str | None = "complete") -> None:
    _json(run / "config.json", {"model": "densenet-tiny", "image_size": 64, "lr": lr, "epochs": epochs,
                                "data_dir": data_dir, "preset": "tiny"})
    _json(run / "env.json", {"python": "3", "device": "cpu"})
    write_history(run, epochs, rng, final_f1, lr)
    if status in ("complete", "stopped"):
        _json(run / "COMPLETE", {"status": status, "epochs": epochs})


def make_prepared(folder: Path, rng: np.random.Generator, per_class: int = 12) -> Path:
    rows = []
    for cls in CLASSES:
        for i in range(per_class):
            split = ("train", "train", "val", "test")[i % 4]
            sha = hashlib.sha256(f"{cls}{i}".encode()).hexdigest()
            rows.append({"path": f"Original/{cls.title()}/{i:03d}.jpg", "class": cls, "sha256": sha,
                         "group": sha[:16], "split": split, "width": 224, "height": 224})
        for i in range(4):
            _png(folder / "samples" / cls / f"{i:02d}.png", cell_image(cls, rng, 96))
    _csv(folder / "manifest.csv", ["path", "class", "sha256", "group", "split", "width", "height"], rows)
    counts = {c: {s: sum(r["class"] == c and r["split"] == s for r in rows) for s in ("train", "val", "test")}
              for c in CLASSES}
    _json(folder / "data_report.json", {
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
               name: str = "synthetic", status: str = "running") -> dict[str, Any]:
    statuses = ["complete"] * 7 + ["stopped", "running", "error"]
    rows, best = [], None
    for i in range(n_trials):
        trial_id = f"trial_{i:04d}"
        st = statuses[i % len(statuses)] if i < n_trials - 1 else "pending"
        lr = float(10 ** rng.uniform(-4, -2))
        params = {"lr": lr, "batch_size": int(rng.choice([16, 32, 64])),
                  "model": str(rng.choice(["densenet121", "densenet-tiny"])),
                  "dropout": round(float(rng.uniform(0, 0.5)), 3)}
        trial = folder / "trials" / trial_id
        epochs = {"complete": 6, "stopped": 2, "running": 3, "error": 1, "pending": 0}[st]
        f1 = float(np.clip(0.9 - abs(np.log10(lr) + 3) * 0.2 + rng.normal(0, 0.03), 0.1, 0.99))
        _json(trial / "trial.json", {"trial_id": trial_id, "params": params, "status": st, "gpu_ids": [],
                                     "error": "CUDA out of memory" if st == "error" else None})
        row = {"trial_id": trial_id, "status": st, **{f"param_{k}": v for k, v in params.items()},
               "val_macro_f1": "", "best_val_macro_f1": "", "val_acc": "", "epochs": epochs, "seconds": epochs * 10,
               "run_dir": f"trials/{trial_id}", "error": "CUDA out of memory" if st == "error" else ""}
        if epochs:
            write_run(trial, rng, epochs=epochs, final_f1=f1, lr=lr, data_dir=data_dir,
                      status=st if st in ("complete", "stopped") else None)
            row.update(val_macro_f1=round(f1, 4), best_val_macro_f1=round(f1, 4), val_acc=round(f1 + 0.02, 4))
            if st == "complete" and (best is None or f1 > best[1]):
                best = (trial_id, f1, params)
        rows.append(row)
    _csv(folder / "summary.csv", list(rows[0]), rows)
    _json(folder / "sweep.json", {"name": name, "space": "synthetic", "search": "random", "scheduler": "asha",
                                  "metric": "val_macro_f1", "mode": "max", "num_samples": n_trials, "status": status,
                                  "started_at": "2026-01-01T00:00:00"})
    if best:
        _json(folder / "best.json", {"trial_id": best[0], "run_dir": f"trials/{best[0]}", "params": best[2],
                                     "best_val_macro_f1": best[1], "test": {}})
    return {"best": best[0] if best else None}


def make_outputs(root: Path, n_trials: int = 200, seed: int = 0) -> dict[str, Path]:
    """A complete synthetic outputs folder; returns the paths of its parts."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    prepared = make_prepared(root / "prepared", rng)
    sweep = root / "sweeps" / "synthetic"
    info = make_sweep(sweep, n_trials, rng, str(prepared))
    best = sweep / "trials" / info["best"]
    write_evaluated_run(best, rng, skill=2.0)
    write_cams(best, seed=seed)
    other = root / "runs" / "baseline"
    write_run(other, rng, epochs=5, final_f1=0.6, lr=1e-3, data_dir=str(prepared))
    write_evaluated_run(other, rng, skill=1.0)
    write_cams(other, seed=seed + 1)
    return {"root": root, "prepared": prepared, "sweep": sweep, "best": best, "other": other}
