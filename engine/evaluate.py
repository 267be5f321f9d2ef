"""``python -m engine evaluate RUN``: predictions and metrics of a trained run.

Writes ``predictions.csv`` (one row per val/test image) and ``metrics.json`` (the metrics of
each split, computed by scikit-learn from exactly those predictions); with leukocyte masks also
``baselines.json`` (colour-only models beside the network) and ``context.json`` (the network on
changed test images); last, the model card (``MODEL_CARD.md``, engine.modelcard) from all of them.

``probe_val_context`` is the short probe a sweep trial runs on its validation images at its end
(``val_context.json``): accuracy as they are, without leukocytes and with another stage's stain.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import baselines, context, modelcard, ood, runs
from . import features as feature_space
from .cache import load_mask_cache
from .errors import DataError
from .inference import (
    Data,
    model_from_checkpoint,
    predict_proba,
    read_checkpoint,
    resolve_device,
    switch,
    use_channels_last,
)
from .manifest import data_root, has_masks, read_manifest
from .metrics import classification_metrics, proportion_ci
from .runs import CLASSES, PREDICTION_COLUMNS

log = logging.getLogger(__name__)


def prediction_rows(split: str, rows: list[dict], proba: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for row, p in zip(rows, proba, strict=True):
        k = int(p.argmax())
        out.append({"split": split, "path": row["path"], "sha256": row["sha256"], "true": row["class"],
                    "pred": CLASSES[k], "confidence": f"{p[k]:.10f}",
                    **{f"prob_{c}": f"{p[i]:.10f}" for i, c in enumerate(CLASSES)}})
    return out


def misclassified(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"path": r["path"], "sha256": r["sha256"], "true": r["true"], "pred": r["pred"],
             "confidence": float(r["confidence"])} for r in rows if r["true"] != r["pred"]]


def evaluate(run_dir: Path, *, checkpoint: str = "best", splits: tuple[str, ...] = ("val", "test"),
             n_bootstrap: int = 1000, device: str = "auto", context_split: str = "test") -> dict[str, Any]:
    """Predict ``splits`` with a run's checkpoint; write predictions.csv and metrics.json.

    With leukocyte masks, colour-only baselines are fitted on the training split and scored on
    ``splits`` beside the network (``baselines.json``), and ``context_split`` is also classified
    without cells, without background, with another stage's stain and in greyscale
    (``context.json``; "" to skip).
    """
    run_dir = Path(run_dir)
    saved = runs.read_json(run_dir / runs.CONFIG)
    runs.require_same_split(run_dir)
    dev = resolve_device(device)
    state = read_checkpoint(run_dir, checkpoint)
    cfg, model = model_from_checkpoint(state, dev)
    checkpoint_epoch = int(state["epoch"])
    del state  # the model holds its own copy of the weights
    # Scored in full precision (no bf16), as predict and explain compute, so all three agree on a GPU too.
    channels_last = use_channels_last(cfg, dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = Data.load(Path(saved["data_dir"]), cfg.image_size, dev, switch(cfg.data_on_device, dev), split=cfg.split,
                     fold=cfg.fold, view=cfg.view)

    # One pass per split gives the pooled features; the classifier and the out-of-distribution
    # check both read them, so no image goes through the network twice.
    features = {s: ood.features(model, data.images, data.split[s], dev, batch_size=cfg.eval_batch_size,
                                channels_last=channels_last, desc=f"features {s}")
                for s in dict.fromkeys(("train", "val", *splits)) if len(data.split[s])}
    all_rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"classes": list(CLASSES), "checkpoint": checkpoint,
                              "checkpoint_epoch": checkpoint_epoch, "splits": {}}
    probabilities = {s: classify(model, f, dev) for s, f in features.items()}
    network_pred: dict[str, np.ndarray] = {}
    for split in splits:
        indices = data.split[split]
        if len(indices) == 0:
            log.warning("split %s is empty; skipped", split)
            continue
        proba = probabilities[split]
        rows = prediction_rows(split, [data.rows[i] for i in indices], proba)
        all_rows += rows
        # Metrics come from the rounded probabilities written to predictions.csv, so that
        # anyone recomputing them from that file gets exactly these numbers.
        stored = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
        y_true = [CLASSES.index(r["true"]) for r in rows]
        network_pred[split] = stored.argmax(1)
        metrics = classification_metrics(y_true, stored, CLASSES, n_bootstrap=n_bootstrap, seed=cfg.seed)
        metrics["misclassified"] = misclassified(rows)
        result["splits"][split] = metrics
        log.info("%s: accuracy %.4f [%.4f, %.4f]  macro-F1 %.4f  balanced %.4f  ECE %.4f", split,
                 metrics["accuracy"], *(x or 0 for x in metrics["accuracy_ci95"]), metrics["macro_f1"],
                 metrics["balanced_accuracy"], metrics["calibration"]["ece"])
    if cfg.view == "cells" and len(data.split["test"]):
        result["upload_view"] = score_upload_view(model, data, Path(saved["data_dir"]), cfg.image_size, dev,
                                                  batch_size=cfg.eval_batch_size, channels_last=channels_last)
    result["ood"] = fit_ood(run_dir, features, data.labels.cpu().numpy()[data.split["train"]])
    keep_features(run_dir, data, features, probabilities, seed=cfg.seed)
    runs.write_csv(run_dir / runs.PREDICTIONS, PREDICTION_COLUMNS, all_rows)
    runs.write_json(run_dir / runs.METRICS, result)
    checkpoint_info = {"checkpoint": checkpoint, "checkpoint_epoch": result["checkpoint_epoch"]}
    measure_baselines(run_dir, data, Path(saved["data_dir"]), cfg.image_size, seed=cfg.seed, network=network_pred,
                      checkpoint=checkpoint_info, view=cfg.view)
    if context_split in splits:
        measure_context(run_dir, model, data, Path(saved["data_dir"]), cfg.image_size, dev, split=context_split,
                        batch_size=cfg.eval_batch_size, channels_last=channels_last, checkpoint=checkpoint_info,
                        seed=cfg.seed, view=cfg.view)
    modelcard.write(run_dir)  # last: it reads every file written above
    return result


def classify(model: torch.nn.Module, features: np.ndarray, device: torch.device) -> np.ndarray:
    """Class probabilities (float64) from pooled features, by the model's own classifier."""
    with torch.no_grad():
        logits = model.classifier(torch.from_numpy(features).float().to(device))
    return torch.softmax(logits.double(), 1).cpu().numpy()


