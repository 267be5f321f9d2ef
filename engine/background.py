"""Background augmentation: take the slide's context away from the label, keep the cells.

In the ALL data set each stage comes from its own smears, so the background (stain hue,
illumination, red-cell density) tells the stage almost as well as the leukocytes do, and a
model trained on the images as they are learns both. Replacing the background of training
images, with the leukocyte mask, leaves the cells as the one cue that always holds.

Modes (``Config.background``):

    keep    the images as they are
    random  with probability ``background_p`` per image, everything outside the grown mask
            becomes one of: another training image's background, a flat random colour, or
            Gaussian noise around a random colour (chosen uniformly per image)
    black   with probability ``background_p``, the cells on black: the look of the data set's
            ``Segmented/`` copy

Works on a normalised NCHW batch on any device, before the geometric and colour
augmentation (which then moves and recolours cells and new background together).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import BACKGROUNDS

MODES = BACKGROUNDS
GROW_AT_224 = 2  # px the mask is grown by: keeps each cell's own border, and little of the old background


def grow(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow boolean (N, H, W) masks by ``pixels`` (square neighbourhood) with a max-pool."""
    if pixels <= 0:
        return masks
    return F.max_pool2d(masks[:, None].float(), 2 * pixels + 1, stride=1, padding=pixels)[:, 0] > 0


def replace_background(x: torch.Tensor, masks: torch.Tensor, has_mask: torch.Tensor, mode: str, p: float,
                       gen: torch.Generator, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``x`` (normalised N, 3, H, W) with the background of a random share ``p`` of the images replaced.

    ``masks`` (N, H, W) bool, already grown; ``has_mask`` (N,) bool: images without a usable
    mask keep their background. ``mean``/``std`` (1, 3, 1, 1) normalise the new colours.
    """
    if mode == "keep" or p <= 0:
        return x
    if mode not in MODES:
        raise ValueError(f"unknown background mode {mode!r}; choose from {', '.join(MODES)}")
    n, device = x.shape[0], x.device
    chosen = (torch.rand(n, generator=gen, device=device) < p) & has_mask
    keep = masks[:, None] | ~chosen.view(n, 1, 1, 1)  # (N, 1, H, W): True where the pixel stays
    if mode == "black":
        fill = ((torch.zeros(1, 3, 1, 1, device=device) - mean) / std).expand_as(x)
        return torch.where(keep, x, fill)
    colour = torch.rand(n, 3, 1, 1, generator=gen, device=device, dtype=x.dtype)
    flat = (colour - mean) / std
    noise = (colour + 0.1 * torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype) - mean) / std
    # Another image's background: the batch rolled by one, its own cells covered by its mean background.
    other, other_mask = x.roll(1, 0), masks.roll(1, 0)[:, None]
    other_bg = (other * ~other_mask).sum((2, 3), keepdim=True) / (~other_mask).sum((2, 3), keepdim=True).clamp(min=1)
    swapped = torch.where(other_mask, other_bg, other)
    kind = torch.randint(0, 3, (n, 1, 1, 1), generator=gen, device=device)
    fill = torch.where(kind == 0, swapped, torch.where(kind == 1, flat.expand_as(x), noise))
    return torch.where(keep, x, fill)
