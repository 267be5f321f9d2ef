"""The Ray Tune trainable: one trial = one engine run folder in ``<sweep>/trials/<trial_id>/``.

The trial's config is the base preset, the space's fixed overrides, the resource overrides
(device, num_threads) and the sampled params, given to ``engine.config.build_config`` as is.
``engine.train.fit`` does the training; its ``on_epoch`` callback reports each epoch to Tune.

The run folder is the trial's real state (its ``last.pt`` holds weights, optimiser and RNG).
The checkpoint reported to Tune is a small marker of the epoch reached, so that Tune knows
a retried or restored trial has something to resume, without copying ~100 MB of weights
into Ray's storage every epoch. A retried trial finds ``last.pt`` and calls ``fit(resume=True)``.

Each start of a trial (the first, a retry after a crash or a lost node, a --resume) appends an
attempt to trial.json with the Ray node it runs on, and every report carries the node's id, so
summary.csv and trial.json say where each trial ran.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import runs

from .layout import TRIAL_JSON, TRIAL_PENDING, TRIAL_RUNNING, TRIALS

log = logging.getLogger(__name__)

MARKER = "trial_state.json"  # in Ray's storage only, not in the sweep folder


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (handed to Ray with ``tune.with_parameters``)."""

    sweep_dir: str  # absolute: Ray changes each trial's working directory
    prepared: str  # absolute path of the prepared data folder
    base_preset: str
    fixed: dict[str, Any] = field(default_factory=dict)  # the space's fixed keys + device/num_threads


def trial_dir(sweep_dir: Path | str, trial_id: str) -> Path:
    return Path(sweep_dir) / TRIALS / trial_id


def update_trial_json(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``run_dir/trial.json`` (written atomically) and return it."""
    path = Path(run_dir) / TRIAL_JSON
    data: dict[str, Any] = {"trial_id": Path(run_dir).name, "params": {}, "status": TRIAL_PENDING,
                            "gpu_ids": [], "error": None, "node": None, "attempts": []}
    if path.is_file():
        data.update(runs.read_json(path))
    data.update(fields)
    runs.write_json(path, data)
    return data


def _node() -> dict[str, str]:
    """The Ray node this trial runs on: its id (unique even for several nodes on one machine), IP and host."""
    import ray
    from ray.util import get_node_ip_address

    return {"id": ray.get_runtime_context().get_node_id(), "ip": get_node_ip_address(), "host": socket.gethostname()}


def start_attempt(run_dir: Path, node: dict[str, str], **fields: Any) -> dict[str, Any]:
    """Record in trial.json that the trial starts (again) on ``node``; ``fields`` are merged too."""
    path = Path(run_dir) / TRIAL_JSON
    attempts = list(runs.read_json(path).get("attempts") or []) if path.is_file() else []
    attempts.append({"node_id": node["id"], "node_ip": node["ip"], "host": node["host"], "pid": os.getpid(),
                     "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return update_trial_json(run_dir, node=node, attempts=attempts, **fields)


def _gpu_ids() -> list[int | str]:
    import ray

    return [int(g) if str(g).isdigit() else str(g) for g in ray.get_gpu_ids()]


class EpochReporter:
    """``fit``'s on_epoch callback: report the epoch's metrics and a checkpoint marker to Tune.

    The last epoch is held back until ``finish()``, called after ``fit`` returns: Tune may
    stop a trial as soon as it reports (ASHA at ``max_t``), and by then the run folder must
    carry its COMPLETE marker. That last report says ``run_complete: True``, which is how
    the driver tells a finished trial from one cut short by ASHA (Ray marks both "done").
    """

    def __init__(self, trial_id: str, best_so_far: float, epochs_planned: int, node_id: str = "") -> None:
        self.trial_id = trial_id
        self.node_id = node_id
        self.best = best_so_far
        self.epochs_planned = epochs_planned
        self.last: tuple[dict[str, Any], Path] | None = None

    def __call__(self, row: dict[str, Any], run_dir: Path) -> None:
        self.best = max(self.best, float(row["val_macro_f1"]))
        # node_id: Ray fills in node_ip itself, which cannot tell two nodes on one machine apart.
        metrics = {**row, "best_val_macro_f1": self.best, "epochs_planned": self.epochs_planned,
                   "run_complete": False, "node_id": self.node_id}
        self.last = (metrics, run_dir)
        if int(row["epoch"]) < self.epochs_planned:
            self.report(metrics, run_dir)

    def finish(self) -> None:
        """Report the run as complete: the held last epoch, or (after an early stop) the last one again."""
        if self.last is not None:
            metrics, run_dir = self.last
            self.report({**metrics, "run_complete": True}, run_dir)

    def report(self, metrics: dict[str, Any], run_dir: Path) -> None:
        from ray import tune

        marker_dir = Path(tempfile.mkdtemp(prefix="tune-marker-"))
        try:
            (marker_dir / MARKER).write_text(json.dumps(
                {"trial_id": self.trial_id, "epoch": int(metrics["epoch"]), "run_dir": str(run_dir)}))
            # report() copies the marker into Ray's storage before it returns.
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(marker_dir)))
        finally:
            shutil.rmtree(marker_dir, ignore_errors=True)


def train_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Train one sampled config into its run folder, reporting every epoch to Tune."""
    from ray import tune

    from engine.config import build_config
    from engine.train import fit, read_history

    trial_id = tune.get_context().get_trial_id()
    run_dir = trial_dir(setup.sweep_dir, trial_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    node = _node()
    start_attempt(run_dir, node, trial_id=trial_id, params=dict(config), status=TRIAL_RUNNING,
                  gpu_ids=_gpu_ids(), error=None)

    if runs.is_complete(run_dir):
        # Finished just before the sweep was interrupted: report its last epoch again, train nothing.
        history = read_history(run_dir)
        if history:
            best = max(float(r["val_macro_f1"]) for r in history)
            tune.report({**history[-1], "best_val_macro_f1": best, "epochs_planned": len(history),
                         "run_complete": True, "node_id": node["id"]})
        return

    cfg = build_config(setup.base_preset, {**setup.fixed, **config})
    last = run_dir / runs.CHECKPOINTS / runs.LAST_CHECKPOINT
    resume = last.is_file()
    best = -1.0
    if resume:
        best = max((float(r["val_macro_f1"]) for r in read_history(run_dir)), default=-1.0)
        log.info("trial %s resumes from %s", trial_id, last)
    reporter = EpochReporter(trial_id, best, cfg.epochs, node["id"])
    fit(cfg, Path(setup.prepared), run_dir, preset=setup.base_preset, resume=resume, on_epoch=reporter)
    reporter.finish()
