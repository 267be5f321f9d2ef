"""The evidence behind the maps, as plain functions of the run folder's JSON: tables and figures.

Three questions, each answered from one file:

- Do the maps point at the leukocytes?   ``cams/localisation.json`` (engine.explain.localisation)
- Are the maps faithful to the model?    ``cams/faithfulness_summary.json`` and ``cams/sanity.json``
- Does the model need the cells at all?  ``context.json`` (engine.context)

Plotly figures for the pages and the HTML report, matplotlib PNGs for the PPTX deck; stage
labels read from the files are escaped for both (dashboard.escape). No Streamlit here, so every
function is tested directly.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.runs import CLASSES, CONTEXT_VARIANTS, LOCALISATION_VERDICTS

from .escape import html_text, mpl
from .figures import faithfulness_frame

SOURCES = {"map": "the maps", "centre": "centred Gaussian", "shuffled": "another image's map (same stage)"}
SOURCE_COLOURS = {"map": "#264653", "centre": "#bdbdbd", "shuffled": "#8d99ae"}
VARIANTS = CONTEXT_VARIANTS
VARIANT_COLOURS = {"original": "#264653", "cells_removed": "#e76f51", "background_removed": "#2a9d8f"}
SCORE_TITLES = {"concentration": "concentration (1 = uniform map)", "pointing": "pointing game (share of hits)",
                "mass_in": "share of map mass on the leukocytes"}
VERDICT_ICONS = {"points": "✅", "baseline": "⚠️", "away": "❌", "unknown": "❔"}


def _error(stat: Mapping[str, Any]) -> tuple[float, float]:
    mean, (low, high) = stat.get("mean"), stat.get("ci95") or (None, None)
    if mean is None or low is None or high is None:
        return 0.0, 0.0
    return high - mean, mean - low


def verdict_line(key: str) -> str:
    return f"{VERDICT_ICONS.get(key, '')} {LOCALISATION_VERDICTS.get(key, key)}".strip()


# ----------------------------------------------------------------------------- localisation


def find_result(summary: Mapping[str, Any], method: str, layer: str) -> Mapping[str, Any] | None:
    return next((r for r in summary.get("results", []) if r["method"] == method and r["layer"] == layer), None)


def ranking_frame(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per method x layer, best first: the macro concentration and pointing, and the verdict."""
    rows = [{"rank": i, "method": r["method"], "layer": r["layer"], "concentration": r["concentration"],
             "pointing": r["pointing"], "verdict": verdict_line(r["verdict"])}
            for i, r in enumerate(summary.get("ranking", []), 1)]
    return pd.DataFrame(rows, columns=["rank", "method", "layer", "concentration", "pointing", "verdict"])


def stage_verdicts(result: Mapping[str, Any]) -> pd.DataFrame:
    """Per stage: images, the map's concentration and pointing with the baselines', and the verdict."""
    def cell(block: Mapping[str, Any], source: str, score: str) -> str:
        stat = block[source][score]
        if stat["mean"] is None:
            return "–"
        low, high = stat["ci95"]
        return f"{stat['mean']:.2f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None else "")

    rows = []
    for stage, block in {**result["per_stage"], "all": result["all"]}.items():
        rows.append({"stage": stage, "images": block["n"],
                     "concentration": cell(block, "map", "concentration"),
                     "centred blob": cell(block, "centre", "concentration"),
                     "shuffled": cell(block, "shuffled", "concentration"),
                     "pointing": cell(block, "map", "pointing"),
                     "pointing (blob)": cell(block, "centre", "pointing"),
                     "verdict": verdict_line(block["verdict"])})
    return pd.DataFrame(rows)


def localisation_bars(result: Mapping[str, Any], score: str = "concentration", title: str = "") -> go.Figure:
    """Per stage: the maps' mean score against both baselines, with 95% intervals."""
    stages = list(result["per_stage"])
    fig = go.Figure()
    for source, name in SOURCES.items():
        stats = [result["per_stage"][s][source][score] for s in stages]
        errors = [_error(st) for st in stats]
        fig.add_bar(x=[html_text(s) for s in stages], y=[st["mean"] for st in stats], name=name,
                    marker_color=SOURCE_COLOURS[source],
                    error_y=dict(type="data", symmetric=False, array=[e[0] for e in errors],
                                 arrayminus=[e[1] for e in errors]))
    if score == "concentration":
        # Labelled beside the plot, below the legend: inside it the label sat under the bars.
        fig.add_hline(y=1, line_dash="dot", annotation_text="uniform<br>map", annotation_position="right")
    fig.update_layout(barmode="group", xaxis_title="stage", yaxis_title=SCORE_TITLES[score], legend_title="map",
                      title=dict(text=title, x=0) if title else None, height=380, template="plotly_white",
                      margin=dict(l=60, r=20, t=50 if title else 30, b=50))
    return fig


