"""What mattered in a sweep: hyperparameter importance, and learning curves across sweeps with seed spread.

Importance is Optuna's fANOVA (``optuna.importance.FanovaImportanceEvaluator``, a random forest fitted to
the finished trials, its variance split per parameter), run on an in-memory study built from summary.csv
rows with ``optuna.trial.create_trial``; PED-ANOVA is the alternative. Only trials that finished training
(status complete) with a number for the metric count: ASHA-stopped trials report a metric from fewer epochs.
Below MIN_TRIALS finished trials the estimate is noise and is refused (TooFewTrials).

Pure functions of frames: no Streamlit, no file reading; the Sweeps page passes loaders' frames in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from tuning import layout

MIN_TRIALS = 10
EVALUATORS = {
    "fanova": "fANOVA (Optuna's FanovaImportanceEvaluator: random forest, variance decomposition)",
    "ped-anova": "PED-ANOVA (Optuna's PedAnovaImportanceEvaluator: how the top 10% of trials differ from all)",
}
CAVEAT = (f"Importances are estimated from the finished trials alone: with fewer than ~{5 * MIN_TRIALS} they "
          "shift when a trial is added, interactions between parameters are split arbitrarily, and a parameter "
          "the sweep barely varied cannot look important. Read them as a hint where to look, not a ranking; "
          "the scatter below shows the trials themselves.")
# Parameters that vary the repeat, not the setting: trials equal in all other parameters are repeats.
SEED_NAMES = ("seed",)
# A log scale for a positive numeric parameter spanning this ratio or more (lr, weight decay).
LOG_RATIO = 100.0
# Curves coloured by a numeric parameter with more distinct values than this are coloured by ranges of it.
COLOUR_GROUPS = 4


class TooFewTrials(ValueError):
    """Fewer finished trials than MIN_TRIALS: importance is refused, with the counts in the message."""


def finished(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The trials that finished training, with a finite ``metric``."""
    if frame.empty or metric not in frame or "status" not in frame:
        return frame.iloc[0:0]
    values = pd.to_numeric(frame[metric], errors="coerce")
    keep = (frame["status"] == layout.TRIAL_COMPLETE) & values.notna() & np.isfinite(values.fillna(0))
    out = frame[keep].copy()
    out[metric] = values[keep].astype(float)
    return out


def _distribution(values: pd.Series) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all():
        lo, hi = float(numbers.min()), float(numbers.max())
        if (numbers == numbers.round()).all() and abs(hi) < 2**53:
            return IntDistribution(int(lo), int(hi)), numbers.astype(int).tolist()
        log = lo > 0 and hi / lo >= LOG_RATIO
        return FloatDistribution(lo, hi, log=log), numbers.astype(float).tolist()
    text = values.astype(str)
    return CategoricalDistribution(sorted(text.unique())), text.tolist()


def importance_table(frame: pd.DataFrame, metric: str, *, mode: str = "max", evaluator: str = "fanova",
                     min_trials: int = MIN_TRIALS, seed: int = 0) -> pd.DataFrame:
    """One row per searched parameter: ``parameter``, ``importance`` (sums to 1), ``distinct`` values, sorted
    most important first. Raises TooFewTrials below ``min_trials`` finished trials; parameters that took one
    value only (in the finished trials) are left out, as nothing can be said about them."""
    import optuna

    if evaluator not in EVALUATORS:
        raise ValueError(f"evaluator {evaluator!r}: one of {', '.join(EVALUATORS)}")
    done = finished(frame, metric)
    if len(done) < min_trials:
        raise TooFewTrials(f"{len(done)} finished trial(s) with {metric}; importance needs at least {min_trials}")
    params = [c for c in frame.columns if c.startswith(layout.PARAM_PREFIX)]
    done = done.dropna(subset=params)  # a trial missing a parameter cannot be placed
    if len(done) < min_trials:
        raise TooFewTrials(f"{len(done)} finished trial(s) have every parameter; importance needs {min_trials}")
    varied = [c for c in params if done[c].astype(str).nunique() > 1]
    if not varied:
        return pd.DataFrame(columns=["parameter", "importance", "distinct"])
    dists, columns = {}, {}
    for column in varied:
        name = column.removeprefix(layout.PARAM_PREFIX)
        dists[name], columns[name] = _distribution(done[column])
    direction = "minimize" if mode == "min" else "maximize"
    trials = [optuna.trial.create_trial(params={n: columns[n][i] for n in dists}, distributions=dists,
                                        value=float(v))
              for i, v in enumerate(done[metric])]
    quiet = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created" on every page draw otherwise
    try:
        study = optuna.create_study(direction=direction, storage=optuna.storages.InMemoryStorage())
    finally:
        optuna.logging.set_verbosity(quiet)
    study.add_trials(trials)
    if evaluator == "fanova":
        chosen: Any = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    else:
        chosen = optuna.importance.PedAnovaImportanceEvaluator()
    scores = optuna.importance.get_param_importances(study, evaluator=chosen, normalize=True)
    table = pd.DataFrame({"parameter": list(scores), "importance": [float(s) for s in scores.values()]})
    table["distinct"] = [done[f"{layout.PARAM_PREFIX}{p}"].astype(str).nunique() for p in table["parameter"]]
    return table.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- curves across sweeps


