"""Figures as plain functions of data: Plotly for the pages and the HTML report, matplotlib PNGs for PPTX.

No Streamlit here, so every function is tested directly. Plotly reads labels as a subset of HTML
(links included), so every label that comes from a file is passed through ``html_text``;
matplotlib reads ``$`` as mathtext, so its labels pass through ``mpl``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.runs import CLASSES, SPLITS
from tuning.layout import PARAM_PREFIX
from tuning.recommend import pareto_front

from .escape import html_text, mpl

STAGE_COLOURS = dict(zip(CLASSES, ("#2a9d8f", "#e9c46a", "#f4a261", "#e76f51"), strict=True))
SPLIT_COLOURS = dict(zip(SPLITS, ("#264653", "#2a9d8f", "#e76f51"), strict=True))
FONT = dict(size=15)
BEST_COLOUR = "#d62728"


def _layout(fig: go.Figure, title: str = "", height: int = 420, **extra: Any) -> go.Figure:
    extra.setdefault("margin", dict(l=60, r=20, t=60 if title else 30, b=50))
    fig.update_layout(title=dict(text=title, x=0.0, xanchor="left") if title else None, height=height,
                      template="plotly_white", font=FONT, **extra)
    return fig


# ----------------------------------------------------------------------------- data


def counts_bar(counts: pd.DataFrame, title: str = "Images per stage and split") -> go.Figure:
    """Grouped bars from a long table with columns stage, split, images."""
    fig = go.Figure()
    for split in ("train", "val", "test"):
        part = counts[counts["split"] == split]
        fig.add_bar(x=part["stage"], y=part["images"], name=split, marker_color=SPLIT_COLOURS[split],
                    text=part["images"], textposition="outside")
    fig.update_layout(barmode="group", xaxis_title="stage", yaxis_title="images", legend_title="split")
    return _layout(fig, title, height=380)


# ----------------------------------------------------------------------------- run


def confusion_matrix(counts: Sequence[Sequence[int]], classes: Sequence[str] = CLASSES, *,
                     normalized: Sequence[Sequence[float]] | None = None, mode: str = "counts",
                     title: str = "", selected: tuple[str, str] | None = None,
                     height: int = 460) -> go.Figure:
    """Heatmap of the matrix (rows = true, columns = predicted) under an invisible scatter.

    Plotly heatmaps do not report clicks to Streamlit's ``on_select``; the scatter trace has
    one transparent square marker per cell centre, each carrying ``customdata = [true, pred,
    count]``, so clicking a cell selects exactly that point.
    """
    cm = np.asarray(counts, dtype=float)
    classes = list(classes)
    if normalized is None:
        sums = cm.sum(1, keepdims=True)
        normalized = np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)
    norm = np.asarray(normalized, dtype=float)
    z = norm if mode == "normalized" else cm
    if mode == "normalized":
        text = [[f"{norm[i, j]:.0%}<br><sub>{int(cm[i, j])}</sub>" for j in range(len(classes))]
                for i in range(len(classes))]
    else:
        text = [[f"{int(cm[i, j])}" for j in range(len(classes))] for i in range(len(classes))]
    fig = go.Figure()
    fig.add_heatmap(z=z, x=classes, y=classes, text=text, texttemplate="%{text}", textfont=dict(size=18),
                    colorscale="Blues", showscale=False, hoverinfo="skip", xgap=2, ygap=2,
                    zmin=0, zmax=1 if mode == "normalized" else max(1.0, float(cm.max())))
    xs, ys, custom, hover = [], [], [], []
    for i, true in enumerate(classes):
        for j, pred in enumerate(classes):
            xs.append(pred)
            ys.append(true)
            custom.append([true, pred, int(cm[i, j])])  # raw: a click reports these back to the page
            hover.append(f"true {html_text(true)} → predicted {html_text(pred)}<br>{int(cm[i, j])} images"
                         "<br>click to show them")
    fig.add_scatter(
        x=xs, y=ys, mode="markers", customdata=custom, name="cells", showlegend=False,
        marker=dict(symbol="square", size=70, color="rgba(0,0,0,0)", line=dict(width=0)),
        selected=dict(marker=dict(color="rgba(255,140,0,0.35)")),
        unselected=dict(marker=dict(opacity=0)),
        hovertext=hover, hovertemplate="%{hovertext}<extra></extra>",
    )
    if selected is not None and selected[0] in classes and selected[1] in classes:
        fig.add_shape(type="rect", x0=classes.index(selected[1]) - 0.5, x1=classes.index(selected[1]) + 0.5,
                      y0=classes.index(selected[0]) - 0.5, y1=classes.index(selected[0]) + 0.5,
                      line=dict(color="#ff8c00", width=4))
    ticks = dict(type="category", categoryorder="array", categoryarray=classes, tickvals=classes,
                 ticktext=[html_text(c) for c in classes], showgrid=False, fixedrange=True)
    fig.update_xaxes(title="predicted stage", **ticks)
    fig.update_yaxes(title="true stage", autorange="reversed", **ticks)
    _layout(fig, title, height=height, hovermode="closest", hoverdistance=-1, clickmode="event+select",
            dragmode=False)
    return fig


def roc_curves(pred: pd.DataFrame, classes: Sequence[str] = CLASSES,
               title: str = "ROC, one stage vs rest") -> go.Figure:
    """One-vs-rest ROC per stage from predictions.csv rows (columns true, prob_<stage>)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#999"), name="chance",
                    hoverinfo="skip")
    for cls in classes:
        column = f"prob_{cls}"
        if column not in pred:
            continue
        y = (pred["true"] == cls).to_numpy()
        if y.all() or not y.any():
            continue
        score = pred[column].astype(float).to_numpy()
        fpr, tpr, _ = roc_curve(y, score)
        auc = roc_auc_score(y, score)
        fig.add_scatter(x=fpr, y=tpr, mode="lines", name=f"{cls} (AUC {auc:.3f})",
                        line=dict(width=3, color=STAGE_COLOURS.get(cls)))
    fig.update_xaxes(title="false positive rate", range=[0, 1])
    fig.update_yaxes(title="true positive rate", range=[0, 1.02])
    return _layout(fig, title, legend=dict(x=0.98, y=0.02, xanchor="right", yanchor="bottom"))


