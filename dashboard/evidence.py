"""The evidence behind the maps, as plain functions of the run folder's JSON: tables and figures.

Three questions, each answered from one file:

- Do the maps point at the leukocytes?   ``cams/localisation.json`` (engine.explain.localisation)
- Are the maps faithful to the model?    ``cams/faithfulness_summary.json`` and ``cams/sanity.json``
- Does the model need the cells at all?  ``context.json`` (engine.context)
- Could colour alone do it?              ``baselines.json`` (engine.baselines)

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

from engine.runs import BASELINE_WORDS, CLASSES, CONTEXT_VARIANTS, HEADLINE_BASELINES, LOCALISATION_VERDICTS

from .escape import html_text, mpl
from .figures import faithfulness_frame

SOURCES = {"map": "the maps", "centre": "centred Gaussian", "shuffled": "another image's map (same stage)"}
SOURCE_COLOURS = {"map": "#264653", "centre": "#bdbdbd", "shuffled": "#8d99ae"}
VARIANTS = CONTEXT_VARIANTS
VARIANT_COLOURS = {"original": "#264653", "cells_removed": "#e76f51", "background_removed": "#2a9d8f",
                   "stain_swapped": "#9b5de5", "greyscale": "#8d8d8d"}
NETWORK = "network"
BASELINE_COLOURS = {NETWORK: "#264653", "background_colour": "#e9c46a", "cell_colour": "#f4a261",
                    "background_colour_linear": "#f6dfa0", "cell_colour_linear": "#f9c9a0"}
# A colour-only model whose accuracy's lower 95% bound lies this far above chance names the stage from the colour.
SHORTCUT_MARGIN = 0.25
SCORE_TITLES = {"concentration": "concentration (1 = uniform map)", "pointing": "pointing game (share of hits)",
                "mass_in": "share of map mass on the leukocytes"}
VERDICT_ICONS = {"points": "✅", "baseline": "⚠️", "away": "❌", "unknown": "❔"}


def _error(stat: Mapping[str, Any]) -> tuple[float, float]:
    mean, (low, high) = stat.get("mean"), stat.get("ci95") or (None, None)
    if mean is None or low is None or high is None:
        return 0.0, 0.0
    return high - mean, mean - low


def verdict_line(key: str, icon: bool = True) -> str:
    """The localisation verdict in words; with ``icon`` (the pages) an emoji before it. Decks leave it out: a
    projector's or a colleague's machine may lack an emoji font and show an empty box instead."""
    words = LOCALISATION_VERDICTS.get(key, key)
    return f"{VERDICT_ICONS.get(key, '')} {words}".strip() if icon else words


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
    sentence = (f"With the leukocytes removed the model still classifies {without:.0%} of the test images correctly "
                f"(as they are: {original:.0%}; always answering the most common stage: {chance:.0%}): {verdict}.")
    stain = stain_sentence(context)
    return f"{sentence} {stain}" if stain else sentence


def stain_sentence(context: Mapping[str, Any]) -> str | None:
    """What the stain probes say, in one sentence; None for a context.json from before them.

    The stain is named as the reason when the accuracy with another stage's stain falls by a quarter
    or more, or when the predictions follow the donor's stage more often than a random answer would
    (a quarter of the time; judged by the interval's lower bound).
    """
    variants = context["variants"]
    original = variants["original"]["all"]["accuracy"]
    swapped = variants.get("stain_swapped", {}).get("all", {}).get("accuracy")
    if original is None or swapped is None:
        return None
    grey = variants.get("greyscale", {}).get("all", {}).get("accuracy")
    follows = ((context.get("stain_swapped") or {}).get("follows_donor") or {}).get("all") or {}
    share, low = follows.get("share"), (follows.get("ci95") or [None, None])[0]
    in_grey = f"; in greyscale: {grey:.0%}" if grey is not None else ""
    donor = (f", and {share:.0%} of the predictions name the donor's stage [95% CI {low:.0%}-"
             f"{follows['ci95'][1]:.0%}]" if share is not None and low is not None else "")
    collapses = original - swapped >= 0.25
    follows_donor = low is not None and low > 0.25
    if collapses or follows_donor:
        verdict = ("the model reads the stain: its answers follow the colours, not the cells" if follows_donor
                   else "the model needs this data set's stain colours to name the stage")
    else:
        verdict = "the stain alone does not decide the model's answers"
    return (f"Recoloured with the stain of an image of another stage, {swapped:.0%} are still classified correctly "
            f"(as they are: {original:.0%}{in_grey}){donor}: {verdict}.")


def donor_bars(context: Mapping[str, Any], title: str = "") -> go.Figure | None:
    """Per stage: the share of stain-swapped images whose prediction is the donor's stage, with 95% intervals."""
    follows = (context.get("stain_swapped") or {}).get("follows_donor")
    if not follows:
        return None
    blocks = {**follows["per_stage"], "all": follows["all"]}
    stages = list(blocks)
    shares = [blocks[s]["share"] for s in stages]
    lows = [(blocks[s]["ci95"] or [None, None])[0] for s in stages]
    highs = [(blocks[s]["ci95"] or [None, None])[1] for s in stages]
    fig = go.Figure()
    fig.add_bar(x=[html_text(s) for s in stages], y=shares, name="prediction = the donor's stage",
                marker_color=VARIANT_COLOURS["stain_swapped"],
                error_y=dict(type="data", symmetric=False,
                             array=[(h - v) if h is not None and v is not None else 0 for v, h in zip(shares, highs,
                                                                                                      strict=True)],
                             arrayminus=[(v - lo) if lo is not None and v is not None else 0
                                         for v, lo in zip(shares, lows, strict=True)]),
                text=[f"{v:.0%}" if v is not None else "" for v in shares], textposition="inside",
                insidetextanchor="start", textfont=dict(color="white"))
    fig.add_hline(y=0.25, line_dash="dot", annotation_text="a random<br>answer", annotation_position="right")
    fig.update_layout(xaxis_title="true stage", yaxis_title="share that follows the donor", yaxis_range=[0, 1.05],
                      title=dict(text=title, x=0) if title else None, height=340, template="plotly_white",
                      showlegend=False, margin=dict(l=60, r=110, t=50 if title else 30, b=50))
    return fig


# ----------------------------------------------------------------------------- shortcut baselines


def pct_ci(block: Mapping[str, Any]) -> str:
    """An accuracy as a meeting reads it: "97.9% [95% CI 96.5-99.0%]"."""
    value, (low, high) = block.get("accuracy"), block.get("ci95") or (None, None)
    if value is None:
        return "n/a"
    return f"{value:.1%}" + (f" [95% CI {low:.1%}-{high:.1%}]" if low is not None and high is not None else "")


def baseline_entries(baselines: Mapping[str, Any], split: str,
                     headline_only: bool = False) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(key, words, the split's score block): the network on the same images first, then the baselines
    (headline ones first). Words come from engine.runs where the key is known, else from the file."""
    out = []
    network = (baselines.get("network") or {}).get("splits", {}).get(split)
    if network is not None:
        out.append((NETWORK, "the network", network))
    entries = baselines["baselines"]
    for key in sorted(entries, key=lambda k: (not entries[k].get("headline", k in HEADLINE_BASELINES), k)):
        entry = entries[key]
        if headline_only and not entry.get("headline", key in HEADLINE_BASELINES):
            continue
        block = entry["splits"].get(split)
        if block is not None:
            out.append((key, BASELINE_WORDS.get(key) or str(entry.get("words", key)), block))
    return out


def baseline_lines(baselines: Mapping[str, Any], split: str, headline_only: bool = True) -> list[str]:
    """ "a model that sees only the background colour: 97.9% [95% CI 96.5-99.0%]", one line each, network first."""
    return [f"{words[:1].upper()}{words[1:]}: {pct_ci(block)}"
            for _, words, block in baseline_entries(baselines, split, headline_only)]


def baseline_sentence(baselines: Mapping[str, Any], split: str) -> str:
    """What the colour-only models say about the network's accuracy on ``split``, in one or two sentences."""
    entries = {key: (words, block) for key, words, block in baseline_entries(baselines, split, headline_only=True)}
    chance = (baselines.get("chance") or {}).get(split)
    n = next((block["n"] for _, block in entries.values()), None)
    strong = [(words, block) for key, (words, block) in entries.items() if key != NETWORK
              and block.get("ci95") and block["ci95"][0] is not None and chance is not None
              and block["ci95"][0] >= chance + SHORTCUT_MARGIN]
    scope = f"the {n} {split} images with a leukocyte mask" if n is not None else f"the {split} images"
    chance_text = f" (always answering the most common stage: {chance:.0%})" if chance is not None else ""
    if strong:
        best_words, best = max(strong, key=lambda wb: wb[1]["accuracy"])
        return (f"{best_words[:1].upper()}{best_words[1:]} names the stage of {best['accuracy']:.1%} of {scope}"
                f"{chance_text}. The stages can be told apart by colour alone, so the network's accuracy is "
                "no evidence by itself that it learned leukocyte morphology; the stain probes (cells or context) "
                "say whether it uses the colour.")
    return (f"No colour-only model names the stage well on {scope}{chance_text}: here the colour alone does "
            "not give the stage away.")


def baseline_frame(baselines: Mapping[str, Any], split: str) -> pd.DataFrame:
    """One row per model (the network first): accuracy, its 95% interval, balanced accuracy, images, how made."""
    how = {k: v.get("how", "") for k, v in baselines["baselines"].items()}
    rows = []
    for key, words, block in baseline_entries(baselines, split):
        low, high = block.get("ci95") or (None, None)
        rows.append({"model": words, "accuracy": block["accuracy"], "95% CI": (f"{low:.1%}-{high:.1%}"
                                                                            if low is not None else ""),
                     "balanced accuracy": block.get("balanced_accuracy"), "images": block["n"],
                     "how it was made": "the trained network, on the same images" if key == NETWORK
                     else str(how.get(key, ""))})
    return pd.DataFrame(rows, columns=["model", "accuracy", "95% CI", "balanced accuracy", "images",
                                       "how it was made"])


def _baseline_series(baselines: Mapping[str, Any], split: str) -> dict[str, tuple[str, list]]:
    stages = [*CLASSES, "all"]
    series = {}
    for key, words, block in baseline_entries(baselines, split, headline_only=True):
        stats = {**block["per_stage"], "all": block}
        series[key] = (words, [(stats[s]["accuracy"], *(stats[s]["ci95"] or (None, None))) for s in stages])
    return series


def baseline_bars(baselines: Mapping[str, Any], split: str, title: str = "") -> go.Figure:
    """Accuracy per stage (and all) of the network beside the headline colour-only models, with 95% intervals."""
    stages = [*CLASSES, "all"]
    fig = go.Figure()
    for key, (words, values) in _baseline_series(baselines, split).items():
        means = [v[0] for v in values]
        fig.add_bar(x=[html_text(s) for s in stages], y=means, name=html_text(words),
                    marker_color=BASELINE_COLOURS.get(key),
                    error_y=dict(type="data", symmetric=False,
                                 array=[(hi - m) if hi is not None and m is not None else 0 for m, _, hi in values],
                                 arrayminus=[(m - lo) if lo is not None and m is not None else 0
                                             for m, lo, _ in values]),
                    text=[f"{m:.0%}" if m is not None else "" for m in means], textposition="inside",
                    insidetextanchor="start", textfont=dict(color="white"))
    chance = (baselines.get("chance") or {}).get(split)
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dot", annotation_text="always the most<br>common stage",
                      annotation_position="right")
    fig.update_layout(barmode="group", xaxis_title="stage", yaxis_title=f"accuracy ({html_text(split)})",
                      yaxis_range=[0, 1.12], legend_title="model", title=dict(text=title, x=0) if title else None,
                      height=400, template="plotly_white", margin=dict(l=60, r=20, t=50 if title else 30, b=50))
    return fig


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

    # Sized for a slide seen from the back of a room: 12 pt text, about 15 pt at the size the deck shows it.
    with plt.rc_context({"font.size": 12}):
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
        ax.legend(fontsize=11, frameon=False, ncol=2, loc="lower left", bbox_to_anchor=(0, 1.0))
        if title:
            fig.suptitle(title, fontsize=12)
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


# The models in a few words, for the deck's figure (the long words do not fit its legend).
SHORT_BASELINE_WORDS = {NETWORK: "the network", "background_colour": "background colour alone",
                        "cell_colour": "cells' colour alone"}


def png_baselines(baselines: Mapping[str, Any], split: str, title: str = "") -> bytes:
    found = _baseline_series(baselines, split)
    series = {SHORT_BASELINE_WORDS.get(key, words): values for key, (words, values) in found.items()}
    colours = {SHORT_BASELINE_WORDS.get(key, words): BASELINE_COLOURS.get(key, "#999999")
               for key, (words, _) in found.items()}
    return _grouped_png([*CLASSES, "all"], series, colours, f"accuracy ({split})", title,
                        line=(baselines.get("chance") or {}).get(split), line_label="always the most common stage")


def png_donor(context: Mapping[str, Any], title: str = "") -> bytes | None:
    follows = (context.get("stain_swapped") or {}).get("follows_donor")
    if not follows:
        return None
    blocks = {**follows["per_stage"], "all": follows["all"]}
    values = [(b["share"], *(b["ci95"] or (None, None))) for b in blocks.values()]
    return _grouped_png(list(blocks), {"prediction = the donor's stage": values},
                        {"prediction = the donor's stage": VARIANT_COLOURS["stain_swapped"]},
                        "share that follows the donor", title, line=0.25, line_label="a random answer")


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


def _numbers(*values: Any) -> None:
    """Raise TypeError unless every value is a number or null (what a figure can draw)."""
    for value in values:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"{value!r} is not a number")


