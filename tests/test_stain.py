"""Stain and colour augmentation (engine.stain) and its config keys, on generated images."""

import json

import numpy as np
import pytest
import torch

from engine import context, stain
from engine.config import ConfigError, build_config
from engine.inference import norm_stats
from engine.train import fit

pytestmark = pytest.mark.numerics

MEAN, STD = norm_stats(torch.device("cpu"))


def _normalise(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - MEAN) / STD


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


def _smears(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Pale lilac backgrounds with a dark purple disc (a stained nucleus) in the middle, RGB in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    images = np.empty((n, 3, size, size))
    for i in range(n):
        background = np.array([0.85, 0.80, 0.90]) + rng.uniform(-0.05, 0.05, 3)
        nucleus = np.array([0.35, 0.20, 0.55]) + rng.uniform(-0.05, 0.05, 3)
        images[i] = np.where(disc, nucleus[:, None, None], background[:, None, None])
        images[i] += rng.normal(0, 0.01, (3, size, size))
    return torch.from_numpy(images.clip(0, 1)).float(), torch.from_numpy(disc)


def _luminance(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb * torch.tensor(stain.LUMA).view(1, 3, 1, 1)).sum(1)


def test_stain_matrices_are_scikit_images():
    skcolor = pytest.importorskip("skimage.color")
    np.testing.assert_allclose(stain.RGB_FROM_HED, skcolor.rgb_from_hed, atol=1e-12)
    np.testing.assert_allclose(stain.HED_FROM_RGB, skcolor.hed_from_rgb, atol=1e-7)
    # The same unmixing as skimage.color.rgb2hed, in natural optical-density units (skimage divides by
    # -ln 1e-6 and clips at 0).
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.95 + 0.05
    ours = stain.rgb_to_hed(rgb).permute(0, 2, 3, 1).numpy() / -np.log(stain.RGB_FLOOR)
    theirs = skcolor.rgb2hed(rgb.permute(0, 2, 3, 1).numpy(), channel_axis=-1)
    np.testing.assert_allclose(np.maximum(ours, 0), theirs, atol=1e-6)


def test_hed_round_trip_gives_the_image_back():
    rgb, _ = _smears()
    np.testing.assert_allclose(stain.hed_to_rgb(stain.rgb_to_hed(rgb)).numpy(), rgb.numpy(), atol=1e-5)


def test_strength_zero_and_probability_zero_are_the_identity_and_draw_nothing():
    x = _normalise(_smears()[0])
    gen = torch.Generator().manual_seed(3)
    before = gen.get_state()
    assert stain.hed_jitter(x, 0.0, gen, MEAN, STD) is x
    assert stain.random_greyscale(x, 0.0, gen, MEAN, STD) is x
    assert stain.stain_mix(x, 0.0, gen, MEAN, STD) is x
    assert torch.equal(gen.get_state(), before)  # a run with all off trains bit-identically


def test_lab_conversions_are_scikit_images():
    skcolor = pytest.importorskip("skimage.color")
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rgb[0, :, 0, 0] = 0.0  # black and white: the ends of L
    rgb[0, :, 0, 1] = 1.0
    ours = stain.rgb_to_lab(rgb).permute(0, 2, 3, 1).numpy()
    theirs = skcolor.rgb2lab(rgb.permute(0, 2, 3, 1).numpy(), channel_axis=-1)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    back = stain.lab_to_rgb(stain.rgb_to_lab(rgb))
    np.testing.assert_allclose(back.numpy(), rgb.numpy(), atol=1e-6)


def test_torch_reinhard_is_the_probes_reinhard():
    rgb, _ = _smears(n=2, seed=4)
    images = np.rint(rgb.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    donor_mean, donor_std = context.lab_statistics(images[1])
    theirs = context.reinhard(images[0], donor_mean, donor_std)
    ours = stain.reinhard(torch.from_numpy(images[:1]).permute(0, 3, 1, 2).double() / 255,
                          torch.from_numpy(donor_mean).view(1, 3, 1, 1), torch.from_numpy(donor_std).view(1, 3, 1, 1))
    ours = np.rint(ours[0].permute(1, 2, 0).numpy() * 255)
    assert np.abs(ours - theirs).max() <= 1  # the probe rounds to uint8


def test_stain_mix_gives_each_chosen_image_another_images_colour_and_keeps_the_layout():
    rgb, disc = _smears(n=8, seed=5)
    rgb[4:] = rgb[4:] * torch.tensor([1.0, 0.7, 0.8]).view(1, 3, 1, 1)  # half the batch stained otherwise
    x = _normalise(rgb)
    out = _rgb(stain.stain_mix(x, 1.0, torch.Generator().manual_seed(0), MEAN, STD))
    assert out.shape == x.shape and out.dtype == x.dtype
    lab_in, lab_out = stain.rgb_to_lab(rgb), stain.rgb_to_lab(out)
    means_in, means_out = lab_in.mean(dim=(2, 3)), lab_out.mean(dim=(2, 3))
    # Every image now has the Lab means of some image of the batch, and the batch's images changed places.
    distance = torch.cdist(means_out, means_in)
    assert (distance.min(dim=1).values < 1.0).all()
    assert (distance.argmin(dim=1) != torch.arange(8)).any()
    # The nucleus stays where it was and stays darker than its background.
    assert (_luminance(out)[:, disc].mean(1) < _luminance(out)[:, ~disc].mean(1) - 0.2).all()
    # Seeded: the same generator state gives the same batch; p = 0.5 leaves some images as they were.
    again = _rgb(stain.stain_mix(x, 1.0, torch.Generator().manual_seed(0), MEAN, STD))
    assert torch.equal(out, again)
    half = _rgb(stain.stain_mix(x, 0.5, torch.Generator().manual_seed(1), MEAN, STD))
    kept = torch.isclose(half, rgb, atol=1e-5).flatten(1).all(1)
    assert 0 < int(kept.sum()) < 8


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_hed_jitter_keeps_shape_dtype_device_and_format_and_is_seeded(channels_last):
    x = _normalise(_smears()[0])
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    a = stain.hed_jitter(x, 0.3, torch.Generator().manual_seed(0), MEAN, STD)
    b = stain.hed_jitter(x, 0.3, torch.Generator().manual_seed(0), MEAN, STD)
    c = stain.hed_jitter(x, 0.3, torch.Generator().manual_seed(1), MEAN, STD)
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert a.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    g = stain.random_greyscale(x, 0.5, torch.Generator().manual_seed(0), MEAN, STD)
    assert g.shape == x.shape and g.dtype == x.dtype
    assert g.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(g, stain.random_greyscale(x, 0.5, torch.Generator().manual_seed(0), MEAN, STD))


def test_hed_jitter_changes_the_colours_but_not_the_layout():
    rgb, disc = _smears(n=32)
    out = _rgb(stain.hed_jitter(_normalise(rgb), 0.3, torch.Generator().manual_seed(0), MEAN, STD))
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    # Colour statistics move: each image's channel means, by a few hundredths at least on average.
    shift = (out.mean((2, 3)) - rgb.mean((2, 3))).abs().max(1).values
    assert shift.mean() > 0.03, shift
    # The colours differ between images more than they did: the jitter is per image.
    assert out.mean((2, 3)).std(0).mean() > 2 * rgb.mean((2, 3)).std(0).mean()
    # The layout stays: in every image the nucleus is darker than the background around it.
    luminance = _luminance(out)
    assert (luminance[:, disc].mean(1) < luminance[:, ~disc].mean(1) - 0.1).all()
    # ... and the picture's structure is the image's own: the luminance correlates with the original's.
    before = _luminance(rgb)
    for a, b in zip(luminance, before, strict=True):
        assert np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1] > 0.95


def test_hed_jitter_keeps_a_white_image_near_white():
    white = _normalise(torch.ones(16, 3, 8, 8))
    out = _rgb(stain.hed_jitter(white, 0.05, torch.Generator().manual_seed(0), MEAN, STD))
    assert out.min() > 0.85  # a light jitter only tints white; nothing dark appears
    assert (out.amax((1, 2, 3)) - out.amin((1, 2, 3)) < 0.15).all()  # and evenly: no structure appears


def test_greyscale_probability_one_gives_equal_channels_as_the_greyscale_probe():
    rgb, _ = _smears()
    out = _rgb(stain.random_greyscale(_normalise(rgb), 1.0, torch.Generator().manual_seed(0), MEAN, STD))
    np.testing.assert_allclose(out[:, 0].numpy(), out[:, 1].numpy(), atol=1e-5)
    np.testing.assert_allclose(out[:, 0].numpy(), out[:, 2].numpy(), atol=1e-5)
    # The same luminance as the greyscale probe of evaluate's cells-or-context check.
    assert stain.LUMA == context.LUMA
    uint8 = (rgb * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    probe = context.greyscale(uint8).astype(np.float64) / 255
    ours = _rgb(stain.random_greyscale(_normalise(torch.from_numpy(uint8).permute(0, 3, 1, 2).float() / 255), 1.0,
                                       torch.Generator().manual_seed(0), MEAN, STD))
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), probe, atol=1.0 / 255 + 1e-5)


