"""Leukocyte masks: where the white blood cells are in each image.

The ALL data set ships a ``Segmented/`` copy of ``Original/``: the same images with only the
leukocytes kept, on black. Thresholded, such an image is the leukocyte mask of its original.
The authors' colour-threshold segmentation fails on some images, though (on nearly every
Pro-B image it keeps almost nothing), so a mask is checked before it is used, and an image
whose segmented mask cannot serve gets one derived from the original by the same kind of
rule: leukocytes are the magenta-stained objects, whose red and blue stand far above their
green, while red cells and plasma stay grey, blue-grey or yellow.

Every function here is pure (arrays in, arrays out) and works at any resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

# A segmented pixel is kept when its brightest channel is above this (JPEG noise on black stays below).
SEGMENTED_THRESHOLD = 40
# Derived masks: Otsu's threshold on the magenta index (R + B) / 2 - G, never below this floor,
# so that an image without any stained cell does not split its background in two.
MAGENTA_FLOOR = 20.0
# Components smaller than this share of the image are specks of stain or noise, not cells
# (150 pixels at 224 x 224, where a leukocyte covers 1,000-3,000).
MIN_COMPONENT_FRACTION = 0.003
# Less than this share of the image is smaller than one leukocyte (a fragment); more than MAX is not a cell mask.
MIN_FRACTION = 0.01
MAX_FRACTION = 0.5

SOURCES = ("segmented", "derived")
RULE = (f"segmented: brightest channel > {SEGMENTED_THRESHOLD}; derived (where the segmented mask cannot serve): "
        f"Otsu threshold (at least {MAGENTA_FLOOR:g}) on (R + B) / 2 - G after a 1-px Gaussian blur; both then "
        f"opened (2 px), holes filled, components under {MIN_COMPONENT_FRACTION:.1%} of the image dropped; usable "
        f"when covering {MIN_FRACTION:.1%}-{MAX_FRACTION:.0%} of the image")


def _opening(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_opening(mask, iterations=2)`` (3 x 3 cross, nothing beyond the border), by OpenCV: the
    same pixels 10x faster (prepare opens two masks per image)."""
    try:
        import cv2
    except ImportError:  # a machine with only the scientific stack: the same result, slower
        return ndi.binary_opening(mask, iterations=2)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    out = cv2.erode(mask.astype(np.uint8), cross, iterations=2, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.dilate(out, cross, iterations=2, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes(mask)``: background regions (4-connected) that do not reach the border are
    holes; labelled once instead of flooded from the border, 3x faster."""
    labels, _ = ndi.label(~mask)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return mask | ((labels > 0) & ~np.isin(labels, border))


def clean(mask: np.ndarray) -> np.ndarray:
    """Open away thin specks, fill holes (nuclei are darker than cytoplasm), drop small components."""
    mask = _fill_holes(_opening(np.asarray(mask, dtype=bool)))
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = ndi.sum(mask, labels, range(1, n + 1))
    keep = 1 + np.flatnonzero(sizes >= MIN_COMPONENT_FRACTION * mask.size)
    return np.isin(labels, keep)


def from_segmented(segmented: np.ndarray) -> np.ndarray:
    """The mask of a segmented image (RGB uint8, cells on black)."""
    return clean(segmented.max(axis=2) > SEGMENTED_THRESHOLD)


def derive(image: np.ndarray) -> np.ndarray:
    """A leukocyte mask from the original RGB uint8 image, by its magenta stain."""
    from skimage.filters import threshold_otsu

    rgb = image.astype(np.float32)
    magenta = ndi.gaussian_filter((rgb[..., 0] + rgb[..., 2]) / 2 - rgb[..., 1], 1)
    if np.ptp(magenta) == 0:
        return np.zeros(magenta.shape, dtype=bool)
    return clean(magenta > max(float(threshold_otsu(magenta)), MAGENTA_FLOOR))


def problem(mask: np.ndarray) -> str:
    """Why a mask cannot serve ('' when it can)."""
    fraction = float(mask.mean())
    if fraction < MIN_FRACTION:
        return f"empty or nearly empty ({fraction:.1%} of the image)"
    if fraction > MAX_FRACTION:
        return f"covers most of the image ({fraction:.0%})"
    return ""


def component_sides(mask: np.ndarray) -> list[int]:
    """The side of each connected component's bounding box (the longer of height and width), in pixels."""
    labels, _ = ndi.label(mask)
    return [max(rows.stop - rows.start, cols.stop - cols.start) for rows, cols in ndi.find_objects(labels)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@dataclass(frozen=True)
class MaskResult:
    """The mask chosen for one image, and what was wrong with the segmented one."""

    mask: np.ndarray | None  # bool H x W, None when no mask can serve
    source: str = ""  # "segmented", "derived" or ""
    segmented_problem: str = ""  # why the segmented mask was not used ('' when it was, or none was looked for)
    derived_problem: str = ""  # why the derived mask was not used
    agreement: float | None = None  # IoU of segmented and derived masks, where both can serve

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask is not None else 0.0


def choose(image: np.ndarray, segmented: np.ndarray | None, segmented_problem: str = "",
           derive_missing: bool = True) -> MaskResult:
    """The segmented image's mask where it can serve, else (``derive_missing``) one derived from ``image``.

    ``segmented_problem`` names a problem found before decoding (missing, unreadable); it wins.
    """
    seg_mask = None
    if segmented is not None and not segmented_problem:
        if segmented.shape[:2] != image.shape[:2]:
            segmented_problem = (f"size {segmented.shape[1]}x{segmented.shape[0]} differs from the image's "
                                 f"{image.shape[1]}x{image.shape[0]}")
        else:
            seg_mask = from_segmented(segmented)
            segmented_problem = problem(seg_mask)
    derived = derive(image) if derive_missing else None
    derived_problem = problem(derived) if derived is not None else "not derived"
    agreement = iou(seg_mask, derived) if seg_mask is not None and not segmented_problem and not derived_problem \
        else None
    if seg_mask is not None and not segmented_problem:
        return MaskResult(seg_mask, "segmented", "", derived_problem, agreement)
    if derived is not None and not derived_problem:
        return MaskResult(derived, "derived", segmented_problem, "", None)
    return MaskResult(None, "", segmented_problem, derived_problem, None)


def dilate(masks: np.ndarray, pixels: int) -> np.ndarray:
    """Grow (N x) H x W boolean masks by ``pixels`` (a square structuring element, per image)."""
    if pixels <= 0:
        return masks.astype(bool)
    # A square's dilation is a maximum filter, which runs as two 1-D passes: the same masks as
    # binary_dilation with a (2p+1)^2 structure and nothing beyond the border, 20x faster at 6 px.
    side = 2 * pixels + 1
    size = (side, side) if masks.ndim == 2 else (1, side, side)
    return ndi.maximum_filter(np.asarray(masks, dtype=bool), size=size, mode="constant", cval=False)
