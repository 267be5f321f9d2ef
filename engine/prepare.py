"""``prepare(data_dir, out)``: find the class folders, check every file, deduplicate, split, group by smear.

Writes ``out/manifest.csv`` (the one source of the split, and of the smear groups and folds: engine.smears),
``out/data_report.json``, the leukocyte masks and a few sample thumbnails (the names: engine.runs). Every
file is read through engine.decoding once, in worker processes; readers use engine.manifest and engine.cache.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import smears
from .decoding import MAX_ASPECT, MAX_FILE_BYTES, MAX_PIXELS, decode, load_image, open_rgb, read_regular
from .discover import class_root, find_class_dirs, find_mask_dir, mask_class_dirs, scan_folder, shown
from .errors import DataError, deferred_signals
from .progress import parallel_map
from .runs import (
    CLASSES,
    MANIFEST,
    MANIFEST_COLUMNS,
    MASK_COLUMNS,
    MASKS,
    MIN_FOLDS,
    REPORT,
    SAMPLES,
    SMEAR_COLUMNS,
    SMEAR_FOLD,
    SMEAR_GROUP,
    SPLITS,
    atomic_write_bytes,
    atomic_write_text,
    write_json,
)

log = logging.getLogger(__name__)

NEAR_DUPLICATE_BITS = 4  # perceptual-hash Hamming distance that counts as a near-duplicate
SAMPLES_PER_CLASS = 8


@dataclass(frozen=True)
class Checked:
    path: str
    cls: str
    sha256: str
    width: int = 0
    height: int = 0
    mode: str = ""
    phash: int = 0
    reason: str = ""
    mask_png: bytes = b""  # the chosen leukocyte mask, 0/255 PNG; empty without one
    mask_source: str = ""
    mask_fraction: float = 0.0
    segmented_problem: str = ""
    derived_problem: str = ""
    mask_agreement: float | None = None
    mask_sides: tuple[int, ...] = ()  # box side of each leukocyte component, source pixels (masks.component_sides)
    oriented: bool = False  # turned upright by its EXIF orientation
    colour: tuple[float, ...] = ()  # engine.smears.FEATURES: background colour and brightness statistics
    colour_from_background: bool = False  # False: taken over the whole image (no mask, or too little background)


@dataclass(frozen=True)
class FileJob:
    full: str
    rel: str
    cls: str
    mask_file: str | None = None  # the segmented copy to make the mask from; None: no mask wanted
    derive_masks: bool = True  # derive a mask from the image where the segmented one cannot serve


def _check_mask(job: FileJob, image: Image.Image) -> tuple[dict[str, Any], np.ndarray | None]:
    """The Checked fields of the image's leukocyte mask, and the mask itself (None without one)."""
    from . import masks

    segmented, problem = None, ""
    if not job.mask_file or not os.path.lexists(job.mask_file):
        problem = "missing"
    else:
        try:
            # The images' rules: only a regular file, no symbolic link, decoded like the image.
            segmented = np.asarray(open_rgb(read_regular(job.mask_file, follow_symlinks=False)))
        except ValueError as exc:
            problem = f"unreadable: {exc}"
    chosen = masks.choose(np.asarray(image), segmented, problem, job.derive_masks)
    fields: dict[str, Any] = {"mask_source": chosen.source, "mask_fraction": chosen.fraction,
                              "segmented_problem": chosen.segmented_problem, "derived_problem": chosen.derived_problem,
                              "mask_agreement": chosen.agreement}
    if chosen.mask is not None:
        fields["mask_sides"] = tuple(masks.component_sides(chosen.mask))
        buffer = io.BytesIO()
        Image.fromarray(chosen.mask.astype(np.uint8) * 255).save(buffer, format="PNG")
        fields["mask_png"] = buffer.getvalue()
    return fields, chosen.mask


def _check_file(job: FileJob) -> Checked:
    try:
        return _check_file_unguarded(job)
    except MemoryError:
        # One huge file must not end prepare: it is rejected like any other unusable file.
        return Checked(job.rel, job.cls, "", reason="out of memory while checking it")


def _check_file_unguarded(job: FileJob) -> Checked:
    rel, cls = job.rel, job.cls
    try:
        # Inside the data folder a symbolic link is never followed (scan_folder reports them).
        data = read_regular(job.full, follow_symlinks=False)
    except ValueError as exc:
        return Checked(rel, cls, "", reason=str(exc))
    sha = hashlib.sha256(data).hexdigest()
    try:
        decoded = decode(data)
    except ValueError as exc:
        return Checked(rel, cls, sha, reason=str(exc))
    image = decoded.image
    mask, mask_array = _check_mask(job, image) if job.mask_file is not None else ({}, None)
    # The smear statistics come from the pixels decoded here: prepare decodes each file once.
    colour, from_background = smears.colour_statistics(np.asarray(image), mask_array)
    extra = {**mask, "oriented": decoded.oriented, "colour": colour, "colour_from_background": from_background}
    try:
        import imagehash
    except ImportError:  # a bare GPU machine: prepare still runs, without the near-duplicate check
        return Checked(rel, cls, sha, image.width, image.height, decoded.mode, phash=-1, **extra)
    phash = int(str(imagehash.phash(image)), 16)
    return Checked(rel, cls, sha, image.width, image.height, decoded.mode, phash, **extra)