def reliability(calibration: Mapping[str, Any], title: str = "Reliability diagram") -> go.Figure:
    """Accuracy against confidence per bin, from metrics.json's calibration block."""
    bins = [b for b in calibration.get("bins", []) if b.get("count")]
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#999"),
                    name="perfect calibration", hoverinfo="skip")
    fig.add_bar(x=[(b["lo"] + b["hi"]) / 2 for b in bins], y=[b["accuracy"] for b in bins],
                width=[b["hi"] - b["lo"] for b in bins], name="accuracy", marker_color="#2a9d8f",
                customdata=[[b["count"], b["confidence"]] for b in bins],
                hovertemplate="confidence %{customdata[1]:.2f}<br>accuracy %{y:.2f}<br>%{customdata[0]} images"
                              "<extra></extra>")
    fig.add_scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins], mode="markers",
                    marker=dict(size=9, color="#264653"), name="mean confidence", hoverinfo="skip")
    ece, brier = calibration.get("ece"), calibration.get("brier")
    subtitle = " · ".join(s for s in (f"ECE {ece:.3f}" if ece is not None else "",
                                      f"Brier {brier:.3f}" if brier is not None else "") if s)
    fig.update_xaxes(title="confidence", range=[0, 1])
    fig.update_yaxes(title="accuracy", range=[0, 1.02])
    return _layout(fig, f"{title} ({subtitle})" if subtitle else title,
                   legend=dict(x=0.02, y=0.98, yanchor="top"))


def _epoch_axis(fig: go.Figure, histories: Iterable[pd.DataFrame]) -> None:
    """Title the x axes 'epoch' and, for short runs, tick whole epochs only (no 1.5, 2.5)."""
    last = max((hist["epoch"].max() for hist in histories if "epoch" in hist and len(hist)), default=0)
    fig.update_xaxes(title="epoch", **({"dtick": 1} if 0 < last <= 20 else {}))


