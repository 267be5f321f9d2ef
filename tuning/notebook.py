"""A sweep folder for notebooks and scripts: ``load_sweep(path).trials`` as a DataFrame, the best and the
recommended trial, each trial as an ``engine.notebook.Run``.

Read with the sweep-folder contract (``tuning.layout``) and the reader ``python -m tuning finish`` uses;
neither imports Ray or PyTorch. Runs themselves: ``engine.notebook`` (docs/notebooks.md).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pandas as pd

from engine.notebook import Run, load_run, read_json

from . import layout
from .finish import read_summary


class Sweep:
    """A sweep folder (``outputs/sweeps/<name>``): its trials, its best and recommended trial.

    Read with tuning's contract (tuning.layout, and summary.csv by the reader ``python -m tuning finish`` uses),
    which needs neither Ray nor PyTorch.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not (self.path / layout.SWEEP_JSON).is_file():
            raise FileNotFoundError(errno.ENOENT, f"not a sweep folder (no {layout.SWEEP_JSON})", str(self.path))

    def __repr__(self) -> str:
        return f"Sweep({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def info(self) -> dict[str, Any]:
        """sweep.json: the settings, data folder, status and times."""
        return read_json(self.path / layout.SWEEP_JSON)

    @property
    def trials(self) -> pd.DataFrame:
        """summary.csv: one row per trial (trial_id, status, param_<key>..., val_macro_f1, best_val_macro_f1, ...,
        the context probe), numbers as numbers, plus ``run_path``: the trial's run folder."""

        rows = read_summary(self.path)  # DamagedFileError naming summary.csv when it is not the table of trials
        if not rows:
            return pd.DataFrame(columns=["trial_id", "status", *layout.METRIC_COLUMNS, "run_path"])
        frame = pd.DataFrame(rows)
        text = {"trial_id", "status", "run_dir", "error", "node_ip", "node_id"}
        for column in frame.columns:
            if column in text:
                continue
            values = frame[column].replace("", None)
            numbers = pd.to_numeric(values, errors="coerce")
            # A parameter of words (a model name) stays words; a column of numbers (with blanks) becomes numbers.
            if numbers.notna().sum() == values.notna().sum():
                frame[column] = numbers
        frame["run_path"] = [str(self.path / rel) if rel else "" for rel in frame.get("run_dir", [""] * len(frame))]
        return frame

    @property
    def params(self) -> list[str]:
        """The searched parameters' column names in ``trials`` (param_<key>)."""
        return [c for c in self.trials.columns if c.startswith(layout.PARAM_PREFIX)]

    @property
    def best(self) -> dict[str, Any] | None:
        """best.json (the best trial by validation macro-F1, with its test scores), or None before the finish step."""
        path = self.path / layout.BEST
        return read_json(path) if path.is_file() else None

    @property
    def recommended(self) -> dict[str, Any] | None:
        """recommended.json (the most accurate trial that reads the cells), or None before the finish step."""
        path = self.path / layout.RECOMMENDED
        return read_json(path) if path.is_file() else None

    def trial(self, trial_id: str) -> Run:
        """A trial's run folder."""
        return load_run(self.path / layout.TRIALS / trial_id)


def load_sweep(path: Path | str) -> Sweep:
    """The sweep folder at ``path``; FileNotFoundError when it is not one (no sweep.json)."""
    return Sweep(path)
