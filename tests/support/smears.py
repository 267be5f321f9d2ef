"""Generated smears: several per stage, each with its own background tint and illumination.

``write_smear_folder(root, ...)`` writes ``root/Original/<Class>/`` and a ``Segmented/`` copy (cells
on black), as the real data set has, and returns which smear each file came from. The stage shows
in the cells too (colour and size), so a tiny DenseNet can learn it; the smear shows in the
background, which is what ``prepare``'s smear grouping must find.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.images import CLASS_FOLDERS

CELL_COLOURS = [(150, 40, 170), (60, 60, 200), (190, 60, 110), (40, 140, 140)]
# Background tints far apart from one another (at least 25 grey levels in some channel), so that
# every smear of every stage is told apart by its colour; a smear's own images vary far less (noise,
# illumination within 3%).
TINTS = [(200, 170, 190), (170, 200, 185), (215, 215, 170), (185, 185, 220), (225, 190, 160), (160, 215, 215),
         (210, 160, 215), (190, 225, 200)]


def smear_image(stage: int, tint: tuple[int, int, int], light: float, rng: np.random.Generator,
                size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One image of a smear: its tint (scaled by the smear's ``light``) plus noise, and one or two stage cells."""
    background = np.array(tint, dtype=float) * (light + rng.normal(0, 0.005))
    image = np.clip(background + rng.normal(0, 6, (size, size, 3)), 0, 255)
    mask = np.zeros((size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    # Three to five cells at random places: with fewer, the perceptual hashes of such plain images come
    # close enough to call unrelated images near-duplicates.
    for _ in range(int(rng.integers(3, 6))):
        cy, cx = rng.integers(size // 5, size - size // 5, 2)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= (size / 12 + stage) ** 2
    image[mask] = np.clip(np.array(CELL_COLOURS[stage]) + rng.normal(0, 8, (int(mask.sum()), 3)), 0, 255)
    return image.astype(np.uint8), mask


def save(root: Path, stage_folder: str, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    for folder in ("Original", "Segmented"):
        (root / folder / stage_folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "Original" / stage_folder / name)
    Image.fromarray(np.where(mask[..., None], image, 0).astype(np.uint8)).save(root / "Segmented" / stage_folder / name)


def write_smear_folder(root: Path, smears_per_stage: int = 4, per_smear: int = 10, seed: int = 0,
                       size: int = 64) -> dict[str, str]:
    """Write the folder; return {manifest path ("<Class>/<file>"): smear id ("<stage>/<n>")}.

    File names do not give the smear away: images of all a stage's smears are interleaved.
    """
    rng = np.random.default_rng(seed)
    truth = {}
    for stage, name in enumerate(CLASS_FOLDERS):
        tints = rng.permutation(len(TINTS))[:smears_per_stage]
        lights = rng.uniform(0.97, 1.03, smears_per_stage)
        order = rng.permutation(smears_per_stage * per_smear)
        for i, k in enumerate(order):
            smear = int(k) // per_smear
            image, mask = smear_image(stage, TINTS[tints[smear]], float(lights[smear]), rng, size)
            file = f"{name.lower()}-{i:03d}.png"
            save(root, name, file, image, mask)
            truth[f"{name}/{file}"] = f"{name}/{smear}"
    return truth
