"""dashboard/importance.py: hyperparameter importance from summary.csv rows, and curves across sweeps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboard import importance
from tuning import layout


def summary(n: int, seed: int = 0, status: str = layout.TRIAL_COMPLETE) -> pd.DataFrame:
    """A summary.csv-like frame whose metric depends on lr alone (batch_size and model are noise)."""
    rng = np.random.default_rng(seed)
    lr = 10 ** rng.uniform(-4, -2, n)
    return pd.DataFrame({
        "trial_id": [f"t{i}" for i in range(n)], "status": status,
        "param_lr": lr, "param_batch_size": rng.choice([16, 32, 64], n),
        "param_model": rng.choice(["densenet121", "densenet-tiny"], n), "param_fixed": 3,
        "best_val_macro_f1": 0.9 - np.abs(np.log10(lr) + 3) * 0.3 + rng.normal(0, 0.005, n)})


@pytest.mark.parametrize("evaluator", list(importance.EVALUATORS))
def test_importance_finds_the_parameter_that_matters(evaluator: str) -> None:
    table = importance.importance_table(summary(40), "best_val_macro_f1", evaluator=evaluator)
    assert list(table.columns) == ["parameter", "importance", "distinct"]
    assert table["parameter"].iloc[0] == "lr"
    assert set(table["parameter"]) == {"lr", "batch_size", "model"}  # "fixed" took one value: left out
    assert table["importance"].sum() == pytest.approx(1.0)
    assert table.set_index("parameter").loc["batch_size", "distinct"] == 3


def test_importance_is_deterministic_and_counts_only_finished_trials() -> None:
    frame = summary(30)
    first = importance.importance_table(frame, "best_val_macro_f1")
    assert first.equals(importance.importance_table(frame, "best_val_macro_f1"))
    frame.loc[frame.index[:5], "status"] = layout.TRIAL_STOPPED
    frame.loc[frame.index[5:8], "best_val_macro_f1"] = np.nan
    assert len(importance.finished(frame, "best_val_macro_f1")) == 22


def test_importance_refuses_below_the_minimum() -> None:
    frame = summary(importance.MIN_TRIALS + 3)
    frame.loc[frame.index[:4], "status"] = layout.TRIAL_ERROR
    with pytest.raises(importance.TooFewTrials, match=f"{importance.MIN_TRIALS - 1} finished"):
        importance.importance_table(frame, "best_val_macro_f1")
    with pytest.raises(importance.TooFewTrials):
        importance.importance_table(summary(3), "best_val_macro_f1")
    with pytest.raises(importance.TooFewTrials):
        importance.importance_table(summary(20), "no_such_metric")
    assert len(importance.importance_table(frame, "best_val_macro_f1", min_trials=5)) == 3
    with pytest.raises(ValueError, match="evaluator"):
        importance.importance_table(summary(20), "best_val_macro_f1", evaluator="shap")


def history(values: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"epoch": range(1, len(values) + 1), "val_macro_f1": values})


def test_curve_spread_groups_seed_repeats_across_sweeps() -> None:
    trials = pd.DataFrame([
        {"key": "a/t0", "param_lr": 0.001, "param_seed": 0},
        {"key": "b/t0", "param_lr": 0.001, "param_seed": 1},  # a repeat from another sweep
        {"key": "a/t1", "param_lr": 0.01, "param_seed": 0},
        {"key": "a/t2", "param_lr": 0.1, "param_seed": 0},  # no history: left out
    ])
    histories = {"a/t0": history([0.5, 0.7, 0.8]), "b/t0": history([0.3, 0.5]), "a/t1": history([0.6, 0.9])}
    spread = importance.curve_spread(trials, histories, "val_macro_f1", colour_by="lr")
    assert list(spread.columns) == ["setting", "colour", "epoch", "mean", "min", "max", "n", "trials"]
    slow = spread[spread["setting"] == "lr=0.001"].set_index("epoch")
    assert slow.loc[1, "mean"] == pytest.approx(0.4) and slow.loc[1, "min"] == 0.3 and slow.loc[1, "max"] == 0.5
    assert slow.loc[1, "n"] == 2 and slow.loc[1, "trials"] == ["a/t0", "b/t0"]
    assert slow.loc[3, "n"] == 1 and slow.loc[3, "mean"] == pytest.approx(0.8)  # only one repeat got there
    fast = spread[spread["setting"] == "lr=0.01"]
    assert fast["n"].tolist() == [1, 1] and (fast["min"] == fast["max"]).all()
    assert set(spread["colour"]) == {"0.001", "0.01"}
    assert set(spread["setting"]) == {"lr=0.001", "lr=0.01"}
    # Without a colour parameter each setting is its own colour; without histories, an empty frame.
    assert set(importance.curve_spread(trials, histories, "val_macro_f1")["colour"]) == {"lr=0.001", "lr=0.01"}
    assert importance.curve_spread(trials, {}, "val_macro_f1").empty
    assert importance.curve_spread(trials, histories, "lr").empty


def test_a_continuous_colour_parameter_is_coloured_by_ranges() -> None:
    """16 trials with 16 learning rates: coloured by lr, they fall into four ranges (log-spaced quartiles),
    not 16 single-curve groups; few distinct values keep one colour each."""
    lrs = np.geomspace(1e-4, 1e-2, 16)
    trials = pd.DataFrame({"key": [f"s/t{i}" for i in range(16)], "param_lr": lrs, "param_batch_size": 32})
    histories = {f"s/t{i}": history([0.5, 0.6 + i / 100]) for i in range(16)}
    spread = importance.curve_spread(trials, histories, "val_macro_f1", colour_by="lr")
    groups = spread.drop_duplicates("setting").groupby("colour").size()
    assert len(groups) == 4 and (groups == 4).all(), groups
    assert groups.index[0].startswith("0.0001–") and groups.index[-1].endswith("–0.01")
    assert importance.colour_bins(pd.Series([0.001, 0.01, 0.001, 0.01])) is None  # two values: two colours
    assert importance.colour_bins(pd.Series(["densenet121"] * 6 + ["densenet169"] * 6)) is None


def test_refusal_says_how_many_and_why() -> None:
    frame = summary(12)
    frame.loc[frame.index[:3], "status"] = layout.TRIAL_STOPPED
    frame.loc[frame.index[3], "status"] = layout.TRIAL_RUNNING
    text = importance.refusal(frame, "best_val_macro_f1")
    assert f"at least **{importance.MIN_TRIALS}**" in text and "have **8**" in text
    assert "3 trial(s) stopped early by ASHA do not count" in text and "1 trial(s) still running" in text
    assert "ASHA" not in importance.refusal(summary(4), "best_val_macro_f1")


def test_curve_trials_bounds_and_shares_between_sweeps() -> None:
    def sweep(n: int) -> pd.DataFrame:
        frame = summary(n).assign(run_path=[f"/o/t{i}" for i in range(n)])
        frame.loc[frame.index[-1], "status"] = layout.TRIAL_PENDING  # no curve yet
        return frame

    frames = {"a": sweep(30), "b": sweep(4)}
    picked, total = importance.curve_trials(frames, limit=6)
    assert total == 29 + 3 and len(picked) == 6
    assert picked["sweep"].value_counts().to_dict() == {"a": 3, "b": 3}  # b's trials are not crowded out
    best_a = frames["a"].iloc[:-1].sort_values("best_val_macro_f1", ascending=False)["trial_id"].iloc[0]
    assert f"a/{best_a}" in set(picked["key"])
    everything, total = importance.curve_trials(frames, limit=100)
    assert len(everything) == total == 32
    assert importance.curve_trials({}, 10)[1] == 0
