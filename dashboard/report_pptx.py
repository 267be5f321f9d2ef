"""The meeting deck as a PPTX (python-pptx, matplotlib images): the story's slides, then the appendix."""

from __future__ import annotations

import io
import time
from typing import Any

from engine import runs

from . import evidence, figures, story
from .escape import plain
from .report_gather import (
    CARD_TITLE,
    CONTEXT_TITLE,
    LOCALISATION_TITLE,
    NOTICE,
    PER_STAGE_HEADER,
    REVIEWED_PER_SLIDE,
    SMEAR_TITLE,
    STAIN_TITLE,
    Findings,
    baseline_metric_rows,
    evidence_rows,
    metric_rows,
    per_stage_rows,
    reviewed_lines,
)

SLIDE_W_IN, SLIDE_H_IN = 13.333, 7.5  # 16:9
TITLE_PT, BODY_PT, TABLE_PT = 36, 24, 20
SMALL_TITLE_PT, TITLE_CHARS = 30, 44  # a title longer than fits one line at 36 pt
SAY_PT, CARD_PT, CODE_PT = 28, 22, 20  # a story slide's message; the model card's key lines; a command
BESIDE_PT, NOTE_PT = 26, 18  # a message beside a figure; a note under a slide's message
FIGURE_TOP_IN, FIGURE_H_IN, SAY_LEFT_IN = 1.4, 3.9, 7.4  # figure left (6.4 x 3.6 in, shown 6.9 in wide), message right

# ----------------------------------------------------------------------------- PPTX


