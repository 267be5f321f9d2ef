"""Leukocyte masks: the rules in engine.masks, and their pairing with images in prepare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import masks
from engine.cache import load_mask_cache
from engine.manifest import has_masks, read_manifest
from engine.prepare import prepare
from engine.runs import MASK_COLUMNS
from tests.support.images import add_segmented, disc, write_image_folder


def stained(mask: np.ndarray, background=(235, 230, 200), cell=(170, 80, 170)) -> np.ndarray:
    """A smear-like RGB image: a magenta cell on a pale yellow background."""
    image = np.empty((*mask.shape, 3), dtype=np.uint8)
    image[:] = background
    image[mask] = cell
    return image


def test_segmented_copy_gives_the_cell_and_drops_specks():
    cell = disc(96, 14)
    segmented = np.where(cell[..., None], np.uint8(200), np.uint8(0)).repeat(3, axis=2)
    segmented[5, 5] = 255  # a one-pixel speck of stain
    segmented[cell.nonzero()[0][0] + 2, 48] = 0  # a hole in the cell
    mask = masks.from_segmented(segmented)
    assert not mask[5, 5]
    assert masks.iou(mask, cell) > 0.9


def test_derived_mask_finds_a_magenta_cell_on_a_pale_background():
    cell = disc(96, 14, (40, 60))
    mask = masks.derive(stained(cell))
    assert masks.iou(mask, cell) > 0.9
    assert not masks.derive(stained(np.zeros((96, 96), bool))).any()  # no cell, no mask


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, "empty"), (0.004, "empty"), (0.05, ""), (0.7, "covers most")])
def test_problem_names_masks_that_cannot_serve(fraction, expected):
    mask = np.zeros(10_000, bool)
    mask[: int(fraction * 10_000)] = True
    assert (masks.problem(mask.reshape(100, 100)).startswith(expected) if expected
            else masks.problem(mask.reshape(100, 100)) == "")


def test_choose_prefers_the_segmented_mask_and_falls_back_to_a_derived_one():
    cell = disc(96, 14)
    image = stained(cell)
    good = np.where(cell[..., None], image, 0).astype(np.uint8)
    chosen = masks.choose(image, good)
    assert chosen.source == "segmented" and chosen.agreement is not None and chosen.agreement > 0.9
    empty = masks.choose(image, np.zeros_like(image))
    assert empty.source == "derived" and empty.segmented_problem.startswith("empty")
    smaller = masks.choose(image, good[:50])
    assert smaller.source == "derived" and "differs" in smaller.segmented_problem
    missing = masks.choose(image, None, "missing", derive_missing=False)
    assert missing.mask is None and missing.segmented_problem == "missing"


def write_with_segmented(root: Path, per_class: int = 6) -> Path:
    """Original/<Class> of generated images and Segmented/<Class> with each disc kept on black."""
    write_image_folder(root / "Original", per_class=per_class, seed=3)
    return add_segmented(root)


@pytest.mark.parametrize("pixels", [1, 6, 15])
def test_dilate_grows_by_a_square_like_scipys_binary_dilation(pixels):
    """Cells touching the border included: nothing beyond the image grows into it."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(pixels)
    batch = rng.random((3, 40, 56)) > 0.97
    batch[0, 0, :] = True  # a cell along the border
    square = np.ones((2 * pixels + 1,) * 2, dtype=bool)
    expected = np.stack([ndi.binary_dilation(m, square) for m in batch])
    assert np.array_equal(masks.dilate(batch, pixels), expected)
    assert np.array_equal(masks.dilate(batch[1], pixels), expected[1])
    assert masks.dilate(batch, 0).dtype == bool and np.array_equal(masks.dilate(batch, 0), batch)


