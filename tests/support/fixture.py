"""A real tiny outputs folder for the dashboard tests, made by the product's own functions.

``build(out, prepared)`` runs a tiny ``tuning`` sweep, evaluates and explains two of its trials,
and adds a corrupt run and an interrupted one. Each step calls the same function as the command
line (``run_sweep``, ``evaluate``, ``explain_run``); a step that fails raises, so a dashboard
test can never pass on stand-ins for a broken engine or sweep.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine import runs
from engine.evaluate import evaluate
from engine.explain.pipeline import explain_run
from tuning import layout
from tuning.sweep import SweepOptions, run_sweep


@contextmanager
def private_ray() -> Iterator[None]:
    """Ray's files in a temporary folder of our own, and no usage stats, for the length of a sweep.

    Short (under /tmp): Ray's socket paths must stay under 107 characters.
    """
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED")}
    folder = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    os.environ.update(RAY_TMPDIR=folder, RAY_USAGE_STATS_ENABLED="0")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)


def build(out: Path, prepared_source: Path) -> dict[str, Path]:
    """Fill ``out`` (an outputs folder); returns the paths the tests look at."""
    prepared = out / "prepared"
    shutil.copytree(prepared_source, prepared, ignore=shutil.ignore_patterns("cache"))
    with private_ray():
        result = run_sweep(SweepOptions(space="tiny", data=prepared, out=out / "sweeps", name="fixture",
                                        num_samples=3, explain=False))
    assert result.status == layout.SWEEP_COMPLETE, f"the fixture's sweep ended {result.status}"
    sweep = result.sweep_dir
    best_id = runs.read_json(sweep / layout.BEST)["trial_id"]
    trials = sorted(p for p in (sweep / layout.TRIALS).iterdir()
                    if (p / runs.CHECKPOINTS / runs.BEST_CHECKPOINT).is_file())
    best = sweep / layout.TRIALS / best_id
    other = next(t for t in trials if t.name != best_id)
    for run in (best, other):
        if not (run / runs.METRICS).is_file():  # the sweep's finish step evaluated the best trial already
            evaluate(run, n_bootstrap=50)
        explain_run(run)

    broken = out / "runs" / "broken"
    broken.mkdir(parents=True)
    (broken / runs.CONFIG).write_text("{not json")
    partial = out / "runs" / "partial"
    partial.mkdir(parents=True)
    (partial / runs.CONFIG).write_text('{"model": "densenet-tiny"}')
    (partial / runs.HISTORY).write_text("epoch,val_macro_f1\n")
    os.utime(partial / runs.CONFIG, (1, 1))  # long untouched: interrupted, not running
    os.utime(partial / runs.HISTORY, (1, 1))
    (partial / runs.METRICS).write_text('{"splits": {"test": {"accuracy": 0.5')  # half a file
    (partial / runs.PREDICTIONS).write_text("split,path\n")
    return {"root": out, "prepared": prepared, "sweep": sweep, "best": best, "other": other, "broken": broken,
            "partial": partial}

