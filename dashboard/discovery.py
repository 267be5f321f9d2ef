"""Discovery: the prepared data, runs and sweeps under the outputs folder, and each one's status.

Discovery is cached for a few seconds (``DISCOVERY_TTL_S``); every file it opens goes through the confined
reader (dashboard.files), so a FIFO, a link to a device or a huge file makes a run corrupt instead of blocking
or exhausting the scan.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from engine import runs
from engine.runs import MANIFEST
from tuning import layout

from .files import LoadError, RefusedFile, _regular, engine_reader, read_json, stamp
from .paths import relative

EXPORTS = "exports"  # the dashboard's own folder: decks written by the Present page
SAMPLES = "samples"  # prepared data: samples/<stage>/*.png (engine.runs.SAMPLES)
# Folders that never hold runs, sweeps or prepared data (and can be large).
PRUNE = {layout.RAY_STORAGE, runs.CAMS, runs.CHECKPOINTS, EXPORTS, "screenshots", "cache", SAMPLES, "__pycache__"}
# A run's status as the pages show it, read from COMPLETE (engine.runs), trial.json (tuning.layout)
# or, for a run without either, from how recently it wrote.
RUN_COMPLETE = "complete"
RUN_STOPPED = "stopped"  # by early stopping (patience) or, in a sweep, by the scheduler (ASHA)
RUN_RUNNING = "running"
RUN_INTERRUPTED = "interrupted"
RUN_CORRUPT = "corrupt"
RUN_STATUSES = (RUN_COMPLETE, RUN_STOPPED, RUN_RUNNING, RUN_INTERRUPTED, RUN_CORRUPT)
RUNNING_WINDOW_S = 15 * 60  # a run without COMPLETE that wrote within this window counts as running
DISCOVERY_TTL_S = 3


@dataclass(frozen=True)
class RunInfo:
    path: str  # absolute, resolved, inside the outputs folder
    label: str  # relative to the outputs folder
    status: str  # one of RUN_STATUSES
    evaluated: bool
    explained: bool
    has_checkpoint: bool
    sweep: str | None
    problem: str | None = None

    @property
    def display(self) -> str:
        marks = {RUN_COMPLETE: "", RUN_STOPPED: " (stopped early)", RUN_RUNNING: " (running)",
                 RUN_INTERRUPTED: " (interrupted)", RUN_CORRUPT: " (corrupt)"}
        return f"{self.label}{marks.get(self.status, '')}"


@dataclass(frozen=True)
class SweepInfo:
    path: str
    label: str
    name: str
    status: str
    problem: str | None = None


def run_status(folder: Path, root: Path | str | None = None) -> tuple[str, str | None]:
    """A run folder's status (one of RUN_STATUSES) and, for corrupt or interrupted runs, why.

    Every file is read through :func:`read_json` (regular files inside ``root``, by default the
    folder itself, below MAX_SMALL_BYTES), so a FIFO, a link to a device or a huge file makes the
    run corrupt instead of blocking or exhausting the scan.
    """
    folder = Path(folder)
    root = folder if root is None else root
    try:
        config = read_json(root, folder / runs.CONFIG)
        if not isinstance(config, dict):
            raise LoadError("not a JSON object")
        finished = runs.complete_status(folder, engine_reader(root))
    except LoadError as exc:
        return RUN_CORRUPT, f"unreadable: {exc}"
    if finished is not None:
        return (RUN_STOPPED if finished == runs.STATUS_EARLY_STOPPED else RUN_COMPLETE), None
    try:  # a sweep trial cut short by ASHA says so in its trial.json
        trial = read_json(root, folder / layout.TRIAL_JSON)
    except RefusedFile as exc:
        return RUN_CORRUPT, f"unreadable: {exc}"
    except LoadError:
        trial = None
    if isinstance(trial, dict) and trial.get("status") == layout.TRIAL_STOPPED:
        return RUN_STOPPED, None
    newest = max((s[0] for s in (stamp(folder / n) for n in (runs.HISTORY, runs.CONFIG)) if s), default=0)
    if time.time() - newest / 1e9 < RUNNING_WINDOW_S:
        return RUN_RUNNING, None
    return RUN_INTERRUPTED, f"no {runs.COMPLETE} marker and no recent writes: the run was interrupted"


def _sweep_status(root: Path | str, folder: Path) -> tuple[str, str, str | None]:
    try:
        info = read_json(root, folder / layout.SWEEP_JSON)
        if not isinstance(info, dict):
            raise LoadError(f"{relative(root, folder / layout.SWEEP_JSON)} is not a JSON object")
    except LoadError as exc:
        return folder.name, RUN_CORRUPT, f"unreadable: {exc}"
    return str(info.get("name") or folder.name), str(info.get("status", "unknown")), None


@st.cache_data(ttl=DISCOVERY_TTL_S, show_spinner=False)
def _scan(root: str) -> dict[str, list[dict[str, Any]]]:
    base = Path(root)
    prepared: list[dict[str, Any]] = []
    found_runs: list[dict[str, Any]] = []
    sweeps: list[dict[str, Any]] = []
    if not base.is_dir():
        return {"prepared": [], "runs": [], "sweeps": []}
    for current, dirs, names in os.walk(base, followlinks=False):
        folder = Path(current)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in PRUNE)
        names_set = set(names)
        label = relative(base, folder)
        if MANIFEST in names_set:
            prepared.append({"path": str(folder), "label": label})
        if layout.SWEEP_JSON in names_set:
            name, status, problem = _sweep_status(base, folder)
            sweeps.append(asdict(SweepInfo(str(folder), label, name, status, problem)))
        if runs.CONFIG in names_set:
            status, problem = run_status(folder, base)
            parts = Path(label).parts
            sweep = "/".join(parts[: parts.index(layout.TRIALS)]) if layout.TRIALS in parts else None
            # A corrupt run is listed (the Run page says why) but offered to no page that reads its files.
            usable = status != RUN_CORRUPT
            found_runs.append(asdict(RunInfo(
                str(folder), label, status,
                evaluated=usable and all(_regular(base, folder / n) for n in (runs.METRICS, runs.PREDICTIONS)),
                explained=usable and _regular(base, folder / runs.CAMS / runs.CAMS_INDEX),
                has_checkpoint=usable and _regular(base, folder / runs.CHECKPOINTS / runs.BEST_CHECKPOINT, 2**62),
                sweep=sweep, problem=problem,
            )))
            dirs[:] = []  # run folders do not nest
    return {"prepared": prepared, "runs": found_runs, "sweeps": sweeps}


def scan(root: Path | str) -> dict[str, list]:
    """Everything under the outputs folder: {"prepared": [dict], "runs": [RunInfo], "sweeps": [SweepInfo]}."""
    raw = _scan(str(Path(root).resolve()))
    return {"prepared": raw["prepared"], "runs": [RunInfo(**r) for r in raw["runs"]],
            "sweeps": [SweepInfo(**s) for s in raw["sweeps"]]}


def outputs_summary(found: dict[str, list]) -> dict[str, int]:
    runs = found["runs"]
    return {"prepared": len(found["prepared"]), "runs": len(runs), "sweeps": len(found["sweeps"]),
            "evaluated": sum(r.evaluated for r in runs), "explained": sum(r.explained for r in runs)}
