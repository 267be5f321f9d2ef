"""``explain_run`` fills ``RUN/cams/``; ``compare_runs`` puts two runs' maps side by side.

The folder is built in a hidden sibling and swapped in at the end, so a reader (the
dashboard) sees either the previous complete folder or the new one, never a mix. Its
layout is the contract documented in docs/run-folder.md (`cams/`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import locks, modelcard, preflight, runs
from ..cache import load_mask_cache
from ..errors import Interrupted, deferred_signals, needs_space, resource_error, signal_name
from ..inference import (
    Data,
    damaged_checkpoint_advice,
    load_checkpoint,
    parse_checkpoint,
    predict_proba,
    resolve_device,
    to_input,
)
from ..manifest import has_masks
from ..matching import match_images
from ..models import CAM_LAYERS
from ..runs import CLASSES, COMPARE_COLUMNS, FAITHFULNESS_COLUMNS, INDEX_COLUMNS, TARGETS
from . import figures, localisation
from .faithfulness import DEFAULT_PERCENTILES, METRICS, faithfulness_scores, summarize
from .methods import check_layer, compute_maps, get_method
from .sanity import sanity_check, similarity
from .stages import stage_summary

log = logging.getLogger(__name__)

LOCALISATION_COLUMNS = ("path", "sha256", "true", "pred", "correct", "method", "layer", "mask", "mask_fraction",
                        *localisation.SCORES, "centre_concentration", "centre_pointing", "shuffled_concentration",
                        "shuffled_pointing")
# Chosen by localisation on the real data (docs/explanations.md): LayerCAM at denseblock2 points at
# the leukocytes; Grad-CAM at norm5, the classic choice, is no better than a centred blob and stays
# for comparison. The first of each is the one scored for faithfulness, sanity and stage panels.
DEFAULT_METHODS = ("layercam", "gradcam")
DEFAULT_LAYERS = ("denseblock2", "norm5")


# ----------------------------------------------------------------------------- loading


@dataclasses.dataclass
class LoadedRun:
    """A run's model and the images of one split, with the model's predictions."""

    run_dir: Path
    model: nn.Module
    device: torch.device
    image_size: int
    checkpoint: dict[str, Any]  # name, epoch, sha256
    split: str
    rows: list[dict[str, Any]]  # manifest rows of the chosen images
    images: torch.Tensor  # uint8 NHWC, CPU
    true: np.ndarray
    proba: np.ndarray
    masks: np.ndarray | None = None  # bool (N, H, W) leukocyte masks at image_size; None: prepared without masks
    has_mask: np.ndarray | None = None  # bool (N,)

    @property
    def pred(self) -> np.ndarray:
        return self.proba.argmax(1)

    def inputs(self, index: np.ndarray | slice = slice(None)) -> torch.Tensor:
        """Normalised NCHW float inputs (CPU) of the chosen images."""
        return to_input(self.images[index], torch.device("cpu"), channels_last=False)


def checkpoint_info(run_dir: Path, which: str = "best") -> dict[str, Any]:
    """The checkpoint's name, epoch and the sha256 of its file: what a map was made from."""
    path = Path(run_dir) / runs.CHECKPOINTS / f"{which}.pt"
    advice = damaged_checkpoint_advice(which)
    data = runs.verified_bytes(path, advice)
    state = parse_checkpoint(data, path, advice)
    return {"checkpoint": which, "checkpoint_epoch": int(state["epoch"]),
            "checkpoint_sha256": hashlib.sha256(data).hexdigest()}