def keep_features(run_dir: Path, data: Data, features: dict[str, np.ndarray], probabilities: dict[str, np.ndarray],
                  *, seed: int) -> None:
    """Write ``features.npz`` (the pooled features of every split) and ``embedding.csv`` (their 2-D map).

    The out-of-distribution distance of each image comes from the ``ood.npz`` just written, so the
    map's flags are the ones Predict and metrics.json use.
    """
    labels = data.labels.cpu().numpy()
    stored = {s: feature_space.SplitFeatures.build(f, [data.rows[i] for i in data.split[s]], labels[data.split[s]])
              for s, f in features.items()}
    feature_space.save(run_dir / runs.FEATURES, stored)
    detector = ood.OODDetector.load(run_dir / ood.FILE)
    distance = {s: detector.score(f) for s, f in features.items()}
    rows = feature_space.embedding_rows(stored, probabilities, distance, detector.threshold, seed)
    runs.write_csv(run_dir / runs.EMBEDDING, runs.EMBEDDING_COLUMNS, rows)


def measure_baselines(run_dir: Path, data: Data, prepared: Path, size: int, *, seed: int,
                      network: dict[str, np.ndarray], checkpoint: dict[str, Any],
                      view: str = "field") -> dict[str, Any] | None:
    """Colour-only models fitted on the training split, scored on the evaluated splits: ``baselines.json``.

    On the same decoded images (the run's image size) the network saw; only images with a leukocyte
    mask take part, and the network is scored again on exactly those. Without masks nothing is written.
    """
    if not has_masks(data.rows).any():
        log.info("no leukocyte masks in %s: colour baselines not fitted", prepared)
        return None
    labels = data.labels.cpu().numpy()
    # All False for an image without a mask: baselines.usable leaves it out.
    masks = load_mask_cache(prepared, size, view)
    scored = [s for s in network if len(data.split[s])]
    splits = {s: data.split[s] for s in ("train", *scored)}
    summary = baselines.measure(data.images.cpu().numpy(), masks, labels, splits, CLASSES, seed=seed,
                                network={s: network[s] for s in scored})
    if summary is None:
        return None
    summary = {**checkpoint, "image_size": size, "seed": seed, **summary}
    runs.write_json(run_dir / runs.BASELINES, summary)
    for split in scored:
        net = summary.get("network", {}).get("splits", {}).get(split)
        words = "; ".join(f"{b['words']} {b['splits'][split]['accuracy']:.3f}" for b in summary["baselines"].values()
                          if b["headline"] and split in b["splits"])
        if net:
            log.info("%s, %d images with masks: the network %.3f; %s", split, net["n"], net["accuracy"], words)
    return summary


