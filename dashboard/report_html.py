"""The meeting deck as one self-contained HTML file (images base64-embedded, Plotly JS inlined: it works
offline). Text from the run folder goes in through ``html_text`` (dashboard.escape)."""

from __future__ import annotations

import base64
import re
import time
from typing import Any

from engine import runs

from . import evidence, figures, story
from .escape import html_text
from .report_gather import (
    CARD_TITLE,
    CONTEXT_TITLE,
    LOCALISATION_TITLE,
    NOTICE,
    PER_STAGE_HEADER,
    SMEAR_TITLE,
    STAIN_TITLE,
    Findings,
    baseline_metric_rows,
    evidence_rows,
    metric_rows,
    per_stage_rows,
    reviewed_lines,
)

# ----------------------------------------------------------------------------- HTML

FIGURE_PX = 780  # a figure beside a story slide's message, in the HTML deck

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;font-size:24px;color:#1f2a44;margin:0;
  background:#f6f7fb}
main{max-width:1500px;margin:0 auto;padding:24px 40px}
section{background:#fff;border-radius:12px;padding:28px 40px;margin:28px 0;box-shadow:0 1px 4px rgba(0,0,0,.08);
  display:flex;flex-direction:column;min-height:640px;box-sizing:border-box}
h1{font-size:52px;margin:8px 0 16px}h2{font-size:46px;margin:0 0 20px;line-height:1.15}
table{border-collapse:collapse;font-size:26px;margin:8px 0}
th,td{padding:8px 18px;border-bottom:1px solid #dde;text-align:left}th{background:#eef1f8}
img{max-width:100%}.row{display:flex;gap:36px;align-items:flex-start}
.fig{flex:0 0 auto}.say{flex:1;min-width:0}.say p{font-size:30px;margin:0 0 16px;line-height:1.25}
.big p{font-size:34px;margin:0 0 18px;line-height:1.25}
.big{max-width:1300px}
.say p.verdict,.big p.verdict{font-weight:700}
pre{font-size:26px;background:#eef1f8;padding:12px 18px;border-radius:8px;white-space:pre-wrap;word-break:break-all}
.muted{color:#667;font-size:22px}.lead{color:#445;font-size:30px;line-height:1.4}
.notice{margin-top:auto;padding-top:18px;color:#667;font-size:18px}
section.cams img{max-height:640px}
section.card{min-height:0;font-size:20px}section.card h1{font-size:34px}
section.card h2{font-size:28px;margin:24px 0 8px}
section.card table{font-size:17px}section.card th,section.card td{padding:4px 10px}
section.card code{font-size:17px;background:#eef1f8;padding:1px 4px;border-radius:4px}
"""


def _img(png: bytes, alt: str, width: str = "100%") -> str:
    return (f'<img alt="{html_text(alt)}" style="width:{width}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html_text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html_text(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _lines(lines: list[str], last_is_verdict: bool = False) -> str:
    return "".join(f"<p class='{'verdict' if last_is_verdict and i == len(lines) - 1 else ''}'>{html_text(line)}</p>"
                   for i, line in enumerate(lines))


def _slide(title: str, body: str, css: str = "") -> str:
    """One slide of the HTML deck: a section with its title, its body and the research-software notice."""
    return (f"<section class='slide {css}'><h2>{html_text(title)}</h2>{body}"
            f"<p class='notice'>{html_text(NOTICE)}</p></section>")


def _figure_slide(title: str, figure: str, lines: list[str], note: str = "", verdict: bool = True) -> str:
    """A figure on the left, the slide's message in a few large lines on the right (the last one its verdict)."""
    return _slide(title, f"<div class='row'><div class='fig'>{figure}</div><div class='say'>{_lines(lines, verdict)}"
                         "</div></div>" + (f"<p class='muted'>{html_text(note)}</p>" if note else ""))


def _inline(text: str) -> str:
    """One line of the model card's Markdown as HTML: backslash escapes, the entities for < > &, `code` and **bold**;
    all else is text."""
    out, i, bold = [], 0, False
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append(html_text(text[i + 1]))
            i += 2
        elif char == "&" and (entity := next((e for e in story.CARD_ENTITIES if text.startswith(e, i)), None)):
            out.append(entity)  # already HTML: the card writes < > & as these entities
            i += len(entity)
        elif char == "`" and "`" in text[i + 1:]:
            end = text.index("`", i + 1)
            out.append(f"<code>{html_text(text[i + 1:end])}</code>")
            i = end + 1
        elif text.startswith("**", i):
            out.append("</strong>" if bold else "<strong>")
            bold = not bold
            i += 2
        else:
            out.append(html_text(char))
            i += 1
    return "".join(out) + ("</strong>" if bold else "")


def card_html(card: str) -> str:
    """The model card (engine.modelcard's Markdown: headings, paragraphs, bullets, tables) as HTML. Every
    character of it is escaped as text; only the card's own structure becomes markup."""
    out: list[str] = []
    rows: list[list[str]] = []
    items: list[str] = []

    def flush() -> None:
        if rows:
            head, body = rows[0], [r for r in rows[2:]] if len(rows) > 1 else []
            out.append("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
            rows.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>")
            items.clear()

    for line in card.splitlines():
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            rows.append([_inline(c.strip()) for c in cells])
            continue
        if line.startswith("- "):
            if rows:
                flush()
            items.append(_inline(line[2:]))
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "".join(out)


def _plot(fig: Any, config: dict[str, Any], height: int = 470, width: int = FIGURE_PX) -> str:
    """A Plotly figure of a fixed size: drawn while the page is parsed, before the text beside it exists, a
    figure sized to its container would take the whole row."""
    # The legend above the plot, in a row: beside it, it took a third of the width.
    # Room on the right for the labels of reference lines (chance, a uniform map).
    # The slide's title names the figure (its own title would sit under the legend), and a value printed inside
    # a bar that cannot be read from the back of a room is left out: the axis and the text beside say it.
    fig.update_layout(font=dict(size=18), height=height, width=width, margin=dict(r=150), title_text="",
                      uniformtext=dict(minsize=14, mode="hide"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0, xanchor="left", title_text=""))
    return fig.to_html(full_html=False, include_plotlyjs=False, config={**config, "responsive": False})


def html_deck(data: dict[str, Any], findings: Findings) -> str:
    """The HTML deck: the same story as the PPTX, in the same order, each slide a section; the whole model card
    as the last appendix."""
    m, cfg, split = data["metrics"], data["config"], findings.split
    plot_config = {"displaylogo": False, "displayModeBar": False, "responsive": True}
    parts = [f"<section class='slide'><h1>{html_text(findings.title)}</h1>"
             f"<p><strong>{html_text(NOTICE)}</strong></p>"
             f"<p class='lead'>Run {html_text(data['label'])} · model {html_text(cfg.get('model', '?'))} · "
             f"{html_text(cfg.get('image_size', '?'))} px · split {html_text(split)} "
             f"(n = {html_text(m.get('n', '?'))}) · generated {time.strftime('%Y-%m-%d %H:%M')}</p></section>"]

    # (a) What the headline accuracy means.
    title, lines = story.headline(m, cfg, split)
    parts.append(_slide(title, f"<div class='big'>{_lines(lines)}</div>"))
    lines, command = story.smear_lines(data["smear"], m.get("accuracy"))
    parts.append(_slide(SMEAR_TITLE, f"<div class='big'>{_lines(lines)}"
                        + (f"<pre>{html_text(command)}</pre>" if command else "") + "</div>"))
    baselines = data.get("baselines")
    if baselines and evidence.baseline_entries(baselines, split):
        parts.append(_figure_slide(f"Could colour alone name the stage? ({split})",
                                   _plot(evidence.baseline_bars(baselines, split), plot_config),
                                   story.colour_lines(baselines, split), evidence.baseline_sentence(baselines, split)))

    # (b) What the model reads.
    context = data.get("context")
    if findings.evidence and context:
        parts.append(_figure_slide(CONTEXT_TITLE, _plot(evidence.context_bars(context), plot_config),
                                   story.reads_lines(context), evidence.context_sentence(context)))
        donor = evidence.donor_bars(context)
        if donor is not None:
            parts.append(_figure_slide(STAIN_TITLE, _plot(donor, plot_config), story.stain_lines(context)))

    # (c) Where its maps point.
    located = data.get("located")
    if findings.evidence and located:
        parts.append(_figure_slide(LOCALISATION_TITLE,
                                   _plot(evidence.localisation_bars(located, "concentration"), plot_config),
                                   story.map_lines(located)))
    for stage, info in data["stages"].items():
        body = f"<p class='muted'>{html_text(info['errors'])} of {html_text(info['n'])} images misclassified · " \
               f"layer {html_text(data['layer'])}</p><div class='row'>"
        # At most a slide's height: the panel grows with the images per stage.
        body += f"<div style='flex:0 1 auto'>{_img(info['grid'], f'Grad-CAM panel {stage}', 'auto')}</div>" \
            if info["grid"] else "<p>No Grad-CAM maps for this stage.</p>"
        if info["mean_map"]:
            body += f"<div style='flex:0 0 360px'>{_img(info['mean_map'], f'mean map {stage}')}" \
                    f"<p class='muted'>mean map, {html_text(stage)}</p></div>"
        parts.append(_slide(f"Grad-CAM: {stage}", body + "</div>", "cams"))
    faith, summary = data["faith"], data["faith_summary"]
    if findings.faithfulness and faith is not None and not faith.empty and summary:
        metric = (summary.get("metrics") or [faith["metric"].iloc[0]])[0]
        fig = figures.faithfulness_bars({**summary, "methods": {k: v for k, v in summary["methods"].items()
                                                               if k in data["methods"]}}, metric)
        rows = [[s, " > ".join(order)] for s, order in (summary.get("ranking") or {}).items()]
        parts.append(_slide("Faithfulness (ROAD)", _plot(fig, plot_config, 420, 1300)
                            + _table(["Stage", "Methods, best first"], rows)))

    # (d) Which model; the model card's key lines.
    lines, note = story.choice_lines(data["choice"], split)
    parts.append(_slide(story.choice_title(data["choice"]), f"<div class='big'>{_lines(lines)}</div>"
                        + (f"<p class='muted'>{html_text(note)}</p>" if note else "")))
    parts.append(_slide(CARD_TITLE, f"<div class='big'>{_lines(data['card_lines'])}</div>"
                        "<p class='muted'>The whole card is the last appendix of this report, and "
                        f"{html_text(runs.MODEL_CARD)} in the run folder.</p>"))

    # Appendix.
    cm = figures.confusion_matrix(m["confusion_matrix"], data["classes"],
                                  normalized=m.get("confusion_matrix_normalized"),
                                  mode="normalized" if findings.normalized else "counts", height=560)
    cm.update_layout(font=dict(size=20))
    parts.append(_slide("Appendix: metrics with 95% intervals",
                        _table(["Metric", "Value", "95% CI"],
                               [list(r) for r in metric_rows(m) + baseline_metric_rows(baselines, split)])
                        + "<p class='muted'>The network's intervals are percentile bootstraps over images; the "
                          "colour-only models' are Wilson intervals.</p>"
                        + _table(PER_STAGE_HEADER, per_stage_rows(m))))
    parts.append(_slide("Appendix: confusion matrix",
                        cm.to_html(full_html=False, include_plotlyjs=False, config=plot_config,
                                   default_width="720px")))
    if baselines and evidence.baseline_entries(baselines, split):
        parts.append(_slide("Appendix: how the colour-only models were made",
                            _table(["Model", "How it was made"],
                                   [[r["model"], r["how it was made"]] for r in
                                    evidence.baseline_frame(baselines, split).to_dict("records")])))
    if findings.evidence and (located or context):
        for stage in findings.stages:
            rows = evidence_rows(data, stage)
            if rows:
                parts.append(_slide(f"Appendix: evidence, {stage}", _table(["Evidence", "Value [95% CI]"], rows)))
    reviewed = data.get("reviewed") or []
    if reviewed:
        rows = []
        for entry in reviewed:
            pictures = "".join(_img(entry[k], f"{k} {entry['path']}", "160px") for k in ("image", "map") if entry[k])
            lines = "".join(f"<div>{html_text(line)}</div>" for line in reviewed_lines(entry))
            rows.append(f"<tr><td>{pictures or html_text('(no map)')}</td><td>{lines}</td></tr>")
        parts.append(_slide("Reviewed images", "<p class='muted'>Marked in the dashboard (the run's "
                            f"{html_text(runs.REVIEWS)}): input and map, labels and note.</p>"
                            f"<table><tbody>{''.join(rows)}</tbody></table>"))
    parts.append(f"<section class='card'><p class='muted'>Appendix: the model card ({html_text(runs.MODEL_CARD)})"
                 f"</p>{card_html(data['card'])}<p class='notice'>{html_text(NOTICE)}</p></section>")
    from plotly.offline import get_plotlyjs

    # plotly.js inlined once, in the head: the deck opens offline, and every figure below draws with it.
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html_text(findings.title)}</title><style>{CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body><main>"
            + "".join(parts) + "</main></body></html>")