def load_run(run_dir: Path, *, checkpoint: str = "best", device: str = "auto", split: str = "test",
             limit: int = 0, seed: int = 0, batch_size: int = 64) -> LoadedRun:
    """Load a run's checkpoint and the images of ``split`` (a stratified ``limit`` of them)."""
    run_dir = Path(run_dir)
    runs.require_same_split(run_dir)  # maps of "test" images the run trained on would be read as held-out evidence
    dev = resolve_device(device)
    cfg, model = load_checkpoint(run_dir, checkpoint, dev)
    model.eval()
    prepared = Path(runs.read_json(run_dir / runs.CONFIG)["data_dir"])
    data = Data.load(prepared, cfg.image_size, dev, on_device=False, split=cfg.split, fold=cfg.fold, view=cfg.view)
    if split not in data.split:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(data.split)}")
    labels = data.labels.cpu().numpy()
    index = data.split[split][stratified(labels[data.split[split]], limit, seed)]
    if len(index) == 0:
        raise ValueError(f"split {split!r} of {prepared} has no images")
    images = data.images[torch.from_numpy(index)].cpu()
    proba = predict_proba(model, images, np.arange(len(index)), dev, batch_size=batch_size, use_amp=False,
                          channels_last=False)
    present = has_masks(data.rows)[index]
    masks = np.asarray(load_mask_cache(prepared, cfg.image_size, cfg.view))[index] if present.any() else None
    return LoadedRun(run_dir, model, dev, cfg.image_size, checkpoint_info(run_dir, checkpoint), split,
                     [data.rows[i] for i in index], images, labels[index], proba, masks,
                     present if present.any() else None)


