"""The stain probes of the cells-or-context measurement (engine.context): another stage's stain, greyscale.

Pure functions on small arrays: the Reinhard transfer moves the Lab statistics and nothing else,
greyscale is grey, donors are of another stage and fixed by the seed, and the share of answers that
follow the donor is counted right. Then ``measure`` end to end with a stand-in model that reads
only the colour, whose answers must follow the donor.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from engine import context
from engine.runs import CLASSES, CONTEXT_VARIANTS


def lab_stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = rgb2lab(image).reshape(-1, 3)
    return lab.mean(0), lab.std(0)


def smear(rng: np.random.Generator, tint: tuple[int, int, int], size: int = 32) -> np.ndarray:
    """A noisy tinted background with one darker disc: enough structure to have a layout."""
    image = np.clip(np.array(tint) + rng.normal(0, 10, (size, size, 3)), 0, 255)
    yy, xx = np.mgrid[:size, :size]
    image[(yy - size // 2) ** 2 + (xx - size // 3) ** 2 <= (size // 5) ** 2] *= 0.6
    return image.astype(np.uint8)


def test_reinhard_moves_the_lab_mean_and_std_to_the_donors():
    rng = np.random.default_rng(0)
    image, donor = smear(rng, (225, 200, 215)), smear(rng, (170, 205, 235))
    mean, std = context.lab_statistics(donor)
    assert np.allclose((mean, std), lab_stats(donor))  # what lab_statistics reports is the donor's own
    out = context.reinhard(image, mean, std)
    got_mean, got_std = lab_stats(out)
    # Rounding to uint8 and clipping to sRGB move the statistics a little, nothing more.
    assert np.allclose(got_mean, mean, atol=1.0), (got_mean, mean)
    assert np.allclose(got_std, std, rtol=0.1, atol=0.5), (got_std, std)
    before, _ = lab_stats(image)
    assert np.abs(before - mean).max() > 5  # the two stains differed to begin with: the test can fail


def test_reinhard_keeps_the_layout():
    # A constant image stays constant (it only takes the donor's mean colour) ...
    flat = np.full((16, 16, 3), (200, 180, 190), np.uint8)
    donor = smear(np.random.default_rng(1), (160, 200, 230), 16)
    mean, std = context.lab_statistics(donor)
    out = context.reinhard(flat, mean, std)
    assert (out == out[0, 0]).all()
    assert np.allclose(lab_stats(out)[0], mean, atol=1.0)
    # ... and a two-tone image keeps its two regions exactly where they were, the darker one darker.
    two = flat.copy()
    two[4:10, 3:12] = (90, 60, 120)
    out = context.reinhard(two, mean, std)
    region = (two == two[5, 5]).all(axis=2)
    assert (out[region] == out[5, 5]).all() and (out[~region] == out[0, 0]).all()
    assert rgb2lab(out[5:6, 5:6])[0, 0, 0] < rgb2lab(out[0:1, 0:1])[0, 0, 0]


def test_swap_stain_recolours_each_image_to_its_donor_and_leaves_images_without_one():
    rng = np.random.default_rng(2)
    images = np.stack([smear(rng, tint) for tint in [(230, 200, 220), (170, 205, 235), (215, 240, 200)]])
    out = context.swap_stain(images, np.array([1, 2, -1]))
    assert np.allclose(lab_stats(out[0])[0], lab_stats(images[1])[0], atol=1.0)
    assert np.allclose(lab_stats(out[1])[0], lab_stats(images[2])[0], atol=1.0)
    assert (out[2] == images[2]).all()


def test_greyscale_has_equal_channels_and_is_the_luminance():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    grey = context.greyscale(images)
    assert grey.shape == images.shape and grey.dtype == np.uint8
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    pillow = np.stack([np.asarray(Image.fromarray(i).convert("L")) for i in images])
    assert np.abs(grey[..., 0].astype(int) - pillow).max() <= 1  # Pillow's "L" rounds in fixed point


def test_donors_are_of_another_stage_and_fixed_by_the_seed():
    true = np.repeat(np.arange(4), [3, 10, 6, 5])
    donors = context.choose_donors(true, seed=7)
    assert (donors >= 0).all()
    assert (true[donors] != true).all()
    assert (context.choose_donors(true, seed=7) == donors).all()
    assert (context.choose_donors(true, seed=8) != donors).any()
    # Every other stage donates to a stage's images, the small one (3 images) too.
    many = np.repeat(np.arange(4), 50)
    donor_stage = many[context.choose_donors(many, seed=0)]
    for stage in range(4):
        assert set(donor_stage[many == stage]) == set(range(4)) - {stage}
    # With a single stage there is no other stage to give.
    assert (context.choose_donors(np.zeros(4, int), seed=0) == -1).all()


def test_follows_donor_counts_answers_that_name_the_donors_stage():
    true = np.array([0, 0, 1, 1, 2, 3])
    donor_stage = np.array([1, 2, 0, 3, 0, -1])
    pred = np.array([1, 0, 0, 1, 1, 1])  # follows: images 0 and 2; the last has no donor
    result = context.follows_donor(pred, donor_stage, true, CLASSES)
    assert result["all"]["n"] == 5 and result["all"]["followed"] == 2
    assert result["all"]["share"] == pytest.approx(0.4)
    low, high = result["all"]["ci95"]
    assert low < 0.4 < high
    assert result["per_stage"]["benign"] == {**result["per_stage"]["benign"], "n": 2, "followed": 1, "share": 0.5}
    assert result["per_stage"]["early"]["followed"] == 1
    assert result["per_stage"]["pre"]["followed"] == 0
    assert result["per_stage"]["pro"]["n"] == 0 and result["per_stage"]["pro"]["share"] is None


def test_measure_a_colour_reader_follows_the_donor_and_falls_in_grey():
    """A stand-in 'model' that names the stage by the image's mean hue: the stain probes must catch it."""
    tints = np.array([(235, 190, 215), (175, 205, 240), (215, 240, 195), (240, 225, 170)], float)
    rng = np.random.default_rng(4)
    true = np.repeat(np.arange(4), 6)
    images = np.stack([smear(rng, tuple(tints[k])) for k in true])
    masks = np.zeros(images.shape[:3], bool)
    masks[:, 12:20, 8:16] = True

    def predict(batch: np.ndarray) -> np.ndarray:
        mean = batch.reshape(len(batch), -1, 3).mean(1)
        distance = ((mean[:, None, :] - tints[None]) ** 2).sum(-1)
        return np.exp(-distance / 100) / np.exp(-distance / 100).sum(1, keepdims=True)

    summary, proba, donors = context.measure(predict, images, masks, true, CLASSES, seed=3)
    assert set(summary["variants"]) == set(CONTEXT_VARIANTS) == set(proba)
    accuracy = {v: summary["variants"][v]["all"]["accuracy"] for v in summary["variants"]}
    assert accuracy["original"] == 1.0
    assert accuracy["stain_swapped"] <= 0.1, accuracy
    follows = summary["stain_swapped"]["follows_donor"]
    assert follows["all"]["share"] >= 0.9 and follows["all"]["n"] == len(true)
    assert (true[donors] != true).all()
    assert sum(summary["stain_swapped"]["donor_stages"].values()) == len(true)
    assert summary["survival_with_swapped_stain"] == pytest.approx(accuracy["stain_swapped"])
    assert "seed 3" in summary["how"]["stain_swapped"] and "luminance" in summary["how"]["greyscale"]
    for variant in ("stain_swapped", "greyscale"):
        per_stage = summary["variants"][variant]["per_stage"]
        assert set(per_stage) == set(CLASSES) and all(b["n"] == 6 for b in per_stage.values())
        assert all(len(b["ci95"]) == 2 for b in per_stage.values())