def setting_of(params: Mapping[str, Any], seed_names: tuple[str, ...] = SEED_NAMES) -> str:
    """A label for a trial's setting: its parameters without the seed, so repeats share it."""
    kept = {k: v for k, v in params.items() if k not in seed_names and not _missing(v)}
    return ", ".join(f"{k}={_short(v)}" for k, v in sorted(kept.items())) or "(no parameters)"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def curve_spread(trials: pd.DataFrame, histories: Mapping[str, pd.DataFrame], metric: str,
                 colour_by: str | None = None, seed_names: tuple[str, ...] = SEED_NAMES) -> pd.DataFrame:
    """Learning curves grouped into settings (trials equal in every parameter but the seed, across sweeps).

    ``trials``: one row per trial with ``key`` (the histories' key, e.g. "sweep/trial_id") and PARAM_PREFIX
    columns. Returns one row per setting and epoch: ``setting``, ``colour`` (the value of ``colour_by``, or the
    setting), ``epoch``, ``mean``, ``min``, ``max``, ``n`` (repeats with that epoch) and ``trials`` (their keys).
    Trials without a history, or without ``metric``, are left out.
    """
    columns = ["setting", "colour", "epoch", "mean", "min", "max", "n", "trials"]
    param_columns = [c for c in trials.columns if c.startswith(layout.PARAM_PREFIX)]
    binned = colour_bins(trials[f"{layout.PARAM_PREFIX}{colour_by}"]) if (
        colour_by and f"{layout.PARAM_PREFIX}{colour_by}" in trials) else None
    epochs, values, settings, colours, keys = [], [], [], [], []
    # Arrays per trial, one frame at the end: a frame per trial cost most of the page's time.
    for record in trials[["key", *param_columns]].to_dict("records"):
        key = str(record["key"])
        history = histories.get(key)
        if history is None or metric not in history or "epoch" not in history:
            continue
        epoch = pd.to_numeric(history["epoch"], errors="coerce").to_numpy(dtype=float)
        value = pd.to_numeric(history[metric], errors="coerce").to_numpy(dtype=float)
        keep = ~(np.isnan(epoch) | np.isnan(value))
        if not keep.any():
            continue
        params = {c.removeprefix(layout.PARAM_PREFIX): record[c] for c in param_columns}
        setting = setting_of(params, seed_names)
        colour = params.get(colour_by) if colour_by else None
        if binned is not None and not _missing(colour):
            colour = binned(colour)
        n = int(keep.sum())
        epochs.append(epoch[keep])
        values.append(value[keep])
        settings += [setting] * n
        colours += [(_short(colour) if not _missing(colour) else "(none)") if colour_by else setting] * n
        keys += [key] * n
    if not keys:
        return pd.DataFrame(columns=columns)
    long = pd.DataFrame({"setting": settings, "colour": colours, "epoch": np.concatenate(epochs),
                         "value": np.concatenate(values), "key": keys})
    grouped = long.groupby(["setting", "colour", "epoch"], sort=True)
    out = grouped["value"].agg(["mean", "min", "max"]).reset_index()
    out["n"] = grouped["key"].nunique().to_numpy()
    out["trials"] = [sorted(set(k)) for k in grouped["key"].agg(list)]
    out["epoch"] = out["epoch"].astype(int)
    return out[columns]