def history_panels(hist: pd.DataFrame, title: str = "Learning curves") -> go.Figure:
    """Loss (train, val) and accuracy / macro-F1 per epoch from history.csv."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy and macro-F1"))
    styles = {"train_loss": (1, "#264653", "solid"), "val_loss": (1, "#e76f51", "solid"),
              "train_acc": (2, "#264653", "dot"), "val_acc": (2, "#e76f51", "dot"),
              "val_macro_f1": (2, "#2a9d8f", "solid")}
    for column, (col, colour, dash) in styles.items():
        if column in hist:
            fig.add_scatter(x=hist["epoch"], y=hist[column], name=column, mode="lines+markers",
                            line=dict(color=colour, dash=dash, width=3), row=1, col=col)
    _epoch_axis(fig, [hist])
    return _layout(fig, title, height=380)


def learning_curves(histories: Mapping[str, pd.DataFrame], metric: str = "val_macro_f1", best: str | None = None,
                    title: str = "") -> go.Figure:
    """``metric`` per epoch for several runs overlaid; the best one drawn thick and starred."""
    fig = go.Figure()
    for label, hist in histories.items():
        if metric not in hist:
            continue
        is_best = label == best
        fig.add_scatter(x=hist["epoch"], y=hist[metric], mode="lines+markers",
                        name=f"★ {html_text(label)} (best)" if is_best else html_text(label),
                        line=dict(width=5 if is_best else 2, color=BEST_COLOUR if is_best else None),
                        marker=dict(size=8 if is_best else 5))
    _epoch_axis(fig, histories.values())
    fig.update_yaxes(title=html_text(metric))
    return _layout(fig, title or f"{html_text(metric)} per epoch", height=400)


# ----------------------------------------------------------------------------- sweeps


def _is_numeric(series: pd.Series) -> bool:
    return pd.to_numeric(series, errors="coerce").notna().all()


def parallel_coordinates(frame: pd.DataFrame, params: Sequence[str], metric: str = "best_val_macro_f1",
                         best: str | None = None, title: str = "Parameters vs validation macro-F1") -> go.Figure:
    """One line per finished trial through its parameters and ``metric`` (lines coloured by it).

    Categorical parameters become integer axes with their labels; positive numeric
    parameters spanning two decades or more (learning rates) are shown as log10.
    """
    done = frame[pd.to_numeric(frame.get(metric), errors="coerce").notna()] if metric in frame else frame.iloc[0:0]
    dims = []
    for column in params:
        name = html_text(column.removeprefix(PARAM_PREFIX))
        values = done[column]
        if values.isna().all():
            continue
        if _is_numeric(values.dropna()) and not values.isna().any():
            numbers = pd.to_numeric(values).astype(float)
            if (numbers > 0).all() and numbers.max() / numbers.min() >= 100:
                dims.append(dict(label=f"log10 {name}", values=np.log10(numbers)))
            else:
                dims.append(dict(label=name, values=numbers))
        else:
            labels = values.astype(str)
            cats = sorted(labels.unique())
            dims.append(dict(label=name, values=[cats.index(v) for v in labels], tickvals=list(range(len(cats))),
                             ticktext=[html_text(c) for c in cats]))
    scores = pd.to_numeric(done[metric], errors="coerce") if metric in done else pd.Series(dtype=float)
    dims.append(dict(label="val macro-F1", values=scores))
    fig = go.Figure(go.Parcoords(
        dimensions=dims,
        line=dict(color=scores, colorscale="Viridis", showscale=True, colorbar=dict(title="macro-F1")),
        labelfont=dict(size=15), tickfont=dict(size=12),
    ))
    if best is not None and best in set(done.get("trial_id", [])):
        score = float(scores[done["trial_id"] == best].iloc[0])
        title = f"{title} · best {html_text(best)}: {score:.3f}"
    return _layout(fig, title, height=440, margin=dict(l=70, r=40, t=110, b=40))


def importance_bars(table: pd.DataFrame, metric: str, title: str = "") -> go.Figure:
    """Horizontal bars of ``importance.importance_table`` (most important on top), shares of 1 as percents."""
    rows = table.iloc[::-1]  # Plotly draws the first bar at the bottom
    names = [html_text(p) for p in rows["parameter"]]
    fig = go.Figure(go.Bar(
        x=rows["importance"], y=names, orientation="h", marker_color="#2a9d8f",
        text=[f"{v:.0%}" for v in rows["importance"]], textposition="auto",
        customdata=rows["distinct"], hovertemplate="%{y}: %{x:.1%} of the explained variation<br>"
                                                    "%{customdata} distinct value(s) in the trials<extra></extra>"))
    fig.update_xaxes(title=f"importance for {html_text(metric)}", range=[0, 1], tickformat=".0%")
    return _layout(fig, title, height=max(220, 70 + 45 * len(rows)))


# Trial statuses in the parameter scatter, drawn in this order (the finished ones on top).
_SCATTER_STATUS = {"stopped": ("#a8a8a8", "stopped by ASHA"), "running": ("#f4a261", "running"),
                   "complete": ("#264653", "complete")}


def spans_decades(values: pd.Series, ratio: float = 100.0) -> bool:
    """Whether a numeric parameter is better read on a log axis: all positive and spanning ``ratio`` or more."""
    numbers = pd.to_numeric(values, errors="coerce").dropna()
    return bool(len(numbers)) and bool((numbers > 0).all()) and float(numbers.max() / numbers.min()) >= ratio


def param_scatter(frame: pd.DataFrame, params: Sequence[str], metric: str = "best_val_macro_f1",
                  best: str | None = None, columns: int = 3, title: str = "") -> go.Figure:
    """One panel per parameter: each trial with a value for ``metric`` at its parameter value, coloured by
    status (complete, stopped by ASHA, running), the best trial starred. Numeric parameters spanning two
    decades or more (learning rates) get a log axis; other values are categories, spread sideways a little
    (deterministically) so that equal values do not hide each other. Hover names the trial."""
    values = pd.to_numeric(frame[metric], errors="coerce") if metric in frame else pd.Series(dtype=float)
    done = frame[values.notna() & np.isfinite(values.fillna(0))].assign(_metric=values)
    params = [p for p in params if p in done and done[p].notna().any()]
    rows = max(1, math.ceil(len(params) / columns))
    cols = max(1, math.ceil(len(params) / rows))  # balanced: four parameters as 2 x 2, not 3 + 1
    names = [html_text(p.removeprefix(PARAM_PREFIX)) for p in params]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names or None, shared_yaxes=True,
                        horizontal_spacing=0.04, vertical_spacing=0.16 if rows > 1 else 0.1)
    jitter = np.random.default_rng(0).uniform(-0.18, 0.18, len(done))
    ids = done["trial_id"].astype(str) if "trial_id" in done else pd.Series([""] * len(done), index=done.index)
    statuses = done["status"].astype(str) if "status" in done else pd.Series(["complete"] * len(done),
                                                                                index=done.index)
    for k, column in enumerate(params):
        row, col = k // cols + 1, k % cols + 1
        raw = done[column]
        numbers = pd.to_numeric(raw, errors="coerce")
        numeric = bool(numbers.notna().all())
        if numeric:
            x = numbers.astype(float)
            axis: dict[str, Any] = {"type": "log"} if spans_decades(numbers) else {}
        else:
            labels = raw.astype(str)
            cats = sorted(labels.unique())
            x = pd.Series([cats.index(v) for v in labels], index=done.index) + jitter
            axis = dict(tickvals=list(range(len(cats))), ticktext=[html_text(c) for c in cats],
                        range=[-0.5, len(cats) - 0.5])
        fig.update_xaxes(row=row, col=col, **axis)
        shown_value = [html_text(v if not numeric else f"{float(v):.4g}") for v in raw]
        hover = [f"{html_text(t)} ({html_text(s)})<br>{names[k]} = {v}<br>{html_text(metric)} {m:.4f}"
                 for t, s, v, m in zip(ids, statuses, shown_value, done["_metric"], strict=True)]
        hover_of = pd.Series(hover, index=done.index)
        groups = [*_SCATTER_STATUS.items(), ("other", ("#e76f51", "other"))]
        for status, (colour, legend) in groups:
            part = ~statuses.isin(list(_SCATTER_STATUS)) if status == "other" else statuses == status
            if not part.any():
                continue
            fig.add_scatter(x=x[part], y=done.loc[part, "_metric"], mode="markers", name=legend,
                            legendgroup=status, showlegend=k == 0, text=hover_of[part],
                            hovertemplate="%{text}<extra></extra>",
                            marker=dict(color=colour, size=7, opacity=0.8, line=dict(width=0)), row=row, col=col)
        if best is not None and (ids == best).any():
            mine = ids == best
            fig.add_scatter(x=x[mine], y=done.loc[mine, "_metric"], mode="markers", name=f"★ best ({html_text(best)})",
                            legendgroup="best", showlegend=k == 0, text=hover_of[mine],
                            hovertemplate="★ best: %{text}<extra></extra>",
                            marker=dict(symbol="star", size=16, color=BEST_COLOUR, line=dict(width=1, color="white")),
                            row=row, col=col)
    fig.update_yaxes(title=html_text(metric), col=1)
    return _layout(fig, title, height=60 + 300 * rows, hovermode="closest",
                   legend=dict(orientation="h", y=-0.12 if rows == 1 else -0.06, x=0),
                   margin=dict(l=60, r=20, t=60 if title else 40, b=60))


RECOMMENDED_COLOUR = "#2a9d8f"
FRONT_COLOUR = "#264653"


def context_points(frame: pd.DataFrame) -> pd.DataFrame:
    """The trials of a sweep's frame that have both validation macro-F1 and a context probe, with numeric columns
    ``f1``, ``without_cells``, ``chance`` and ``gap`` (without_cells minus chance) and ``front``: on the Pareto front
    of accuracy against reliance on context (tuning.recommend.pareto_front on gap and f1)."""
    columns = ("trial_id", "status", "best_val_macro_f1", "val_acc_without_cells", "val_chance")
    if frame.empty or not all(c in frame for c in columns[2:]):
        return pd.DataFrame(columns=[*columns[:2], "f1", "without_cells", "chance", "gap", "front"])
    out = pd.DataFrame({
        "trial_id": frame["trial_id"].astype(str),
        "status": frame["status"].astype(str) if "status" in frame else "complete",
        "f1": pd.to_numeric(frame["best_val_macro_f1"], errors="coerce"),
        "without_cells": pd.to_numeric(frame["val_acc_without_cells"], errors="coerce"),
        "chance": pd.to_numeric(frame["val_chance"], errors="coerce")})
    out = out[np.isfinite(out[["f1", "without_cells", "chance"]]).all(axis=1)].copy()
    out["gap"] = out["without_cells"] - out["chance"]
    out["front"] = pareto_front(list(zip(out["gap"], out["f1"], strict=True)))
    return out.reset_index(drop=True)


def context_tradeoff(points: pd.DataFrame, *, recommended: str | None = None, most_accurate: str | None = None,
                     margin: float = 0.10, title: str = "") -> go.Figure:
    """Accuracy against reliance on the slide's context, one point per trial (``context_points``): x = validation
    accuracy with the leukocytes removed, y = best validation macro-F1. The Pareto front (trials no other trial
    beats on both) is joined by a line; chance and the band up to ``margin`` above it (where a trial counts as
    reading the cells) are drawn when every trial has the same chance; the recommended and the most accurate
    trial are starred. Hover names each trial."""
    fig = go.Figure()
    chances = sorted(set(points["chance"].round(6))) if len(points) else []
    if len(chances) == 1:
        chance = chances[0]
        fig.add_vrect(x0=0, x1=min(1.0, chance + margin), fillcolor=_rgba(RECOMMENDED_COLOUR, 0.10), line_width=0,
                      layer="below", annotation_text=f"reads the cells (at most {margin * 100:.0f} points above "
                                                     "chance)", annotation_position="top left",
                      annotation_font_size=12)
        fig.add_vline(x=chance, line=dict(color="#8d99ae", dash="dash", width=1.5),
                      annotation_text=f"chance {chance:.0%}", annotation_position="bottom right",
                      annotation_font_size=12)

    def hover(part: pd.DataFrame, prefix: str = "") -> list[str]:
        return [f"{prefix}{html_text(t)} ({html_text(s)})<br>val macro-F1 {f:.4f}<br>without leukocytes {w:.1%} "
                f"(chance {c:.1%}, {g * 100:+.1f} points)"
                for t, s, f, w, c, g in zip(part["trial_id"], part["status"], part["f1"], part["without_cells"],
                                            part["chance"], part["gap"], strict=True)]

    front = points[points["front"]].sort_values(["without_cells", "f1"])
    rest = points[~points["front"]]
    if len(rest):
        fig.add_scatter(x=rest["without_cells"], y=rest["f1"], mode="markers", name="trial", text=hover(rest),
                        hovertemplate="%{text}<extra></extra>",
                        marker=dict(color="#a8a8a8", size=9, line=dict(width=0)))
    if len(front):
        fig.add_scatter(x=front["without_cells"], y=front["f1"], mode="lines+markers", name="Pareto front",
                        text=hover(front, "on the front: "), hovertemplate="%{text}<extra></extra>",
                        line=dict(color=FRONT_COLOUR, width=2, shape="hv"),
                        marker=dict(color=FRONT_COLOUR, size=10, line=dict(width=0)))
    stars = []
    if recommended is not None:
        stars.append((recommended, "recommended" if recommended != most_accurate else "recommended = most accurate",
                      RECOMMENDED_COLOUR))
    if most_accurate is not None and most_accurate != recommended:
        stars.append((most_accurate, "most accurate", BEST_COLOUR))
    for trial, name, colour in stars:
        mine = points[points["trial_id"] == str(trial)]
        if len(mine):
            fig.add_scatter(x=mine["without_cells"], y=mine["f1"], mode="markers",
                            name=f"★ {name} ({html_text(trial)})", text=hover(mine, f"★ {name}: "),
                            hovertemplate="%{text}<extra></extra>",
                            marker=dict(symbol="star", size=20, color=colour, line=dict(width=1, color="white")))
    fig.update_xaxes(title="validation accuracy with the leukocytes removed (lower: reads the cells more)",
                     tickformat=".0%", range=[-0.02, 1.02])
    fig.update_yaxes(title="best validation macro-F1")
    return _layout(fig, title, height=480, hovermode="closest",
                   legend=dict(orientation="h", y=-0.22, x=0), margin=dict(l=60, r=20, t=50 if title else 30, b=90))


_GROUP_COLOURS = ("#264653", "#e76f51", "#2a9d8f", "#8338ec", "#e9c46a", "#3a86ff", "#d62828", "#6a994e",
                  "#ff006e", "#8d99ae", "#bc6c25", "#00b4d8")


def _ordered(values: Iterable[str]) -> list[str]:
    """Colour values in reading order: numerically when they are all numbers, else alphabetically."""
    found = list(dict.fromkeys(values))
    numbers = pd.to_numeric(pd.Series(found, dtype=object), errors="coerce")
    if len(found) and numbers.notna().all():
        return [v for _, v in sorted(zip(numbers, found, strict=True))]
    return sorted(found)


def spread_curves(spread: pd.DataFrame, metric: str, colour_by: str | None = None, title: str = "") -> go.Figure:
    """``importance.curve_spread`` drawn: one mean line per setting, coloured by ``colour_by``'s value (or one
    colour per setting), with a shaded band from the lowest to the highest repeat where a setting has
    repeats (n > 1). Hover gives the setting, n and the trials averaged."""
    fig = go.Figure()
    order = _ordered(spread["colour"].astype(str)) if len(spread) else []
    colour_of = {c: _GROUP_COLOURS[i % len(_GROUP_COLOURS)] for i, c in enumerate(order)}
    legend_done: set[str] = set()
    for setting, part in spread.groupby("setting", sort=True):
        part = part.sort_values("epoch")
        group = str(part["colour"].iloc[0])
        colour = colour_of[group]
        legend_group = f"g{order.index(group)}"  # an id, not the text from the files
        label = f"{html_text(colour_by)} = {html_text(group)}" if colour_by else html_text(setting)
        if (part["n"] > 1).any():
            fig.add_scatter(x=[*part["epoch"], *part["epoch"][::-1]], y=[*part["max"], *part["min"][::-1]],
                            fill="toself", fillcolor=_rgba(colour, 0.15), line=dict(width=0), mode="lines",
                            hoverinfo="skip", showlegend=False, legendgroup=legend_group)
        hover = [f"{html_text(setting)}<br>epoch {e}: mean {m:.4f}"
                 + (f" (min {lo:.4f}, max {hi:.4f})" if n > 1 else "")
                 + f"<br>n = {n}: {html_text(', '.join(t))}"
                 for e, m, lo, hi, n, t in zip(part["epoch"], part["mean"], part["min"], part["max"], part["n"],
                                               part["trials"], strict=True)]
        repeated = int(part["n"].max()) > 1
        fig.add_scatter(x=part["epoch"], y=part["mean"], mode="lines+markers", name=label, legendgroup=legend_group,
                        showlegend=group not in legend_done, text=hover, hovertemplate="%{text}<extra></extra>",
                        line=dict(color=colour, width=3 if repeated else 1.5),
                        marker=dict(size=6 if repeated else 4))
        legend_done.add(group)
    last = int(spread["epoch"].max()) if len(spread) else 0
    fig.update_xaxes(title="epoch", **({"dtick": 1} if 0 < last <= 20 else {}))
    fig.update_yaxes(title=html_text(metric))
    legend_title = html_text(colour_by) if colour_by else "setting"
    return _layout(fig, title or f"{html_text(metric)} per epoch, mean over repeats (band: min to max)",
                   height=460, legend_title=legend_title, hovermode="closest")


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


# ----------------------------------------------------------------------------- Grad-CAM


def _interval(stat: Mapping[str, Any]) -> tuple[float, float]:
    """(minus, plus) error-bar lengths of a {"mean", "ci95"} block; ci95 is [lo, hi] or a half-width."""
    mean, ci = stat.get("mean"), stat.get("ci95")
    if mean is None or ci is None:
        return 0.0, 0.0
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        return max(0.0, mean - ci[0]), max(0.0, ci[1] - mean)
    if isinstance(ci, (int, float)) and not math.isnan(ci):
        return float(ci), float(ci)
    return 0.0, 0.0


def faithfulness_frame(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Long table: method, layer, stage ('all' for overall), metric, mean, minus, plus, n, rank."""
    rows = []
    ranking = summary.get("ranking", {}) or {}
    for method, block in (summary.get("methods") or {}).items():
        scopes = {"all": block.get("overall", {}), **(block.get("per_stage") or {})}
        for stage, metrics in scopes.items():
            for metric, stat in (metrics or {}).items():
                if not isinstance(stat, Mapping):
                    continue
                minus, plus = _interval(stat)
                order = ranking.get(stage) or []
                rows.append({"method": method, "layer": block.get("layer"), "stage": stage, "metric": metric,
                             "mean": stat.get("mean"), "minus": minus, "plus": plus, "n": stat.get("n"),
                             "rank": order.index(method) + 1 if method in order else None})
    return pd.DataFrame(rows, columns=["method", "layer", "stage", "metric", "mean", "minus", "plus", "n", "rank"])


