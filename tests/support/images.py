"""Generated images and masks for the tests, and where the real ALL data set lies.

Generated images carry a learnable, class-specific signal (a coloured disc whose size and hue depend on
the stage), so a tiny DenseNet reaches well above chance in a few epochs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
REAL_DATA = Path(os.environ.get("ALL_DATA_DIR", REPO.parent / "shared" / "data" / "ALL"))
CLASS_FOLDERS = ("Benign", "Early", "Pre", "Pro")


def make_image(cls_index: int, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A synthetic 'cell': background noise plus a disc whose radius and colour encode the class."""
    pixels = rng.integers(170, 230, (size, size, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    radius = size * (0.12 + 0.07 * cls_index)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    colour = np.array([[120, 40, 160], [60, 60, 200], [160, 40, 90], [40, 120, 120]][cls_index])
    pixels[disc] = np.clip(colour + rng.integers(-20, 20, 3), 0, 255)
    return Image.fromarray(pixels)


def write_image_folder(root: Path, per_class: int = 24, seed: int = 0, names=CLASS_FOLDERS,
                       size: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    for index, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(index, rng, size).save(folder / f"{name.lower()}-{i:03d}.png")
    return root


def add_segmented(root: Path) -> Path:
    """``root/Segmented/<Class>`` beside ``root/Original/<Class>``: each generated cell kept on black,
    as the real data set's segmented copy keeps its leukocytes."""
    for name in CLASS_FOLDERS:
        (root / "Segmented" / name).mkdir(parents=True, exist_ok=True)
        for path in sorted((root / "Original" / name).iterdir()):
            pixels = np.asarray(Image.open(path))
            # The generated background is grey noise (170-230); the disc is saturated.
            cell = (pixels.max(2).astype(int) - pixels.min(2)) > 60
            Image.fromarray(np.where(cell[..., None], pixels, 0).astype(np.uint8)).save(
                root / "Segmented" / name / path.name)
    return root


def disc(size: int, radius: float, centre: tuple[int, int] | None = None) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    cy, cx = centre or (size // 2, size // 2)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def cells(n: int = 8, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([disc(size, 8, tuple(rng.integers(12, size - 12, 2))) for _ in range(n)])