def split_groups(
    groups: dict[str, str], seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> dict[str, str]:
    """Assign each duplicate group (id -> class) to a split, stratified by class."""
    from sklearn.model_selection import train_test_split

    ids = sorted(groups)
    labels = [groups[g] for g in ids]
    _, val_frac, test_frac = fractions
    if abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise DataError(f"split fractions must be positive and sum to 1, got {fractions}")
    train_ids, rest_ids, _, rest_labels = train_test_split(
        ids, labels, test_size=val_frac + test_frac, stratify=labels, random_state=seed
    )
    val_ids, test_ids = train_test_split(
        rest_ids, test_size=test_frac / (val_frac + test_frac), stratify=rest_labels,
        random_state=seed,
    )
    assignment = {g: "train" for g in train_ids}
    assignment.update({g: "val" for g in val_ids})
    assignment.update({g: "test" for g in test_ids})
    return assignment


def near_duplicate_pairs(hashes: list[int], max_bits: int = NEAR_DUPLICATE_BITS) -> list[tuple[int, int, int]]:
    """Index pairs whose 64-bit perceptual hashes differ in at most ``max_bits`` bits."""
    if len(hashes) < 2:
        return []
    values = np.array(hashes, dtype=np.uint64)
    pairs = []
    for i in range(len(values) - 1):
        distance = np.bitwise_count(values[i + 1:] ^ values[i])
        for j in np.nonzero(distance <= max_bits)[0]:
            pairs.append((i, i + 1 + int(j), int(distance[j])))
    return pairs



def prepare(data_dir: Path, out: Path, seed: int = 0,
            fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), *,
            masks: Path | str | None = "auto", derive_masks: bool = True,
            folds: int = smears.DEFAULT_FOLDS) -> dict[str, Any]:
    """Validate, deduplicate and split ``data_dir``; write the manifest and the report.

    ``masks``: a folder of segmented copies (same class folders and file names) whose
    leukocytes become the images' masks; "auto" uses ``Segmented/`` beside ``Original/``;
    None or "none": no masks. ``derive_masks``: where a segmented copy cannot serve, derive
    the mask from the image itself (``engine.masks``). ``folds``: how many smear folds
    (``SMEAR_COLUMNS``, engine.smears) to hold whole smear groups out in.
    """
    if folds < MIN_FOLDS:
        raise DataError(f"--folds {folds}: at least {MIN_FOLDS} smear folds are needed (test, validation "
                        "and training folds)")
    out = Path(out)
    class_dirs = find_class_dirs(Path(data_dir).resolve())
    # Paths are relative to the folder holding the class folders, so ALL/ and ALL/Original/
    # give the same manifest.
    data_dir = class_root(class_dirs)
    mask_dir = find_mask_dir(data_dir, masks)
    mask_dirs = mask_class_dirs(mask_dir) if mask_dir else {}
    jobs = []
    # Entries rejected before decoding: links, special files, unreadable folders, names that are not UTF-8.
    refused: list[Checked] = []
    hidden = 0
    for cls, folder in class_dirs.items():
        scan = scan_folder(folder)
        hidden += scan.hidden
        if not scan.files and not scan.skipped:
            raise DataError(f"class folder {folder} is empty: every class needs images")
        for path, reason in scan.skipped:
            refused.append(Checked(shown(path.relative_to(data_dir).as_posix()), cls, "", reason=reason))
        for f in scan.files:
            rel = f.relative_to(data_dir).as_posix()
            try:
                rel.encode("utf-8")  # the manifest is UTF-8 text: a name that is not cannot be written to it
            except UnicodeEncodeError:
                refused.append(Checked(shown(rel), cls, "", reason="file name is not valid UTF-8: rename it"))
                continue
            # A mask pairs with its image by class folder and path inside it.
            # "": a mask is wanted but the mask folder lacks this class (reported as missing).
            mask_file = None if mask_dir is None else str(mask_dirs[cls] / f.relative_to(folder)) \
                if cls in mask_dirs else ""
            jobs.append(FileJob(str(f), rel, cls, mask_file, derive_masks))

    checked = list(parallel_map(_check_file, jobs, "prepare: hash and decode"))
    checked += refused

    good = [c for c in checked if not c.reason]
    rejected = [{"path": c.path, "class": c.cls, "reason": c.reason} for c in checked if c.reason]
    for cls in CLASSES:
        if not any(c.cls == cls for c in good):
            raise DataError(
                f"class {cls} ({class_dirs[cls]}) has no usable image; rejected: "
                + "; ".join(f"{r['path']}: {r['reason']}" for r in rejected if r["class"] == cls)
            )

    by_hash: dict[str, list[Checked]] = defaultdict(list)
    for c in good:
        by_hash[c.sha256].append(c)
    # A group is one distinct content; its class is the majority label (ties: class order).
    group_class = {}
    conflicts = []
    for sha, members in by_hash.items():
        counts = Counter(m.cls for m in members)
        group_class[sha[:16]] = min(counts, key=lambda k: (-counts[k], CLASSES.index(k)))
        if len(counts) > 1:
            conflicts.append({"sha256": sha, "paths": [m.path for m in members],
                              "classes": sorted(counts)})
    split_of = split_groups(group_class, seed, fractions)

    ordered = sorted(good, key=lambda c: (CLASSES.index(c.cls), c.path))
    rows = [{"path": c.path, "class": c.cls, "sha256": c.sha256, "group": c.sha256[:16],
             "split": split_of[c.sha256[:16]], "width": c.width, "height": c.height, **_mask_fields(c)}
            for c in ordered]

    unique = sorted(by_hash)
    near_checked = all(c.phash >= 0 for c in good)
    if not near_checked:
        log.warning("prepare: ImageHash is not installed; near-duplicates were not looked for")
    near_pairs = near_duplicate_pairs([by_hash[s][0].phash for s in unique]) if near_checked else []
    near = [{"a": by_hash[unique[i]][0].path, "b": by_hash[unique[j]][0].path, "distance": d}
            for i, j, d in near_pairs]
    smear_report = _smear_groups(ordered, rows, [(unique[i], unique[j]) for i, j, _ in near_pairs],
                                 folds=folds, seed=seed)

    # A signal here would leave the new masks or manifest beside the old report: the writes (seconds at most)
    # finish first, and the signal is handled after them.
    with deferred_signals():
        out.mkdir(parents=True, exist_ok=True)
        if mask_dir:
            for c in good:
                if c.mask_png:
                    atomic_write_bytes(out / _mask_fields(c)["mask"], c.mask_png)
        buffer = io.StringIO()
        columns = (MANIFEST_COLUMNS + (MASK_COLUMNS if mask_dir else ())
                   + (SMEAR_COLUMNS if smear_report["made"] else ()))
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out / MANIFEST, buffer.getvalue())
        counts = {cls: {s: 0 for s in SPLITS} for cls in CLASSES}
        for r in rows:
            counts[r["class"]][r["split"]] += 1
        report = {
            "data_dir": str(data_dir),
            "class_dirs": {c: str(p) for c, p in class_dirs.items()},
            "seed": seed,
            "fractions": dict(zip(SPLITS, fractions, strict=True)),
            "files_found": len(checked),
            "images": len(rows),
            "counts": counts,
            "hidden_ignored": hidden,
            "modes_converted": dict(Counter(c.mode for c in good if c.mode != "RGB")),
            "orientation_corrected": sum(c.oriented for c in good),
            "limits": {"max_pixels": MAX_PIXELS, "max_aspect": MAX_ASPECT, "max_file_bytes": MAX_FILE_BYTES},
            "duplicate_groups": [
                {"sha256": sha, "paths": [m.path for m in ms], "split": split_of[sha[:16]]}
                for sha, ms in sorted(by_hash.items()) if len(ms) > 1
            ],
            "label_conflicts": conflicts,
            "near_duplicates": near,
            "near_duplicate_max_bits": NEAR_DUPLICATE_BITS,
            "near_duplicates_checked": near_checked,
            "rejected": rejected,
            "masks": mask_report(good, mask_dir, derive_masks),
            "smear": smear_report,
        }
        write_json(out / REPORT, report)
    _write_samples(data_dir, rows, out / SAMPLES)
    log.info("prepare: %d images, %d rejected, %d duplicate groups, %d near-duplicate pairs -> %s",
             len(rows), len(rejected), len(report["duplicate_groups"]), len(near), out)
    return report


