"""Localisation scores, context reliance and background replacement: the pure functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import background, context
from engine.explain import localisation as loc
from tests.support.images import cells


def test_a_map_on_the_cell_concentrates_and_points_and_one_off_it_does_not():
    masks = cells()
    on = loc.scores(masks.astype(float), masks, tolerance=1)
    area = masks.mean(axis=(1, 2))
    assert np.allclose(on["mass_in"], 1) and np.allclose(on["concentration"], 1 / area)
    assert (on["pointing"] == 1).all()
    off = loc.scores((~masks).astype(float), masks, tolerance=1)
    assert np.allclose(off["mass_in"], 0) and (off["pointing"] == 0).all()
    uniform = loc.scores(np.ones(masks.shape), masks, tolerance=1)
    assert np.allclose(uniform["concentration"], 1)  # the scale's anchor: a uniform map scores 1


def test_pointing_tolerance_counts_a_peak_just_beside_the_cell():
    mask = np.zeros((1, 32, 32), bool)
    mask[0, 10:14, 10:14] = True
    peak = np.zeros((1, 32, 32))
    peak[0, 16, 12] = 1  # 3 px below the cell
    assert loc.scores(peak, mask, tolerance=1)["pointing"][0] == 0
    assert loc.scores(peak, mask, tolerance=3)["pointing"][0] == 1


def test_empty_maps_and_masks_are_left_out_not_scored_zero():
    masks = cells(2)
    masks[1] = False
    maps = masks.astype(float)
    maps[0] = 0
    result = loc.scores(maps, masks, tolerance=1)
    assert np.isnan(result["concentration"]).all() and np.isnan(result["pointing"]).all()


def test_shuffled_maps_come_from_another_image_of_the_same_stage():
    groups = np.array([0, 0, 0, 1, 1, 2])
    other = loc.shuffled_within(groups, seed=3)
    assert other[5] == -1  # alone in its stage: no other map to borrow
    for i in range(5):
        assert other[i] != i and groups[other[i]] == groups[i]
    assert sorted(other[:3]) == [0, 1, 2]  # every map used once


def test_verdicts_separate_maps_that_point_from_blobs_and_from_maps_that_avoid_cells():
    masks = cells(40, seed=1)
    stages = np.arange(40) % 4
    names = ("a", "b", "c", "d")
    for maps, expected in [(masks.astype(float), "points"), ((~masks).astype(float), "away"),
                           (np.broadcast_to(loc.centre_map(masks.shape[1:]), masks.shape), "baseline")]:
        baselines = loc.baseline_scores(np.asarray(maps), masks, stages, tolerance=2)
        summary = loc.summarize(loc.scores(maps, masks, 2), baselines, stages, names)
        assert summary["all"]["verdict"] == expected, summary["all"]
        assert set(summary["per_stage"]) == set(names)


def test_ranking_puts_the_most_concentrated_method_first():
    entry = lambda m, c: {"method": m, "layer": "l", "all": {"verdict": "points"},  # noqa: E731
                          "per_stage": {"a": {"map": {"concentration": {"mean": c}, "pointing": {"mean": 0.5}}}}}
    assert [r["method"] for r in loc.rank([entry("x", 1.2), entry("y", 2.5), entry("z", 0.9)])] == ["y", "x", "z"]


def test_removing_cells_fills_them_from_the_background_and_keeps_the_rest():
    masks = cells(3, size=48)
    images = np.full((3, 48, 48, 3), (230, 220, 180), np.uint8)
    images[masks] = (150, 60, 150)
    out = context.remove_cells(images, masks, grow=2)
    assert np.abs(out[masks].astype(int) - (230, 220, 180)).max() < 8  # the cell is gone
    far = ~context.dilate(masks, 4)
    assert (out[far] == images[far]).all()


def test_removing_the_background_keeps_the_cells_and_flattens_the_rest():
    masks = cells(2, size=48)
    rng = np.random.default_rng(0)
    images = rng.integers(150, 255, (2, 48, 48, 3)).astype(np.uint8)
    out = context.remove_background(images, masks, grow=1)
    assert (out[masks] == images[masks]).all()
    far = ~context.dilate(masks, 1)
    assert all(len(np.unique(out[i][far[i]], axis=0)) == 1 for i in range(2))


def test_reliance_reports_accuracy_per_variant_and_stage_with_intervals():
    true = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    result = context.reliance(true, {"original": true, "cells_removed": np.array([0, 0, 1, 0, 2, 0, 0, 0])},
                              ("a", "b", "c", "d"))
    assert result["variants"]["original"]["all"]["accuracy"] == 1
    removed = result["variants"]["cells_removed"]
    assert removed["all"]["correct"] == 4 and removed["per_stage"]["b"]["accuracy"] == 0.5
    assert removed["per_stage"]["d"]["correct"] == 0
    low, high = removed["all"]["ci95"]
    assert low < 0.5 < high
    assert result["survival_without_cells"] == pytest.approx(0.5) and result["chance"] == 0.25


def normalised(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    return (images - mean) / std, mean, std


@pytest.mark.parametrize("mode", ["random", "black"])
def test_background_replacement_keeps_every_cell_pixel_and_changes_the_background(mode):
    masks = torch.from_numpy(cells(6, size=32))
    x, mean, std = normalised(torch.rand(6, 3, 32, 32))
    gen = torch.Generator().manual_seed(0)
    has = torch.tensor([True] * 5 + [False])
    out = background.replace_background(x, masks, has, mode, 1.0, gen, mean, std)
    inside = masks[:, None].expand_as(x)
    assert torch.equal(out[inside], x[inside])
    assert torch.equal(out[5], x[5])  # no mask: left as it is
    assert not torch.isclose(out[:5][~inside[:5]], x[:5][~inside[:5]]).all()
    if mode == "black":
        assert torch.allclose(out[0][~inside[0]], ((0 - mean) / std).expand(1, 3, 32, 32)[0][~inside[0]])


def test_background_replacement_is_off_at_p_zero_and_reproducible():
    masks = torch.from_numpy(cells(4, size=32))
    x, mean, std = normalised(torch.rand(4, 3, 32, 32))
    has = torch.ones(4, dtype=torch.bool)
    same = background.replace_background(x, masks, has, "random", 0.0, torch.Generator().manual_seed(0), mean, std)
    assert torch.equal(same, x)
    a = background.replace_background(x, masks, has, "random", 0.7, torch.Generator().manual_seed(5), mean, std)
    b = background.replace_background(x, masks, has, "random", 0.7, torch.Generator().manual_seed(5), mean, std)
    assert torch.equal(a, b)


def test_grow_widens_a_mask_by_the_given_pixels():
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 4, 4] = True
    assert background.grow(mask, 2).sum() == 25