def test_greyscale_probability_picks_a_share_of_the_images():
    x = _normalise(torch.rand(400, 3, 4, 4, generator=torch.Generator().manual_seed(0)))
    out = _rgb(stain.random_greyscale(x, 0.25, torch.Generator().manual_seed(0), MEAN, STD))
    grey = (out[:, 0] - out[:, 1]).abs().amax((1, 2)) < 1e-5
    assert 0.18 < grey.float().mean() < 0.32
    unchanged = (out - _rgb(x)).abs().amax((1, 2, 3)) < 1e-5
    assert torch.equal(unchanged, ~grey)


@pytest.mark.parametrize(("pair", "message"), [
    ({"stain_jitter": -0.1}, "stain_jitter must be in"), ({"stain_jitter": 1.0}, "stain_jitter must be in"),
    ({"greyscale_p": -0.1}, "greyscale_p must be in"), ({"greyscale_p": 1.5}, "greyscale_p must be in"),
    ({"stain_jitter": "strong"}, "stain_jitter: expected float"),
    ({"stain_mix": -0.5}, "stain_mix must be in"), ({"stain_mix": 1.5}, "stain_mix must be in"),
])
def test_config_rejects_invalid_stain_values(pair, message):
    with pytest.raises(ConfigError, match=message):
        build_config("tiny", pair)


