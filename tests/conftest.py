"""Shared fixtures: small generated image folders, a prepared data set and a tiny trained run.

Generated images carry a learnable, class-specific signal (a coloured disc whose size and
hue depend on the stage), so a tiny DenseNet reaches well above chance in a few epochs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
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


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A Kaggle-layout folder (Benign/Early/Pre/Pro) of 24 generated PNGs per class."""
    return write_image_folder(tmp_path / "raw")


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared (manifest + report) folder of 40 generated images per class, with leukocyte masks."""
    from engine.prepare import prepare

    root = tmp_path_factory.mktemp("tiny-data")
    write_image_folder(root / "raw" / "Original", per_class=40, seed=1)
    prepare(add_segmented(root / "raw"), root / "prepared", seed=0)
    return root / "prepared"


@pytest.fixture(scope="session")
def trained_tiny_run(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete, evaluated run of the tiny DenseNet (64 px, 4 epochs) on the generated data."""
    from engine.config import build_config
    from engine.evaluate import evaluate
    from engine.train import fit

    run = tmp_path_factory.mktemp("runs") / "tiny"
    fit(build_config("tiny", {"epochs": 4}), prepared_tiny, run, preset="tiny")
    evaluate(run)
    return run


@pytest.fixture(scope="session")
def dashboard_outputs(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real tiny outputs folder (a sweep, evaluated and explained trials, a corrupt and an interrupted
    run), built once per test run by tests/support/fixture.py for the dashboard tests."""
    from tests.support.fixture import build
    from tests.support.shared import built_once

    paths = built_once(tmp_path_factory, "dashboard-outputs",
                       lambda out: {k: str(v) for k, v in build(out, prepared_tiny).items()})
    return {k: Path(v) for k, v in paths.items()}


@pytest.fixture(scope="session")
def real_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of 40 real images per class from the shared ALL data set, with their Segmented/ copies."""
    source = REAL_DATA / "Original"
    if not source.is_dir():
        pytest.skip(f"real ALL data set not found at {source} (set ALL_DATA_DIR to its folder)")
    root = tmp_path_factory.mktemp("real")
    for name in CLASS_FOLDERS:
        for folder in ("Original", "Segmented"):
            (root / folder / name).mkdir(parents=True)
        for path in sorted((source / name).iterdir())[:40]:
            shutil.copy(path, root / "Original" / name / path.name)
            shutil.copy(REAL_DATA / "Segmented" / name / path.name, root / "Segmented" / name / path.name)
    return root


@pytest.fixture(scope="session")
def real_subset_prepared(real_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``real_subset`` prepared once per test run (seed 0, masks from its Segmented/ copies): folder, report."""
    from engine.prepare import prepare
    from tests.support.shared import built_once

    folder, report = built_once(tmp_path_factory, "real-subset-prepared",
                                lambda out: [str(out / "prepared"), prepare(real_subset, out / "prepared", seed=0)])
    return Path(folder), report


@pytest.fixture(scope="session")
def real_prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The whole shared ALL data set prepared once per test run (seed 0, masks from Segmented/): folder, report."""
    from engine.prepare import prepare
    from tests.support.shared import built_once

    if not (REAL_DATA / "Original").is_dir():
        pytest.skip(f"real ALL data set not found at {REAL_DATA} (set ALL_DATA_DIR to its folder)")
    folder, report = built_once(tmp_path_factory, "real-prepared",
                                lambda out: [str(out / "prepared"), prepare(REAL_DATA, out / "prepared", seed=0)])
    return Path(folder), report


# ----------------------------------------------------------------------------- where the time goes


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    """With TEST_TIMELINE=FILE, each test's start (and, below, its end) is appended to FILE with the worker and
    the wall clock: `python -m tests.support.timeline FILE` then shows when each worker was busy, and on what."""
    _timeline("start", nodeid)


def pytest_runtest_logfinish(nodeid: str, location: tuple) -> None:
    _timeline("end", nodeid)


def _timeline(event: str, nodeid: str) -> None:
    path = os.environ.get("TEST_TIMELINE")
    if path:
        import time

        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{time.time():.2f}\t{os.environ.get('PYTEST_XDIST_WORKER', 'main')}\t{event}\t{nodeid}\n")