def faithfulness_bars(summary: Mapping[str, Any], metric: str | None = None,
                      title: str = "Faithfulness per stage and method") -> go.Figure:
    """Grouped bars of one faithfulness metric (default the first listed) with 95% intervals."""
    frame = faithfulness_frame(summary)
    metric = metric or (summary.get("metrics") or sorted(frame["metric"].unique()) or [""])[0]
    part = frame[frame["metric"] == metric]
    fig = go.Figure()
    stages = [s for s in ("all", *CLASSES) if s in set(part["stage"])]
    for method in part["method"].unique():
        rows = part[part["method"] == method].set_index("stage").reindex(stages)
        fig.add_bar(x=stages, y=rows["mean"], name=html_text(method),
                    error_y=dict(type="data", symmetric=False, array=rows["plus"], arrayminus=rows["minus"]))
    fig.update_layout(barmode="group", xaxis_title="stage", yaxis_title=html_text(metric), legend_title="method")
    return _layout(fig, f"{title}: {html_text(metric)}", height=400)


def probabilities_bar(probabilities: Mapping[str, float], title: str = "Stage probabilities") -> go.Figure:
    classes = list(probabilities)
    values = [float(probabilities[c]) for c in classes]
    fig = go.Figure(go.Bar(x=values, y=[html_text(c) for c in classes], orientation="h",
                           text=[f"{v:.1%}" for v in values],
                           textposition="auto", marker_color=[STAGE_COLOURS.get(c, "#888") for c in classes]))
    fig.update_xaxes(range=[0, 1], title="probability", tickformat=".0%")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=300)


