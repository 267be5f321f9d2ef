"""``summary.csv`` (one row per trial) and each trial's ``trial.json``, kept current during a sweep.

``SummaryCallback`` runs in the driver: Ray calls it on every result, completion and error,
and it rewrites summary.csv atomically from Ray's own list of trials, so the dashboard can
follow a sweep while it runs. The statuses and columns are the sweep folder's (layout.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from engine import runs

from .layout import (
    PARAM_PREFIX,
    PROBE_COLUMNS,
    SUMMARY,
    TRIAL_COMPLETE,
    TRIAL_ERROR,
    TRIAL_PENDING,
    TRIAL_RUNNING,
    TRIAL_STOPPED,
    TRIALS,
    summary_columns,
)
from .trainable import trial_dir, update_trial_json

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

log = logging.getLogger(__name__)

def trial_status(trial: Trial, sweep_dir: str, *, ended: bool = False) -> str:
    """Our status word for a Ray trial.

    ``ended``: Ray is stopping the trial (``on_trial_complete``), while its status still reads
    RUNNING. Ray stops trials for three reasons, told apart here: the trainable finished (its
    last report says ``run_complete``; the run folder has COMPLETE), a scheduler cut it (ASHA:
    Ray sets ``done`` on its last result), or the sweep was interrupted (neither: the trial
    is pending, and --resume continues it).
    """
    if trial.status == "ERROR":
        return TRIAL_ERROR
    if trial.status == "TERMINATED" or (ended and trial.status == "RUNNING"):
        result = trial.last_result or {}
        if result.get("run_complete") or runs.is_complete(trial_dir(sweep_dir, trial.trial_id)):
            return TRIAL_COMPLETE
        return TRIAL_STOPPED if result.get("done") else TRIAL_PENDING
    if trial.status == "RUNNING":
        return TRIAL_RUNNING
    return TRIAL_PENDING  # PENDING, or PAUSED


def error_line(trial: Trial) -> str | None:
    """The last line of the trial's traceback, e.g. 'engine.config.ConfigError: ...'."""
    if trial.status != "ERROR":
        return None
    try:
        text = trial.get_error() or ""
    except Exception:  # the error file lives in Ray's storage; never let a summary fail on it
        log.debug("no error text for %s", trial.trial_id, exc_info=True)
        text = ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else "error"


def trial_row(trial: Trial, param_keys: list[str], status: str) -> dict[str, Any]:
    result = trial.last_result or {}
    row: dict[str, Any] = {"trial_id": trial.trial_id, "status": status}
    row.update({f"{PARAM_PREFIX}{k}": trial.config.get(k) for k in param_keys})
    row.update({
        "val_macro_f1": result.get("val_macro_f1"),
        "best_val_macro_f1": result.get("best_val_macro_f1"),
        "val_acc": result.get("val_acc"),
        "epochs": result.get("epoch"),
        "seconds": round(result["time_total_s"], 1) if "time_total_s" in result else None,
        "run_dir": f"{TRIALS}/{trial.trial_id}",
        "error": error_line(trial),
        "node_ip": result.get("node_ip"),  # filled in by Ray
        "node_id": result.get("node_id"),  # reported by the trainable
    })
    # The context probe: only in the last result of a trial that trained to the end.
    row.update({k: result.get(k) for k in PROBE_COLUMNS})
    return row


def write_summary(sweep_dir: Path, param_keys: list[str], rows: list[dict[str, Any]]) -> None:
    runs.write_csv(Path(sweep_dir) / SUMMARY, summary_columns(param_keys), rows)


class SummaryCallback(Callback):
    """Rewrite summary.csv whenever a trial reports, finishes or fails; settle trial.json at the end."""

    def __init__(self, sweep_dir: str, param_keys: list[str]) -> None:
        self.sweep_dir = sweep_dir
        self.param_keys = list(param_keys)

    def rows(self, trials: list[Trial], ended: Trial | None = None,
             started: Trial | None = None) -> list[dict[str, Any]]:
        return [trial_row(t, self.param_keys,
                          TRIAL_RUNNING if t is started else trial_status(t, self.sweep_dir, ended=t is ended))
                for t in trials]

    def write(self, trials: list[Trial], ended: Trial | None = None, started: Trial | None = None) -> None:
        try:
            write_summary(Path(self.sweep_dir), self.param_keys, self.rows(trials, ended, started))
        except OSError:  # a full disk must not stop the sweep; the final write will retry
            log.warning("could not write %s", Path(self.sweep_dir) / SUMMARY, exc_info=True)

    def settle(self, trial: Trial) -> None:
        """Record a finished trial's final status (and error) in its trial.json."""
        status = trial_status(trial, self.sweep_dir, ended=True)
        update_trial_json(trial_dir(self.sweep_dir, trial.trial_id), trial_id=trial.trial_id,
                          params=dict(trial.config), status=status, error=error_line(trial))

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.write(trials, started=trial)  # Ray marks the trial RUNNING only after this call

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        self.write(trials)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.settle(trial)
        self.write(trials, ended=trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.settle(trial)
        self.write(trials)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        # Ray may write a trial's error file only after on_trial_error: settle errors again.
        for trial in trials:
            if trial.status == "ERROR":
                self.settle(trial)
        self.write(trials)