def test_opening_and_hole_filling_are_scipys():
    """The fast opening and hole filling give scipy's pixels, at the border and with holes touching it."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(7)
    for density in (0.3, 0.55, 0.7):
        for mask in rng.random((20, 37, 53)) < density:
            mask[0, :5] = True  # a region along the border
            assert np.array_equal(masks._opening(mask), ndi.binary_opening(mask, iterations=2))
            opened = ndi.binary_opening(mask)
            assert np.array_equal(masks._fill_holes(opened), ndi.binary_fill_holes(opened))
    ring = np.zeros((9, 9), dtype=bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False  # a hole inside: filled
    ring[0:3, 0] = False  # background at the border: stays
    assert masks._fill_holes(ring)[4, 4] and not masks._fill_holes(ring)[0, 0]


def test_component_sides_are_each_components_longer_box_side():
    mask = np.zeros((40, 40), dtype=bool)
    mask[2:12, 3:8] = True  # 10 x 5
    mask[20:26, 20:34] = True  # 6 x 14
    assert sorted(masks.component_sides(mask)) == [10, 14]
    assert masks.component_sides(np.zeros((8, 8), dtype=bool)) == []


def test_prepare_pairs_masks_by_class_folder_and_name_and_reports_the_rest(tmp_path):
    root = write_with_segmented(tmp_path / "ALL")
    seg = root / "Segmented"
    (seg / "Benign" / "benign-000.png").unlink()  # missing
    (seg / "Early" / "early-000.png").rename(seg / "Early" / "renamed.png")  # name mismatch: missing too
    Image.new("RGB", (48, 48)).save(seg / "Pre" / "pre-000.png")  # empty
    Image.new("RGB", (30, 30), (200, 50, 200)).save(seg / "Pro" / "pro-000.png")  # wrong size

    report = prepare(root, tmp_path / "prepared", derive_masks=False)
    per_class = report["masks"]["per_class"]
    assert report["masks"]["dir"] == str(seg)
    assert per_class["benign"]["segmented_unusable"] == {"missing": 1}
    assert per_class["early"]["segmented_unusable"] == {"missing": 1}
    assert per_class["pre"]["segmented_unusable"] == {"empty or nearly empty": 1}
    assert list(per_class["pro"]["segmented_unusable"]) == ["size 30x30 differs from the image's 48x48"]
    for cls in per_class.values():
        assert cls["segmented"] == 5 and cls["none"] == 1  # never silently used
        # The segmented copies hold one cell each: one component per image, its box as wide as the cell.
        assert cls["components_per_image_median"] == 1
        assert 0 < cls["component_side_px_median"] <= cls["component_side_px_p90"] <= 48
    saved = json.loads((tmp_path / "prepared" / "data_report.json").read_text())
    assert saved["masks"]["per_class"] == per_class

    rows = read_manifest(tmp_path / "prepared")
    assert set(MASK_COLUMNS) <= set(rows[0])
    unusable = {"Benign/benign-000.png", "Early/early-000.png", "Pre/pre-000.png", "Pro/pro-000.png"}
    for row in rows:
        assert bool(row["mask"]) == (row["path"] not in unusable), row
        if row["mask"]:
            assert row["mask_source"] == "segmented" and 0.01 < float(row["mask_fraction"]) < 0.5
            assert (tmp_path / "prepared" / row["mask"]).is_file()

    cached = load_mask_cache(tmp_path / "prepared", 32)
    assert cached.shape == (len(rows), 32, 32) and cached.dtype == bool
    present = has_masks(rows)
    assert not cached[~present].any() and cached[present].any(axis=(1, 2)).all()
    # Cropped and scaled like the images: the mask's area share survives the resize.
    shares = cached[present].mean(axis=(1, 2))
    expected = np.array([float(r["mask_fraction"]) for r in rows if r["mask"]])
    assert np.allclose(shares, expected, atol=0.03)


def test_prepare_without_segmented_copies_still_works(image_folder, tmp_path):
    report = prepare(image_folder, tmp_path / "prepared")
    assert report["masks"] == {"dir": None}
    rows = read_manifest(tmp_path / "prepared")
    assert not has_masks(rows).any()
    assert "mask" not in (tmp_path / "prepared" / "manifest.csv").read_text().splitlines()[0]


def test_an_explicit_mask_folder_that_does_not_exist_is_an_error(image_folder, tmp_path):
    from engine.errors import DataError

    with pytest.raises(DataError, match="mask folder not found"):
        prepare(image_folder, tmp_path / "prepared", masks=tmp_path / "nowhere")


@pytest.mark.slow
def test_real_masks_pair_with_every_real_image(real_subset_prepared):
    """On real images and their real Segmented copies: every image gets a mask, and each Pro one the
    segmented copy fails on is derived from the stain instead."""
    _, report = real_subset_prepared
    per_class = report["masks"]["per_class"]
    assert all(c["none"] == 0 for c in per_class.values())
    assert per_class["pro"]["derived"] > per_class["pro"]["segmented"]  # the authors' segmentation fails on Pro
    assert per_class["early"]["derived_vs_segmented_iou_median"] > 0.7
