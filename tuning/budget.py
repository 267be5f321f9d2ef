"""A sweep's time budget: once it is spent, each trial stops at its next epoch.

Tune's own ``time_budget_s`` ends the whole experiment at once: the trials caught mid-epoch would
read as interrupted (pending, for ``--resume``) and a trial not yet started would never train. This
budget stops each trial the way ASHA cuts one: at an epoch it reported, with its checkpoint and
``done`` set, so the sweep ends complete. Trials still waiting then train one epoch, which keeps the
worst case bounded by the budget plus about one epoch and a trial start.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.tune.stopper import Stopper

log = logging.getLogger(__name__)


class TimeBudget(Stopper):
    """Stop every trial that reports after ``seconds`` (wall clock, from this object's creation or its
    restoration with ``--resume``, which starts a new budget)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.deadline = time.time() + self.seconds
        self.stopped: set[str] = set()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Restored from the sweep's saved state: a resumed sweep gets the whole budget again.
        self.__dict__.update(state)
        self.deadline = time.time() + self.seconds

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if time.time() < self.deadline:
            return False
        if trial_id not in self.stopped:
            self.stopped.add(trial_id)
            log.info("time budget of %.0f s spent: trial %s stops after epoch %s", self.seconds, trial_id,
                     result.get("epoch"))
        return True

    def stop_all(self) -> bool:
        return False  # never the whole sweep: each trial ends at an epoch of its own