def _smear_groups(ordered: list[Checked], rows: list[dict[str, Any]], near: list[tuple[str, str]], *,
                  folds: int, seed: int) -> dict[str, Any]:
    """Fill ``rows``' SMEAR_COLUMNS (engine.smears) and return the report's "smear" section.

    ``ordered`` are the images in the rows' order; ``near`` the near-duplicate pairs by sha256. Where the
    data cannot fill ``folds`` folds, the columns are left out and the section says why.
    """
    first: dict[str, int] = {}
    links = [(first.setdefault(c.sha256, i), i) for i, c in enumerate(ordered)]  # exact duplicates
    links += [(first[a], first[b]) for a, b in near]
    features = np.array([c.colour for c in ordered], dtype=np.float64)
    stages = [c.cls for c in ordered]
    try:
        grouping = smears.make_groups(features, stages, links, classes=CLASSES, folds=folds, seed=seed)
    except ValueError as exc:
        log.warning("prepare: no smear folds (%s); split=smear will not be available", exc)
        return {"made": False, "problem": str(exc), "folds": folds, "seed": seed}
    for row, group, fold in zip(rows, grouping.group, grouping.fold, strict=True):
        row[SMEAR_GROUP], row[SMEAR_FOLD] = group, fold
    background = sum(c.colour_from_background for c in ordered)
    check = smears.shortcut_check(features, stages, grouping.fold, classes=CLASSES, seed=seed)
    log.info("prepare: %d smear groups in %d folds; background-colour forest %.1f%% by image, %.1f%% by smear fold",
             grouping.report["groups"], folds, 100 * check["image_split"]["mean"], 100 * check["smear_split"]["mean"])
    return {"made": True, "problem": None, "seed": seed, **grouping.report,
            "statistics_from": {"background": background, "whole_image": len(ordered) - background},
            "shortcut_check": check}


