"""Load: several real browser sessions click through every page and predict at once against one
server (tests/tools/dashboard_load.py); nothing fails, every session gets the answer one gets alone, and the
server's memory stops growing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import chromium, synthetic
from tests.tools import dashboard_load as load

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_memory_growth_ignores_the_warm_up_and_sees_a_leak() -> None:
    warm_then_flat = [(t, 300.0 + min(t, 10) * 20) for t in range(30)]
    assert load.memory_growth(warm_then_flat) == 0
    leaking = [(t, 300.0 + t * 10) for t in range(30)]
    assert load.memory_growth(leaking) >= 90


def test_concurrent_sessions_get_the_same_answers_without_errors(request: pytest.FixtureRequest,
                                                                 tmp_path: Path) -> None:
    executable = chromium.require_chromium()  # before the outputs are built: a skip costs nothing
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (make setup)")
    dashboard_outputs = request.getfixturevalue("dashboard_outputs")
    images = [tmp_path / f"{stage}.png" for stage in ("pre", "benign")]  # sessions on different images
    for k, image in enumerate(images):
        Image.fromarray(synthetic.cell_image(image.stem, np.random.default_rng(3 + k), 128)).save(image)
    with load.serve(dashboard_outputs["root"], tmp_path / "server.log") as (url, pid):
        # Two sessions at once, one per image: enough for a mix-up between sessions to show on 2 cores.
        result = load.run_load(url, pid, str(executable), images, sessions=len(images), seconds=20)
    assert result["errors"] == []
    assert result["predictions"] >= len(images)  # every session predicted at least once, all alike
    assert result["page_views"] >= len(images) * len(load.PAGES)  # every session went through every page
    assert all(a.startswith("Predicted stage:") and " · map " in a for a in result["answer_alone"])
    assert len(set(result["answer_alone"])) == 2  # two images, two maps: a mix-up would show
    assert load.memory_growth(result["rss_mb"]) < 150, result["rss_mb"]