# ----------------------------------------------------------------------------- feature space

# What the feature map can be coloured by: column of the frame -> legend title. Categorical unless numeric.
FEATURE_MAP_COLOURS = {"true": "true stage", "pred": "predicted stage", "correct": "correct",
                       "confidence": "confidence", "out_of_distribution": "out of distribution",
                       "concentration": "concentration on the leukocytes", "pointing": "map maximum on a leukocyte"}
_SPLIT_SIZE = {"train": 5, "val": 7, "test": 8}
_CATEGORY_COLOURS = {"correct": "#2a9d8f", "misclassified": "#d62728", "flagged": "#d62728", "not flagged": "#8ab17d",
                     "on a leukocyte": "#2a9d8f", "off the leukocytes": "#d62728", "no score": "#bbbbbb"}


def feature_map_frame(embedding: pd.DataFrame, localisation: pd.DataFrame | None = None) -> pd.DataFrame:
    """The map's points with derived colour columns: correct, out_of_distribution and (when the run has
    per-image localisation scores for one method and layer) concentration and pointing, by sha256."""
    frame = embedding.copy()
    frame["correct"] = np.where(frame["true"] == frame["pred"], "correct", "misclassified")
    flag = pd.to_numeric(frame.get("out_of_distribution"), errors="coerce") if "out_of_distribution" in frame else None
    frame["out_of_distribution"] = ("no score" if flag is None else
                                    np.where(flag == 1, "flagged", np.where(flag == 0, "not flagged", "no score")))
    if localisation is not None and not localisation.empty:
        scores = localisation.drop_duplicates("sha256").set_index("sha256")[["concentration", "pointing"]]
        frame = frame.join(scores, on="sha256")
        frame["pointing"] = np.where(frame["pointing"] == 1, "on a leukocyte",
                                     np.where(frame["pointing"] == 0, "off the leukocytes", "no score"))
    return frame