def pptx_deck(data: dict[str, Any], findings: Findings) -> tuple[bytes, list[str]]:
    """The slides in the story's order (dashboard.story), then the appendix."""
    from pptx import Presentation
    from pptx.dml.color import RGBColor
    from pptx.util import Inches, Pt

    prs = Presentation()
    prs.slide_width, prs.slide_height = Inches(SLIDE_W_IN), Inches(SLIDE_H_IN)
    blank = prs.slide_layouts[6]
    titles: list[str] = []

    def slide(title: str):
        s = prs.slides.add_slide(blank)
        box = s.shapes.add_textbox(Inches(0.5), Inches(0.3), Inches(SLIDE_W_IN - 1), Inches(1.0))
        box.text_frame.word_wrap = True
        title = plain(title)  # what PPTX (XML) can hold: no control characters or lone surrogates
        p = box.text_frame.paragraphs[0]
        p.text = title
        # One line at 36 pt holds about TITLE_CHARS characters; a longer title gets a smaller size, not two lines.
        p.font.size, p.font.bold = Pt(TITLE_PT if len(title) <= TITLE_CHARS else SMALL_TITLE_PT), True
        p.font.color.rgb = RGBColor(0x1F, 0x2A, 0x44)
        footer = s.shapes.add_textbox(Inches(0.5), Inches(SLIDE_H_IN - 0.5), Inches(SLIDE_W_IN - 1), Inches(0.4))
        note = footer.text_frame.paragraphs[0]
        note.text = NOTICE
        note.font.size = Pt(12)
        note.font.color.rgb = RGBColor(0x66, 0x66, 0x77)
        titles.append(title)
        return s

    def text(s, lines: list[str], left: float, top: float, width: float, size: int = BODY_PT,
             mono: set[int] | None = None) -> None:
        box = s.shapes.add_textbox(Inches(left), Inches(top), Inches(width), Inches(0.6 * len(lines) + 0.3))
        frame = box.text_frame
        frame.word_wrap = True
        for i, line in enumerate(lines):
            p = frame.paragraphs[0] if i == 0 else frame.add_paragraph()
            p.text = plain(line)
            p.font.size = Pt(size if i not in (mono or ()) else min(size, CODE_PT))
            p.space_after = Pt(size * 0.45)
            if i in (mono or ()):
                p.font.name = "Courier New"

    def table(s, header: list[str], rows: list[list[str]], left: float, top: float, width: float,
              size: int = TABLE_PT, widths: list[float] | None = None, row_height: float = 0.55) -> None:
        """A table; ``widths`` (inches) where the first column's labels need more room than an even share."""
        shape = s.shapes.add_table(len(rows) + 1, len(header), Inches(left), Inches(top), Inches(width),
                                   Inches(row_height * (len(rows) + 1)))
        for c, column_width in enumerate(widths or []):
            shape.table.columns[c].width = Inches(column_width)
        for c, name in enumerate(header):
            shape.table.cell(0, c).text = plain(name)
        for r, row in enumerate(rows, start=1):
            for c, value in enumerate(row):
                shape.table.cell(r, c).text = plain(value)
        for r in range(len(rows) + 1):
            for c in range(len(header)):
                for p in shape.table.cell(r, c).text_frame.paragraphs:
                    p.font.size = Pt(size)

    def picture(s, png: bytes, left: float, top: float, height: float) -> None:
        s.shapes.add_picture(io.BytesIO(png), Inches(left), Inches(top), height=Inches(height))

    def figure_slide(title: str, png: bytes | None, lines: list[str]) -> None:
        """A figure on the left, the slide's message in a few large lines on the right."""
        s = slide(title)
        if png is not None:
            picture(s, png, 0.3, FIGURE_TOP_IN, FIGURE_H_IN)
        text(s, lines, SAY_LEFT_IN, FIGURE_TOP_IN - 0.1, SLIDE_W_IN - SAY_LEFT_IN - 0.3, size=BESIDE_PT)

    m, cfg, split = data["metrics"], data["config"], findings.split
    s = slide(findings.title)
    text(s, [f"Run: {data['label']}",
             f"Model: {cfg.get('model', '?')} · {cfg.get('image_size', '?')} px · preset {cfg.get('preset', '?')}",
             f"Split: {split} (n = {m.get('n', '?')}) · checkpoint epoch {data.get('checkpoint_epoch', '?')}",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')}"], 0.7, 1.6, 12)

    # (a) What the headline accuracy means: the split, unseen smears, the colour baseline.
    title, lines = story.headline(m, cfg, split)
    s = slide(title)
    text(s, lines, 0.7, 1.5, 11.8, size=SAY_PT)
    lines, command = story.smear_lines(data["smear"], m.get("accuracy"))
    s = slide(SMEAR_TITLE)
    text(s, [*lines, *([command] if command else [])], 0.7, 1.5, 11.8, size=SAY_PT,
         mono={len(lines)} if command else None)
    baselines = data.get("baselines")
    if baseline_metric_rows(baselines, split):
        figure_slide(f"Could colour alone name the stage? ({split})", evidence.png_baselines(baselines, split),
                     story.colour_lines(baselines, split))

    # (b) What the model reads: the probes.
    context = data.get("context")
    if findings.evidence and context:
        figure_slide(CONTEXT_TITLE, evidence.png_context(context), story.reads_lines(context))
        if evidence.stain_sentence(context) is not None:
            figure_slide(STAIN_TITLE, evidence.png_donor(context), story.stain_lines(context))

    # (c) Where its maps point: localisation per stage, then examples and faithfulness.
    located = data.get("located")
    if findings.evidence and located:
        figure_slide(LOCALISATION_TITLE, evidence.png_localisation(located), story.map_lines(located))
    for stage, info in data["stages"].items():
        s = slide(f"Grad-CAM: {stage} ({info['errors']} of {info['n']} misclassified)")
        if info["grid"]:
            picture(s, info["grid"], 0.5, 1.2, 5.7)
        if info["mean_map"]:
            picture(s, info["mean_map"], 9.3, 1.6, 3.4)
            text(s, [f"mean map, {stage}"], 9.3, 5.1, 3.6, size=18)
        if not info["grid"]:
            text(s, ["No Grad-CAM maps for this stage."], 0.7, 1.6, 8)
    faith = data["faith"]
    if findings.faithfulness and faith is not None and not faith.empty:
        metric = (data["faith_summary"] or {}).get("metrics", [None])[0] or faith["metric"].iloc[0]
        part = faith[faith["metric"] == metric]
        rows = []
        for stage in ("all", *findings.stages):
            stage_rows = part[part["stage"] == stage].sort_values("rank")
            if len(stage_rows):
                rows.append([stage, " > ".join(f"{r.method} ({r.mean:.3f})" for r in stage_rows.itertuples())])
        s = slide(f"Faithfulness ({metric}), ranked per stage")
        table(s, ["Stage", "Methods, best first (mean)"], rows, 0.5, 1.4, 12.3, size=20)

    # (d) Which model, then the model card's key lines.
    s = slide(story.choice_title(data["choice"]))
    lines, note = story.choice_lines(data["choice"], split)
    text(s, lines, 0.7, 1.5, 11.8, size=SAY_PT)
    if note:
        text(s, [note], 0.7, 1.5 + 0.75 * len(lines) + 0.4, 11.8, size=NOTE_PT)
    s = slide(CARD_TITLE)
    text(s, [*data["card_lines"], f"The whole card: {runs.MODEL_CARD} in the run folder (Run page: download)."],
         0.7, 1.4, 11.8, size=CARD_PT)

    # Appendix: the details behind the story.
    s = slide("Appendix")
    text(s, ["The details behind the story: all metrics, per stage, the confusion matrix",
             "The evidence of each stage" + (", the reviewed images" if data.get("reviewed") else "")],
         0.7, 1.5, 11.8, size=SAY_PT)
    shortcut = baseline_metric_rows(baselines, split)
    s = slide(f"Metrics ({split}, 95% intervals)")
    table(s, ["Metric", "Value", "95% CI"], [list(r) for r in metric_rows(m) + shortcut], 0.7, 1.3, 11.9,
          size=20 if shortcut else 24, widths=[6.6, 2.0, 3.3], row_height=0.5)
    s = slide("Per stage")
    table(s, PER_STAGE_HEADER, per_stage_rows(m), 0.5, 1.4, 12.3, size=22)
    s = slide(f"Confusion matrix ({split})")
    png = figures.png_confusion_matrix(m["confusion_matrix"], data["classes"], normalized=findings.normalized)
    picture(s, png, 3.3, 1.2, 5.7)
    if findings.evidence and (located or context):
        for stage in findings.stages:
            # The colour-only models per stage are on the colour slide's figure: without them the table fits.
            rows = evidence_rows(data, stage, colour=False)
            if rows:
                s = slide(f"Evidence: {stage}")
                # Up to 12 rows: at 16 pt and 0.38 in a row they end above the notice.
                table(s, ["", "Value [95% CI]"], rows, 0.5, 1.2, 12.3, size=16, widths=[6.2, 6.1], row_height=0.38)

    reviewed = data.get("reviewed") or []
    for start in range(0, len(reviewed), REVIEWED_PER_SLIDE):
        part = reviewed[start:start + REVIEWED_PER_SLIDE]
        pages = (len(reviewed) + REVIEWED_PER_SLIDE - 1) // REVIEWED_PER_SLIDE
        s = slide(f"Reviewed images ({start // REVIEWED_PER_SLIDE + 1} of {pages})" if pages > 1
                  else "Reviewed images")
        for i, entry in enumerate(part):
            left = 0.5 + i * 4.2
            if entry["image"]:
                picture(s, entry["image"], left, 1.3, 1.95)
            if entry["map"]:
                picture(s, entry["map"], left + 2.05, 1.3, 1.95)
            text(s, reviewed_lines(entry), left, 3.35, 4.0, size=14)

    buffer = io.BytesIO()
    prs.save(buffer)
    return buffer.getvalue(), titles

