"""Builds that every pytest-xdist worker of one run shares: made by the first worker that needs one.

pytest's session fixtures live per process, so under ``make test``'s two workers a session fixture
is built twice. ``built_once`` builds into a folder beside the workers' own temporary folders, under
a lock, and records what the build returned; a worker that comes second waits and reads the record.
A failed build leaves no record: the next worker builds again and fails the same way.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.locks import wait_lock


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> Any:
    """``build(folder)``'s JSON-able result, built once per test run into ``folder`` (named ``name``)."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, which holds every worker's basetemp
    folder, record = base / name, base / f"{name}.json"
    with wait_lock(base / f"{name}.lock", what=f"test build {name}"):
        if record.is_file():
            return json.loads(record.read_text())
        shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
        folder.mkdir(parents=True)
        result = build(folder)
        record.write_text(json.dumps(result))
        return result