def _mask_fields(c: Checked) -> dict[str, Any]:
    if not c.mask_png:
        return {"mask": "", "mask_source": "", "mask_fraction": ""}
    return {"mask": f"{MASKS}/{c.sha256[:16]}.png", "mask_source": c.mask_source,
            "mask_fraction": f"{c.mask_fraction:.6f}"}


def _component_stats(masked: list[Checked]) -> dict[str, Any]:
    """How many leukocyte components an image's mask holds and how large their boxes are (source pixels): what the
    cells view (engine.cells) sizes its windows by."""
    sides = [side for c in masked for side in c.mask_sides]
    return {"components_per_image_median": float(np.median([len(c.mask_sides) for c in masked])) if masked else None,
            "component_side_px_median": float(np.median(sides)) if sides else None,
            "component_side_px_p90": float(np.percentile(sides, 90)) if sides else None}


def mask_report(good: list[Checked], mask_dir: Path | None, derive_masks: bool) -> dict[str, Any]:
    """Per stage: how many images have a mask of each source, and why the others' masks could not serve."""
    from . import masks

    if mask_dir is None:
        return {"dir": None}
    per_class: dict[str, dict[str, Any]] = {}
    problems = []
    for cls in CLASSES:
        members = [c for c in good if c.cls == cls]
        sources = Counter(c.mask_source or "none" for c in members)
        # Why a segmented copy could not serve, by kind (the number in the reason varies per image).
        unusable = Counter(c.segmented_problem.split(" (")[0] for c in members if c.segmented_problem)
        agreement = [c.mask_agreement for c in members if c.mask_agreement is not None]
        per_class[cls] = {
            "images": len(members), **{s: sources.get(s, 0) for s in (*masks.SOURCES, "none")},
            "segmented_unusable": dict(unusable),
            "derived_unusable": dict(Counter(c.derived_problem.split(" (")[0] for c in members
                                             if not c.mask_source and c.derived_problem)),
            "mask_fraction_median": float(np.median([c.mask_fraction for c in members if c.mask_source] or [0])),
            "derived_vs_segmented_iou_median": float(np.median(agreement)) if agreement else None,
            **_component_stats([c for c in members if c.mask_source]),
        }
        problems += [{"path": c.path, "class": cls, "segmented": c.segmented_problem,
                      "derived": c.derived_problem if not c.mask_source else "", "used": c.mask_source or "none"}
                     for c in members if c.segmented_problem]
    return {"dir": str(mask_dir), "derived_fallback": derive_masks, "rule": masks.RULE, "per_class": per_class,
            "problems": problems}


def _write_samples(data_dir: Path, rows: list[dict], folder: Path) -> None:
    """A few thumbnails per class, so the dashboard shows data without reading the raw folder."""
    for cls in CLASSES:
        members = [r for r in rows if r["class"] == cls]
        picked = members[:: max(1, len(members) // SAMPLES_PER_CLASS)][:SAMPLES_PER_CLASS]
        for i, row in enumerate(picked):
            image = Image.fromarray(load_image(data_dir / row["path"], 224))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            atomic_write_bytes(folder / cls / f"{i:02d}.png", buffer.getvalue())
