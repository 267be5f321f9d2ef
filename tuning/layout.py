"""The sweep folder: the contract between ``tuning`` and the dashboard.

``outputs/sweeps/<name>/`` holds::

    sweep.json           settings, data folder, start/finish times, the sweep's status (SWEEP_STATUSES) and
                         its driver (DRIVER_FIELDS: host, pid, heartbeat; tuning/liveness.py reads them)
    sweep.lock           held (flock) by the running driver; names it while held (engine/locks.py)
    space.yaml           the search space as it was when the sweep started (--resume reads this one)
    summary.csv          one row per trial (summary_columns), rewritten while the sweep runs
    best.json            written by the finish step: the best trial, its params and test metrics
    repeats.json         written by the finish step when trials repeat a setting (REPEAT_PARAMS: the folds of a
                         cross-validation, seeds): per setting, every repeat's scores and their mean and spread
    recommended.json     written by the finish step: the recommended trial by the rule in tuning/recommend.py (the
                         most accurate trial that reads the cells), beside the most accurate trial
    trials/<trial_id>/   one engine run folder per trial (engine/runs.py), plus trial.json
    ray/                 Ray Tune's own state (the default --storage), not read by the dashboard

The names below are the contract: ``tuning`` writes with them and the dashboard reads with
them. Standard library and engine.runs only, so the dashboard can import it without Ray.
"""

from __future__ import annotations

from engine.runs import VAL_CONTEXT_SCORES

SWEEP_JSON = "sweep.json"
SWEEP_LOCK = "sweep.lock"
SPACE_COPY = "space.yaml"
SUMMARY = "summary.csv"
BEST = "best.json"
REPEATS = "repeats.json"
RECOMMENDED = "recommended.json"
# Parameters that vary the repeat, not the setting: trials equal in every other parameter are repeats of one
# setting, and the finish step reports their mean and spread (repeats.json). "fold": a smear fold of a group
# K-fold cross-validation (engine config split=smear); "seed": another draw of the same training.
REPEAT_PARAMS = ("fold", "seed")
# repeats.json: the scores of each repeat (from its metrics.json), and per setting their mean, std (sample,
# n - 1), min and max.
REPEAT_SCORES = ("test_accuracy", "test_macro_f1", "val_accuracy", "val_macro_f1")
TRIALS = "trials"
# Inside each trial's folder: {"trial_id", "params", "status", "gpu_ids", "error", "node", "attempts"};
# "node" {"id", "ip", "host"} is where the trial last ran, "attempts" one {"node_id", "node_ip", "host", "pid",
# "started_at"} per start (a retry after a crash or a lost node, a --resume), oldest first.
TRIAL_JSON = "trial.json"
RAY_STORAGE = "ray"

# sweep.json "status": running, complete (every trial ended and the finish step ran), or interrupted (--resume).
SWEEP_RUNNING = "running"
SWEEP_COMPLETE = "complete"
SWEEP_INTERRUPTED = "interrupted"
SWEEP_STATUSES = (SWEEP_RUNNING, SWEEP_COMPLETE, SWEEP_INTERRUPTED)
# sweep.json: who drives the sweep. "running" holds only while the heartbeat is fresh (tuning/liveness.py):
# a driver killed outright cannot write "interrupted", but it stops beating.
DRIVER_FIELDS = ("host", "pid", "pid_started", "heartbeat_at", "heartbeat_every_s")

# A trial's status, in summary.csv and trial.json. "stopped": cut early by the scheduler (ASHA).
TRIAL_PENDING = "pending"
TRIAL_RUNNING = "running"
TRIAL_COMPLETE = "complete"
TRIAL_STOPPED = "stopped"
TRIAL_ERROR = "error"
TRIAL_STATUSES = (TRIAL_COMPLETE, TRIAL_RUNNING, TRIAL_PENDING, TRIAL_STOPPED, TRIAL_ERROR)
TRIAL_ENDED = (TRIAL_COMPLETE, TRIAL_STOPPED, TRIAL_ERROR)  # nothing more will happen to these

# summary.csv: trial_id, status, one PARAM_PREFIX column per searched parameter, then METRIC_COLUMNS.
PARAM_PREFIX = "param_"
# The context probe of each trial (its val_context.json "scores", engine.runs.VAL_CONTEXT_SCORES), measured once
# at the trial's end and reported to Ray Tune with its last result; empty where the trial has none (data without
# leukocyte masks, a trial stopped early by ASHA, a sweep from before the probe: `python -m tuning finish` adds it).
PROBE_COLUMNS = VAL_CONTEXT_SCORES
# Metrics a space may name as objectives (space.yaml "metric"/"mode"): EPOCH_METRICS are reported every epoch
# (what ASHA and Optuna's per-epoch reports need, so the first objective is one of them); PROBE_METRICS only at
# the trial's end.
EPOCH_METRICS = ("val_macro_f1", "best_val_macro_f1", "val_acc", "val_loss")
PROBE_METRICS = ("val_acc_without_cells", "val_context_gap", "val_acc_stain_swapped", "val_follows_donor",
                 "val_acc_as_is")
# node_ip, node_id: the Ray node of the trial's latest report.
METRIC_COLUMNS = ("val_macro_f1", "best_val_macro_f1", "val_acc", "epochs", "seconds", "run_dir", "error",
                  "node_ip", "node_id", *PROBE_COLUMNS)


def summary_columns(param_keys: list[str]) -> list[str]:
    """summary.csv's header for a space searching ``param_keys``."""
    return ["trial_id", "status", *(f"{PARAM_PREFIX}{k}" for k in param_keys), *METRIC_COLUMNS]
