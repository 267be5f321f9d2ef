"""Smear groups and folds in ``prepare`` (engine.smears), on generated smears whose truth is known.

Each stage has four smears, each with its own background tint and illumination (tests/support/smears.py);
file names do not give the smear away. The grouping must find them, keep duplicates together, put
every group in one fold and spread the stages over the folds, the same way every time for one seed.
The last test checks the grouping of the real data set (slow; skipped without it).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

from engine import smears
from engine.manifest import read_manifest
from engine.prepare import prepare
from engine.runs import CLASSES, MANIFEST, REPORT, SMEAR_COLUMNS, SMEAR_FOLD, SMEAR_GROUP
from tests.support.smears import save, smear_image, write_smear_folder

FOLDS = 3


def groups_and_folds(rows: list[dict]) -> dict[str, set[str]]:
    folds = defaultdict(set)
    for row in rows:
        folds[row[SMEAR_GROUP]].add(row[SMEAR_FOLD])
    return folds


@pytest.fixture(scope="module")
def smear_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("smears")
    truth = write_smear_folder(root / "ALL", smears_per_stage=4, per_smear=10, seed=0)
    return root, truth


def test_the_grouping_recovers_the_smears_and_the_folds_hold_them_whole(smear_data):
    root, truth = smear_data
    report = prepare(root / "ALL", root / "prepared", seed=0, folds=FOLDS)
    rows = read_manifest(root / "prepared")
    header = (root / "prepared" / MANIFEST).read_text().splitlines()[0].split(",")
    assert header[-2:] == list(SMEAR_COLUMNS)

    found = [r[SMEAR_GROUP] for r in rows]
    assert adjusted_rand_score([truth[r["path"]] for r in rows], found) > 0.95
    smear = report["smear"]
    assert smear["made"] and smear["folds"] == FOLDS
    assert [smear["per_stage"][c]["groups"] for c in CLASSES] == [4, 4, 4, 4]
    assert all(smear["per_stage"][c]["silhouette"] > 0.5 for c in CLASSES)

    # Every group lies in exactly one fold, and the folds are 0..K-1.
    assert all(len(f) == 1 for f in groups_and_folds(rows).values())
    assert {int(r[SMEAR_FOLD]) for r in rows} == set(range(FOLDS))
    # Stratified: every fold holds every stage, with one or two of its four smears (10 or 20 images).
    for cls in CLASSES:
        sizes = Counter(int(r[SMEAR_FOLD]) for r in rows if r["class"] == cls)
        assert sorted(sizes.values()) == [10, 10, 20], (cls, sizes)
        assert smear["per_stage"][cls]["fold_sizes"] == [sizes[k] for k in range(FOLDS)]
    assert smear["folds_missing_a_stage"] == []
    assert sum(g["images"] for g in smear["group_list"].values()) == len(rows)

    # The background-colour forest names the stage by the smear's tint and illumination under an image split
    # (stages share some of the 8 tints, so not always), and cannot when whole smears are held out (four
    # stages: chance is 25%).
    check = smear["shortcut_check"]
    assert check["image_split"]["mean"] > 0.8
    assert check["smear_split"]["mean"] < 0.5
    assert len(check["smear_split"]["per_fold"]) == FOLDS
    assert smear["statistics_from"] == {"background": len(rows), "whole_image": 0}


def test_same_folder_and_seed_give_the_same_manifest_and_the_seed_moves_only_the_folds(smear_data, tmp_path):
    root, _ = smear_data
    for name, seed in (("a", 0), ("b", 0), ("c", 1), ("d", 2)):
        prepare(root / "ALL", tmp_path / name, seed=seed, folds=FOLDS)
    manifest = {name: (tmp_path / name / MANIFEST).read_bytes() for name in "abcd"}
    assert manifest["a"] == manifest["b"]
    rows = {name: read_manifest(tmp_path / name) for name in "abcd"}
    # The groups come from the images alone; the seed shuffles which fold each group goes to.
    assert [r[SMEAR_GROUP] for r in rows["a"]] == [r[SMEAR_GROUP] for r in rows["c"]]
    assigned = {name: {r[SMEAR_GROUP]: r[SMEAR_FOLD] for r in rows[name]} for name in "acd"}
    assert assigned["a"] != assigned["c"] or assigned["a"] != assigned["d"]


def test_duplicates_stay_in_one_group_without_merging_two_smears(tmp_path):
    root = tmp_path / "ALL"
    truth = write_smear_folder(root, smears_per_stage=4, per_smear=10, seed=1)
    # An exact copy of a benign image filed as early (a label conflict): the two files must share a group.
    shutil.copy(root / "Original" / "Benign" / "benign-000.png", root / "Original" / "Early" / "copy-of-benign.png")
    shutil.copy(root / "Segmented" / "Benign" / "benign-000.png", root / "Segmented" / "Early" / "copy-of-benign.png")
    # A near-duplicate recoloured to another smear's tint: the same picture (its perceptual hash does not
    # see a constant shift), but its colour alone would put it in the other smear's group.
    pre = {p: s for p, s in truth.items() if p.startswith("Pre/")}
    source = next(p for p in sorted(pre) if pre[p].endswith("/0"))
    other = next(p for p in sorted(pre) if pre[p].endswith("/1"))
    pixels = np.asarray(Image.open(root / "Original" / source)).astype(int)
    shift = np.median(np.asarray(Image.open(root / "Original" / other)).reshape(-1, 3), 0) \
        - np.median(pixels.reshape(-1, 3), 0)
    moved = np.clip(pixels + shift.astype(int), 0, 255).astype(np.uint8)
    Image.fromarray(moved).save(root / "Original" / "Pre" / "recoloured.png")
    segmented = np.asarray(Image.open(root / "Segmented" / source))
    Image.fromarray(np.where(segmented.max(2, keepdims=True) > 40, moved, 0).astype(np.uint8)).save(
        root / "Segmented" / "Pre" / "recoloured.png")

    report = prepare(root, tmp_path / "prepared", seed=0, folds=FOLDS)
    pairs = {frozenset((p["a"], p["b"])) for p in report["near_duplicates"]}
    assert frozenset((source, "Pre/recoloured.png")) in pairs  # the premise: prepare calls them near-duplicates
    group = {r["path"]: r[SMEAR_GROUP] for r in read_manifest(tmp_path / "prepared")}
    assert group["Benign/benign-000.png"] == group["Early/copy-of-benign.png"]
    assert group[source] == group["Pre/recoloured.png"]
    # The pair is clustered as one unit (into smear 0's group or smear 1's), without dragging the rest of
    # smear 0 and smear 1 into one group.
    rest_of_0 = {group[p] for p, s in pre.items() if s.endswith("/0") and p != source}
    smear_1 = {group[p] for p, s in pre.items() if s.endswith("/1")}
    assert len(rest_of_0) == len(smear_1) == 1 and rest_of_0 != smear_1
    assert group[source] in rest_of_0 | smear_1
    assert report["smear"]["duplicate_units"]["across_stages"] == 1
    # Without the joins, the recoloured copy would sit with the other smear: the test can tell.
    rows = {r["path"]: r for r in read_manifest(tmp_path / "prepared")}
    paths = (*sorted(pre), "Pre/recoloured.png")
    alone = smears.cluster_stage(np.array([smears.colour_statistics(
        np.asarray(Image.open(root / "Original" / p)),
        np.asarray(Image.open(tmp_path / "prepared" / rows[p]["mask"])) > 0)[0] for p in paths]), FOLDS)
    index = {p: i for i, p in enumerate(paths)}
    assert alone.labels[index["Pre/recoloured.png"]] == alone.labels[index[other]]
    assert alone.labels[index["Pre/recoloured.png"]] != alone.labels[index[source]]


def test_an_outlier_image_joins_the_nearest_group_instead_of_making_one_of_its_own(tmp_path):
    root = tmp_path / "ALL"
    write_smear_folder(root, smears_per_stage=4, per_smear=10, seed=4)
    # One benign image far from every smear (a dark, grey background): alone it would be a group, and the one
    # group of benign some fold tests on.
    image, mask = smear_image(0, (110, 110, 110), 1.0, np.random.default_rng(9))
    save(root, "Benign", "odd.png", image, mask)
    report = prepare(root, tmp_path / "prepared", seed=0, folds=FOLDS)
    benign = report["smear"]["per_stage"]["benign"]
    assert benign["groups"] == 4
    group = {r["path"]: r[SMEAR_GROUP] for r in read_manifest(tmp_path / "prepared")}
    assert benign["group_sizes"][group["Benign/odd.png"]] == 11
    assert min(n for n in benign["fold_sizes"]) >= 10
    # Ward's cut into 4 alone gives it a group of its own (and two smears one group): the joining is what helps.
    benign_rows = [r for r in read_manifest(tmp_path / "prepared") if r["class"] == "benign"]
    stats = np.array([smears.colour_statistics(np.asarray(Image.open(root / "Original" / r["path"])),
                                               np.asarray(Image.open(tmp_path / "prepared" / r["mask"])) > 0)[0]
                      for r in benign_rows])
    odd = next(i for i, r in enumerate(benign_rows) if r["path"] == "Benign/odd.png")
    ward = AgglomerativeClustering(n_clusters=4, linkage="ward").fit_predict(stats)
    assert (ward == ward[odd]).sum() == 1


def test_background_statistics_leave_the_grown_cells_out():
    rng = np.random.default_rng(0)
    image, mask = smear_image(2, (200, 170, 190), 1.0, rng, size=64)
    with_mask, from_background = smears.colour_statistics(image, mask)
    whole, whole_from_background = smears.colour_statistics(image, None)
    named = dict(zip(smears.FEATURES, with_mask, strict=True))
    assert from_background and not whole_from_background
    # The cells are dark magenta: outside them the 10th percentile is the tint's, not the cells'.
    assert named["background_p10_G"] > 150 and whole[smears.FEATURES.index("background_p10_G")] < 120
    assert abs(named["background_median_R"] - 200) < 3
    # A mask over nearly all the image leaves too little background: the whole image is used.
    assert smears.colour_statistics(image, np.ones_like(mask))[1] is False


def test_too_few_images_for_the_folds_leave_the_smear_columns_out(tmp_path):
    root = tmp_path / "ALL"
    write_smear_folder(root, smears_per_stage=1, per_smear=8, seed=0)
    report = prepare(root, tmp_path / "prepared", seed=0, folds=9)
    assert not report["smear"]["made"] and "fewer than the 9 folds" in report["smear"]["problem"]
    assert SMEAR_FOLD not in (tmp_path / "prepared" / MANIFEST).read_text().splitlines()[0]
    with pytest.raises(ValueError, match="at least 3"):
        prepare(root, tmp_path / "other", folds=2)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_real_data_set_has_several_groups_per_stage_and_no_group_straddles_folds(real_prepared):
    """The full ALL data set: every group in one fold, duplicates inside one group, several groups per stage."""
    prepared, report = real_prepared
    rows = read_manifest(prepared)
    smear = report["smear"]
    assert smear["made"] and smear["folds"] == smears.DEFAULT_FOLDS
    assert all(len(f) == 1 for f in groups_and_folds(rows).values())
    for cls in CLASSES:
        assert smear["per_stage"][cls]["groups"] >= smears.DEFAULT_FOLDS
        assert all(n > 0 for n in smear["per_stage"][cls]["fold_sizes"]), cls
    by_sha = defaultdict(set)
    for row in rows:
        by_sha[row["sha256"]].add(row[SMEAR_GROUP])
    assert all(len(g) == 1 for g in by_sha.values())
    group = {r["path"]: r[SMEAR_GROUP] for r in rows}
    assert report["near_duplicates"] and all(group[p["a"]] == group[p["b"]] for p in report["near_duplicates"])
    check = smear["shortcut_check"]
    assert check["image_split"]["mean"] > 0.9
    assert check["smear_split"]["mean"] < check["image_split"]["mean"] - 0.1
    saved = json.loads((prepared / REPORT).read_text())["smear"]
    assert saved["per_stage"] == smear["per_stage"]
