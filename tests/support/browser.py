"""A real dashboard server and a real Chromium for the browser tests (Playwright), and how to read a page.

``server`` (module scope) serves the tests' tiny outputs folder (``dashboard_outputs``) on 127.0.0.1 with
tests/tools/dashboard_load.py; ``browser`` (module scope) is a headless Chromium. tests/conftest.py makes
both fixtures available to every test module.
"""

from __future__ import annotations

import pytest

from tests.support import chromium
from tests.tools import dashboard_load as load


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    # Found before the outputs are built (minutes of training), so that a machine without Chromium skips
    # (CI: fails) at once.
    executable = chromium.require_chromium()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        chromium.missing("the playwright Python package is not installed (`make setup` installs it)")
    outputs = request.getfixturevalue("dashboard_outputs")
    with load.serve(outputs["root"], tmp_path_factory.mktemp("server") / "server.log") as (url, _pid):
        yield {"url": url, "chromium": executable, **outputs}


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(server["chromium"]), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update"])
        yield launched
        launched.close()


def settle(page, timeout_ms: int = 60_000) -> None:
    """Wait until the script run finished (tests/tools/dashboard_load.py's ``settle``); a page still running
    after ``timeout_ms`` fails the test."""
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout_ms)
    load.settle(page, timeout_ms)


def assert_no_exception(page, name: str) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, name
    assert "Traceback" not in page.inner_text("body"), name