def test_config_defaults_leave_colour_alone_and_the_cell_preset_turns_it_on():
    cfg = build_config("tiny", {"stain_jitter": "0.2", "greyscale_p": "1"})
    assert cfg.stain_jitter == 0.2 and cfg.greyscale_p == 1.0
    for preset in ("tiny", "cpu-quick", "cpu-cells", "gpu-full"):
        plain = build_config(preset)
        assert plain.stain_jitter == 0.0 and plain.greyscale_p == 0.0 and plain.stain_mix == 0.0
    cells = build_config("cpu-cells-stain")
    assert cells.background == "random" and cells.stain_jitter > 0 and 0 < cells.greyscale_p < 1


def test_training_with_stain_jitter_mixing_and_greyscale_runs_end_to_end(prepared_tiny, tmp_path):
    cfg = build_config("tiny", {"epochs": 1, "stain_jitter": 0.3, "greyscale_p": 0.3, "stain_mix": 0.5,
                                "background": "random"})
    run = fit(cfg, prepared_tiny, tmp_path / "stain")
    assert json.loads((run / "COMPLETE").read_text())["status"] == "complete"
    config = json.loads((run / "config.json").read_text())
    assert config["stain_jitter"] == 0.3 and config["greyscale_p"] == 0.3 and config["stain_mix"] == 0.5
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 2 and all(np.isfinite(float(v)) for v in history[1].split(","))
    # The keys reach the training loop: the same run without them ends with other weights.
    plain = fit(build_config("tiny", {"epochs": 1, "background": "random"}), prepared_tiny, tmp_path / "plain")
    a = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(plain / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert not all(torch.equal(a[k], b[k]) for k in a)