def stratified(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of ``n`` items (all when n is 0 or too large), classes taken in turn.

    Round-robin over the classes (each shuffled by ``seed``) keeps the classes balanced
    for any ``n``, even below the number of classes, where a stratified split fails.
    """
    labels = np.asarray(labels)
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < n:
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop()))
    return np.sort(np.array(chosen, dtype=np.int64))


def _key(row: dict[str, Any]) -> str:
    return runs.image_key(row["sha256"])


# ----------------------------------------------------------------------------- explain


@dataclasses.dataclass(frozen=True)
class ExplainOptions:
    """What ``explain_run`` computes. ``methods``/``layers`` are CLI names; the first layer is the one
    scored for faithfulness, checked for sanity and summarised per stage (the first method's maps).
    ``limit``, ``faithfulness_images`` and ``sanity_images`` take stratified subsets (0: all).
    Localisation runs for every method x layer whenever the data has leukocyte masks."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    layers: tuple[str, ...] = DEFAULT_LAYERS
    split: str = "test"
    checkpoint: str = "best"
    targets: tuple[str, ...] = TARGETS
    limit: int = 0
    batch_size: int = 32
    device: str = "auto"
    faithfulness: bool = True
    faithfulness_images: int = 64
    road_percentiles: tuple[int, ...] = DEFAULT_PERCENTILES
    sanity: bool = True
    sanity_images: int = 8
    localisation: bool = True
    stages: bool = True
    top_k: int = 4
    panel_misclassified: int = 4
    multilayer_images: int = 4
    multilayer_method: str = "layercam"
    seed: int = 0

    def __post_init__(self) -> None:
        # Canonical names, checked once: every later step can trust them.
        object.__setattr__(self, "methods", tuple(dict.fromkeys(get_method(m).name for m in self.methods)))
        object.__setattr__(self, "layers", tuple(dict.fromkeys(check_layer(name) for name in self.layers)))
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "road_percentiles", tuple(self.road_percentiles))
        get_method(self.multilayer_method)
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown or not self.targets or not self.methods or not self.layers:
            raise ValueError(f"need at least one method, layer and target; targets are {', '.join(TARGETS)}")


def explain_run(run_dir: Path, options: ExplainOptions | None = None, **overrides: Any) -> Path:
    """Compute maps, scores and figures of a run into ``run_dir/cams``; return that folder.

    ``options`` (default ``ExplainOptions()``), with any of its fields overridden by keyword.
    """
    options = dataclasses.replace(options or ExplainOptions(), **overrides)
    run_dir = Path(run_dir)
    doing = f"explaining {run_dir}"
    preflight.require_writable(run_dir, doing)
    run = load_run(run_dir, checkpoint=options.checkpoint, device=options.device, split=options.split,
                   limit=options.limit, seed=options.seed)
    final = run_dir / runs.CAMS
    work = run_dir / f"{runs.CAMS_WORK_PREFIX}{os.getpid()}-{time.time_ns()}"
    # Locked before the folder exists, for as long as it exists: the sign, for the next explain's clean-up
    # below, that this one is alive; a killed explain's lock goes with its process.
    try:
        lock: locks.Lock | None = locks.try_lock(_lock_of(work), remove=True, purpose="explain")
    except locks.LockUnsupported as exc:
        log.warning("%s: if this explain is killed, its work folder is removed a day later", exc)
        lock = None
    swapped = False
    try:
        remove_abandoned_work(run_dir)
        need = cams_bytes(len(run.rows), run.image_size, options)
        preflight.require_space(run_dir, need, doing,
                                f"the maps of {len(run.rows)} images, {preflight.size_words(need)}")
        images_per_s = _write_cams(run, work, options)
        runs.write_json(work / runs.CAMS_META, {
            **run.checkpoint, **{k: list(v) if isinstance(v, tuple) else v
                                 for k, v in dataclasses.asdict(options).items()},
            "image_size": run.image_size, "images": len(run.rows), "images_per_s": images_per_s,
            "localisation": options.localisation and run.masks is not None,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": str(run.device),
        })
        _swap_in(work, final)
        swapped = True
        modelcard.write(run_dir)  # again, now with the localisation, faithfulness and sanity check
    except Interrupted as exc:
        raise Interrupted(exc.signum, f"{doing} was stopped by {signal_name(exc.signum)}; "
                          f"{_explain_kept(run_dir, swapped)}") from None
    except OSError as exc:
        raise resource_error(exc, doing, _explain_kept(run_dir, swapped, exc)) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if lock is not None:
            lock.release()
    log.info("explanations of %d images -> %s", len(run.rows), final)
    return final


def cams_bytes(images: int, size: int, options: ExplainOptions) -> int:
    """The estimate of docs/robustness.md#before-long-work for ``cams/``: per image, the input and one overlay
    per method x layer x target as uncompressed RGB and each map as float16, times 1.5 for the pairs, stage
    panels, masks and tables."""
    maps = len(options.methods) * len(options.layers) * len(options.targets)
    pixels = size * size
    return int(1.5 * images * (pixels * 3 * (1 + maps) + (pixels * 2 + 128) * maps))


def _explain_kept(run_dir: Path, swapped: bool, exc: OSError | None = None) -> str:
    """What a stopped explain kept and how to go on, for its one-line message."""
    fix = "free space and " if exc is not None and needs_space(exc) else ""
    if swapped:
        return (f"the new {runs.CAMS}/ is complete but {runs.MODEL_CARD} was not rewritten: {fix}run "
                f"`python -m engine card {run_dir}`")
    return (f"the previous {runs.CAMS}/ (if any) and the rest of the run are untouched and the unfinished maps were "
            f"removed: {fix}run `python -m engine explain {run_dir}` again")


# A work folder without a lock file comes from an engine older than these locks; one untouched this long
# is taken for abandoned (an explain of the whole test split with every method takes minutes, not a day).
UNLOCKED_WORK_STALE_S = 24 * 3600


def _lock_of(work: Path) -> Path:
    return work.with_name(work.name + runs.LOCK_SUFFIX)


def remove_abandoned_work(run_dir: Path) -> list[Path]:
    """Remove what explains that died (killed, out of memory, a crashed machine) left in ``run_dir``; return it.

    - a work folder whose lock file nobody holds: its explain is gone (a running one holds its lock),
    - a lock file without its folder, unheld,
    - a lock-less work folder untouched for ``UNLOCKED_WORK_STALE_S``,
    - the previous ``cams/`` of an interrupted swap, once a ``cams/`` is in place again (while it is
      missing, the swap may be in progress, or the old folder is all that is left of the explanations).

    A running explain's folder is never touched: its lock cannot be taken while its process lives.
    """
    removed: list[Path] = []
    has_cams = (run_dir / runs.CAMS).is_dir()
    for entry in sorted(run_dir.glob(f"{runs.CAMS_WORK_PREFIX}*")):
        if entry.name.startswith(runs.CAMS_OLD_PREFIX):
            if has_cams and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            continue
        if entry.name.endswith(runs.LOCK_SUFFIX):
            folder, lock_path = entry.with_name(entry.name[:-len(runs.LOCK_SUFFIX)]), entry
        elif entry.is_dir():
            folder, lock_path = entry, _lock_of(entry)
        else:
            continue
        if folder != entry and folder.exists():
            continue  # handled with its folder
        if lock_path.exists():
            try:
                held = locks.try_lock(lock_path, create=False, remove=True, purpose="clean-up")
            except (locks.LockHeld, locks.LockUnsupported, FileNotFoundError):
                continue  # alive (or already cleaned by another explain; or, without flock, cannot tell)
            with held:
                shutil.rmtree(folder, ignore_errors=True)
        else:
            try:
                if time.time() - folder.stat().st_mtime < UNLOCKED_WORK_STALE_S:
                    continue
            except FileNotFoundError:
                continue
            shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        log.info("removed what %d interrupted explain(s) left: %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def _swap_in(work: Path, final: Path) -> None:
    """Replace ``final`` with ``work``, keeping comparisons made earlier (``compare/``)."""
    if (final / runs.CAMS_COMPARE).is_dir() and not (work / runs.CAMS_COMPARE).exists():
        shutil.copytree(final / runs.CAMS_COMPARE, work / runs.CAMS_COMPARE)
    old = final.with_name(f"{runs.CAMS_OLD_PREFIX}{time.time_ns()}")
    with deferred_signals():  # a signal between the two renames would leave no cams/ at all
        if final.exists():
            final.rename(old)
        work.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _write_cams(run: LoadedRun, out: Path, options: ExplainOptions) -> dict[str, float]:
    methods, layers, targets = list(options.methods), list(options.layers), list(options.targets)
    batch_size, seed = options.batch_size, options.seed
    n = len(run.rows)
    pred, true = run.pred, run.true
    wrong = np.flatnonzero(pred != true)
    x = run.inputs()
    base = [{"split": run.split, "path": r["path"], "sha256": r["sha256"], "true": CLASSES[true[i]],
             "pred": CLASSES[pred[i]], "confidence": f"{run.proba[i, pred[i]]:.6f}", "correct": int(pred[i] == true[i]),
             "image": runs.cam_image(r["sha256"])} for i, r in enumerate(run.rows)]
    pictures = run.images.numpy()
    for i, row in enumerate(base):
        runs.atomic_write_bytes(out / row["image"], figures.png_bytes(pictures[i]))

    localise = options.localisation and run.masks is not None
    if localise:
        for i, row in enumerate(base):
            if run.has_mask[i]:
                runs.atomic_write_bytes(out / _mask_file(row), figures.png_bytes(run.masks[i].astype(np.uint8) * 255))
    located: list[dict[str, Any]] = []  # one localisation result per method x layer
    located_rows: list[dict[str, Any]] = []
    index_rows: list[dict[str, Any]] = []
    images_per_s: dict[str, float] = {}
    primary: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # method -> (pred maps, true maps) at layers[0]
    for method in methods:
        seconds = 0.0
        for layer in layers:
            start = time.perf_counter()
            # Rounded to the stored precision first: localisation, faithfulness and the panels score
            # exactly the maps a reader finds in cams/.
            maps = {"pred": figures.as_stored(compute_maps(run.model, x, method, layer, pred, batch_size=batch_size,
                                                           desc=f"{method} {layer}"))}
            seconds += time.perf_counter() - start
            # A correct image's true-class map is its predicted-class map: only the
            # misclassified ones need a second pass.
            maps["true"] = maps["pred"].copy()
            if "true" in targets and len(wrong):
                maps["true"][wrong] = figures.as_stored(compute_maps(run.model, x[wrong], method, layer, true[wrong],
                                                                     batch_size=batch_size))
            index_rows += _write_maps(out, base, pictures, maps, method, layer, targets, pred, true)
            if localise:
                result, rows = _localise(run, base, maps["pred"], method, layer, seed)
                located.append(result)
                located_rows += rows
            if layer == layers[0]:
                primary[method] = (maps["pred"], maps["true"])
        images_per_s[method] = round(n * len(layers) / seconds, 3)
        log.info("%s: %.1f images/s (%d images x %d layers, batch %d, %s)", method, images_per_s[method], n,
                 len(layers), batch_size, run.device)
        _write_pairs(out, base, pictures, primary[method], wrong, method, layers[0])
    runs.write_csv(out / runs.CAMS_INDEX, INDEX_COLUMNS, index_rows)
    if localise:
        _write_localisation(out, run, located, located_rows)

    stage_names = list(CLASSES)
    per_method: dict[str, list[dict[str, Any]]] = {}
    faithfulness, road_percentiles = options.faithfulness, options.road_percentiles
    chosen = stratified(true, options.faithfulness_images, seed) if faithfulness else np.zeros(0, dtype=np.int64)
    if faithfulness:
        for method in methods:
            scores = faithfulness_scores(run.model, x[chosen], primary[method][0][chosen], pred[chosen],
                                         percentiles=road_percentiles, batch_size=batch_size, seed=seed,
                                         desc=f"faithfulness {method}")
            rows = [{**{k: base[i][k] for k in ("path", "sha256", "true", "pred", "correct")}, "layer": layers[0],
                     **{m: f"{scores[m][j]:.6f}" for m in METRICS}} for j, i in enumerate(chosen)]
            runs.write_csv(out / runs.CAMS_FAITHFULNESS / f"{method}.csv", FAITHFULNESS_COLUMNS, rows)
            per_method[method] = rows
            log.info("%s: faithfulness of %d images (road_combined %.3f)", method, len(chosen),
                     float(np.mean(scores["road_combined"])))
    summary = summarize(per_method, stage_names, percentiles=road_percentiles, seed=seed)
    summary.update({**run.checkpoint, "target": "pred", "images": len(chosen)})
    runs.write_json(out / runs.FAITHFULNESS_SUMMARY, summary)

    results: dict[str, Any] = {}
    sanity = options.sanity
    if sanity:
        chosen = stratified(true, options.sanity_images, seed)
        for method in methods:
            results[method] = {**sanity_check(run.model, x[chosen], pred[chosen], method, layers[0],
                                              batch_size=batch_size, seed=seed),
                               "target": "pred", **run.checkpoint}
    runs.write_json(out / runs.SANITY, results)
    if sanity:
        log.info("sanity check: %s", ", ".join(f"{m} {'passed' if r['passed'] else 'FAILED'}"
                                               for m, r in results.items()))

    if options.stages:
        _write_stages(out, base, pictures, primary[methods[0]], methods[0], layers[0], top_k=options.top_k,
                      panel_misclassified=options.panel_misclassified, checkpoint=run.checkpoint, seed=seed)
    if options.multilayer_images > 0:
        _write_multilayer(out, run, base, x, options.multilayer_images, options.multilayer_method, seed)
    return images_per_s


def _mask_file(row: dict[str, Any]) -> str:
    return runs.cam_mask(row["sha256"])


def _localise(run: LoadedRun, base: list[dict[str, Any]], maps: np.ndarray, method: str, layer: str,
              seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Localisation of one method x layer's predicted-class maps: the summary entry and per-image rows."""
    keep = np.flatnonzero(run.has_mask)
    masks, maps, stages = run.masks[keep], maps[keep], run.true[keep]
    tolerance = localisation.pointing_tolerance(run.image_size)
    scores = localisation.scores(maps, masks, tolerance)
    baselines = localisation.baseline_scores(maps, masks, stages, tolerance, seed)
    result = {"method": method, "layer": layer,
              **localisation.summarize(scores, baselines, stages, CLASSES, seed=seed)}
    rows = []
    for j, i in enumerate(keep):
        row = {k: base[i][k] for k in ("path", "sha256", "true", "pred", "correct")}
        row.update(method=method, layer=layer, mask=_mask_file(base[i]), mask_fraction=f"{masks[j].mean():.6f}")
        row.update({score: f"{scores[score][j]:.6f}" for score in localisation.SCORES})
        for name, values in baselines.items():
            row.update({f"{name}_{score}": f"{values[score][j]:.6f}" for score in ("concentration", "pointing")})
        rows.append(row)
    log.info("%s at %s: concentration %.2f (centred blob %.2f), pointing %.2f (%s)", method, layer,
             result["all"]["map"]["concentration"]["mean"] or float("nan"),
             result["all"]["centre"]["concentration"]["mean"] or float("nan"),
             result["all"]["map"]["pointing"]["mean"] or float("nan"), result["all"]["verdict"])
    return result, rows


def _write_localisation(out: Path, run: LoadedRun, results: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    runs.write_csv(out / runs.LOCALISATION_TABLE, LOCALISATION_COLUMNS, rows)
    runs.write_json(out / runs.LOCALISATION, {
        **run.checkpoint, "target": "pred", "split": run.split, "image_size": run.image_size,
        "images": int(run.has_mask.sum()), "images_without_mask": int((~run.has_mask).sum()),
        "pointing_tolerance_px": localisation.pointing_tolerance(run.image_size),
        "centre_sigma": localisation.CENTRE_SIGMA, "scores": list(localisation.SCORES),
        "baselines": {"centre": f"a centred Gaussian, sigma {localisation.CENTRE_SIGMA:g} of the image side",
                      "shuffled": "the map of another test image of the same (true) stage"},
        "verdicts": localisation.VERDICTS, "results": results, "ranking": localisation.rank(results),
    })


def _write_maps(out: Path, base: list[dict[str, Any]], pictures: np.ndarray, maps: dict[str, np.ndarray],
                method: str, layer: str, targets: list[str], pred: np.ndarray, true: np.ndarray) -> list[dict]:
    rows = []
    encoded: dict[tuple[str, int], tuple[bytes, bytes]] = {}
    for target in targets:
        for i, row in enumerate(base):
            same = row["correct"] and target == "true"  # same map as for "pred": encode once
            key = ("pred" if same else target, i)
            if key not in encoded:
                cam = maps[key[0]][i]
                encoded[key] = (figures.png_bytes(figures.overlay(pictures[i], cam)), figures.npy_bytes(cam))
            overlay = runs.cam_overlay(method, layer, target, row["sha256"])
            cam_map = runs.cam_map(method, layer, target, row["sha256"])
            runs.atomic_write_bytes(out / overlay, encoded[key][0])
            runs.atomic_write_bytes(out / cam_map, encoded[key][1])
            target_class = pred[i] if target == "pred" else true[i]
            rows.append({**{k: row[k] for k in ("split", "path", "sha256", "true", "pred", "confidence", "correct")},
                         "method": method, "layer": layer, "target": target, "target_class": CLASSES[target_class],
                         "image": row["image"], "overlay": overlay, "map": cam_map})
    return rows


def _write_pairs(out: Path, base: list[dict[str, Any]], pictures: np.ndarray, maps: tuple[np.ndarray, np.ndarray],
                 wrong: np.ndarray, method: str, layer: str) -> None:
    """For each misclassified image: the predicted-class and true-class maps side by side."""
    for i in wrong:
        row = base[i]
        png = figures.side_by_side(pictures[i], figures.overlay(pictures[i], maps[0][i]),
                                   figures.overlay(pictures[i], maps[1][i]), pred=row["pred"], true=row["true"],
                                   confidence=float(row["confidence"]))
        runs.atomic_write_bytes(out / method / layer / runs.CAMS_PAIRS / f"{_key(row)}.png", png)


def _write_stages(out: Path, base: list[dict[str, Any]], pictures: np.ndarray, maps: tuple[np.ndarray, np.ndarray],
                  method: str, layer: str, *, top_k: int, panel_misclassified: int, checkpoint: dict[str, Any],
                  seed: int) -> None:
    rows = [{**r, "confidence": float(r["confidence"]), "correct": bool(r["correct"]),
             "overlay_pred": runs.cam_overlay(method, layer, "pred", r["sha256"]),
             "overlay_true": runs.cam_overlay(method, layer, "true", r["sha256"])} for r in base]
    by_sha = {r["sha256"]: i for i, r in enumerate(rows)}  # duplicates share one picture and map
    title = get_method(method).title
    summaries = {}
    for stage in CLASSES:
        summary, mean_map = stage_summary(rows, maps[0], stage, top_k=top_k, seed=seed)
        summaries[stage] = {"method": method, "layer": layer, "target": "pred", **checkpoint, **summary}
        folder = out / runs.CAMS_STAGES / stage
        if mean_map is None:
            mean_map = np.zeros(maps[0].shape[1:], dtype=np.float32)
        runs.atomic_write_bytes(folder / runs.STAGE_MEAN_MAP_ARRAY, figures.npy_bytes(mean_map))
        runs.atomic_write_bytes(folder / runs.STAGE_MEAN_MAP, figures.heatmap_png(
            mean_map, f"{stage}: mean {title} ({layer})\nover {summary['n_correct']} correct images"))
        top = [by_sha[e["sha256"]] for e in summary["top_confident"]]
        grid: list[list[figures.Cell | None]] = [
            [figures.Cell(pictures[i], f"conf {rows[i]['confidence']:.2f}") for i in top],
            [figures.Cell(figures.overlay(pictures[i], maps[0][i]), f"map: {rows[i]['pred']}") for i in top],
        ]
        labels = ["most confident\ncorrect", f"{title}\n(predicted)"] if top else []
        if not top:
            grid = []
        missed = [by_sha[e["sha256"]] for e in summary["misclassified"][:panel_misclassified]]
        for k, i in enumerate(missed, 1):
            grid.append([figures.Cell(pictures[i], f"pred {rows[i]['pred']} ({rows[i]['confidence']:.2f})"),
                         figures.Cell(figures.overlay(pictures[i], maps[0][i]), f"map: {rows[i]['pred']} (pred)"),
                         figures.Cell(figures.overlay(pictures[i], maps[1][i]), f"map: {stage} (true)")])
            labels.append(f"missed {k}")
        more = len(summary["misclassified"]) - len(missed)
        heading = (f"Stage {stage}: {title} at {layer}. {summary['n']} images, {summary['n_correct']} correct, "
                   f"{len(summary['misclassified'])} missed" + (f" ({more} not shown)" if more > 0 else ""))
        runs.atomic_write_bytes(folder / runs.STAGE_PANEL, figures.image_grid(grid or [[None]], heading, labels))
    runs.write_json(out / runs.CAMS_STAGES / runs.STAGES_SUMMARY, summaries)


def _write_multilayer(out: Path, run: LoadedRun, base: list[dict[str, Any]], x: torch.Tensor, n_images: int,
                      method: str, seed: int) -> None:
    """One figure per image: the input and the method's map at every layer, for a few images."""
    chosen = stratified(run.true, n_images, seed)
    maps = multilayer_maps(run.model, x[chosen], run.pred[chosen], method=method)
    for k, i in enumerate(chosen):
        png = multilayer_figure(run.images[i].numpy(), {layer: m[k] for layer, m in maps.items()}, method=method,
                                target_class=int(run.pred[i]), caption=f"{base[i]['true']} (pred {base[i]['pred']})")
        runs.atomic_write_bytes(out / runs.CAMS_MULTILAYER / f"{_key(base[i])}.png", png)


def multilayer_maps(model: nn.Module, inputs: torch.Tensor, target_classes: Sequence[int], *,
                    method: str = "layercam", layers: Sequence[str] = CAM_LAYERS) -> dict[str, np.ndarray]:
    """Maps of the same images and classes at each of ``layers``: {layer: (N, H, W)}."""
    return {layer: compute_maps(model, inputs, method, layer, target_classes) for layer in layers}


def multilayer_figure(image: np.ndarray, maps: dict[str, np.ndarray], *, method: str, target_class: int,
                      caption: str = "") -> bytes:
    """PNG of one image's maps across layers, shallow to deep, in one labelled row."""
    cells = [figures.Cell(image, "input")]
    cells += [figures.Cell(figures.overlay(image, cam), layer) for layer, cam in maps.items()]
    title = f"{get_method(method).title} for class {CLASSES[target_class]}" + (f": {caption}" if caption else "")
    return figures.image_grid([cells], title)


# ----------------------------------------------------------------------------- compare


def compare_runs(run_a: Path, run_b: Path, options: ExplainOptions | None = None, *, images: int = 8) -> Path:
    """Both runs' maps (predicted class) on the same ``images`` of the options' split, by their first method at their
    first layer (``explain``'s defaults unless told); return the folder.

    Images are matched by sha256, else by their path inside the class folder (an image and
    its segmented copy), so the runs may use different prepared folders, resolutions or
    image versions. Writes ``run_a/cams/compare/<run_b name>/``: compare.png, compare.csv
    (with the Spearman correlation of the two maps at run A's resolution), the overlays
    and meta.json with both checkpoints.
    """
    import cv2

    options = options or ExplainOptions()  # names checked there
    method, layer, split, seed = options.methods[0], options.layers[0], options.split, options.seed
    batch_size = options.batch_size
    a = load_run(Path(run_a), checkpoint=options.checkpoint, device=options.device, split=split, seed=seed)
    b = load_run(Path(run_b), checkpoint=options.checkpoint, device=options.device, split=split, seed=seed)
    pairs = match_images(a.rows, b.rows)
    if not pairs:
        raise ValueError(f"the {split} splits of {run_a} and {run_b} share no image (by sha256 or by path inside "
                         "the class folder)")
    common = np.array(sorted(pairs), dtype=np.int64)
    common = common[stratified(a.true[common], images, seed)]
    other = np.array([pairs[i] for i in common], dtype=np.int64)
    maps_a = compute_maps(a.model, a.inputs(common), method, layer, a.pred[common], batch_size=batch_size)
    maps_b = compute_maps(b.model, b.inputs(other), method, layer, b.pred[other], batch_size=batch_size)
    out = Path(run_a) / runs.CAMS / runs.CAMS_COMPARE / Path(run_b).name
    rows, grid, labels = [], [], []
    for k, (i, j) in enumerate(zip(common, other, strict=True)):
        row = a.rows[i]
        pic_a, pic_b = a.images[i].numpy(), b.images[j].numpy()
        over_a, over_b = figures.overlay(pic_a, maps_a[k]), figures.overlay(pic_b, maps_b[k])
        rel_a, rel_b = f"a/{_key(row)}.png", f"b/{_key(row)}.png"
        runs.atomic_write_bytes(out / rel_a, figures.png_bytes(over_a))
        runs.atomic_write_bytes(out / rel_b, figures.png_bytes(over_b))
        resized = cv2.resize(maps_b[k], maps_a[k].shape[::-1], interpolation=cv2.INTER_LINEAR)
        rho = similarity(maps_a[k], np.clip(resized, 0, 1))["spearman"]
        pa, pb = int(a.pred[i]), int(b.pred[j])
        rows.append({"path": row["path"], "sha256": row["sha256"], "true": CLASSES[a.true[i]],
                     "pred_a": CLASSES[pa], "confidence_a": f"{a.proba[i, pa]:.6f}", "pred_b": CLASSES[pb],
                     "confidence_b": f"{b.proba[j, pb]:.6f}", "spearman": f"{rho:.4f}",
                     "overlay_a": rel_a, "overlay_b": rel_b})
        grid.append([figures.Cell(pic_a, f"true {CLASSES[a.true[i]]}"),
                     figures.Cell(over_a, f"A: {CLASSES[pa]} ({a.proba[i, pa]:.2f})"),
                     figures.Cell(over_b, f"B: {CLASSES[pb]} ({b.proba[j, pb]:.2f})")])
        labels.append(f"rho {rho:.2f}")
    runs.write_csv(out / runs.COMPARE_TABLE, COMPARE_COLUMNS, rows)
    title = f"{get_method(method).title} at {layer}: A = {Path(run_a).name}, B = {Path(run_b).name}"
    runs.atomic_write_bytes(out / runs.COMPARE_FIGURE, figures.image_grid(grid, title, labels))
    runs.write_json(out / runs.CAMS_META, {
        "method": method, "layer": layer, "target": "pred", "split": split, "images": len(rows),
        "a": {"run": str(Path(run_a).resolve()), "image_size": a.image_size, **a.checkpoint},
        "b": {"run": str(Path(run_b).resolve()), "image_size": b.image_size, **b.checkpoint},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return out
