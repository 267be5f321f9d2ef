"""The Sweeps page's "What mattered" and "Curves across sweeps": the figures directly, then the page through
AppTest on synthetic sweeps (tests/support/synthetic.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboard import figures, importance
from tests.support import synthetic
from tests.support.apptest import chart, charts, sweep_texts, sweeps_app
from tuning import layout

# ----------------------------------------------------------------------------- figures


def trials_frame(n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    statuses = [layout.TRIAL_COMPLETE] * (n - 3) + [layout.TRIAL_STOPPED, layout.TRIAL_RUNNING, layout.TRIAL_ERROR]
    return pd.DataFrame({
        "trial_id": [f"t{i}" for i in range(n)], "status": statuses,
        "param_lr": np.geomspace(1e-4, 1e-1, n), "param_batch_size": rng.choice([16, 32], n),
        "param_model": ["<b>net</b>" if i % 2 else "densenet121" for i in range(n)],
        "best_val_macro_f1": [*rng.uniform(0.5, 0.9, n - 1), np.nan]})


def test_importance_bars_most_important_on_top_and_escaped() -> None:
    table = pd.DataFrame({"parameter": ["lr", "<i>x</i>"], "importance": [0.8, 0.2], "distinct": [12, 2]})
    fig = figures.importance_bars(table, "best_val_macro_f1")
    bar = fig.data[0]
    assert bar.orientation == "h"
    assert list(bar.y) == ["&lt;i&gt;x&lt;/i&gt;", "lr"]  # Plotly draws the last one on top
    assert list(bar.text) == ["20%", "80%"]
    assert "best_val_macro_f1" in fig.layout.xaxis.title.text


def test_param_scatter_one_panel_per_parameter() -> None:
    frame = trials_frame()
    params = ["param_lr", "param_batch_size", "param_model"]
    fig = figures.param_scatter(frame, params, best="t1")
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["lr", "batch_size", "model"]
    assert fig.layout.xaxis.type == "log"  # lr spans two decades
    assert fig.layout.xaxis2.type != "log"
    assert list(fig.layout.xaxis3.ticktext) == ["&lt;b&gt;net&lt;/b&gt;", "densenet121"]  # categories, escaped
    names = {t.name for t in fig.data}
    assert {"complete", "stopped by ASHA", "running", "★ best (t1)"} <= names
    assert "other" not in names  # the errored trial has no metric: not drawn
    points = sum(len(t.x) for t in fig.data if t.xaxis == "x" and not t.name.startswith("★"))
    assert points == len(frame) - 1
    assert any("t1 (complete)" in text for t in fig.data for text in t.text)
    # Categories are spread sideways a little, the same way on every draw.
    again = figures.param_scatter(frame, params, best="t1")
    assert [list(t.x) for t in fig.data] == [list(t.x) for t in again.data]


def test_param_scatter_without_points_is_empty_not_an_error() -> None:
    frame = trials_frame().assign(best_val_macro_f1=np.nan)
    assert len(figures.param_scatter(frame, ["param_lr"]).data) == 0


def test_spread_curves_band_only_for_repeats() -> None:
    spread = pd.DataFrame([
        {"setting": "lr=0.001", "colour": "0.001", "epoch": e, "mean": 0.5 + e / 10, "min": 0.4 + e / 10,
         "max": 0.6 + e / 10, "n": 2, "trials": ["a/t0", "b/t0"]} for e in (1, 2)] + [
        {"setting": "lr=0.01", "colour": "0.01", "epoch": e, "mean": 0.7, "min": 0.7, "max": 0.7, "n": 1,
         "trials": ["a/<t1>"]} for e in (1, 2)])
    fig = figures.spread_curves(spread, "val_macro_f1", colour_by="lr")
    bands = [t for t in fig.data if t.fill == "toself"]
    lines = [t for t in fig.data if t.fill != "toself"]
    assert len(bands) == 1 and np.allclose(bands[0].y, [0.7, 0.8, 0.6, 0.5])
    assert [t.name for t in lines] == ["lr = 0.001", "lr = 0.01"]
    assert "n = 2: a/t0, b/t0" in lines[0].text[0] and "min 0.5000" in lines[0].text[0]
    assert "a/&lt;t1&gt;" in lines[1].text[0] and "min" not in lines[1].text[0]
    assert fig.layout.xaxis.dtick == 1


def test_spans_decades() -> None:
    assert figures.spans_decades(pd.Series([1e-4, 1e-2]))
    assert not figures.spans_decades(pd.Series([16, 64]))
    assert not figures.spans_decades(pd.Series([0.0, 1.0]))
    assert not figures.spans_decades(pd.Series(["a", "b"]))


# ----------------------------------------------------------------------------- the page (AppTest)


def test_importance_bars_with_enough_finished_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synthetic.make_outputs(tmp_path, n_trials=20)  # 14 complete, 2 stopped by ASHA
    at = sweeps_app(tmp_path, monkeypatch)
    assert "What mattered" in sweep_texts(at)
    bars = chart(at, "imp_chart")
    assert bars is not None, list(charts(at))
    assert bars["data"][0]["type"] == "bar"
    assert set(bars["data"][0]["y"]) == {"lr", "batch_size", "model", "dropout"}
    content = sweep_texts(at)
    assert "fANOVA (Optuna's FanovaImportanceEvaluator" in content and "on the 14 of this sweep" in content
    assert "not a ranking" in content  # the caveat
    scatter = chart(at, "imp_scatter")
    assert scatter is not None
    assert [a["text"] for a in scatter["layout"]["annotations"]] == ["lr", "batch_size", "model", "dropout"]
    at.radio(key=next(r.key for r in at.radio if "imp_eval" in r.key)).set_value("ped-anova").run()
    assert not at.exception
    assert "PED-ANOVA (Optuna's PedAnovaImportanceEvaluator" in sweep_texts(at)
    assert chart(at, "imp_chart") is not None


def test_importance_refused_below_the_minimum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 12 trials: 8 complete, 1 stopped by ASHA, 1 running, 1 errored, 1 pending.
    synthetic.make_sweep(tmp_path / "sweeps" / "small", 12, np.random.default_rng(0), str(tmp_path),
                         status=layout.SWEEP_COMPLETE)
    at = sweeps_app(tmp_path, monkeypatch)
    content = sweep_texts(at)
    assert f"at least **{importance.MIN_TRIALS}** trials that finished training" in content
    assert "these trials have **8**" in content
    assert "1 trial(s) stopped early by ASHA do not count" in content
    assert chart(at, "imp_chart") is None
    scatter = chart(at, "imp_scatter")  # the trials themselves are still shown
    assert scatter is not None and sum(len(t["x"]) for t in scatter["data"] if t.get("xaxis") == "x") >= 9


def test_curves_across_two_sweeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two sweeps drawn from the same generator: the same settings twice, i.e. repeats across sweeps.
    for name in ("a", "b"):
        synthetic.make_sweep(tmp_path / "sweeps" / name, 6, np.random.default_rng(3), str(tmp_path), name=name,
                             status=layout.SWEEP_COMPLETE)
    at = sweeps_app(tmp_path, monkeypatch)
    assert "Curves across sweeps" in sweep_texts(at)
    one = chart(at, "across_chart")
    assert one is not None and not any(t.get("fill") == "toself" for t in one["data"])
    across = next(m for m in at.multiselect if m.key.startswith("across_"))
    assert across.value == [at.selectbox(key="sweep").value]
    across.set_value(["sweeps/a", "sweeps/b"]).run()
    assert not at.exception, [e.value for e in at.exception]
    both = chart(at, "across_chart")
    assert any(t.get("fill") == "toself" for t in both["data"])  # a band over the two repeats
    hover = " ".join(h for t in both["data"] for h in t.get("text") or [])
    assert "n = 2: sweeps/a/trial_0000, sweeps/b/trial_0000" in hover
    assert "setting(s) with repeats" in sweep_texts(at)
    colour = next(s for s in at.selectbox if s.key and s.key.startswith("across_colour"))
    assert colour.index == 0 and colour.value == ""  # "each setting" chosen, not an empty box
    colour.set_value("model").run()
    assert not at.exception
    names = {t.get("name") for t in chart(at, "across_chart")["data"] if t.get("name")}
    assert names <= {"model = densenet121", "model = densenet-tiny"} and names


def test_parameter_names_and_values_from_files_stay_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = tmp_path / "sweeps" / "hostile"
    synthetic.make_sweep(sweep, 12, np.random.default_rng(0), str(tmp_path), status=layout.SWEEP_COMPLETE)
    frame = pd.read_csv(sweep / layout.SUMMARY)
    frame["param_model"] = "<img src=x onerror=alert(1)>"
    frame = frame.rename(columns={"param_dropout": "param_<b>drop</b>"})
    frame.to_csv(sweep / layout.SUMMARY, index=False)
    at = sweeps_app(tmp_path, monkeypatch)
    specs = json.dumps(list(charts(at).values()), ensure_ascii=False)  # as the browser reads them
    assert "<img" not in specs and "<b>drop" not in specs
    assert "&lt;b&gt;drop&lt;/b&gt;" in specs and "&lt;img src=x" in specs
