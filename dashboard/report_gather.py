"""What a meeting deck shows, gathered from the run folder: ``Findings`` (what to show), ``gather`` (the data,
figures and warnings), and the table rows both documents (dashboard.report_pptx, dashboard.report_html) lay out.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from engine import modelcard, runs
from engine.metrics import HEADLINE_METRICS

from . import evidence, figures, loaders, paths, reviews, story
from .escape import mpl
from .paths import inside, relative

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


def auto_pick(rows: pd.DataFrame, n: int) -> list[str]:
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
              stage: str, warnings: list[str]) -> bytes | None:
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
            picture = _png_of(root, path, warnings)
            if picture is not None:  # a missing or damaged picture leaves its cell blank, named in the warnings
                ax.imshow(Image.open(io.BytesIO(picture)).convert("RGB"))
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
            shas = shas or auto_pick(candidates, findings.per_stage)
            stages_out[stage] = {
                "grid": _cam_grid(root, run, index, shas[: max(1, findings.per_stage)], methods, layer, stage,
                                  warnings),
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
    """A picture's bytes, read like every other file (regular, inside the outputs, size-limited), or None
    (missing or damaged: named in ``warnings``)."""
    if path is None:
        return None
    from PIL import Image

    try:
        data = paths.read_bytes(root, path)
    except (OSError, ValueError) as exc:
        warnings.append(f"{relative(root, path)} not shown: {exc}")
        return None
    try:
        Image.open(io.BytesIO(data)).verify()
    except Exception:  # PIL raises several kinds (OSError, SyntaxError, ...) for a damaged file
        warnings.append(f"{relative(root, path)} not shown: damaged, not a readable image (run `python -m engine "
                        "explain RUN` to write cams/ again)")
        return None
    return data


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
        rows += [[f"Maps ({where}): verdict", evidence.verdict_line(block["verdict"], icon=False)],
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

