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
- **random greyscale**: with probability ``p`` per image, the luminance (ITU-R BT.601, as the
  ``greyscale`` probe of ``engine.context``) in all three channels.

Both work on a normalised NCHW batch on its device, in torch, drawing from the training loop's
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
