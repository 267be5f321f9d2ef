"""tuning/recommend.py: the recommendation rule and the Pareto front, as pure functions; the space's objectives;
the trade-off figure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboard import figures
from tuning import recommend as rule
from tuning.space import SpaceError, check_objectives, load_space


def trial(trial_id: str, score, without=None, chance=0.3) -> dict:
    return {"trial_id": trial_id, "score": score, "without_cells": without, "chance": chance}


# ----------------------------------------------------------------------------- the rule


def test_the_most_accurate_trial_that_reads_the_cells_is_recommended() -> None:
    trials = [trial("context", 0.99, 0.80), trial("cells", 0.90, 0.35), trial("weak-cells", 0.70, 0.25),
              trial("edge", 0.95, 0.41)]
    got = rule.recommend(trials)
    assert got["trial_id"] == "cells" and got["most_accurate"] == "context"
    assert got["rule_met"] and got["verdict"] == rule.READS_CELLS
    assert (got["candidates"], got["measured"], got["reading_cells"]) == (4, 4, 2)


def test_the_margin_is_ten_points_above_chance_and_one_sided() -> None:
    # 0.40 with chance 0.30 is exactly 10 points above: it reads the cells; 0.4001 does not.
    assert rule.reads_cells(0.40, 0.30) is True
    assert rule.reads_cells(0.4001, 0.30) is False
    # Below chance (nothing right left to go on without the cells) counts as reading the cells.
    assert rule.reads_cells(0.05, 0.30) is True
    assert rule.reads_cells(None, 0.3) is None and rule.reads_cells(0.3, float("nan")) is None
    assert rule.recommend([trial("a", 0.9, 0.45), trial("b", 0.8, 0.30)], margin=0.2)["trial_id"] == "a"


def test_when_every_trial_reads_context_the_most_accurate_is_flagged() -> None:
    trials = [trial("a", 0.97, 0.70), trial("b", 0.99, 0.90), trial("c", 0.95, 0.55)]
    got = rule.recommend(trials)
    assert got["trial_id"] == got["most_accurate"] == "b"
    assert not got["rule_met"] and got["verdict"] == rule.NO_TRIAL_READS_CELLS
    text = rule.explain(trials[1], trials[1], got["verdict"])
    assert text.startswith("No trial reads the cells") and "90%" in text and "30%" in text


def test_ties_go_to_the_trial_that_keeps_less_without_cells_then_to_the_earlier_one() -> None:
    tied = [trial("first", 0.90, 0.38), trial("second", 0.90, 0.31), trial("third", 0.90, 0.31)]
    assert rule.recommend(tied)["trial_id"] == "second"
    # The most accurate trial among equals is the earlier one (the finish step's stable ranking).
    assert rule.recommend([trial("x", 0.95, 0.9), trial("y", 0.95, 0.9)])["most_accurate"] == "x"


def test_missing_values() -> None:
    assert rule.recommend([]) is None
    assert rule.recommend([trial("a", None, 0.3), trial("b", "", 0.3), trial("c", float("nan"))]) is None
    # A trial without a probe can be the most accurate but is never recommended by the rule.
    trials = [trial("unprobed", 0.99, None, None), trial("probed", 0.80, 0.30), trial("no-score", None, 0.2)]
    got = rule.recommend(trials)
    assert (got["trial_id"], got["most_accurate"], got["candidates"], got["measured"]) == ("probed", "unprobed", 2, 1)
    # No trial probed at all: the most accurate, and the verdict says nothing was measured.
    none = rule.recommend([trial("a", 0.9, None, None), trial("b", 0.95, "", "")])
    assert none["trial_id"] == "b" and none["verdict"] == rule.NOT_MEASURED and not none["rule_met"]
    assert "No trial was measured" in rule.explain(trials[0], trials[0], rule.NOT_MEASURED)
    # Text from summary.csv is read as numbers.
    assert rule.recommend([trial("t", "0.91", "0.33", "0.30")])["verdict"] == rule.READS_CELLS


def test_the_reason_names_both_trials_in_plain_words() -> None:
    rec, top = trial("cells", 0.90, 0.32, 0.30), trial("context", 0.99, 0.81, 0.30)
    text = rule.explain(rec, top, rule.READS_CELLS)
    assert "Trial cells" in text and "32%" in text and "context" in text and "81%" in text
    assert "colour and background" in text
    assert rule.explain(rec, rec, rule.READS_CELLS).startswith("The most accurate trial also reads the cells")


# ----------------------------------------------------------------------------- the Pareto front


def test_pareto_front_keeps_the_trials_nothing_beats_on_both() -> None:
    # (accuracy without cells: lower is better, macro-F1: higher is better)
    points = [(0.30, 0.80), (0.50, 0.90), (0.80, 0.99), (0.60, 0.85), (0.30, 0.70), (0.90, 0.99)]
    assert rule.pareto_front(points) == [True, True, True, False, False, False]


def test_pareto_front_ties_and_missing_values() -> None:
    assert rule.pareto_front([(0.3, 0.9), (0.3, 0.9)]) == [True, True]  # equal points: neither dominates
    assert rule.pareto_front([(0.3, 0.9), (None, 0.99), (0.2, float("nan")), ("", 1.0)]) == [True, False, False, False]
    assert rule.pareto_front([]) == []
    # Against brute force on random points: a point is on the front iff no other point is at least as good on both
    # and strictly better on one.
    rng = np.random.default_rng(0)
    pts = [tuple(p) for p in rng.integers(0, 6, (40, 2)) / 5]
    front = rule.pareto_front(pts)
    for (x, y), on in zip(pts, front, strict=True):
        beaten = [(a, b) for a, b in pts if a <= x and b >= y and (a, b) != (x, y)]
        assert on == (not beaten)


# ----------------------------------------------------------------------------- objectives in a space


def space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text("base_preset: tiny\nparams:\n  lr: {choice: [0.003, 0.005]}\n" + text)
    return path


def test_a_space_names_one_or_two_objectives(tmp_path: Path) -> None:
    one = load_space(space(tmp_path, ""))
    assert (one.metrics, one.modes, one.multi_objective) == (("val_macro_f1",), ("max",), False)
    two = load_space(space(tmp_path, "metric: [val_macro_f1, val_acc_without_cells]\nmode: [max, min]\n"))
    assert (two.metrics, two.modes, two.multi_objective) == (("val_macro_f1", "val_acc_without_cells"),
                                                            ("max", "min"), True)
    check_objectives(two, "optuna", "asha")  # ASHA on the first, per-epoch metric
    check_objectives(two, "optuna", "fifo")
    check_objectives(one, "random", "asha")


@pytest.mark.parametrize(("text", "message"), [
    ("metric: [val_acc_without_cells, val_macro_f1]\nmode: [min, max]\n", "measured only once at a trial's end"),
    ("metric: val_context_gap\nmode: min\n", "measured only once at a trial's end"),
    ("metric: [val_macro_f1, accuracy]\nmode: [max, min]\n", "'accuracy' is not one a trial reports"),
    ("metric: [val_macro_f1, val_acc_without_cells]\nmode: [max]\n", "mode must give max or min for each metric"),
    ("metric: [val_macro_f1, val_acc_without_cells]\nmode: [max, lowest]\n", "mode must give max or min"),
    ("metric: [val_macro_f1, val_acc, val_acc_without_cells]\nmode: [max, max, min]\n", "list of 2"),
    ("metric: [val_macro_f1, val_macro_f1]\nmode: [max, max]\n", "twice"),
])
def test_objectives_that_cannot_work_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SpaceError, match=r"s\.yaml") as caught:
        load_space(space(tmp_path, text))
    assert message in str(caught.value)


def test_two_objectives_need_optuna(tmp_path: Path) -> None:
    two = load_space(space(tmp_path, "metric: [val_macro_f1, val_acc_without_cells]\nmode: [max, min]\n"))
    for search in ("random", "grid"):
        with pytest.raises(SpaceError, match=f"need search: optuna; {search} search samples without looking"):
            check_objectives(two, search, "fifo")


def test_shipped_evidence_spaces() -> None:
    for name in ("cpu-evidence", "tiny-evidence"):
        s = load_space(name)
        assert s.metrics == ("val_macro_f1", "val_acc_without_cells") and s.modes == ("max", "min")
        assert s.search == "optuna" and s.scheduler == "fifo"
        check_objectives(s, s.search, s.scheduler)


# ----------------------------------------------------------------------------- the figure


def test_context_tradeoff_marks_the_front_chance_and_both_trials() -> None:
    frame = pd.DataFrame({
        "trial_id": ["a", "b", "c", "<d>", "e"], "status": ["complete"] * 4 + ["stopped"],
        "best_val_macro_f1": [0.99, 0.90, 0.85, 0.80, 0.6],
        "val_acc_without_cells": [0.80, 0.32, 0.50, 0.29, math.nan], "val_chance": [0.3, 0.3, 0.3, 0.3, math.nan]})
    points = figures.context_points(frame)
    assert list(points["trial_id"]) == ["a", "b", "c", "<d>"]  # e has no probe
    assert list(points["front"]) == [True, True, False, True]
    assert np.allclose(points["gap"], [0.5, 0.02, 0.2, -0.01])
    fig = figures.context_tradeoff(points, recommended="b", most_accurate="a")
    by_name = {t.name: t for t in fig.data}
    front = by_name["Pareto front"]
    assert list(front.x) == [0.29, 0.32, 0.80] and list(front.y) == [0.80, 0.90, 0.99]
    assert list(by_name["trial"].x) == [0.50]
    assert list(by_name["★ recommended (b)"].x) == [0.32]
    assert list(by_name["★ most accurate (a)"].y) == [0.99]
    assert any("&lt;d&gt;" in text for text in front.text)  # trial ids from files stay text
    shapes = fig.layout.shapes
    assert any(s.type == "line" and s.x0 == 0.3 for s in shapes)  # chance
    assert any(s.type == "rect" and math.isclose(s.x1, 0.4) for s in shapes)  # the band up to 10 points above
    same = figures.context_tradeoff(points, recommended="a", most_accurate="a")
    assert [t.name for t in same.data if t.name.startswith("★")] == ["★ recommended = most accurate (a)"]


def test_context_points_of_an_old_sweep_are_empty() -> None:
    old = pd.DataFrame({"trial_id": ["a"], "status": ["complete"], "best_val_macro_f1": [0.9]})
    assert figures.context_points(old).empty
    assert figures.context_points(pd.DataFrame()).empty
