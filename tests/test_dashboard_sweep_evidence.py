"""The Sweeps page's "Accuracy or context" section through AppTest: the plot of accuracy against reliance on context
with its Pareto front, and the recommended trial beside the most accurate one with the reason; from recommended.json
or, before the finish step wrote it, from the trial table; and an older sweep without the probe columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine import runs
from tests.support import synthetic
from tests.support.apptest import boxes, chart, charts, sweep_texts, sweeps_app, values
from tuning import layout
from tuning import recommend as rule


def unescaped(text: str) -> str:
    """Page text as a reader sees it: without the backslashes that keep file values literal in Markdown."""
    return text.replace("\\", "")


def warnings(at) -> str:
    return unescaped("\n".join(str(w.value) for w in at.warning))


def probed_sweep(root: Path, *, context_top: bool) -> tuple[Path, pd.DataFrame]:
    """A synthetic sweep (tests/support/synthetic.py) whose finished trials carry probe columns: the better a trial's
    macro-F1, the more it keeps without leukocytes; with ``context_top`` the most accurate trial keeps 85%."""
    sweep = root / "sweeps" / "probed"
    synthetic.make_sweep(sweep, 12, np.random.default_rng(0), str(root), status=layout.SWEEP_COMPLETE)
    frame = pd.read_csv(sweep / layout.SUMMARY)
    f1 = pd.to_numeric(frame["best_val_macro_f1"], errors="coerce")
    done = (frame["status"] == layout.TRIAL_COMPLETE) & f1.notna()
    rank = f1.where(done).rank(ascending=False)
    without = np.where(rank <= 2, 0.85 if context_top else 0.33, 0.28 + 0.05 * (rank - 1))
    frame["val_chance"] = np.where(done, 0.30, np.nan)
    frame["val_acc_without_cells"] = np.where(done, without, np.nan)
    frame["val_context_gap"] = frame["val_acc_without_cells"] - frame["val_chance"]
    frame.to_csv(sweep / layout.SUMMARY, index=False)
    return sweep, frame


def expected(frame: pd.DataFrame) -> tuple[str, str]:
    """The rule written out again: the most accurate complete trial with at most 10 points above chance."""
    done = frame[(frame["status"] == layout.TRIAL_COMPLETE) & frame["best_val_macro_f1"].notna()]
    top = done.loc[done["best_val_macro_f1"].idxmax()]
    reading = done[done["val_acc_without_cells"] <= done["val_chance"] + 0.10 + 1e-12]
    rec = reading.loc[reading["best_val_macro_f1"].idxmax()] if len(reading) else top
    return str(rec["trial_id"]), str(top["trial_id"])


def test_the_plot_and_the_recommendation_from_the_trial_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, frame = probed_sweep(tmp_path, context_top=True)
    rec, top = expected(frame)
    assert rec != top  # the most accurate trials read the context here
    at = sweeps_app(tmp_path, monkeypatch)
    assert "Accuracy or context: which trial to use" in sweep_texts(at)
    shown = boxes(at)
    assert f"Trial {rec}" in shown and f"The most accurate trial, {top}" in shown and "85%" in shown
    figure = chart(at, "context_")
    assert figure is not None, list(charts(at))
    names = [t.get("name") for t in figure["data"]]
    assert "Pareto front" in names and f"★ recommended ({rec})" in names and f"★ most accurate ({top})" in names
    plotted = sum(len(values(t["x"])) for t in figure["data"] if not str(t.get("name")).startswith("★"))
    assert plotted == int(frame["val_acc_without_cells"].notna().sum())
    front = next(t for t in figure["data"] if t.get("name") == "Pareto front")
    probed = frame[frame["val_acc_without_cells"].notna()]
    assert max(values(front["y"])) == pytest.approx(float(probed["best_val_macro_f1"].max()))  # the top is on it
    labels = [m.label for m in at.metric]
    assert labels.count("val macro-F1") == 2 and labels.count("val accuracy, leukocytes removed") == 2
    assert "computed here from the trial table" in unescaped(sweep_texts(at))
    assert "python -m tuning finish" in unescaped(sweep_texts(at))


def test_the_recommendation_from_recommended_json_flagged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep, frame = probed_sweep(tmp_path, context_top=True)
    frame["val_acc_without_cells"] = np.where(frame["val_chance"].notna(), 0.75, np.nan)  # every trial reads context
    frame.to_csv(sweep / layout.SUMMARY, index=False)
    top = expected(frame)[1]
    score = float(frame.loc[frame["trial_id"] == top, "best_val_macro_f1"].iloc[0])
    entry = {"trial_id": top, "run_dir": f"{layout.TRIALS}/{top}", "params": {},
             "scores": {"best_val_macro_f1": score, "val_acc_without_cells": 0.75, "val_chance": 0.30},
             "test": {"accuracy": 0.987}}
    runs.write_json(sweep / layout.RECOMMENDED, {
        **entry, "explained": False, "rule": rule.RULE, "margin": 0.10, "rule_met": False,
        "verdict": rule.NO_TRIAL_READS_CELLS, "same_as_most_accurate": True, "most_accurate": entry})
    at = sweeps_app(tmp_path, monkeypatch)
    shown = warnings(at)
    assert "No trial reads the cells" in shown and f"Trial {top}, the most accurate" in shown and "75%" in shown
    assert "test accuracy 98.7%" in unescaped(sweep_texts(at))
    assert "recommended.json, written by the finish step" in unescaped(sweep_texts(at))
    names = [t.get("name") for t in chart(at, "context_")["data"]]
    assert f"★ recommended = most accurate ({top})" in names


def test_an_old_sweep_without_the_probe_still_renders_and_says_what_to_run(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = tmp_path / "sweeps" / "old"
    synthetic.make_sweep(sweep, 12, np.random.default_rng(0), str(tmp_path), status=layout.SWEEP_COMPLETE)
    frame = pd.read_csv(sweep / layout.SUMMARY)
    frame.drop(columns=[c for c in layout.PROBE_COLUMNS if c in frame]).to_csv(sweep / layout.SUMMARY, index=False)
    at = sweeps_app(tmp_path, monkeypatch)
    info = unescaped("\n".join(str(i.value) for i in at.info))
    assert "No trial of this sweep has a context probe" in info and "tuning finish" in info and "old" in info
    assert chart(at, "context_") is None
    assert chart(at, "parcoords") is not None and chart(at, "imp_scatter") is not None  # the rest of the page


def test_a_damaged_recommended_json_is_a_warning_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep, frame = probed_sweep(tmp_path, context_top=False)
    (sweep / layout.RECOMMENDED).write_text(json.dumps(["not", "a", "recommendation"]))
    at = sweeps_app(tmp_path, monkeypatch)
    assert "recommended.json is not a recommendation" in warnings(at)
    rec, top = expected(frame)
    assert rec == top and "The most accurate trial also reads the cells" in boxes(at)
    assert chart(at, "context_") is not None
