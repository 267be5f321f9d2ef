"""Shortcut baselines (engine.baselines): models that see only a few colour numbers of each image.

The features are checked on images whose numbers are known; the baselines on generated smears
where the stage is planted in the background tint (the background model must find it) or only in
the cells' shape under a random stain (no colour model may find it); then ``evaluate`` on the
session's tiny run writes ``baselines.json`` and the extended ``context.json`` a reader can check
against ``predictions.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from engine import baselines, context, runs
from engine.runs import CLASSES
from tests.support.evidence import planted, splits_of


def test_colour_statistics_are_the_median_std_and_percentiles_per_channel():
    values = np.arange(101, dtype=float)  # 0..100: median 50, 10th percentile 10, 90th 90
    pixels = np.stack([values, 2 * values, np.full(101, 7.0)], axis=1)
    got = dict(zip(baselines.FEATURE_NAMES, baselines.colour_statistics(pixels), strict=True))
    assert (got["median_R"], got["median_G"], got["median_B"]) == (50, 100, 7)
    assert (got["p10_R"], got["p90_R"], got["p10_G"], got["p90_G"]) == (10, 90, 20, 180)
    assert got["std_R"] == pytest.approx(values.std()) and got["std_G"] == pytest.approx(2 * values.std())
    assert got["std_B"] == 0 and got["p10_B"] == got["p90_B"] == 7
    assert np.isnan(baselines.colour_statistics(np.zeros((0, 3)))).all()


def test_features_split_the_pixels_at_the_grown_mask():
    image = np.zeros((1, 20, 20, 3), np.uint8)
    image[0] = (200, 180, 160)  # background
    image[0, 8:12, 8:12] = (90, 30, 150)  # the cell
    image[0, 7, 7:13] = (0, 255, 0)  # a ring one pixel out: the cell's border
    mask = np.zeros((1, 20, 20), bool)
    mask[0, 8:12, 8:12] = True
    features = baselines.colour_features(image, mask, grow=1)
    background = dict(zip(baselines.FEATURE_NAMES, features["background"][0], strict=True))
    cells = dict(zip(baselines.FEATURE_NAMES, features["cells"][0], strict=True))
    # The ring is inside the grown mask: the background is exactly (200, 180, 160), without spread.
    assert [background[f"median_{c}"] for c in "RGB"] == [200, 180, 160]
    assert [background[f"std_{c}"] for c in "RGB"] == [0, 0, 0]
    # The grown cell (6 x 6 = 36 pixels): 16 cell pixels, 6 ring pixels, 14 background ones.
    # R over those: 6 x 0, 16 x 90, 14 x 200; G: 16 x 30, 14 x 180, 6 x 255.
    assert (cells["p10_R"], cells["median_R"], cells["p90_R"]) == (0, 90, 200)
    assert (cells["p10_G"], cells["median_G"], cells["p90_G"]) == (30, 180, 255)
    unmasked = baselines.colour_features(image, mask, grow=0)
    assert unmasked["cells"][0][:3].tolist() == [90, 30, 150]  # only the cell's own pixels


def test_usable_needs_a_mask_and_background_left():
    masks = np.zeros((3, 10, 10), bool)
    masks[1, 4:6, 4:6] = True
    masks[2, 1:9, 1:9] = True  # grown by 2 it covers the whole image
    assert baselines.usable(masks, grow=2).tolist() == [False, True, False]


def test_a_stage_planted_in_the_background_tint_is_named_by_the_background_model():
    images, masks, labels = planted("tint", 60, seed=1)
    summary = baselines.measure(images, masks, labels, splits_of(len(labels)), CLASSES, seed=0)
    test = {k: b["splits"]["test"]["accuracy"] for k, b in summary["baselines"].items()}
    assert test["background_colour"] >= 0.95, test
    assert summary["baselines"]["background_colour"]["splits"]["test"]["balanced_accuracy"] >= 0.95
    assert summary["images"] == {"train": 120, "val": 60, "test": 60}


def test_a_stage_planted_only_in_the_cells_shape_is_named_by_no_colour_model():
    images, masks, labels = planted("shape", 60, seed=2)
    summary = baselines.measure(images, masks, labels, splits_of(len(labels)), CLASSES, seed=0)
    for key, entry in summary["baselines"].items():
        block = entry["splits"]["test"]
        assert block["accuracy"] <= 0.45, (key, block["accuracy"])  # chance 0.25, 60 test images
        assert block["ci95"][0] <= 0.25 + 0.1
    assert summary["chance"]["test"] == pytest.approx(np.bincount(labels[splits_of(240)["test"]]).max() / 60)


def test_baselines_json_structure_and_the_network_on_the_same_images():
    images, masks, labels = planted("tint", 12, seed=3)
    masks[0] = False  # an image without a mask takes no part
    splits = splits_of(len(labels))
    network = {s: labels[splits[s]] for s in ("val", "test")}  # a network that is always right
    summary = baselines.measure(images, masks, labels, splits, CLASSES, seed=5, network=network)
    assert set(summary["baselines"]) == set(runs.BASELINE_WORDS)
    assert {k for k, b in summary["baselines"].items() if b["headline"]} == set(runs.HEADLINE_BASELINES)
    where = next(s for s, index in splits.items() if 0 in index)
    assert summary["images_left_out"][where] == 1
    assert summary["images"][where] == len(splits[where]) - 1
    for split in ("val", "test"):
        net = summary["network"]["splits"][split]
        assert net["accuracy"] == 1.0 and net["n"] == summary["images"][split]
        for entry in summary["baselines"].values():
            block = entry["splits"][split]
            assert block["n"] == net["n"] and sum(b["n"] for b in block["per_stage"].values()) == net["n"]
            assert block["ci95"][0] <= block["accuracy"] <= block["ci95"][1]
    forest = summary["baselines"]["background_colour"]
    assert "random forest" in forest["how"] and "random_state 5" in forest["how"]
    assert "outside the leukocyte masks grown by" in forest["how"]
    assert forest["words"] == runs.BASELINE_WORDS["background_colour"]
    again = baselines.measure(images, masks, labels, splits, CLASSES, seed=5, network=network)
    assert again == summary  # seeded: the same file every time


def test_without_masks_nothing_is_written_and_the_log_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from engine.evaluate import measure_baselines
    from engine.inference import Data

    rows = [{"path": f"x{i}.png", "sha256": f"{i:064d}", "class": CLASSES[i % 4], "mask": ""} for i in range(8)]
    data = Data(images=torch.zeros((8, 16, 16, 3), dtype=torch.uint8), labels=torch.arange(8) % 4, rows=rows,
                split={"train": np.arange(4), "val": np.arange(4, 6), "test": np.arange(6, 8)})
    with caplog.at_level(logging.INFO, logger="engine.evaluate"):
        assert measure_baselines(tmp_path, data, tmp_path, 16, seed=0, network={"test": np.zeros(2, int)},
                                 checkpoint={}) is None
    assert not (tmp_path / runs.BASELINES).exists()
    assert "no leukocyte masks" in caplog.text and "baselines not fitted" in caplog.text


# ----------------------------------------------------------------------------- evaluate, end to end


def test_evaluate_writes_baselines_json_that_predictions_csv_confirms(trained_tiny_run: Path):
    summary = json.loads((trained_tiny_run / runs.BASELINES).read_text())
    config = json.loads((trained_tiny_run / runs.CONFIG).read_text())
    manifest = pd.read_csv(Path(config["data_dir"]) / "manifest.csv", keep_default_na=False)
    predictions = pd.read_csv(trained_tiny_run / runs.PREDICTIONS)
    assert summary["fitted_on"] == "train" and summary["image_size"] == config["image_size"]
    assert summary["seed"] == config["seed"] and summary["mask_grow_px"] == context.grow_pixels(config["image_size"])
    masked = set(manifest.loc[manifest["mask"] != "", "sha256"])
    assert summary["images"]["train"] == int(((manifest["split"] == "train") & (manifest["mask"] != "")).sum())
    for split in ("val", "test"):
        rows = predictions[(predictions["split"] == split) & predictions["sha256"].isin(masked)]
        net = summary["network"]["splits"][split]
        # The network, scored again on exactly the images the baselines saw, agrees with predictions.csv.
        assert net["n"] == len(rows) and net["correct"] == int((rows["true"] == rows["pred"]).sum())
        for key in runs.BASELINE_WORDS:
            block = summary["baselines"][key]["splits"][split]
            assert block["n"] == net["n"] and 0 <= block["accuracy"] <= 1
    # The generated stages differ in their disc's colour and size, not in the background's grey noise.
    cells, background = (summary["baselines"][k]["splits"]["test"]["accuracy"]
                         for k in ("cell_colour", "background_colour"))
    assert cells >= 0.8 and cells > background, (cells, background)


def test_evaluate_writes_the_stain_probes_into_context_json_and_csv(trained_tiny_run: Path):
    summary = json.loads((trained_tiny_run / runs.CONTEXT).read_text())
    assert set(summary["variants"]) == set(runs.CONTEXT_VARIANTS)
    for variant in ("stain_swapped", "greyscale"):
        block = summary["variants"][variant]
        assert block["all"]["n"] == summary["images"] and set(block["per_stage"]) == set(CLASSES)
        assert variant in summary["how"]
    follows = summary["stain_swapped"]["follows_donor"]
    with (trained_tiny_run / runs.CONTEXT_TABLE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == context.TABLE_COLUMNS
    assert all(r["donor_stage"] in CLASSES and r["donor_stage"] != r["true"] for r in rows)
    by_sha = {r["sha256"]: r for r in rows}
    assert all(by_sha[r["donor_sha256"]]["true"] == r["donor_stage"] for r in rows)
    followed = sum(r["pred_stain_swapped"] == r["donor_stage"] for r in rows)
    assert follows["all"]["followed"] == followed and follows["all"]["n"] == len(rows)
    correct = sum(r["pred_greyscale"] == r["true"] for r in rows)
    assert summary["variants"]["greyscale"]["all"]["correct"] == correct