def shape_problem(kind: str, data: Any) -> str | None:
    """Why an evidence file (``kind``: context, localisation, faithfulness, sanity or baselines) cannot be shown,
    or None.

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
        if c.get("stain_swapped") is not None:
            follows = c["stain_swapped"]["follows_donor"]
            missing = [s for s in CLASSES if s not in follows["per_stage"]]
            if missing:
                raise KeyError(f"no donor result for {', '.join(missing)}")
            for block in (*follows["per_stage"].values(), follows["all"]):
                _numbers(block["share"], *block["ci95"])
            donor_bars(c)

    def baselines(b: Any) -> None:
        if not isinstance(b.get("baselines"), Mapping) or not b["baselines"]:
            raise TypeError("'baselines' is not a non-empty object")
        for key, entry in b["baselines"].items():
            if not isinstance(entry.get("splits"), Mapping):
                raise TypeError(f"the splits of {key} are not an object")
        splits = {s for entry in b["baselines"].values() for s in entry["splits"]}
        for split in splits:
            for _, _, block in baseline_entries(b, split):
                missing = [s for s in CLASSES if s not in block["per_stage"]]
                if missing:
                    raise KeyError(f"no result for {', '.join(missing)} in {split}")
                pct_ci(block)
                float(block["n"])
            baseline_frame(b, split)
            baseline_sentence(b, split)
            for _, values in _baseline_series(b, split).values():
                for mean, low, high in values:
                    _numbers(mean, low, high)

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

    checks = {"context": context, "localisation": localisation, "faithfulness": faithfulness, "sanity": sanity,
              "baselines": baselines}
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
