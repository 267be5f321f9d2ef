"""Sweeps: trial table, accuracy against reliance on context (the recommended trial beside the most accurate
one, the Pareto front), parameters vs validation macro-F1, what mattered (importance and a scatter per
parameter), learning curves, curves across sweeps; refreshes while running.

"Running" is decided by tuning.liveness from the driver's heartbeat in sweep.json, not by the
recorded status alone: a killed driver leaves "running" behind, and its sweep is shown as
stopped (driver not running), without refreshing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import figures, importance, loaders, pages, ui
from dashboard.escape import code, md
from dashboard.paths import OutsideOutputs
from engine.runs import HISTORY
from tuning import layout, liveness
from tuning import recommend as rule

REFRESH_S = 5
# Learning curves across sweeps read one history.csv per trial: a bound keeps the page fast.
MAX_CURVES = 60
IMPORTANCE_METRICS = {"best_val_macro_f1": "best val macro-F1", "val_macro_f1": "last val macro-F1",
                      "val_acc": "last val accuracy"}
CURVE_METRICS = ("val_macro_f1", "val_acc", "val_loss", "train_loss", "train_acc")
EVALUATOR_NAMES = {"fanova": "fANOVA", "ped-anova": "PED-ANOVA"}

st.title("Sweeps")
sweeps = ui.found()["sweeps"]
if not sweeps:
    ui.empty_state("sweeps (folders with sweep.json)")
    st.stop()

root = ui.root()
by_label = {s.label: s for s in sweeps}


def read_info(path: str) -> dict:
    """sweep.json, or {} when it cannot be read (the view says why)."""
    try:
        return loaders.sweep_info(root, path)
    except loaders.LoadError:
        return {}


def shown_status(info: dict, recorded: str) -> str:
    return liveness.shown_status(info) if info else recorded


label = ui.url_widget(st.selectbox, "Sweep", "sweep", next(iter(by_label)), list(by_label),
                     format_func=lambda x: f"{by_label[x].name} · "
                                           f"{shown_status(read_info(by_label[x].path), by_label[x].status)} ({x})")
sweep = by_label[label]
running = liveness.is_running(read_info(sweep.path))


@st.cache_data(show_spinner="Estimating parameter importance…", max_entries=64)
def cached_importance(done: pd.DataFrame, metric: str, mode: str, evaluator: str) -> pd.DataFrame:
    # Keyed on the finished trials' content: a running sweep recomputes only when a trial finishes.
    return importance.importance_table(done, metric, mode=mode, evaluator=evaluator)


@st.cache_resource(show_spinner=False, max_entries=32)
def cached_figure(name: str, *args: Any, **kwargs: Any) -> go.Figure:
    # A figure of dozens of traces costs more to build than the rest of the page; keyed on its data, and
    # shared read-only (st.plotly_chart copies it before use), so a rerun only serialises it.
    return getattr(figures, name)(*args, **kwargs)


@st.cache_resource(show_spinner=False, max_entries=16)
def across_curves(outputs: str, picked: pd.DataFrame, stamps: tuple, metric: str,
                  colour_by: str | None) -> tuple[go.Figure | None, dict[str, int]]:
    """The curves-across-sweeps figure of the picked trials (None when none has ``metric`` per epoch) and its
    counts; ``stamps`` (each history.csv's mtime and size) is in the key so that a trial training on is
    read again. Shared read-only, like cached_figure."""
    histories, unreadable = {}, 0
    for key, path in zip(picked["key"], picked["run_path"], strict=True):
        try:
            histories[key] = loaders.history(outputs, path)
        except loaders.LoadError:
            unreadable += 1
    spread = importance.curve_spread(picked, histories, metric, colour_by=colour_by)
    counts = {"read": len(histories), "unreadable": unreadable, "settings": int(spread["setting"].nunique()),
              "repeated": int((spread.groupby("setting")["n"].max() > 1).sum()) if len(spread) else 0}
    return (figures.spread_curves(spread, metric, colour_by) if len(spread) else None), counts


def read_recommended() -> tuple[dict | None, str | None]:
    """recommended.json (written by the finish step), or None; and why it could not be read, if it exists."""
    try:
        data = loaders.read_json(root, Path(sweep.path) / layout.RECOMMENDED, limit=loaders.MAX_SMALL_BYTES)
    except loaders.MissingFile:
        return None, None
    except loaders.LoadError as exc:
        return None, str(exc)
    if not isinstance(data, dict) or not isinstance(data.get("most_accurate"), dict) or "trial_id" not in data:
        return None, f"{layout.RECOMMENDED} is not a recommendation (no trial_id or most_accurate)"
    return data, None


def live_recommendation(frame: pd.DataFrame) -> dict | None:
    """The rule applied to summary.csv's trials (those that trained to the end; all, if none did yet), as the finish
    step applies it, for a sweep whose finish step has not written recommended.json (yet)."""
    scores = pd.to_numeric(frame["best_val_macro_f1"], errors="coerce")
    done = frame[(frame["status"] == layout.TRIAL_COMPLETE) & scores.notna()]
    use = done if len(done) else frame[scores.notna()]
    entries = [{"trial_id": str(r["trial_id"]), "score": r.get("best_val_macro_f1"),
                "without_cells": r.get("val_acc_without_cells"), "chance": r.get("val_chance")}
               for _, r in use.iterrows()]
    return rule.recommend(entries)


def _entry(frame: pd.DataFrame, trial: str, stored: dict | None = None) -> dict:
    """A trial as tuning.recommend.explain reads it, from recommended.json's scores or else the trial table."""
    if stored is not None:
        scores = stored.get("scores") if isinstance(stored.get("scores"), dict) else {}
        test = stored.get("test") if isinstance(stored.get("test"), dict) else {}
        return {"trial_id": str(stored.get("trial_id")), "score": scores.get("best_val_macro_f1"),
                "without_cells": scores.get("val_acc_without_cells"), "chance": scores.get("val_chance"),
                "test": test.get("accuracy")}
    row = frame[frame["trial_id"] == trial]

    def pick(column: str) -> Any:
        return row[column].iloc[0] if column in row and len(row) else None

    return {"trial_id": trial, "score": pick("best_val_macro_f1"), "without_cells": pick("val_acc_without_cells"),
            "chance": pick("val_chance"), "test": None}


def _card(column: Any, heading: str, entry: dict) -> None:
    """One trial's scores, side by side with the other's."""
    column.markdown(f"**{heading}: {md(entry['trial_id'])}**")
    f1, without, chance, test = (rule.number(entry.get(k)) for k in ("score", "without_cells", "chance", "test"))
    a, b = column.columns(2)
    a.metric("val macro-F1", "–" if f1 is None else f"{f1:.3f}")
    points = None if without is None or chance is None else round((without - chance) * 100)
    b.metric("val accuracy, leukocytes removed", "–" if without is None else f"{without:.0%}",
             delta=None if points is None else "at chance" if points == 0 else f"{points:+d} pts vs chance",
             delta_color="off" if points == 0 else "inverse",
             help="Chance: always naming the most common stage of those images"
                  + ("" if chance is None else f" ({chance:.0%})"))
    if test is not None:
        column.caption(f"test accuracy {test:.1%} (evaluated by the finish step)")


def context_choice(frame: pd.DataFrame, best: dict | None) -> None:
    """Accuracy against reliance on the slide's context: the recommended and the most accurate trial side by side
    with the reason, and every probed trial on a plot with the Pareto front."""
    st.subheader("Accuracy or context: which trial to use")
    points = figures.context_points(frame)
    stored, problem = read_recommended()
    if problem:
        st.warning(f"{md(problem)}; the recommendation below is computed from the trial table.",
                   icon=":material/warning:")
    finish = code(f"python -m tuning finish {Path(sweep.path)}")
    if points.empty:
        if stored is not None and stored.get("verdict") == rule.NOT_MEASURED:
            st.info("This sweep's trials have no context probe: its data has no leukocyte masks, so nothing says "
                    "whether a trial reads the cells or the slide around them. Prepare the data with masks "
                    "(`Segmented/` beside `Original/`) to measure it.", icon=":material/info:")
        else:
            st.info("No trial of this sweep has a context probe (validation accuracy with the leukocytes removed) "
                    "yet: the sweep ran before trials measured it, its trials have not finished, or its data has no "
                    f"leukocyte masks. To measure it for the trials that finished, run {finish}: it probes each "
                    "one, adds the columns to the trial table and names the recommended trial.",
                    icon=":material/info:")
        return
    if stored is not None:
        chosen = {"trial_id": str(stored["trial_id"]), "most_accurate": str(stored["most_accurate"].get("trial_id")),
                  "verdict": stored.get("verdict"), "margin": rule.number(stored.get("margin")) or rule.MARGIN}
        rec = _entry(frame, chosen["trial_id"], stored)
        top = _entry(frame, chosen["most_accurate"], stored["most_accurate"])
    else:
        chosen = live_recommendation(frame)
        if chosen is None:
            st.caption("No trial has a validation macro-F1 yet.")
            return
        rec = _entry(frame, chosen["trial_id"])
        top = _entry(frame, chosen["most_accurate"])
        if best and str(best.get("trial_id")) == top["trial_id"]:
            top["test"] = (best.get("test") or {}).get("accuracy")
    verdict = chosen["verdict"] if chosen["verdict"] in rule.VERDICTS else rule.NOT_MEASURED
    reason = rule.explain(rec, top, verdict, chosen["margin"])
    same = rec["trial_id"] == top["trial_id"]
    if verdict == rule.READS_CELLS:
        st.success(md(reason), icon=":material/recommend:")
    else:
        st.warning(f"**{md(verdict.capitalize())}.** {md(reason)}", icon=":material/flag:")
    left, right = st.columns(2)
    _card(left, "Recommended" + (" (also the most accurate)" if same else ""), rec)
    if not same:
        _card(right, "Most accurate", top)
    st.plotly_chart(figures.context_tradeoff(points, recommended=rec["trial_id"], most_accurate=top["trial_id"],
                                             margin=chosen["margin"]), key=f"context_{label}")
    measured = f"{len(points)} of {len(frame)} trials have a context probe"
    source = ("recommended.json, written by the finish step" if stored is not None else
              f"computed here from the trial table; the finish step ({finish}) writes recommended.json and "
              "evaluates the recommended trial on the test split")
    st.caption(f"{measured} (trials stopped early by ASHA are not probed). Pareto front: the trials no other trial "
               "beats on both accuracy and reading the cells. **Rule:** " + md(rule.RULE) + f". Source: {source}.")


def what_mattered(shown: pd.DataFrame, filtered: bool, params: list[str], best_id: str | None) -> None:
    st.subheader("What mattered")
    metrics = [m for m in IMPORTANCE_METRICS if m in shown and pd.to_numeric(shown[m], errors="coerce").notna().any()]
    if not params or not metrics:
        st.caption("No searched parameter with a metric to relate it to yet.")
        return
    left, right = st.columns([1, 1])
    metric = ui.url_widget(left.selectbox, "Metric", f"imp_metric_{label}", metrics[0], metrics,
                           format_func=IMPORTANCE_METRICS.get)
    evaluator = ui.url_widget(right.radio, "Importance by", f"imp_eval_{label}", next(iter(importance.EVALUATORS)),
                              list(importance.EVALUATORS), format_func=EVALUATOR_NAMES.get, horizontal=True)
    scope = f"the {len(shown)} trials the filters keep" if filtered else "this sweep's trials"
    done = importance.finished(shown, metric)
    if len(done) < importance.MIN_TRIALS:
        st.info(importance.refusal(shown, metric), icon=":material/block:")
    else:
        columns = ["status", *params, metric]
        try:
            table = cached_importance(done[columns].reset_index(drop=True), metric,
                                      "min" if "loss" in metric else "max", evaluator)
        except importance.TooFewTrials as exc:  # finished, but some lack a parameter value
            st.info(f"{md(exc)}.", icon=":material/block:")
        else:
            if table.empty:
                st.caption("Every searched parameter took one value in the finished trials: nothing to compare.")
            else:
                st.plotly_chart(cached_figure("importance_bars", table, metric), key=f"imp_chart_{label}")
            st.caption(f"{importance.EVALUATORS[evaluator]}, on the {len(done)} of {scope} that finished "
                       f"training with a value for `{metric}` (ASHA-stopped trials do not count). "
                       f"{importance.CAVEAT}")
    used = shown[[c for c in ("trial_id", "status", *params, metric) if c in shown]]
    st.plotly_chart(cached_figure("param_scatter", used, params, metric, best=best_id), key=f"imp_scatter_{label}")
    st.caption(f"Each of {scope} with a value for `{metric}`, one panel per parameter (log axis where a "
               "parameter spans two decades or more); grey: stopped by ASHA, its value from fewer epochs.")


def curves_across(current: pd.DataFrame) -> None:
    st.subheader("Curves across sweeps")
    chosen = st.multiselect("Sweeps", list(by_label), default=[label], key=f"across_{label}",
                            format_func=lambda x: f"{by_label[x].name} ({x})")
    if not chosen:
        st.caption("Choose one or more sweeps.")
        return
    frames, problems = {}, []
    for name in chosen:
        try:
            frames[name] = current if name == label else loaders.trials(root, by_label[name].path)
        except (loaders.LoadError, OutsideOutputs) as exc:
            problems.append(f"{md(name)}: {md(exc)}")
    picked, total = importance.curve_trials(frames, MAX_CURVES)
    names = sorted({c.removeprefix(layout.PARAM_PREFIX) for f in frames.values() for c in loaders.param_columns(f)})
    left, right = st.columns([1, 1])
    metric = ui.url_widget(left.selectbox, "Metric", f"across_metric_{label}", CURVE_METRICS[0], CURVE_METRICS)
    colour_by = ui.url_widget(right.selectbox, "Group and colour by", f"across_colour_{label}", "", ["", *names],
                              format_func=lambda x: x or "each setting") or None  # "": each setting its own colour
    used = picked[["key", "run_path", *[c for c in picked if c.startswith(layout.PARAM_PREFIX)]]]
    stamps = tuple(loaders.stamp(Path(p) / HISTORY) for p in used["run_path"])
    figure, counts = across_curves(str(root), used, stamps, metric, colour_by)
    if figure is None:
        st.caption(f"No trial of these sweeps has `{metric}` per epoch yet.")
    else:
        st.plotly_chart(figure, key=f"across_chart_{label}")
        st.caption(f"{counts['settings']} setting(s) from {counts['read']} trial(s); trials equal in every "
                   f"parameter but `seed` are repeats of one setting: line = their mean, band = lowest to highest "
                   f"({counts['repeated']} setting(s) with repeats).")
    if total > len(picked):
        st.caption(f"Showing {len(picked)} of {total} trials: the best of each sweep by validation macro-F1, "
                   f"at most {MAX_CURVES}, so that the page stays fast.")
    if counts["unreadable"]:
        st.caption(f"⚠ {counts['unreadable']} trial(s) without a readable history.csv "
                   "(not started, errored or partial).")
    for problem in problems:
        st.caption(f"⚠ {problem}")


@st.fragment(run_every=REFRESH_S if running else None)
def sweep_view() -> None:
    try:
        info = loaders.sweep_info(root, sweep.path)
    except loaders.LoadError as exc:
        st.warning(f"{md(exc)}; showing what the trial folders hold.", icon=":material/warning:")
        info = {}
    if running and not liveness.is_running(info):
        st.rerun(scope="app")  # it ended (or its driver died) since the page was drawn: stop refreshing
    frame = loaders.trials(root, sweep.path)
    for column in layout.PROBE_COLUMNS:  # numbers, or NaN where a trial has none (or the file holds text)
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    best = loaders.best_trial(root, sweep.path)
    best_id = str(best["trial_id"]) if best and "trial_id" in best else None
    scores = frame["best_val_macro_f1"] if "best_val_macro_f1" in frame else pd.Series(dtype=float)
    if best_id is None and scores.notna().any():
        best_id = str(frame.loc[scores.idxmax(), "trial_id"])

    status_counts = frame["status"].value_counts().to_dict() if not frame.empty else {}
    cols = st.columns(6)
    cols[0].metric("Status", shown_status(info, sweep.status))
    cols[1].metric("Trials", f"{len(frame)} / {md(info.get('num_samples', '?'))}")
    for col, status in zip(cols[2:], (layout.TRIAL_COMPLETE, layout.TRIAL_RUNNING, layout.TRIAL_STOPPED,
                                      layout.TRIAL_ERROR), strict=False):
        col.metric(f"{ui.STATUS_ICONS[status]} {status}", status_counts.get(status, 0))
    st.caption(" · ".join(f"{k}: {md(info[k])}" for k in ("search", "scheduler", "metric", "mode", "started_at",
                                                        "finished_at") if info.get(k)))
    if running:
        st.caption(f"▶ running ({md(liveness.describe_driver(info))}): this view refreshes every {REFRESH_S} s")
    elif info.get("status") == layout.SWEEP_RUNNING:
        st.caption(f"■ {liveness.STOPPED}: {md(liveness.describe_driver(info))}. Its trials marked running were cut "
                   f"off with it; continue the sweep with "
                   + code(f"python -m tuning sweep --space {info.get('space', 'SPACE')} "
                          f"--name {info.get('name', sweep.name)} --resume") + ".")
    if frame.empty:
        st.info("No trial has started yet.")
        return
    if best_id:
        best_score = scores[frame["trial_id"] == best_id]
        st.success(f"★ Best trial **{md(best_id)}**" + (f": val macro-F1 {float(best_score.iloc[0]):.4f}"
                                                   if len(best_score) and pd.notna(best_score.iloc[0]) else ""),
                   icon=":material/emoji_events:")

    params = loaders.param_columns(frame)
    with st.expander("Filter trials", expanded=False):
        statuses = sorted(frame["status"].unique())
        keep_status = st.multiselect("Status", statuses, default=statuses, key=f"status_{label}")
        mask = frame["status"].isin(keep_status)
        for column in params:
            values = frame[column].dropna()
            name = column.removeprefix(layout.PARAM_PREFIX)
            numeric = pd.to_numeric(values, errors="coerce")
            if len(values) and numeric.notna().all() and numeric.nunique() > 1:
                lo, hi = float(numeric.min()), float(numeric.max())
                chosen = st.slider(md(name), lo, hi, (lo, hi), key=f"p_{label}_{name}", format="%.4g")
                as_num = pd.to_numeric(frame[column], errors="coerce")
                mask &= as_num.isna() | as_num.between(*chosen)
            elif values.nunique() > 1:
                options = sorted(values.astype(str).unique())
                chosen = st.multiselect(md(name), options, default=options, key=f"p_{label}_{name}")
                mask &= frame[column].isna() | frame[column].astype(str).isin(chosen)
    shown = frame[mask].copy()
    shown.insert(0, "best", ["★" if t == best_id else "" for t in shown["trial_id"]])
    shown.insert(2, "state", [f"{ui.STATUS_ICONS.get(s, '')} {s}" for s in shown["status"]])
    shown = shown.sort_values("best_val_macro_f1", ascending=False, na_position="last")
    columns = ["best", "trial_id", "state", *params,
               *[c for c in ("best_val_macro_f1", "val_macro_f1", "val_acc", "val_acc_without_cells", "val_chance",
                             "epochs", "seconds", "error") if c in shown]]
    st.subheader(f"Trials ({len(shown)} of {len(frame)})")
    bare = {c: c.removeprefix(layout.PARAM_PREFIX) for c in params}  # "(param)" where a metric has the name
    st.dataframe(
        shown[columns].rename(columns={c: n if n not in shown else f"{n} (param)" for c, n in bare.items()}),
        hide_index=True, width="stretch", height=min(420, 38 + 35 * len(shown)),
        column_config={"best_val_macro_f1": st.column_config.NumberColumn("best val macro-F1", format="%.4f"),
                       "val_macro_f1": st.column_config.NumberColumn("last val macro-F1", format="%.4f"),
                       "val_acc": st.column_config.NumberColumn("val acc", format="%.4f"),
                       "val_acc_without_cells": st.column_config.NumberColumn(
                           "val acc, leukocytes removed", format="%.3f",
                           help="Validation accuracy with the leukocytes removed (the context probe)"),
                       "val_chance": st.column_config.NumberColumn(
                           "chance", format="%.3f", help="The share of the most common stage on the probed images"),
                       "best": st.column_config.TextColumn("", width="small")},
    )
    errors = shown[shown["status"] == layout.TRIAL_ERROR]
    if len(errors):
        with st.expander(f"✗ {len(errors)} errored trial(s)"):
            for _, row in errors.iterrows():
                st.markdown(f"**{md(row['trial_id'])}**: {md(row.get('error') or 'no error message')}")

    context_choice(frame, best)
    if params:
        st.plotly_chart(figures.parallel_coordinates(shown, params, best=best_id), key=f"parcoords_{label}")
    what_mattered(frame[mask], bool((~mask).any()), params, best_id)

    st.subheader("Learning curves")
    with_runs = shown[shown["run_path"] != ""]
    ranked = with_runs.sort_values("best_val_macro_f1", ascending=False, na_position="last")["trial_id"].tolist()
    default = ranked[:4]
    if best_id in ranked and best_id not in default:
        default = [best_id, *default[:3]]
    left, right = st.columns([3, 1])
    chosen = left.multiselect("Trials", ranked, default=default, key=f"curves_{label}")
    metric = right.selectbox("Metric", ["val_macro_f1", "val_acc", "val_loss", "train_loss", "train_acc", "lr"],
                             key=f"metric_{label}")
    histories, problems = {}, []
    paths = dict(zip(with_runs["trial_id"], with_runs["run_path"], strict=False))
    for trial in chosen:
        try:
            histories[trial] = loaders.history(root, paths[trial])
        except loaders.LoadError as exc:
            problems.append(f"{md(trial)}: {md(exc)}")
    if histories:
        st.plotly_chart(figures.learning_curves(histories, metric, best=best_id), key=f"curves_chart_{label}")
    for problem in problems:
        st.caption(f"⚠ {problem} (not started, errored or partial)")
    if best_id and best_id in paths:
        run_label = Path(paths[best_id]).resolve().relative_to(root).as_posix()
        st.page_link(pages.page("run").file, label=f"Open the best trial ({md(best_id)}) on the Run page",
                     icon=":material/analytics:", query_params={"run": run_label})
    curves_across(frame)


sweep_view()