def measure_context(run_dir: Path, model: torch.nn.Module, data: Data, prepared: Path, size: int,
                    device: torch.device, *, split: str, batch_size: int, channels_last: bool,
                    checkpoint: dict[str, Any], seed: int = 0, view: str = "field") -> dict[str, Any] | None:
    """Accuracy on ``split`` as it is, without leukocytes, without background, with another stage's stain and in
    greyscale: ``context.json`` and ``.csv``.

    Only images with a leukocyte mask take part; without masks nothing is written.
    """
    present = has_masks(data.rows)
    index = data.split[split][present[data.split[split]]]
    if len(index) == 0:
        log.info("no leukocyte masks in %s: context reliance not measured", prepared)
        return None
    masks = np.asarray(load_mask_cache(prepared, size, view))[index]
    images = data.images[torch.from_numpy(index).to(data.images.device)].cpu().numpy()
    true = data.labels.cpu().numpy()[index]

    def predict(batch: np.ndarray) -> np.ndarray:
        return predict_proba(model, torch.from_numpy(batch), np.arange(len(batch)), device, batch_size=batch_size,
                             use_amp=False, channels_last=channels_last, desc="context")

    summary, proba, donors = context.measure(predict, images, masks, true, CLASSES, seed=seed)
    summary = {"split": split, **checkpoint, "image_size": size, "images": len(index),
               "images_without_mask": int(len(data.split[split]) - len(index)), **summary}
    rows = []
    for j, i in enumerate(index):
        row = {"split": split, "path": data.rows[i]["path"], "sha256": data.rows[i]["sha256"], "true": CLASSES[true[j]]}
        for variant, p in proba.items():
            k = int(p[j].argmax())
            row[f"pred_{variant}"], row[f"p_true_{variant}"] = CLASSES[k], f"{p[j, true[j]]:.6f}"
        donor = int(donors[j])
        row["donor_stage"] = CLASSES[true[donor]] if donor >= 0 else ""
        row["donor_sha256"] = data.rows[index[donor]]["sha256"] if donor >= 0 else ""
        rows.append(row)
    runs.write_json(run_dir / runs.CONTEXT, summary)
    runs.write_csv(run_dir / runs.CONTEXT_TABLE, context.TABLE_COLUMNS, rows)
    v = summary["variants"]
    log.info("context reliance (%s, %d images): accuracy %.3f as they are, %.3f without leukocytes, %.3f without "
             "background, %.3f with another stage's stain (%.3f follow the donor's stage), %.3f in greyscale", split,
             len(index), v["original"]["all"]["accuracy"], v["cells_removed"]["all"]["accuracy"],
             v["background_removed"]["all"]["accuracy"], v["stain_swapped"]["all"]["accuracy"],
             summary["stain_swapped"]["follows_donor"]["all"]["share"] or 0, v["greyscale"]["all"]["accuracy"])
    return summary


def score_upload_view(model: torch.nn.Module, data: Data, prepared: Path, size: int, device: torch.device, *,
                      batch_size: int, channels_last: bool) -> dict[str, Any] | None:
    """A cells-view run's test accuracy with each image's mask derived from its stain, as an upload's is
    (engine.predict.cells_view), not read from the prepared folder: how much a new image's view costs.

    None, with a warning, where the source images cannot be read (a prepared folder without its data).
    """
    from .predict import cells_view

    index = data.split["test"]
    try:
        root = data_root(prepared)
        images = np.stack([cells_view(root / data.rows[i]["path"], size) for i in index])
    except (OSError, ValueError, DataError) as exc:
        log.warning("the test images' source files cannot be read (%s): the upload view is not scored", exc)
        return None
    true = data.labels.cpu().numpy()[index]
    proba = predict_proba(model, torch.from_numpy(images), np.arange(len(index)), device, batch_size=batch_size,
                          use_amp=False, channels_last=channels_last, desc="upload view")
    correct = int((proba.argmax(1) == true).sum())
    stored = data.images[torch.from_numpy(index).to(data.images.device)].cpu().numpy()
    identical = float(np.mean([np.array_equal(a, b) for a, b in zip(images, stored, strict=True)]))
    log.info("test, the masks derived from the stain as for an upload: accuracy %.4f (%d images; %.0f%% of the views "
             "identical to the stored masks')", correct / len(index), len(index), 100 * identical)
    return {"split": "test", "n": len(index), "accuracy": correct / len(index),
            "accuracy_ci95": proportion_ci(correct, len(index)), "identical_views": identical,
            "how": "each test image's leukocyte mask derived from its stain (engine.masks.derive), as for an upload "
                   "to predict, instead of the prepared folder's mask; the same checkpoint"}


