"""Where the browser tests find Chromium, and what they do without one.

In order: ``CHROMIUM=/path`` (an explicit choice: when it names nothing, that is said, not papered
over), ``chromium``, ``chromium-browser``, ``google-chrome`` or ``google-chrome-stable`` on the
PATH, then Playwright's own download (``PLAYWRIGHT_BROWSERS_PATH``, else ``~/.cache/ms-playwright``).
Without one the tests skip and say how to get one; under CI (``CI`` set, as CI services do) they
fail instead, so that a CI machine that lost its browser cannot pass by skipping them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import pytest

VARIABLE = "CHROMIUM"
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Playwright's layout: <browsers>/chromium-<revision>/chrome-linux[64]/chrome
PLAYWRIGHT_GLOBS = ("chromium-*/chrome-linux*/chrome", "chromium-*/chrome-mac*/Chromium.app/Contents/MacOS/Chromium")
HOW_TO = ("install Chromium to run the browser tests: `sudo apt-get install chromium` (Debian, Ubuntu), or "
          "`.venv/bin/python -m playwright install chromium` (needs the internet), or point CHROMIUM=/path/to/chrome "
          "at one you have")


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _playwright_dirs(environ: Mapping[str, str]) -> list[Path]:
    chosen = environ.get("PLAYWRIGHT_BROWSERS_PATH")
    if chosen == "0":  # Playwright's "inside the package" setting
        import importlib.util

        spec = importlib.util.find_spec("playwright")
        if spec is None or spec.origin is None:
            return []
        return [Path(spec.origin).parent / "driver" / "package" / ".local-browsers"]
    if chosen:
        return [Path(chosen)]
    cache = environ.get("XDG_CACHE_HOME") or (str(Path(environ["HOME"]) / ".cache") if environ.get("HOME") else "")
    return [Path(cache) / "ms-playwright"] if cache else []


def find_chromium(environ: Mapping[str, str] | None = None) -> Path | None:
    """The Chromium (or Chrome) executable the browser tests drive, or None."""
    environ = os.environ if environ is None else environ
    if environ.get(VARIABLE):
        path = Path(environ[VARIABLE])
        return path if _is_executable(path) else None
    for name in NAMES:
        found = shutil.which(name, path=environ.get("PATH", ""))
        if found:
            return Path(found)
    for folder in _playwright_dirs(environ):
        for pattern in PLAYWRIGHT_GLOBS:
            # The newest revision first: Playwright keeps older ones until it is told to clean up.
            for candidate in sorted(folder.glob(pattern), reverse=True):
                if _is_executable(candidate):
                    return candidate
    return None


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str, environ: Mapping[str, str] | None = None) -> NoReturn:
    """Skip the calling test with ``reason`` and how to fix it; under CI, fail it instead."""
    if in_ci(environ):
        pytest.fail(f"{reason} (CI is set, so the browser tests fail rather than skip): {HOW_TO}")
    pytest.skip(f"{reason}: {HOW_TO}")


def require_chromium(environ: Mapping[str, str] | None = None) -> Path:
    """The executable to launch, or skip (fail under CI) with how to get one."""
    environ = os.environ if environ is None else environ
    found = find_chromium(environ)
    if found is not None:
        return found
    if environ.get(VARIABLE):
        missing(f"{VARIABLE}={environ[VARIABLE]} is not an executable file", environ)
    missing("no Chromium found (CHROMIUM=, " + ", ".join(NAMES) + " on the PATH, Playwright's download)", environ)
