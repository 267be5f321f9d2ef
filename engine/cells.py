"""The cells view: each image shown to the network as a mosaic of its largest leukocytes at source resolution.

At the data set's 224 px a leukocyte component's box is 27-30 px across (the median per stage; 90% are
under 37-47 px), and an image holds several (a median of 5-19 per stage): ``data_report.json`` records
both. A whole field resized to the 96 px a CPU can train leaves each cell 10-12 px wide, with the
chromatin texture gone, while the slide around it keeps all its colour. The cells view
(``Config.view = "cells"``) instead cuts a ``GRID`` x ``GRID`` mosaic of windows of ``TILE_AT_224`` source
pixels (scaled with the image) centred on the largest leukocyte components of the mask, and resizes
the mosaic to the run's image size: at 96 px each window keeps its source pixels. The mask gets the
same mosaic, so the background augmentation, the context and stain probes and the localisation of
maps work on the view unchanged.

Components are taken largest first; an image with fewer than ``GRID**2`` repeats them in that
order (the number of tiles does not tell how many cells there are); one without any mask is
tiled from fixed windows over the field. Where no stored mask exists (an upload to predict), the
mask is derived from the stain (``engine.masks.derive``), as ``prepare`` derives it where the data
set's segmented copy cannot serve.

Every function here is pure (arrays in, arrays out).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from .config import CELLS_GRID as GRID
from .config import VIEWS
from .masks import derive, problem

__all__ = ["GRID", "TILE_AT_224", "VIEWS", "centres", "derived_mask", "mosaic", "window", "window_side"]

TILE_AT_224 = 48  # source pixels per window side at 224 px: room for most cells (under 37-47 px) and a border


def window_side(height: int, width: int) -> int:
    """The side of one window at this image size: ``TILE_AT_224`` scaled with the short side."""
    return max(8, min(height, width, round(TILE_AT_224 * min(height, width) / 224)))


def centres(mask: np.ndarray, count: int = GRID * GRID) -> list[tuple[int, int]]:
    """``count`` window centres (row, column): the mask's components by area, largest first, repeated in that
    order where there are fewer; a fixed grid over the image where the mask is empty."""
    labels, n = ndi.label(mask)
    height, width = mask.shape
    if n == 0:
        steps = [(2 * k + 1) / (2 * GRID) for k in range(GRID)]
        grid = [(round(r * height), round(c * width)) for r in steps for c in steps]
        return [grid[k % len(grid)] for k in range(count)]
    index = np.arange(1, n + 1)
    areas = ndi.sum(mask, labels, index)
    found = ndi.center_of_mass(mask, labels, index)
    order = sorted(range(n), key=lambda k: (-areas[k], found[k]))  # ties: by position, so the order is fixed
    return [(round(found[order[k % n]][0]), round(found[order[k % n]][1])) for k in range(count)]


def window(array: np.ndarray, centre: tuple[int, int], side: int) -> np.ndarray:
    """The ``side`` x ``side`` window of ``array`` around ``centre``, moved inside the image at its borders."""
    height, width = array.shape[:2]
    top = min(max(0, centre[0] - side // 2), height - side)
    left = min(max(0, centre[1] - side // 2), width - side)
    return array[top:top + side, left:left + side]


def _resize(tile: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
    if tile.shape[0] == size:
        return tile
    return np.asarray(Image.fromarray(tile).resize((size, size), resample))


def mosaic(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The cells view of one source image (uint8 H x W x 3) and its leukocyte mask (bool H x W): the
    ``size`` x ``size`` mosaic of the image (uint8) and of the mask (bool), tile by tile the same windows."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the image {image.shape[1]}x{image.shape[0]}")
    if size % GRID:
        raise ValueError(f"the cells view needs an image size divisible by {GRID}, got {size}")
    side, tile = window_side(*mask.shape), size // GRID
    spots = centres(mask)
    view = np.empty((size, size, 3), dtype=np.uint8)
    view_mask = np.empty((size, size), dtype=bool)
    for k, centre in enumerate(spots):
        r, c = divmod(k, GRID)
        cut = (slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile))
        view[cut] = _resize(window(image, centre, side), tile, Image.Resampling.BICUBIC)
        # Bilinear, then half-way: the mask shrinks and grows like the image's edges do (engine.cache).
        grey = window(mask, centre, side).astype(np.uint8) * 255
        view_mask[cut] = _resize(grey, tile, Image.Resampling.BILINEAR) >= 128
    return view, view_mask


def derived_mask(image: np.ndarray) -> np.ndarray:
    """The leukocyte mask of an image without a stored one (an upload): derived from the stain, or empty where
    the derived mask cannot serve (then the mosaic tiles the field)."""
    mask = derive(image)
    return mask if not problem(mask) else np.zeros(mask.shape, dtype=bool)
