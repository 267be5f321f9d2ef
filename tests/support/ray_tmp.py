"""A private RAY_TMPDIR per test (the ``ray_tmpdir`` fixture), and the check that no Ray process outlives it.

Every Ray test runs Ray under its own RAY_TMPDIR, so that "no Ray process left behind" can be checked for
exactly this test's processes, even while someone else runs Ray on the machine. tests/conftest.py makes
the fixture available to every test module.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (Ray puts its temp dir in them)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


@pytest.fixture
def ray_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private RAY_TMPDIR (short: Ray's socket paths must stay under 107 characters)."""
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    yield path
    remove_when_ray_has_left(path)


def remove_when_ray_has_left(path: str, seconds: float = 30) -> None:
    """Wait up to ``seconds`` for the Ray processes using ``path`` to end, remove it, and fail if any is left."""
    deadline = time.monotonic() + seconds
    while processes_mentioning(path) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = processes_mentioning(path)
    subprocess.run(["rm", "-rf", path], check=False)
    assert not left, f"Ray processes left behind: {left}"
