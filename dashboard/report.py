"""Meeting decks from chosen findings: a PPTX (python-pptx, matplotlib images) and a self-contained
HTML report (images base64-embedded, Plotly JS inlined: it works offline).

``Findings`` names what to show; ``build(root, findings)`` gathers it from the run folder and
returns both documents; ``save`` writes them to ``OUTPUTS/exports/``. Text from the run folder
(review notes included) goes into the HTML through ``html_text``, into the PPTX through ``plain``
and into matplotlib figures through ``mpl`` (dashboard.escape).
"""

from __future__ import annotations

import base64
import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from engine import modelcard, runs
from engine.metrics import HEADLINE_METRICS

from . import evidence, figures, loaders, paths, reviews, story
from .escape import html_text, mpl, plain
from .paths import inside, relative

SLIDE_W_IN, SLIDE_H_IN = 13.333, 7.5  # 16:9
TITLE_PT, BODY_PT, TABLE_PT = 36, 24, 20
SMALL_TITLE_PT, TITLE_CHARS = 30, 44  # a title longer than fits one line at 36 pt
SAY_PT, CARD_PT, CODE_PT = 28, 22, 20  # a story slide's message; the model card's key lines; a command
BESIDE_PT, NOTE_PT = 26, 18  # a message beside a figure; a note under a slide's message
FIGURE_TOP_IN, FIGURE_H_IN, SAY_LEFT_IN = 1.4, 3.9, 7.4  # figure left (6.4 x 3.6 in, shown 6.9 in wide), message right
# The story's slides whose titles do not depend on the numbers (dashboard.story says what each shows).
SMEAR_TITLE = "On smears never seen in training"
CONTEXT_TITLE = "Cells or context: accuracy without the leukocytes"
STAIN_TITLE = "Stain probes: does the answer follow the stain?"
LOCALISATION_TITLE = "Do the maps point at the leukocytes?"
CARD_TITLE = "Model card: key lines"
NOTICE = ("Research software, not a medical device: Grad-CAM maps show where the model looked, "
          "they do not replace expert review.")
MAX_REVIEWED = 12  # reviewed images in a deck: four slides of three
REVIEWED_PER_SLIDE = 3


@dataclass
class Findings:
    run: str  # run folder (absolute or relative to the outputs folder)
    split: str = "test"
    stages: list[str] = field(default_factory=lambda: list(loaders.CLASSES))
    methods: list[str] = field(default_factory=list)  # empty: every method of cams/
    layer: str | None = None  # None: the layer explain listed first
    images: dict[str, list[str]] = field(default_factory=dict)  # stage -> sha256 list; missing: automatic pick
    per_stage: int = 4
    title: str = "ALL stage classifier: findings"
    normalized: bool = True
    faithfulness: bool = True
    evidence: bool = True  # localisation, sanity check and context reliance, one slide per stage
    reviewed: bool = False  # the images marked in the gallery or the cell view (reviews.json), with notes


@dataclass
class Deck:
    pptx: bytes
    html: str
    slides: list[str]
    warnings: list[str]


# ----------------------------------------------------------------------------- gathering