# ----------------------------------------------------------------------------- context reliance


def context_frame(context: Mapping[str, Any]) -> pd.DataFrame:
    """Long table: stage (and "all"), variant, n, accuracy, ci low and high."""
    rows = []
    for variant, block in context["variants"].items():
        for stage, stat in {**block["per_stage"], "all": block["all"]}.items():
            low, high = stat["ci95"]
            rows.append({"stage": stage, "variant": variant, "n": stat["n"], "accuracy": stat["accuracy"],
                         "low": low, "high": high})
    return pd.DataFrame(rows)


def context_bars(context: Mapping[str, Any], title: str = "") -> go.Figure:
    """Accuracy per stage on the images as they are, without leukocytes and without background."""
    frame = context_frame(context)
    fig = go.Figure()
    for variant, name in VARIANTS.items():
        part = frame[frame["variant"] == variant]
        if part.empty:
            continue
        fig.add_bar(x=[html_text(s) for s in part["stage"]], y=part["accuracy"], name=name,
                    marker_color=VARIANT_COLOURS[variant],
                    error_y=dict(type="data", symmetric=False, array=(part["high"] - part["accuracy"]).fillna(0),
                                 arrayminus=(part["accuracy"] - part["low"]).fillna(0)),
                    # Inside, at the bar's foot: at its top or above it the label collided with the error bar.
                    text=[f"{a:.0%}" if a == a else "" for a in part["accuracy"]], textposition="inside",
                    insidetextanchor="start", textfont=dict(color="white"))
    if context.get("chance") is not None:
        fig.add_hline(y=context["chance"], line_dash="dot", annotation_text="always the most<br>common stage",
                      annotation_position="right")
    fig.update_layout(barmode="group", xaxis_title="stage", yaxis_title="accuracy", yaxis_range=[0, 1.12],
                      legend_title="test images", title=dict(text=title, x=0) if title else None, height=400,
                      template="plotly_white", margin=dict(l=60, r=20, t=50 if title else 30, b=50))
    return fig


def context_sentence(context: Mapping[str, Any]) -> str:
    """One plain sentence: how much of the accuracy survives without the cells."""
    variants = context["variants"]
    original = variants["original"]["all"]["accuracy"]
    without = variants.get("cells_removed", {}).get("all", {}).get("accuracy")
    if original is None or without is None:
        return "Context reliance was not measured (no leukocyte masks)."
    chance = context.get("chance") or 0
    verdict = ("the model decides largely from the slide's context, not the cells" if without > chance + 0.25
               else "the model needs the cells" if without <= chance + 0.1
               else "the model leans partly on the slide's context")
    return (f"With the leukocytes removed the model still classifies {without:.0%} of the test images correctly "
            f"(as they are: {original:.0%}; always answering the most common stage: {chance:.0%}): {verdict}.")


# ----------------------------------------------------------------------------- PNGs for the deck


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _grouped_png(stages: Sequence[str], series: Mapping[str, Sequence[tuple[float | None, float | None,
                                                                            float | None]]],
                 colours: Mapping[str, str], ylabel: str, title: str, line: float | None = None,
                 line_label: str = "") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        x = np.arange(len(stages)) + (k - (len(series) - 1) / 2) * width
        means = [v[0] if v[0] is not None else 0 for v in values]
        err = [[(m - lo) if lo is not None else 0 for m, (_, lo, _) in zip(means, values, strict=True)],
               [(hi - m) if hi is not None else 0 for m, (_, _, hi) in zip(means, values, strict=True)]]
        ax.bar(x, means, width, yerr=err, capsize=2, label=name, color=colours.get(name, None))
    if line is not None:
        ax.axhline(line, linestyle=":", color="black", linewidth=1, label=line_label or None)
    ax.set_xticks(range(len(stages)), [mpl(s) for s in stages])
    ax.set_ylabel(ylabel)
    # The legend above the axes: inside them it covered bars and the reference line.
    ax.legend(fontsize=8, frameon=False, ncol=2, loc="lower left", bbox_to_anchor=(0, 1.0))
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def png_localisation(result: Mapping[str, Any], score: str = "concentration", title: str = "") -> bytes:
    stages = list(result["per_stage"])
    series = {SOURCES[src]: [(result["per_stage"][s][src][score]["mean"], *result["per_stage"][s][src][score]["ci95"])
                             for s in stages] for src in SOURCES}
    colours = {SOURCES[k]: v for k, v in SOURCE_COLOURS.items()}
    return _grouped_png(stages, series, colours, SCORE_TITLES[score], title,
                        line=1.0 if score == "concentration" else None,
                        line_label="uniform map" if score == "concentration" else "")