def colour_bins(values: pd.Series, groups: int = COLOUR_GROUPS):
    """For a numeric parameter with more than ``groups`` distinct values (lr drawn from a distribution: every
    trial its own), a function from a value to its group's label, "0.0011–0.0026", over ``groups`` groups of
    about equal counts (on a log scale where the values span LOG_RATIO or more); None otherwise (few values,
    or text), where each value is its own colour."""
    numbers = pd.to_numeric(values, errors="coerce").dropna()
    if numbers.nunique() <= groups or len(numbers) != values.notna().sum():
        return None
    log = numbers.min() > 0 and numbers.max() / numbers.min() >= LOG_RATIO
    scale = np.log10(numbers) if log else numbers
    edges = np.unique(np.quantile(scale, np.linspace(0, 1, groups + 1)))
    bounds = 10 ** edges if log else edges

    def label(value: Any) -> str:
        x = float(value)
        k = int(np.clip(np.searchsorted(bounds, x, side="right") - 1, 0, len(bounds) - 2))
        return f"{_short(float(bounds[k]))}–{_short(float(bounds[k + 1]))}"

    return label


# ----------------------------------------------------------------------------- what the page says and reads


def refusal(frame: pd.DataFrame, metric: str, min_trials: int = MIN_TRIALS) -> str:
    """Why importance is not shown for ``frame``: how many trials finished, how many are needed, and why
    the others do not count (Markdown; ``metric`` must be one of the page's fixed names)."""
    done = len(finished(frame, metric))
    status = frame["status"] if "status" in frame else pd.Series(dtype=str)
    values = pd.to_numeric(frame[metric], errors="coerce") if metric in frame else pd.Series(dtype=float)
    cut = int(((status == layout.TRIAL_STOPPED) & values.notna()).sum())
    running = int((status == layout.TRIAL_RUNNING).sum())
    parts = [f"Importance needs at least **{min_trials}** trials that finished training with a value for "
             f"`{metric}`; these trials have **{done}**."]
    if cut:
        parts.append(f"{cut} trial(s) stopped early by ASHA do not count: their `{metric}` comes from fewer "
                     "epochs, so it measures how fast a setting starts, not where it ends.")
    if running:
        parts.append(f"{running} trial(s) still running may add to it.")
    parts.append(f"With fewer than {min_trials} points the importance model (a random forest for fANOVA, the top "
                 "10% of trials for PED-ANOVA) fits noise: its ranking changes with every trial added. "
                 "The scatter below shows the trials themselves.")
    return " ".join(parts)


def curve_trials(frames: Mapping[str, pd.DataFrame], limit: int,
                 rank_by: str = "best_val_macro_f1") -> tuple[pd.DataFrame, int]:
    """The trials whose learning curves are drawn across sweeps, and how many could have been.

    ``frames``: sweep label -> loaders.trials frame. Trials with a folder (``run_path``) and a status other
    than pending qualify; beyond ``limit`` the best of each sweep by ``rank_by`` are taken in turn (first of
    every sweep, then second, ...), so no sweep crowds out another. Adds ``sweep`` and ``key`` ("label/trial").
    """
    parts = []
    for order, (label, frame) in enumerate(frames.items()):
        if frame.empty or "run_path" not in frame:
            continue
        usable = frame[(frame["run_path"].astype(str) != "") & (frame["status"] != layout.TRIAL_PENDING)].copy()
        score = pd.to_numeric(usable[rank_by], errors="coerce") if rank_by in usable else pd.Series(
            np.nan, index=usable.index)
        usable["_rank"] = score.rank(ascending=False, method="first", na_option="bottom").to_numpy()
        usable["_order"] = order
        usable["sweep"] = label
        usable["key"] = label + "/" + usable["trial_id"].astype(str)
        parts.append(usable)
    if not parts:
        return pd.DataFrame(columns=["sweep", "key", "trial_id", "run_path"]), 0
    every = pd.concat(parts, ignore_index=True)
    picked = every.sort_values(["_rank", "_order"], kind="stable").head(limit)
    return picked.drop(columns=["_rank", "_order"]).reset_index(drop=True), len(every)