def _auto_pick(rows: pd.DataFrame, n: int) -> list[str]:
    """Misclassified images first (most confident errors), then the most confident correct ones."""
    wrong = rows[rows["correct"] == 0].sort_values("confidence", ascending=False)["sha256"].tolist()
    right = rows[rows["correct"] == 1].sort_values("confidence", ascending=False)["sha256"].tolist()
    half = min(len(wrong), n // 2)
    picked = wrong[:half] + right[: n - half]
    return (picked + [s for s in wrong[half:] if s not in picked])[:n]


def stage_candidates(index: pd.DataFrame, stage: str, layer: str) -> pd.DataFrame:
    rows = index[(index["true"] == stage) & (index["layer"] == layer) & (index["target"] == "pred")]
    return rows.drop_duplicates("sha256")


def _cam_grid(root: Path, run: Path, index: pd.DataFrame, shas: list[str], methods: list[str], layer: str,
              stage: str) -> bytes | None:
    """Rows = images; columns = input, then each method's map for the predicted stage (large labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = []
    for sha in shas:
        cells = index[(index["sha256"] == sha) & (index["layer"] == layer) & (index["target"] == "pred")]
        if cells.empty:
            continue
        first = cells.iloc[0]
        images = [("input", loaders.cam_path(root, run, first["image"]))]
        for method in methods:
            hit = cells[cells["method"] == method]
            images.append((method, loaders.cam_path(root, run, hit.iloc[0]["overlay"]) if len(hit) else None))
        verdict = "✓" if first["true"] == first["pred"] else "✗"
        rows.append((f"{verdict} pred {mpl(first['pred'])} ({float(first['confidence']):.2f})", images))
    if not rows:
        return None
    ncols = 1 + len(methods)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.6 * ncols, 2.75 * len(rows)), dpi=110, squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c, (name, path) in enumerate(images):
            ax = axes[r][c]
            ax.axis("off")
            if path is not None:
                ax.imshow(Image.open(path).convert("RGB"))
            if r == 0:
                ax.set_title(mpl(name), fontsize=16)
            if c == 0:
                ax.text(0.0, -0.04, label, transform=ax.transAxes, fontsize=13, va="top",
                        color="#b00020" if label.startswith("✗") else "#1b5e20")
    fig.suptitle(f"true stage: {stage}", fontsize=18)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def gather(root: Path, findings: Findings) -> dict[str, Any]:
    """Everything the two documents show, read from the run folder (inside the outputs folder)."""
    run = inside(root, findings.run)
    warnings: list[str] = []
    metrics = loaders.metrics(root, run)
    if findings.split not in metrics["splits"]:
        raise loaders.LoadError(f"{relative(root, run)} has no evaluated {findings.split} split")
    m = metrics["splits"][findings.split]
    config: dict[str, Any] = {}
    try:
        config = loaders.run_config(root, run)
    except loaders.LoadError as exc:
        warnings.append(str(exc))
    stages_out: dict[str, dict[str, Any]] = {}
    faith = None
    try:
        index = loaders.cams_index(root, run, warnings)
    except loaders.LoadError as exc:
        index = None
        warnings.append(f"no Grad-CAM maps: {exc}")
    if index is not None:
        layers = sorted(index["layer"].unique())
        # Default: the layer explain listed first (index.csv's first row), the one it scored.
        layer = findings.layer if findings.layer in layers else str(index["layer"].iloc[0])
        methods = [x for x in findings.methods if x in set(index["method"])] or sorted(index["method"].unique())
        for stage in findings.stages:
            if stage not in loaders.CLASSES:
                continue
            candidates = stage_candidates(index, stage, layer)
            files = index[(index["true"] == stage) & (index["layer"] == layer)
                          & (index["target"] == "pred")].drop_duplicates("path")
            shas = [s for s in findings.images.get(stage, []) if s in set(candidates["sha256"])]
            shas = shas or _auto_pick(candidates, findings.per_stage)
            stages_out[stage] = {
                "grid": _cam_grid(root, run, index, shas[: max(1, findings.per_stage)], methods, layer, stage),
                "mean_map": _png_of(root, loaders.stage_file(root, run, stage, runs.STAGE_MEAN_MAP), warnings),
                # Count files, as the metrics do: byte-identical copies are one candidate but several images.
                "n": len(files), "errors": int((files["correct"] == 0).sum()),
            }
        if findings.faithfulness:
            try:
                faith_summary = loaders.faithfulness(root, run)
                faith = figures.faithfulness_frame(faith_summary)
                faith = faith[faith["method"].isin(methods)]
            except loaders.LoadError as exc:
                warnings.append(f"no faithfulness summary: {exc}")
                faith, faith_summary = None, None
        else:
            faith_summary = None
    else:
        layer, methods, faith_summary = None, [], None
    found = loaders.evidence(root, run)
    # The colour-only baselines go beside the network's accuracy in every deck; the rest only with the evidence.
    warnings += found["problems"] if findings.evidence else (
        [found["problem_of"]["baselines"]] if "baselines" in found["problem_of"] else [])
    if found["baselines"] is None and "baselines" not in found["problem_of"]:
        warnings.append(f"{relative(root, run / runs.BASELINES)} not found: the deck shows the network's accuracy "
                        "without what a colour-only model scores (evaluate the run again, with leukocyte masks)")
    if not findings.evidence:
        found = {"baselines": found["baselines"]}
    localised = found.get("localisation")
    # The best-localising pair among the deck's methods (localisation.json's ranking), else the best of all.
    located = None
    if localised and localised.get("ranking"):
        ranking = localised["ranking"]
        top = next((r for r in ranking if r["method"] in methods), ranking[0])
        located = evidence.find_result(localised, top["method"], top["layer"])
    reviewed = _reviewed(root, run, index, methods, layer, warnings) if findings.reviewed else []
    card_found, card_problems = loaders.card_files(root, run)
    try:
        card, _ = loaders.model_card(root, run)
    except loaders.LoadError as exc:
        warnings.append(f"{exc}: the deck shows the card rendered from the run's files")
        card = modelcard.compose(card_found, card_problems, run.name)
    return {"run": run, "label": relative(root, run), "metrics": m, "split": findings.split,
            "card": card, "card_lines": story.card_lines(card_found),
            "smear": story.smear_results(root, run, config, findings.split),
            "choice": story.choice(root, run, config, findings.split),
            "classes": metrics.get("classes", loaders.CLASSES),
            "config": config, "stages": stages_out, "faith": faith, "faith_summary": faith_summary,
            "methods": methods, "layer": layer, "warnings": warnings,
            "checkpoint_epoch": metrics.get("checkpoint_epoch"), "located": located,
            "context": found.get("context"), "sanity": found.get("sanity"), "reviewed": reviewed,
            "baselines": found.get("baselines")}


def _reviewed(root: Path, run: Path, index: pd.DataFrame | None, methods: list[str], layer: str | None,
              warnings: list[str]) -> list[dict[str, Any]]:
    """The run's marked images for the deck: suspected label errors first, then artefacts, then good
    examples (most recently marked first within each), each with its input and map where explain made them."""
    try:
        marks = reviews.load(root, run)
    except reviews.ReviewError as exc:
        warnings.append(f"no reviewed images: {exc}")
        return []
    try:
        known = loaders.predictions(root, run).drop_duplicates("sha256").set_index("sha256")
    except loaders.LoadError:
        known = None
    order = list(reviews.LABELS)
    ranked = sorted(marks.items(), key=lambda item: item[1].get("updated_at", ""), reverse=True)
    ranked.sort(key=lambda item: min((order.index(x) for x in item[1]["labels"]), default=len(order)))
    if len(ranked) > MAX_REVIEWED:
        warnings.append(f"{len(ranked)} reviewed images: the deck shows the first {MAX_REVIEWED} (suspected label "
                        "errors first)")
    out = []
    for sha, mark in ranked[:MAX_REVIEWED]:
        entry: dict[str, Any] = {"sha256": sha, "path": mark.get("path") or sha[:16], "note": mark.get("note", ""),
                                 "labels": [reviews.LABELS[x] for x in mark["labels"]], "image": None, "map": None,
                                 "true": None, "pred": None, "confidence": None, "split": None}
        if known is not None and sha in known.index:
            row = known.loc[sha]
            entry.update(true=row["true"], pred=row["pred"], confidence=float(row["confidence"]), split=row["split"])
        if index is not None and layer is not None:
            rows = index[(index["sha256"] == sha) & (index["layer"] == layer) & (index["target"] == "pred")]
            if len(rows):
                hit = rows[rows["method"] == methods[0]] if methods else rows
                first = (hit if len(hit) else rows).iloc[0]
                entry["image"] = _png_of(root, loaders.cam_path(root, run, first["image"]), warnings)
                entry["map"] = _png_of(root, loaders.cam_path(root, run, first["overlay"]), warnings)
                entry["method"] = first["method"]
        out.append(entry)
    return out


def reviewed_lines(entry: dict[str, Any]) -> list[str]:
    """A reviewed image's text in a deck (plain: each document escapes it for itself)."""
    lines = [str(entry["path"]).rsplit("/", 1)[-1]]
    if entry["true"] is not None:
        lines.append(f"true {entry['true']} → predicted {entry['pred']} ({entry['confidence']:.2f}, "
                     f"{entry['split']})")
    lines.append("Marked: " + ", ".join(entry["labels"]) if entry["labels"] else "Marked: note only")
    if entry["note"]:
        lines.append(f"Note: {entry['note']}")
    return lines


def _png_of(root: Path, path: Path | None, warnings: list[str]) -> bytes | None:
    """A picture's bytes, read like every other file (regular, inside the outputs, size-limited), or None."""
    if path is None:
        return None
    try:
        return paths.read_bytes(root, path)
    except (OSError, ValueError) as exc:
        warnings.append(f"{relative(root, path)} not shown: {exc}")
        return None


def evidence_rows(data: dict[str, Any], stage: str, colour: bool = True) -> list[list[str]]:
    """One stage's evidence as table rows: localisation against baselines, sanity, context reliance and (with
    ``colour``) the headline colour-only models' accuracy on the stage."""
    def stat(block: dict[str, Any] | None, digits: int = 2) -> str:
        if not block or block.get("mean") is None:
            return "n/a"
        low, high = block["ci95"]
        return f"{block['mean']:.{digits}f}" + (f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None else "")

    rows: list[list[str]] = []
    located = data.get("located")
    if located and stage in located["per_stage"]:
        block = located["per_stage"][stage]
        where = f"{located['method']} at {located['layer']}"
        rows += [[f"Maps ({where}): verdict", evidence.verdict_line(block["verdict"])],
                 ["Concentration on leukocytes (1 = uniform)", stat(block["map"]["concentration"])],
                 ["   centred blob / another image's map", f"{stat(block['centre']['concentration'])} / "
                                                           f"{stat(block['shuffled']['concentration'])}"],
                 ["Pointing game (map maximum on a leukocyte)", stat(block["map"]["pointing"])],
                 ["   centred blob", stat(block["centre"]["pointing"])]]
    sanity = data.get("sanity") or {}
    if located and isinstance(sanity.get(located["method"]), dict):
        rows.append(["Sanity check (weights randomised)",
                     "passed" if sanity[located["method"]].get("passed") else "failed"])
    context = data.get("context")
    if context:
        acc = {v: b["per_stage"].get(stage, {}) for v, b in context["variants"].items()}
        rows += [[f"Accuracy {evidence.VARIANTS[v]}", f"{a['accuracy']:.0%} (n = {a['n']})"]
                 for v, a in acc.items() if a.get("accuracy") is not None]
        follows = ((context.get("stain_swapped") or {}).get("follows_donor") or {}).get("per_stage", {}).get(stage)
        if follows and follows.get("share") is not None:
            low, high = follows["ci95"]
            rows.append(["Answer = the stain donor's stage", f"{follows['share']:.0%} [{low:.0%}, {high:.0%}] "
                                                             f"(n = {follows['n']})"])
    baselines = data.get("baselines") if colour else None
    if baselines:
        for key, words, block in evidence.baseline_entries(baselines, data.get("split", "test"), headline_only=True):
            if key != evidence.NETWORK and block["per_stage"].get(stage, {}).get("accuracy") is not None:
                rows.append([f"Accuracy, {words}", evidence.pct_ci(block["per_stage"][stage]).replace("95% CI ", "")])
    return rows


def baseline_metric_rows(baselines: dict[str, Any] | None, split: str) -> list[tuple[str, str, str]]:
    """The headline colour-only models as rows of the metrics table (accuracy and its Wilson 95% interval)."""
    if not baselines:
        return []
    rows = []
    for key, words, block in evidence.baseline_entries(baselines, split, headline_only=True):
        if key == evidence.NETWORK or block.get("accuracy") is None:
            continue
        low, high = block.get("ci95") or (None, None)
        rows.append((f"Accuracy of {words} (n = {block['n']})", f"{block['accuracy']:.3f}",
                     f"{low:.3f} – {high:.3f}" if low is not None and high is not None else ""))
    return rows


def metric_rows(m: dict[str, Any]) -> list[tuple[str, str, str]]:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    def ci(v: Any) -> str:
        return f"{v[0]:.3f} – {v[1]:.3f}" if isinstance(v, list) and len(v) == 2 and None not in v else ""

    return [(h.label, f(h.value(m)), ci(h.interval(m))) for h in HEADLINE_METRICS]


def per_stage_rows(m: dict[str, Any]) -> list[list[str]]:
    out = []
    for cls, v in (m.get("per_class") or {}).items():
        out.append([cls, *(("n/a" if v.get(k) is None else f"{v[k]:.3f}") for k in
                           ("precision", "recall", "specificity", "f1", "roc_auc")), str(v.get("support", ""))])
    return out


PER_STAGE_HEADER = ["Stage", "Precision", "Recall", "Specificity", "F1", "ROC-AUC", "n"]


# ----------------------------------------------------------------------------- PPTX


def _pptx(data: dict[str, Any], findings: Findings) -> tuple[bytes, list[str]]:
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
    fig.update_layout(font=dict(size=18), height=height, width=width, margin=dict(r=150),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0, xanchor="left", title_text=""))
    return fig.to_html(full_html=False, include_plotlyjs=False, config={**config, "responsive": False})


def _html(data: dict[str, Any], findings: Findings) -> str:
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


# ----------------------------------------------------------------------------- entry points


def build(root: Path | str, findings: Findings) -> Deck:
    root = Path(root).resolve()
    data = gather(root, findings)
    pptx, slides = _pptx(data, findings)
    return Deck(pptx=pptx, html=_html(data, findings), slides=slides, warnings=data["warnings"])


def save(root: Path | str, deck: Deck, name: str) -> dict[str, Path]:
    """Write the deck to OUTPUTS/exports/<stamp>-<name>.{pptx,html}; the only files the dashboard writes."""
    root = Path(root).resolve()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:60] or "deck"
    folder = inside(root, loaders.EXPORTS)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"
    paths = {"pptx": folder / f"{stem}.pptx", "html": folder / f"{stem}.html"}
    paths["pptx"].write_bytes(deck.pptx)
    paths["html"].write_text(deck.html, encoding="utf-8")
    return paths