def png_context(context: Mapping[str, Any], title: str = "") -> bytes:
    stages = [*CLASSES, "all"]
    series = {}
    for variant, name in VARIANTS.items():
        if variant in context["variants"]:
            block = context["variants"][variant]
            stats = [{**block["per_stage"], "all": block["all"]}[s] for s in stages]
            series[name] = [(st["accuracy"], *st["ci95"]) for st in stats]
    colours = {VARIANTS[k]: v for k, v in VARIANT_COLOURS.items()}
    return _grouped_png(stages, series, colours, "accuracy", title, line=context.get("chance"),
                        line_label="always the most common stage")


# ----------------------------------------------------------------------------- verdicts


def sanity_frame(sanity: Mapping[str, Any]) -> pd.DataFrame:
    """One row per method: passed or not, and the maps' similarity once every layer is re-initialised."""
    rows = []
    for method, result in sanity.items():
        if not isinstance(result, Mapping):
            continue
        steps = result.get("steps") or []
        last = steps[-1] if steps else {}
        rows.append({"method": method, "layer": result.get("layer"),
                     "verdict": "✅ passed" if result.get("passed") else "❌ failed",
                     "Spearman after full randomisation": last.get("spearman"), "criterion": result.get("criterion")})
    return pd.DataFrame(rows)


def verdict_table(localised: Mapping[str, Any] | None, faith: Mapping[str, Any] | None,
                  sanity: Mapping[str, Any] | None) -> pd.DataFrame:
    """Per method x layer: does it point at the leukocytes, and (where measured) is it faithful and sane."""
    ranking = (faith or {}).get("ranking", {}).get("all", [])
    rows = []
    for entry in ranking_frame(localised or {}).to_dict("records"):
        method, layer = entry["method"], entry["layer"]
        faithful = (faith or {}).get("methods", {}).get(method, {})
        checked = sanity.get(method) if isinstance(sanity, Mapping) else None
        rows.append({**entry,
                     "faithfulness rank": (ranking.index(method) + 1 if method in ranking
                                           and faithful.get("layer") == layer else None),
                     "sanity check": ("passed" if checked.get("passed") else "failed")
                     if isinstance(checked, Mapping) and checked.get("layer") == layer else "not run"})
    return pd.DataFrame(rows)


def shape_problem(kind: str, data: Any) -> str | None:
    """Why an evidence file (``kind``: context, localisation, faithfulness or sanity) cannot be shown, or None.

    The tables every page and deck draws from the file are built once here, so a file of the wrong shape
    (valid JSON, but a list where a mapping belongs, a missing stage, text where a number belongs) is
    reported once, by the loader, instead of failing wherever it is shown.
    """
    def context(c: Any) -> None:
        context_frame(c)
        context_sentence(c)
        for block in c["variants"].values():
            stats = {**block["per_stage"], "all": block["all"]}
            missing = [s for s in (*CLASSES, "all") if s not in stats]
            if missing:
                raise KeyError(f"no result for {', '.join(missing)}")
        float(c.get("chance") or 0)

    def localisation(summary: Any) -> None:
        ranking_frame(summary)
        for result in summary.get("results", []):
            stage_verdicts(result)
            for block in result["per_stage"].values():
                for source in SOURCES:
                    for score in ("concentration", "pointing"):
                        _error(block[source][score])
        for entry in summary.get("ranking", []):
            if find_result(summary, entry["method"], entry["layer"]) is None:
                raise KeyError(f"the ranking lists {entry['method']} at {entry['layer']}, which has no result")

    def faithfulness(summary: Any) -> None:
        faithfulness_frame(summary)
        verdict_table(None, summary, None)

    def sanity(results: Any) -> None:
        for method, result in results.items():
            if not isinstance(result, Mapping):
                raise TypeError(f"the result of {method} is not an object")
        sanity_frame(results)

    checks = {"context": context, "localisation": localisation, "faithfulness": faithfulness, "sanity": sanity}
    try:
        checks[kind](data)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """``image`` (H, W, 3 uint8) with the outline of the boolean ``mask`` drawn on it, 1 px at 112 px."""
    from scipy import ndimage as ndi

    if mask.shape != image.shape[:2]:
        from PIL import Image

        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(image.shape[1::-1])) >= 128
    width = max(1, round(image.shape[0] / 112))
    edge = mask & ~ndi.binary_erosion(mask, iterations=width)
    out = image.copy()
    out[edge] = colour
    return out