def feature_map(frame: pd.DataFrame, colour: str = "true", title: str = "", height: int = 620) -> go.Figure:
    """A scatter of the 2-D feature map (``embedding.csv`` rows, via ``feature_map_frame``), coloured by ``colour``.

    One trace per category (stages in their order), or one trace on a colour scale for a number
    (points without one in grey). Each point's customdata is its sha256, which ``selected_keys``
    reads back from a box or lasso selection. Training points are drawn smaller.
    """
    fig = go.Figure()
    legend = FEATURE_MAP_COLOURS.get(colour, colour)

    def hover(part: pd.DataFrame) -> list[str]:
        return [f"{html_text(p.rsplit('/', 1)[-1])}<br>{html_text(s)} · true {html_text(t)} · predicted "
                f"{html_text(q)} ({float(c):.2f})"
                for p, s, t, q, c in zip(part["path"], part["split"], part["true"], part["pred"], part["confidence"],
                                         strict=True)]

    def add(part: pd.DataFrame, name: str, **marker: Any) -> None:
        fig.add_scatter(x=part["x"], y=part["y"], mode="markers", name=name, customdata=part["sha256"],
                        text=hover(part), hovertemplate="%{text}<extra></extra>",
                        marker=dict(size=part["split"].map(_SPLIT_SIZE).fillna(6).tolist(), line=dict(width=0),
                                    opacity=0.85, **marker))

    values = pd.to_numeric(frame[colour], errors="coerce") if colour in frame and colour not in (
        "true", "pred", "correct", "out_of_distribution", "pointing") else None
    if values is not None:
        missing = values.isna()
        if missing.any():
            add(frame[missing], "no score", color=_CATEGORY_COLOURS["no score"])
        scored = frame[~missing]
        add(scored, html_text(legend), color=values[~missing], colorscale="Viridis", showscale=True,
            colorbar=dict(title=html_text(legend)))
        fig.update_layout(showlegend=bool(missing.any()))
    elif colour in frame:
        found = [str(v) for v in frame[colour].unique()]
        order = [c for c in CLASSES if c in found] + sorted((v for v in found if v not in CLASSES),
                                                            key=lambda v: (v == "no score", v))
        for value in order:
            part = frame[frame[colour].astype(str) == value]
            add(part, html_text(value),
                color=STAGE_COLOURS.get(value) or _CATEGORY_COLOURS.get(value) or None)
        fig.update_layout(legend_title=html_text(legend))
    fig.update_xaxes(showticklabels=False, title="t-SNE 1", zeroline=False)
    fig.update_yaxes(showticklabels=False, title="t-SNE 2", zeroline=False)
    fig.update_layout(dragmode="lasso", clickmode="event+select")
    return _layout(fig, title, height=height)


