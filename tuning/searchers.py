"""Optuna TPE for one or two objectives, as Ray Tune's OptunaSearch runs it, with one change for two.

Ray's OptunaSearch tells Optuna a finished trial's values from its last result. With two objectives, a trial
that ASHA cut on the first one (or that failed before its end) has no value for the second, measured only at
the trial's end: Ray would tell Optuna ``[f1, None]``, which Optuna refuses (a warning, and the Optuna trial
left running for ever). Such a trial is told as pruned here instead, which is what it is.

Imports Ray: only ``tuning.sweep.make_search`` imports this module, when a sweep runs.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch


class TrialEndOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna "pruned" for a trial whose last result lacks one of several objectives."""

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if result and isinstance(self.metric, list) and any(result.get(m) is None for m in self.metric):
            result = None  # OptunaSearch then tells PRUNED (or FAIL, on error)
        super().on_trial_complete(trial_id, result, error)
