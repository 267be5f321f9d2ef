"""Cells or context, end to end on generated smears whose class evidence sits where we put it.

Two data sets with a ``Segmented/`` copy beside ``Original/``, each image holding a few 'cells'
(discs) on a noisy background:

- in the cells: each stage has its own cell colour and size; the backgrounds are alike.
- in the context: every cell looks the same; each stage has its own background tint.

A model trained on the first must point at the cells and fail without them; one trained on the
second must point away from the cells and keep its accuracy without them. Then the whole path
(prepare with masks, train, evaluate's context reliance, explain's localisation) measures what
was planted, through the files a user reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.commands import evaluate, train
from engine.data import prepare
from engine.explain.pipeline import ExplainOptions, explain_run
from tests.conftest import CLASS_FOLDERS

CELL_COLOURS = [(150, 40, 170), (60, 60, 200), (190, 60, 110), (40, 140, 140)]
TINTS = [(225, 225, 225), (240, 215, 190), (190, 215, 240), (215, 240, 200)]


def smear(stage: int, where: str, rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An image and its cell mask; the stage shows in the cells or in the background tint."""
    tint = TINTS[stage] if where == "context" else TINTS[0]
    image = np.clip(np.array(tint) + rng.normal(0, 12, (size, size, 3)), 0, 255)
    mask = np.zeros((size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(2):
        cy, cx = rng.integers(12, size - 12, 2)
        radius = 6 + (2 * stage if where == "cells" else 3)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    colour = CELL_COLOURS[stage] if where == "cells" else CELL_COLOURS[0]
    image[mask] = np.clip(np.array(colour) + rng.normal(0, 8, (mask.sum(), 3)), 0, 255)
    return image.astype(np.uint8), mask


def write_smears(root: Path, where: str, per_class: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for stage, name in enumerate(CLASS_FOLDERS):
        for folder in ("Original", "Segmented"):
            (root / folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image, mask = smear(stage, where, rng)
            Image.fromarray(image).save(root / "Original" / name / f"{i:03d}.png")
            Image.fromarray(np.where(mask[..., None], image, 0).astype(np.uint8)).save(
                root / "Segmented" / name / f"{i:03d}.png")
    return root


def train_evaluate_explain(tmp: Path, where: str, *extra: str) -> tuple[dict, dict]:
    report = prepare(write_smears(tmp / "ALL", where), tmp / "prepared")
    assert all(c["segmented"] == 40 for c in report["masks"]["per_class"].values())
    assert train.main(["--data", str(tmp / "prepared"), "--preset", "tiny", "--set", "epochs=8", "--set", "lr=0.01",
                       *extra, "--out", str(tmp / "runs"), "--name", where]) == 0
    run = tmp / "runs" / where
    assert evaluate.main([str(run)]) == 0
    explain_run(run, ExplainOptions(methods=("gradcam",), layers=("denseblock2", "denseblock3"),
                                    faithfulness=False, sanity=False, stages=False, multilayer_images=0))
    return (json.loads((run / "context.json").read_text()),
            json.loads((run / "cams" / "localisation.json").read_text()))


def best(localised: dict) -> dict:
    top = localised["ranking"][0]
    return next(r for r in localised["results"] if (r["method"], r["layer"]) == (top["method"], top["layer"]))


@pytest.mark.slow
def test_evidence_planted_in_the_cells_is_found_in_the_cells(tmp_path):
    context, localised = train_evaluate_explain(tmp_path, "cells")
    accuracy = {v: context["variants"][v]["all"]["accuracy"] for v in context["variants"]}
    assert accuracy["original"] >= 0.8, accuracy
    assert accuracy["cells_removed"] <= 0.5, accuracy  # chance is 0.25: without the cells the model is lost
    assert accuracy["background_removed"] >= 0.7, accuracy
    result = best(localised)
    assert result["all"]["map"]["concentration"]["mean"] > 1.5, result["all"]
    assert result["all"]["map"]["pointing"]["mean"] > 0.7, result["all"]
    assert result["all"]["verdict"] == "points"


@pytest.mark.slow
def test_evidence_planted_in_the_background_is_found_off_the_cells(tmp_path):
    context, localised = train_evaluate_explain(tmp_path, "context")
    accuracy = {v: context["variants"][v]["all"]["accuracy"] for v in context["variants"]}
    assert accuracy["original"] >= 0.8, accuracy
    assert accuracy["cells_removed"] >= 0.8, accuracy  # the cells were never the evidence
    for result in localised["results"]:
        assert result["all"]["map"]["concentration"]["mean"] < 1.2, result["all"]
        assert result["all"]["verdict"] != "points"
