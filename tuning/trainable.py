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

Once training ends, the trial measures its context probe on the validation images with a
leukocyte mask (``engine.evaluate.probe_val_context``: best checkpoint, fp32, as they are,
without leukocytes, with another stage's stain; ``val_context.json``) and reports its scores
(tuning.layout.PROBE_COLUMNS) with its last result. Once per trial, never per epoch; a trial
that ASHA cuts short is not probed (the finish step probes the trials it considers).

With MLflow tracking (``--mlflow``), each trial logs to its own MLflow run nested under the sweep's
(``TrialSetup.mlflow_uri`` and ``mlflow_parent``): each epoch as it ends, then the whole folder once
training and the probe are done. It logs with MLflow's client from the trial's process
(engine.tracking), before each report to Tune, since Tune may stop a trial as soon as it reports.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import runs

from .layout import PROBE_COLUMNS, TRIAL_JSON, TRIAL_PENDING, TRIAL_RUNNING, TRIALS

if TYPE_CHECKING:
    from engine.tracking import FolderRun

log = logging.getLogger(__name__)

MARKER = "trial_state.json"  # in Ray's storage only, not in the sweep folder


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (handed to Ray with ``tune.with_parameters``)."""

    sweep_dir: str  # absolute: Ray changes each trial's working directory
    prepared: str  # absolute path of the prepared data folder
    base_preset: str
    fixed: dict[str, Any] = field(default_factory=dict)  # the space's fixed keys + device/num_threads
    mlflow_uri: str | None = None  # MLflow tracking: the server, and the sweep's run each trial nests under
    mlflow_parent: str | None = None


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
        # node_id: Ray fills in node_ip itself, which cannot tell two nodes on one machine apart. The probe's
        # columns are there, empty, from the first epoch: Ray checks every result for the metrics the search
        # optimises, and a second objective from the probe is measured only at the end.
        metrics = {**row, **dict.fromkeys(PROBE_COLUMNS), "best_val_macro_f1": self.best,
                   "epochs_planned": self.epochs_planned,
                   "run_complete": False, "node_id": self.node_id}
        self.last = (metrics, run_dir)
        if int(row["epoch"]) < self.epochs_planned:
            self.report(metrics, run_dir)

    def finish(self, extra: dict[str, Any] | None = None) -> None:
        """Report the run as complete: the held last epoch, or (after an early stop) the last one again, with
        ``extra`` (the context probe's scores) added."""
        if self.last is not None:
            metrics, run_dir = self.last
            self.report({**metrics, **(extra or {}), "run_complete": True}, run_dir)

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


def probe_scores(run_dir: Path, device: str, *, reuse: bool = False) -> dict[str, Any]:
    """The trial's context-probe scores (PROBE_COLUMNS) to report with its last result; {} when the data has no
    masks or the probe fails (logged: the trial's training stands without it). ``reuse``: a ``val_context.json``
    at least as new as the best checkpoint is read instead of measured again."""
    from engine.evaluate import probe_val_context

    found = Path(run_dir) / runs.VAL_CONTEXT
    best = Path(run_dir) / runs.CHECKPOINTS / runs.BEST_CHECKPOINT
    try:
        if reuse and found.is_file() and best.is_file() and found.stat().st_mtime_ns >= best.stat().st_mtime_ns:
            summary = runs.read_json(found)
        else:
            summary = probe_val_context(run_dir, device=device)
    except Exception:  # a probe bug (or a full disk) must not turn a trained trial into an errored one
        log.warning("the context probe of %s failed; its probe columns stay empty", run_dir, exc_info=True)
        return {}
    if summary is None:
        return {}
    scores = summary.get("scores") or {}
    return {k: scores.get(k) for k in PROBE_COLUMNS if scores.get(k) is not None}


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

    cfg = build_config(setup.base_preset, {**setup.fixed, **config})
    if runs.is_complete(run_dir):
        # Finished just before the sweep was interrupted: report its last epoch again, train nothing.
        history = read_history(run_dir)
        if history:
            best = max(float(r["val_macro_f1"]) for r in history)
            tune.report({**history[-1], "best_val_macro_f1": best, "epochs_planned": len(history),
                         **dict.fromkeys(PROBE_COLUMNS), **probe_scores(run_dir, cfg.device, reuse=True),
                         "run_complete": True, "node_id": node["id"]})
        return

    last = run_dir / runs.CHECKPOINTS / runs.LAST_CHECKPOINT
    resume = last.is_file()
    best = -1.0
    if resume:
        best = max((float(r["val_macro_f1"]) for r in read_history(run_dir)), default=-1.0)
        log.info("trial %s resumes from %s", trial_id, last)
    reporter = EpochReporter(trial_id, best, cfg.epochs, node["id"])
    tracked = _tracking(setup, run_dir, trial_id)
    try:
        fit(cfg, Path(setup.prepared), run_dir, preset=setup.base_preset, resume=resume,
            on_epoch=reporter if tracked is None else _log_then_report(tracked, reporter))
        probe = probe_scores(run_dir, cfg.device)
    except BaseException:
        if tracked is not None:
            tracked.sync()
            tracked.end("FAILED")
        raise
    if tracked is not None:  # before the last report: Tune may end the trial's process as soon as it reports
        tracked.sync()
        tracked.end("FINISHED")
    reporter.finish(probe)


def _tracking(setup: TrialSetup, run_dir: Path, trial_id: str) -> FolderRun | None:
    """The trial's MLflow run, nested under the sweep's, when the sweep tracks (None otherwise)."""
    if not (setup.mlflow_uri and setup.mlflow_parent):
        return None
    from engine import tracking

    tracked = tracking.track(setup.mlflow_uri, run_dir, kind=tracking.KIND_TRIAL, name=trial_id,
                             parent_run_id=setup.mlflow_parent)
    if tracked is not None:
        tracked.reopen()  # a retried or resumed trial
    return tracked


def _log_then_report(tracked: FolderRun, reporter: EpochReporter) -> Callable[[dict[str, Any], Path], None]:
    """``fit``'s on_epoch: the epoch into MLflow first, then to Tune (which may stop the trial at the report)."""
    def on_epoch(row: dict[str, Any], run_dir: Path) -> None:
        tracked.on_epoch(row, run_dir)
        reporter(row, run_dir)
    return on_epoch
