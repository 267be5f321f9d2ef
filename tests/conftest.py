"""Shared fixtures: small generated image folders, a prepared data set and a tiny trained run.

The generated images (tests/support/images.py) carry a learnable, class-specific signal, so a tiny
DenseNet reaches well above chance in a few epochs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.browser import browser, server  # noqa: F401 (fixtures: the browser tests' server and Chromium)
from tests.support.images import CLASS_FOLDERS, REAL_DATA, add_segmented, write_image_folder
from tests.support.ray_tmp import ray_tmpdir  # noqa: F401 (a fixture: a private RAY_TMPDIR per Ray test)

# The suite runs two pytest-xdist workers, training subprocesses, Ray trials and servers on as few as two
# cores. OpenMP's threads busy-wait after each parallel region by default, so on a shared core they burn
# the cycles the other processes need: sleeping instead halved the CPU time of tests/test_train.py beside
# other work (docs/testing.md). Set before any worker or subprocess starts, so every one inherits it; a
# value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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


# Fixtures that start a real Ray cluster (a sweep) or a Jupyter kernel: a test that uses one is slow whatever its
# own marks say, so that `make test-fast` leaves it out as the marker promises.
SLOW_FIXTURES = frozenset({"dashboard_outputs", "ray_tmpdir", "kernel", "server", "real_prepared"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
        import resource
        import time

        # CPU seconds of this process and of the children it has reaped (training pools, servers, browsers and
        # Ray's processes once they end): on 2 cores the suite's time is its CPU time, so this shows what to cut.
        cpu = sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for field in ("ru_utime", "ru_stime"))
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{time.time():.2f}\t{os.environ.get('PYTEST_XDIST_WORKER', 'main')}\t{event}\t{cpu:.2f}"
                      f"\t{nodeid}\n")
