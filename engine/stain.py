"""Stain and colour augmentation: take the stain away from the label, keep the cells' shapes.

In the ALL data set each stage comes from its own smears, so the stain's hue and strength name
the stage. A model trained on the images as they are follows another stage's stain (the
``stain_swapped`` probe of ``engine.context``). Two augmentations make the colour unreliable in
training, so that the cells' morphology is the cue that always holds:

- **HED stain jitter** (Tellez et al. 2018): each pixel's RGB is turned into optical density
  (OD = -ln RGB), unmixed into haematoxylin, eosin and a residual channel (Ruifrok & Johnston's
  stain matrix, as scikit-image's ``rgb_from_hed``/``hed_from_rgb``), each stain channel scaled by
  a factor from [1 - s, 1 + s] and shifted by an offset from [-s, s] (in OD units), drawn per
  image, and mixed back. Darker and lighter, bluer and pinker stainings of the same cells.
- **stain mixing**: with probability ``p`` per image, a Reinhard transfer in CIE Lab to the colour
  statistics (each channel's mean and spread over the image) of another image of the batch: the whole
  smear's colour is exchanged, as the ``stain_swapped`` probe of ``engine.context`` exchanges it.
  A model trained with it has seen that probe's kind of change, so for it the probe is no longer a
  held-out test (greyscale still is, where ``greyscale_p`` is 0).
- **random greyscale**: with probability ``p`` per image, the luminance (ITU-R BT.601, as the
  ``greyscale`` probe of ``engine.context``) in all three channels.

All work on a normalised NCHW batch on its device, in torch, drawing from the training loop's
generator; with strength 0 and probability 0 they return the batch untouched and draw nothing,
so runs without them train bit-identically to runs from before they existed.
"""

from __future__ import annotations

import torch

# scikit-image's skimage.color.rgb_from_hed (Ruifrok & Johnston 2001: haematoxylin, eosin, DAB
# as the residual) and its inverse, hed_from_rgb; rows are stains, columns R, G, B. Kept as
# constants so that training needs no scikit-image (tests compare them with scikit-image's).
RGB_FROM_HED = (
    (0.65, 0.70, 0.29),
    (0.07, 0.99, 0.11),
    (0.27, 0.57, 0.78),
)
HED_FROM_RGB = (
    (1.87798274, -1.00767869, -0.55611582),
    (-0.06590806, 1.13473037, -0.1355218),
    (-0.60190736, -0.48041419, 1.57358807),
)
# Darkest RGB value taken into optical density (skimage uses the same floor): OD at most 13.8.
RGB_FLOOR = 1e-6
# sRGB (D65) to CIE XYZ and the D65 white point, as scikit-image's xyz_from_rgb and rgb2lab use them.
XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
WHITE_D65 = (0.95047, 1.0, 1.08883)
# ITU-R BT.601 luma, as engine.context.LUMA (the greyscale probe); tests keep the two equal.
LUMA = (0.299, 0.587, 0.114)