def fit_ood(run_dir: Path, features: dict[str, np.ndarray], train_labels: np.ndarray) -> dict[str, Any]:
    """Fit the out-of-distribution check on the training features, write ``ood.npz``; a summary for metrics.json."""
    train = features["train"]
    held_out = {s: f for s, f in features.items() if s in ("val", "test")}
    detector = ood.fit(train, train_labels, held_out.get("val", train))
    detector.save(run_dir / ood.FILE)
    summary = {"file": ood.FILE, "method": "mahalanobis (Lee et al. 2018), Ledoit-Wolf covariance",
               "threshold": detector.threshold, "quantile": detector.quantile,
               "flagged_fraction": {s: float(detector.flags(f).mean()) for s, f in held_out.items()}}
    log.info("out-of-distribution check: threshold %.2f (%.0f%% of val); test images flagged: %s",
             detector.threshold, 100 * detector.quantile, summary["flagged_fraction"].get("test"))
    return summary


def probe_val_context(run_dir: Path, *, checkpoint: str = "best", device: str = "auto",
                      stain: bool = True) -> dict[str, Any] | None:
    """The cells-or-context probe on a run's validation images with a leukocyte mask: ``val_context.json``.

    The ``checkpoint`` in fp32 classifies those images as they are, without the leukocytes and (``stain``) with
    another stage's stain (engine.context.probe). What a sweep trial measures once at its end, so that the sweep
    can weigh accuracy against reliance on the slide's context without touching the test split. Returns the
    summary written, whose ``scores`` are ``runs.VAL_CONTEXT_SCORES``; None (and nothing written) when no
    validation image has a mask.
    """
    started = time.monotonic()
    run_dir = Path(run_dir)
    saved = runs.read_json(run_dir / runs.CONFIG)
    prepared = Path(saved["data_dir"])
    rows = read_manifest(prepared, saved.get("split", "image"), saved.get("fold", 0))
    if not any(r["split"] == "val" and r["mask"] for r in rows):  # before any weights or images are read
        log.info("no leukocyte masks on the validation images of %s: the context probe of %s is not measured "
                 "(its val_acc_without_cells stays empty)", prepared, run_dir)
        return None
    dev = resolve_device(device)
    state = read_checkpoint(run_dir, checkpoint)
    cfg, model = model_from_checkpoint(state, dev)
    checkpoint_info = {"checkpoint": checkpoint, "checkpoint_epoch": int(state["epoch"])}
    del state
    channels_last = use_channels_last(cfg, dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = Data.load(prepared, cfg.image_size, dev, switch(cfg.data_on_device, dev), split=cfg.split, fold=cfg.fold,
                     view=cfg.view)
    split = data.split["val"]
    index = split[has_masks(data.rows)[split]]
    if len(index) == 0:
        log.info("no leukocyte masks on the validation images of %s: the context probe of %s is not measured "
                 "(its val_acc_without_cells stays empty)", prepared, run_dir)
        return None
    masks = np.asarray(load_mask_cache(prepared, cfg.image_size, cfg.view))[index]
    images = data.images[torch.from_numpy(index).to(data.images.device)].cpu().numpy()
    true = data.labels.cpu().numpy()[index]

    def predict(batch: np.ndarray) -> np.ndarray:
        return predict_proba(model, torch.from_numpy(batch), np.arange(len(batch)), dev, batch_size=cfg.eval_batch_size,
                             use_amp=False, channels_last=channels_last)

    summary = context.probe(predict, images, masks, true, CLASSES, stain=stain, seed=cfg.seed)
    variants = summary["variants"]
    follows = summary.get("stain_swapped", {}).get("follows_donor", {}).get("all", {})
    scores = {"val_probe_images": len(index), "val_acc_as_is": variants["original"]["all"]["accuracy"],
              "val_acc_without_cells": variants["cells_removed"]["all"]["accuracy"], "val_chance": summary["chance"],
              "val_context_gap": summary["context_gap"],
              "val_acc_stain_swapped": variants.get("stain_swapped", {}).get("all", {}).get("accuracy"),
              "val_follows_donor": follows.get("share")}
    summary = {"split": "val", **checkpoint_info, "image_size": cfg.image_size, "images": len(index),
               "images_without_mask": int(len(split) - len(index)), "scores": scores,
               "seconds": round(time.monotonic() - started, 2), **summary}
    runs.write_json(run_dir / runs.VAL_CONTEXT, summary)
    stained = scores["val_acc_stain_swapped"]
    log.info("context probe (val, %d images, %.1f s): accuracy %.3f as they are, %.3f without leukocytes (chance "
             "%.3f)%s", len(index), summary["seconds"], scores["val_acc_as_is"], scores["val_acc_without_cells"],
             scores["val_chance"], f", {stained:.3f} with another stage's stain" if stained is not None else "")
    return summary