def selected_keys(event: Any) -> list[str]:
    """The sha256 of the points a box or lasso selection on ``feature_map`` holds, in order, once each."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError, AttributeError):
        return []
    keys = []
    for point in points or []:
        value = point.get("customdata") if isinstance(point, Mapping) else None
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if isinstance(value, str) and value:
            keys.append(value)
    return list(dict.fromkeys(keys))


# ----------------------------------------------------------------------------- matplotlib (PPTX)


def png_confusion_matrix(counts: Sequence[Sequence[int]], classes: Sequence[str] = CLASSES,
                         normalized: bool = False, title: str = "") -> bytes:
    """A projector-friendly confusion matrix PNG (large labels), drawn by matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(counts, dtype=float)
    sums = cm.sum(1, keepdims=True)
    norm = np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)
    shown = norm if normalized else cm
    fig, ax = plt.subplots(figsize=(7, 6.2), dpi=150)
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalized else max(1.0, cm.max()))
    for i in range(len(classes)):
        for j in range(len(classes)):
            label = f"{norm[i, j]:.0%}\n({int(cm[i, j])})" if normalized else f"{int(cm[i, j])}"
            ax.text(j, i, label, ha="center", va="center", fontsize=20,
                    color="white" if norm[i, j] > 0.55 else "#111")
    ax.set_xticks(range(len(classes)), [mpl(c) for c in classes], fontsize=18)
    ax.set_yticks(range(len(classes)), [mpl(c) for c in classes], fontsize=18)
    ax.set_xlabel("predicted stage", fontsize=18)
    ax.set_ylabel("true stage", fontsize=18)
    if title:
        ax.set_title(title, fontsize=20)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