def _matrix(values: tuple[tuple[float, ...], ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _keep_format(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``out`` in ``like``'s memory format (channels_last batches stay channels_last)."""
    if not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> stain optical densities (N, 3, H, W): H, E, D."""
    od = -torch.log(rgb.clamp(min=RGB_FLOOR))
    return torch.einsum("nchw,cs->nshw", od, _matrix(HED_FROM_RGB, rgb))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``rgb_to_hed``, clipped to [0, 1]."""
    od = torch.einsum("nshw,sc->nchw", hed, _matrix(RGB_FROM_HED, hed))
    return torch.exp(-od).clamp(0, 1)


def hed_jitter(x: torch.Tensor, strength: float, gen: torch.Generator, mean: torch.Tensor,
               std: torch.Tensor) -> torch.Tensor:
    """``x`` (normalised N, 3, H, W) with each image's stains scaled and shifted at random.

    Per image and stain channel: ``hed * a + b``, ``a`` from [1 - strength, 1 + strength], ``b``
    from [-strength, strength] (OD units). ``mean``/``std`` (1, 3, 1, 1) are the normalisation.
    Strength 0 returns ``x`` itself and draws nothing from ``gen``.
    """
    if strength <= 0:
        return x
    n, device = x.shape[0], x.device
    scale = 1 + (torch.rand(n, 3, 1, 1, generator=gen, device=device, dtype=x.dtype) * 2 - 1) * strength
    shift = (torch.rand(n, 3, 1, 1, generator=gen, device=device, dtype=x.dtype) * 2 - 1) * strength
    rgb = hed_to_rgb(rgb_to_hed(x * std + mean) * scale + shift)
    return _keep_format((rgb - mean) / std, x)


def greyscale(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``x`` (normalised) as the luminance in all three channels, normalised again."""
    luma = ((x * std + mean) * _matrix((LUMA,), x).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return _keep_format((luma - mean) / std, x)


def random_greyscale(x: torch.Tensor, p: float, gen: torch.Generator, mean: torch.Tensor,
                     std: torch.Tensor) -> torch.Tensor:
    """``x`` with a random share ``p`` of its images in greyscale; ``p`` 0 returns ``x`` and draws nothing."""
    if p <= 0:
        return x
    chosen = torch.rand(x.shape[0], generator=gen, device=x.device) < p
    return _keep_format(torch.where(chosen.view(-1, 1, 1, 1), greyscale(x, mean, std), x), x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) sRGB in [0, 1] -> CIE Lab (D65), as ``skimage.color.rgb2lab``."""
    linear = torch.where(rgb > 0.04045, ((rgb.clamp(min=0) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("nchw,kc->nkhw", linear, _matrix(XYZ_FROM_RGB, rgb))
    xyz = xyz / torch.tensor(WHITE_D65, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """The inverse of ``rgb_to_lab``, clipped to [0, 1] (as ``skimage.color.lab2rgb``: negative Z clipped)."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, (fy - lab[:, 2] / 200).clamp(min=0)], dim=1)
    xyz = torch.where(f ** 3 > 0.008856, f ** 3, (f - 16 / 116) / 7.787)
    xyz = xyz * torch.tensor(WHITE_D65, dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1)
    linear = torch.einsum("nkhw,ck->nchw", xyz, torch.linalg.inv(_matrix(XYZ_FROM_RGB, lab)))
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0, 1)


def lab_statistics(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's Lab channel means and standard deviations over its pixels, (N, 3, 1, 1) each."""
    return lab.mean(dim=(2, 3), keepdim=True), lab.std(dim=(2, 3), keepdim=True, correction=0)


def _transfer(lab: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Lab images shifted and scaled per channel to ``mean`` and ``std``, back in RGB [0, 1]."""
    own_mean, own_std = lab_statistics(lab)
    scale = torch.where(own_std > 1e-6, std / own_std.clamp(min=1e-6), torch.ones_like(own_std))
    moved = (lab - own_mean) * scale + mean
    moved = torch.cat([moved[:, :1].clamp(0, 100), moved[:, 1:]], dim=1)  # L outside [0, 100] has no colour
    return lab_to_rgb(moved)


def reinhard(rgb: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1], each image recoloured so that its Lab channels have ``mean`` and ``std``
    (N, 3, 1, 1): ``engine.context.reinhard`` in torch (a channel without spread is only shifted)."""
    return _transfer(rgb_to_lab(rgb), mean, std)


def stain_mix(x: torch.Tensor, p: float, gen: torch.Generator, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``x`` (normalised N, 3, H, W) with a random share ``p`` of its images recoloured to the Lab statistics
    of another image of the batch (a random permutation names the donors); ``p`` 0 returns ``x`` and draws nothing.
    """
    if p <= 0:
        return x
    n, device = x.shape[0], x.device
    chosen = torch.rand(n, generator=gen, device=device) < p
    donors = torch.randperm(n, generator=gen, device=device)
    lab = rgb_to_lab((x * std + mean).float())
    lab_mean, lab_std = lab_statistics(lab)
    mixed = ((_transfer(lab, lab_mean[donors], lab_std[donors]) - mean) / std).to(x.dtype)
    return _keep_format(torch.where(chosen.view(-1, 1, 1, 1), mixed, x), x)
