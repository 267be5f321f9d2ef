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
from engine.explain.pipeline import ExplainOptions, explain_run
from engine.prepare import prepare
from tests.support.images import CLASS_FOLDERS

pytestmark = pytest.mark.numerics

CELL_COLOURS = [(150, 40, 170), (60, 60, 200), (190, 60, 110), (40, 140, 140)]
TINTS = [(225, 225, 225), (240, 215, 190), (190, 215, 240), (215, 240, 200)]
PER_CLASS = 60  # 36 test images: enough for the intervals below to separate what was planted


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


def train_evaluate_explain(tmp: Path, where: str) -> tuple[dict, dict]:
    report = prepare(write_smears(tmp / "ALL", where, per_class=PER_CLASS), tmp / "prepared")
    assert all(c["segmented"] == PER_CLASS for c in report["masks"]["per_class"].values())
    # fp32 (amp=off): these tests are about the evidence, and must read the same on CPUs with and without bf16.
    assert train.main(["--data", str(tmp / "prepared"), "--preset", "tiny", "--set", "epochs=8", "--set", "lr=0.01",
                       "--set", "amp=off", "--out", str(tmp / "runs"), "--name", where]) == 0
    run = tmp / "runs" / where
    assert evaluate.main([str(run)]) == 0
    explain_run(run, ExplainOptions(methods=("gradcam",), layers=("denseblock2", "denseblock3"),
                                    faithfulness=False, sanity=False, stages=False, multilayer_images=0))
    return (json.loads((run / "context.json").read_text()),
            json.loads((run / "cams" / "localisation.json").read_text()))


@pytest.fixture(scope="module")
def in_cells(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    return train_evaluate_explain(tmp_path_factory.mktemp("cells"), "cells")


@pytest.fixture(scope="module")
def in_context(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    return train_evaluate_explain(tmp_path_factory.mktemp("context"), "context")


def best(localised: dict) -> dict:
    top = localised["ranking"][0]
    return next(r for r in localised["results"] if (r["method"], r["layer"]) == (top["method"], top["layer"]))


def concentration(result: dict) -> dict:
    return result["all"]["map"]["concentration"]


@pytest.mark.slow
def test_evidence_planted_in_the_cells_is_found_in_the_cells(in_cells):
    context, localised = in_cells
    accuracy = {v: context["variants"][v]["all"]["accuracy"] for v in context["variants"]}
    assert accuracy["original"] >= 0.8, accuracy
    assert accuracy["cells_removed"] <= 0.5, accuracy  # chance is 0.25: without the cells the model is lost
    assert accuracy["background_removed"] >= 0.7, accuracy
    result = best(localised)
    # Beyond the noise: the whole 95% interval sits above 1.5 (1.0 is what a uniform map scores).
    assert concentration(result)["ci95"][0] > 1.5, result["all"]
    assert result["all"]["map"]["pointing"]["mean"] > 0.7, result["all"]
    assert result["all"]["verdict"] == "points"


@pytest.mark.slow
def test_evidence_planted_in_the_background_is_found_off_the_cells(in_context):
    context, localised = in_context
    accuracy = {v: context["variants"][v]["all"]["accuracy"] for v in context["variants"]}
    assert accuracy["original"] >= 0.8, accuracy
    assert accuracy["cells_removed"] >= 0.8, accuracy  # the cells were never the evidence
    for result in localised["results"]:
        # Not concentrated on the cells beyond the noise: 1.5 (the cells model's bar) is not below the interval.
        assert concentration(result)["ci95"][0] < 1.5, result["all"]
        assert result["all"]["verdict"] != "points"


@pytest.mark.slow
def test_maps_of_the_two_models_are_told_apart_beyond_their_intervals(in_cells, in_context):
    """At the layer where the cells model's maps localise best, the context model's maps are less concentrated on
    the cells, and the two 95% intervals do not overlap."""
    cells = best(in_cells[1])
    context = next(r for r in in_context[1]["results"] if (r["method"], r["layer"]) == (cells["method"],
                                                                                       cells["layer"]))
    assert concentration(cells)["ci95"][0] > concentration(context)["ci95"][1], (cells["all"], context["all"])
