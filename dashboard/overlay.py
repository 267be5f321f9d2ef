"""Grad-CAM overlays drawn from the stored maps with the user's opacity, colour map and threshold.

``explain`` stores each map twice: the array (``.npy``, float16 in [0, 1]) and an overlay PNG drawn
with the default style. The default style shows that PNG as it is; any other style is drawn here
from the array and the input image with the engine's own ``overlay`` (one way of drawing a map).
Pure functions of files inside the outputs folder: the pages cache what they return.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.explain.figures import COLORMAPS, overlay

from . import paths

# explain writes images and maps at the model's input size (≤ 512 px): anything far larger is not its file.
MAX_IMAGE_BYTES = 32 * 2**20
MAX_MAP_BYTES = 8 * 2**20


class OverlayError(ValueError):
    """A stored image or map that cannot be drawn (named, with the reason)."""


@dataclass(frozen=True)
class OverlayStyle:
    """How a map is drawn over its image; the defaults are how ``explain`` drew the stored overlays."""

    show: bool = True
    opacity: float = 0.5  # the map's share of the blend
    colormap: str = "jet"
    threshold: float = 0.0  # map values below it are not coloured

    def __post_init__(self) -> None:
        if self.colormap not in COLORMAPS:
            raise ValueError(f"colour map {self.colormap!r}: one of {', '.join(COLORMAPS)}")
        if not (0.0 <= self.opacity <= 1.0 and 0.0 <= self.threshold <= 1.0):
            raise ValueError("opacity and threshold must lie in [0, 1]")

    @property
    def is_stored(self) -> bool:
        """Whether the overlay PNG ``explain`` wrote already shows this style."""
        return self == OverlayStyle()


def read_image(root: Path | str, path: Path | str) -> np.ndarray:
    """An RGB uint8 image file inside the outputs folder, bounded in bytes and pixels."""
    from PIL import Image

    try:
        data = paths.read_bytes(root, path, MAX_IMAGE_BYTES)
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > 4096 * 4096:
                raise OverlayError(f"{paths.relative(root, path)}: {opened.width}x{opened.height} px is too large")
            return np.asarray(opened.convert("RGB"))
    except OverlayError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise OverlayError(f"{paths.relative(root, path)}: {exc}") from None


def read_map(root: Path | str, path: Path | str) -> np.ndarray:
    """A stored map (2-D floats in [0, 1], no pickles) inside the outputs folder."""
    try:
        cam = np.load(io.BytesIO(paths.read_bytes(root, path, MAX_MAP_BYTES)), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise OverlayError(f"{paths.relative(root, path)}: {exc}") from None
    if cam.ndim != 2 or not np.issubdtype(cam.dtype, np.floating):
        raise OverlayError(f"{paths.relative(root, path)}: not a 2-D float map ({cam.dtype}, shape {cam.shape})")
    return np.nan_to_num(cam.astype(np.float32), nan=0.0).clip(0, 1)


def render(image: np.ndarray, cam: np.ndarray, style: OverlayStyle) -> np.ndarray:
    """``image`` with ``cam`` drawn over it in ``style`` (the image alone when the overlay is off)."""
    if not style.show:
        return image
    if cam.shape != image.shape[:2]:
        raise OverlayError(f"map {cam.shape} and image {image.shape[:2]} differ in size")
    return overlay(image, cam, image_weight=1.0 - style.opacity, colormap=style.colormap,
                   threshold=style.threshold)

