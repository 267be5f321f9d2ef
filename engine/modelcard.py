"""The model card: ``MODEL_CARD.md`` in a run folder, generated from that folder's own files.

``render(run_dir)`` reads the run's JSON files (``CARD_FILES``: config, env, COMPLETE, metrics,
baselines, context, and ``cams/`` localisation, faithfulness, sanity and meta) and composes the card
from small pure pieces, each taking parsed files and returning Markdown lines, so the card says only
what the files say, in the same words every time. ``evaluate`` writes it, ``explain`` writes it again
(with the localisation), and ``python -m engine card RUN`` regenerates it. A file that is missing
leaves its section saying which command writes it; a file that cannot be read says so; nothing
here raises on a run folder.

Standard library only (no torch, no NumPy): the dashboard renders the card of a run that has none
through ``compose``, with the files read by its own confined reader.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import runs
from .config import CELLS_GRID
from .runs import BASELINE_WORDS, CLASSES, CONTEXT_VARIANTS, HEADLINE_BASELINES, LOCALISATION_VERDICTS

# The files the card is made from, by key, relative to the run folder.
CARD_FILES = {
    "config": runs.CONFIG, "env": runs.ENV, "complete": runs.COMPLETE, "metrics": runs.METRICS,
    "baselines": runs.BASELINES, "context": runs.CONTEXT,
    "localisation": f"{runs.CAMS}/{runs.LOCALISATION}", "faithfulness": f"{runs.CAMS}/{runs.FAITHFULNESS_SUMMARY}",
    "sanity": f"{runs.CAMS}/{runs.SANITY}", "cams_meta": f"{runs.CAMS}/{runs.CAMS_META}",
}
# What writes each file, for a section whose file is missing. RUN stands for the run's folder (the card
# says so): the card is the same wherever the folder lies, so a regenerated card is byte-identical.
RUN = "RUN"
EVALUATE = f"python -m engine evaluate {RUN}"
EXPLAIN = f"python -m engine explain {RUN}"
WRITTEN_BY = {"metrics": EVALUATE, "baselines": EVALUATE, "context": EVALUATE, "localisation": EXPLAIN,
              "faithfulness": EXPLAIN, "sanity": EXPLAIN}
WITH_MASKS = " on data prepared with leukocyte masks (`prepare` makes them from a `Segmented/` copy or the stain)"
# A section whose file is missing says this.
MISSING = {"metrics": f"Not evaluated yet: run `{EVALUATE}`.",
           "baselines": f"Not measured yet: run `{EVALUATE}`{WITH_MASKS}.",
           "context": f"Not measured yet: run `{EVALUATE}`{WITH_MASKS}.",
           "localisation": f"Not measured yet: run `{EXPLAIN}`{WITH_MASKS}.",
           "faithfulness": f"Not measured yet: run `{EXPLAIN}`.",
           "sanity": f"Not measured yet: run `{EXPLAIN}`."}
GENERAL_LIMITATION = ("One data set: 89 patients from one hospital with one stain protocol. Nothing here measures "
                      "images from another lab, stain, microscope or camera.")
NOTICE = ("**For research only.** This is research software, not a medical device. It must not be used for "
          "clinical diagnosis or treatment decisions, and its maps do not replace review by an expert.")
STAGES_IN_WORDS = "benign (hematogones), early Pre-B, Pre-B or Pro-B acute lymphoblastic leukemia"
SMEAR_CV_SWEEP = "python -m tuning sweep --space cpu-smear-cv --data PREPARED"
SMEAR_TRAIN = "python -m engine train --data PREPARED --set split=smear --set fold=0"

# Limitations are written from the numbers, with these thresholds (the dashboard's sentences use the same:
# dashboard/evidence.py).
CLOSE = 0.05  # a colour-only model within 5 points of the network (or above it): colour explains the accuracy
SHORTCUT_MARGIN = 0.25  # a lower 95% bound this far above chance: the colour names the stage
CONTEXT_MARGIN = 0.25  # accuracy without the cells this far above chance: decided largely from the context
PARTLY_MARGIN = 0.10  # ... this far above chance: leans partly on the context
COLLAPSE = 0.25  # a probe that takes this much accuracy away: the model needs what the probe removed
FOLLOW_SHARE = 0.25  # answers naming the stain donor's stage above this (lower bound): the answers follow the stain
WIDE_INTERVAL = 0.10  # a 95% interval of accuracy wider than this: too few test images for a close comparison
Z95 = 1.959963984540054

# CommonMark lets a backslash escape any ASCII punctuation; < > & become entities instead, so that the text
# stays inert in a renderer that passes raw HTML through (Streamlit with unsafe_allow_html, some viewers).
_ESCAPED = {ord(c): "\\" + c for c in string.punctuation if c not in "-',"}
_ESCAPED.update({ord("<"): "&lt;", ord(">"): "&gt;", ord("&"): "&amp;"})
# Control characters and lone surrogates (JSON's "\ud800"): UTF-8 cannot write the one, and a reader shows
# nothing useful for the other.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
SectionError = (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError)


# ----------------------------------------------------------------------------- reading


def read(run_dir: Path | str) -> tuple[dict[str, Any], dict[str, str]]:
    """The card's files of a run: ({key: parsed JSON or None when missing}, {key: why it could not be read})."""
    run_dir = Path(run_dir)
    found: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for key, rel in CARD_FILES.items():
        found[key] = None
        path = run_dir / rel
        if not path.is_file():
            continue
        try:
            found[key] = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:
            problems[key] = f"{rel} could not be read ({type(exc).__name__}: {exc})"
    return found, problems


def render(run_dir: Path | str) -> str:
    """The Markdown model card of a run folder, from its files only."""
    found, problems = read(run_dir)
    return compose(found, problems, Path(run_dir).name)


def write(run_dir: Path | str) -> Path:
    """Write ``MODEL_CARD.md`` (atomically) into the run folder; return its path."""
    path = Path(run_dir) / runs.MODEL_CARD
    runs.atomic_write_text(path, render(run_dir))
    return path


# ----------------------------------------------------------------------------- formatting


def text(value: Any) -> str:
    """Text from a file as plain Markdown text: no table cell break, link, autolink, emphasis, heading or HTML
    can form. Numbers are written as they are; in other text < > & become entities and every other ASCII
    punctuation character but - ' , is backslash-escaped (CommonMark shows both as the character itself)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return " ".join(_UNPRINTABLE.sub("", str(value)).split()).translate(_ESCAPED)


def code(value: Any) -> str:
    """Text from a file as a Markdown code span (a backtick cannot end it early)."""
    return "`" + " ".join(_UNPRINTABLE.sub("", str(value)).split()).replace("`", "'") + "`"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def interval(ci: Sequence[float | None] | None, percent: bool = True) -> str:
    if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return ""
    low, high = ci
    return f"95% CI {100 * low:.1f}-{100 * high:.1f}%" if percent else f"95% CI {low:.3f}-{high:.3f}"


def pct_ci(value: float | None, ci: Sequence[float | None] | None) -> str:
    """ "97.5% (95% CI 95.9-98.8%)"; the value alone where no interval is recorded."""
    bounds = interval(ci)
    return pct(value) + (f" ({bounds})" if bounds and value is not None else "")


def num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def block_pct(block: Mapping[str, Any] | None) -> str:
    """An accuracy block (``n, correct, accuracy, ci95``) as "91.9% (95% CI 83.4-96.2%)"."""
    if not block:
        return "n/a"
    return pct_ci(block.get("accuracy"), block.get("ci95"))


def wilson(successes: int, n: int) -> list[float | None]:
    """Wilson score 95% interval of a proportion (as engine.metrics.proportion_ci, without SciPy)."""
    if n <= 0:
        return [None, None]
    p = successes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def capital(words: str) -> str:
    return words[:1].upper() + words[1:]


# ----------------------------------------------------------------------------- the pieces


def header(name: str, config: Mapping[str, Any] | None, complete: Mapping[str, Any] | None) -> list[str]:
    lines = [f"# Model card: {text(name)}", "",
             f"Generated from the files of this run folder by `python -m engine card {RUN}` ({RUN}: this run's "
             "folder); `evaluate` and `explain` write it again. Do not edit it by hand: every number comes from a "
             "file named below.", ""]
    if config:
        lines += [f"A {text(config.get('model', '?'))} classifier of four stages of acute lymphoblastic leukemia "
                  f"in peripheral blood smear images, {text(config.get('image_size', '?'))} px, preset "
                  f"{text(config.get('preset', '?'))}."]
        if complete and complete.get("finished_at"):
            lines[-1] += f" Training finished {code(complete['finished_at'])}."
        lines.append("")
    return lines


def intended_use() -> list[str]:
    return ["## Intended use", "", NOTICE, "",
            "- What it does: names the stage of one image of a peripheral blood smear from the Kaggle ALL image "
            f"data set (Aria et al. 2021; 89 patients, one hospital, 224 x 224 px JPEGs): {STAGES_IN_WORDS}.",
            "- Meant for: research on what such a classifier learns from these images, and for discussing its "
            "evidence in a group meeting.",
            "- Not meant for: any decision about a patient; images from another lab, stain, microscope or camera "
            "(nothing here measures them; `predict` flags images unlike the training images, but cannot vouch "
            "for one that resembles them).", ""]


def _input_words(config: Mapping[str, Any]) -> str:
    """What the network is shown of each image: the field, or the cells view (engine.cells)."""
    size = text(config.get("image_size", "?"))
    if config.get("view") == "cells":
        return (f"{size} px RGB, the cells view: a {CELLS_GRID} x {CELLS_GRID} mosaic of windows centred on each "
                "image's largest leukocytes, at source resolution (leukocyte masks needed; derived from the stain "
                "for new images)")
    return f"{size} px RGB, the whole field"


def _colour_words(config: Mapping[str, Any]) -> str:
    """How the training images' colours were made unreliable (engine.stain): stain jitter, mixing, greyscale."""
    words = []
    if _positive(config.get("stain_jitter")):
        words.append(f"HED stain jitter {text(config['stain_jitter'])}")
    if _positive(config.get("stain_mix")):
        words.append(f"{pct(config['stain_mix'])} of the images recoloured to another training image's colour "
                     "statistics (stain mixing)")
    if _positive(config.get("greyscale_p")):
        words.append(f"{pct(config['greyscale_p'])} in greyscale")
    return "; ".join(words) or "none"


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def model_section(config: Mapping[str, Any] | None, env: Mapping[str, Any] | None,
                  complete: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None) -> list[str]:
    """The model and how it was trained (config.json, env.json, COMPLETE, metrics.json's checkpoint)."""
    if not config:
        return ["## Model", "", f"No readable `{runs.CONFIG}`: this folder is not a trained run.", ""]
    training = (f"preset {text(config.get('preset', '?'))}, {text(config.get('epochs', '?'))} epochs, "
                f"batch {text(config.get('batch_size', '?'))}, lr {text(config.get('lr', '?'))}, "
                f"schedule {text(config.get('schedule', '?'))}, augment {text(config.get('augment', '?'))}, "
                f"background {text(config.get('background', '?'))}, seed {text(config.get('seed', '?'))}")
    if _positive(config.get("ema_decay")):
        training += (f"; the weights evaluated are a moving average over training (decay "
                     f"{text(config['ema_decay'])}), not the last step's")
    rows = [["model", f"{text(config.get('model', '?'))}, weights {text(config.get('weights', '?'))}"],
            ["input", _input_words(config)],
            ["training", training],
            ["colour augmentation", _colour_words(config)]]
    if complete:
        rows.append(["status", f"{text(complete.get('status', '?'))}: {text(complete.get('epochs', '?'))} epochs, "
                               f"best validation macro-F1 {num(complete.get('best_val_macro_f1'))} at epoch "
                               f"{text(complete.get('best_epoch', '?'))}"])
    else:
        rows.append(["status", f"no `{runs.COMPLETE}`: training has not finished (or was interrupted)"])
    if metrics:
        rows.append(["scored", f"checkpoint {text(metrics.get('checkpoint', '?'))} (epoch "
                               f"{text(metrics.get('checkpoint_epoch', '?'))}), in full precision"])
    if env:
        rows.append(["trained on", f"{text(env.get('device', '?'))}, torch {code(env.get('torch', '?'))}, code "
                                   f"{code(env.get('git_commit') or 'unknown')}"])
    return ["## Model", "", *table(["", "value"], rows), ""]


def split_words(config: Mapping[str, Any] | None) -> tuple[str, str]:
    """(the split in a few words, what it measures and what it does not) for a run's config.json."""
    split, fold = runs.run_split(dict(config or {}))
    if split == "smear":
        return (f"smear-group split, fold {fold}",
                f"Whole smear groups are held out: the test images are smear fold {fold}, the validation images "
                "the next fold, training the others. The groups are estimated per stage from each image's background "
                "colour and brightness (`engine/smears.py`), so this measures accuracy on smear appearance never seen "
                "in training. It is not a patient split (the data set has no patient ids), the estimated groups can "
                "merge or cut real smears, and one fold is one draw: the spread over all folds comes from the "
                f"cross-validation sweep (`{SMEAR_CV_SWEEP}`, its `repeats.json`).")
    return ("image split",
            "The prepared folder's split by image (70/15/15, stratified by stage, exact duplicates kept together, "
            "seeded). It measures how the model does on new images of the smears it was trained on. In this data "
            "set each stage comes from its own smears, so test images share stain, background and illumination "
            "with training images of their stage: this split does not measure how the model does on a new smear "
            f"or patient. A smear-group split does: `{SMEAR_TRAIN}` (one fold) or `{SMEAR_CV_SWEEP}` (every fold).")


def data_section(config: Mapping[str, Any] | None, env: Mapping[str, Any] | None,
                 metrics: Mapping[str, Any] | None) -> list[str]:
    """The prepared folder, images per split (and per stage where metrics.json has them) and the split."""
    lines = ["## Data and split", ""]
    if config and config.get("data_dir"):
        lines += [f"Prepared data: {code(config['data_dir'])}" + (
            f" (manifest sha256 {text(str(config[runs.MANIFEST_SHA256])[:16])}...)."
            if config.get(runs.MANIFEST_SHA256) else "."), ""]
    splits = (metrics or {}).get("splits") or {}
    rows = []
    train = (env or {}).get("train_images")
    if train is not None:
        rows.append(["train", text(train), *("" for _ in CLASSES)])
    for split in ("val", "test"):
        m = splits.get(split)
        if m is not None:
            per = m.get("per_class") or {}
            rows.append([split, text(m.get("n", "?")), *(text(per.get(s, {}).get("support", "")) for s in CLASSES)])
        elif (env or {}).get(f"{split}_images") is not None:
            rows.append([split, text(env[f"{split}_images"]), *("" for _ in CLASSES)])
    if rows:
        lines += [*table(["split", "images", *CLASSES], rows), ""]
    else:
        lines += [f"Images per split: not recorded yet (run `{EVALUATE}`).", ""]
    words, meaning = split_words(config)
    lines += [f"**Split: {words}.** {meaning}", ""]
    return lines


def metrics_section(metrics: Mapping[str, Any]) -> list[str]:
    """Accuracy, balanced accuracy and macro-F1 per split with 95% intervals, then per stage."""
    splits = metrics["splits"]
    rows = []
    for split in ("val", "test"):
        m = splits.get(split)
        if m is None:
            continue
        rows.append([split, text(m["n"]), pct_ci(m["accuracy"], m.get("accuracy_ci95")),
                     pct(m.get("balanced_accuracy")),
                     num(m.get("macro_f1")) + (f" ({interval(m.get('macro_f1_ci95'), percent=False)})"
                                               if interval(m.get("macro_f1_ci95")) else "")])
    lines = ["## Metrics", "",
             *table(["split", "images", "accuracy", "balanced accuracy", "macro-F1"], rows), "",
             "Accuracy and macro-F1 intervals: percentile bootstrap over images; per-stage recall: Wilson interval; "
             "balanced accuracy (the mean recall over stages) has no interval recorded.", ""]
    upload = metrics.get("upload_view")
    if isinstance(upload, Mapping) and upload.get("n"):
        lines += [f"Seen as an upload is (each test image's leukocyte mask derived from its stain, not read from the "
                  f"prepared data): accuracy {pct_ci(upload.get('accuracy'), upload.get('accuracy_ci95'))} on "
                  f"{text(upload['n'])} images; {pct(upload.get('identical_views'))} of the views identical.", ""]
    for split in ("val", "test"):
        m = splits.get(split)
        if m is None:
            continue
        stage_rows = []
        for stage, v in (m.get("per_class") or {}).items():
            support, recall = v.get("support"), v.get("recall")
            ci = wilson(round(recall * support), int(support)) if support and recall is not None else None
            stage_rows.append([text(stage), text(support), pct_ci(recall, ci), num(v.get("precision")),
                               num(v.get("f1"))])
        lines += [f"Per stage, {split}:", "",
                  *table(["stage", "images", "recall (correct of the stage)", "precision", "F1"], stage_rows), ""]
    return lines


def baseline_models(baselines: Mapping[str, Any], split: str) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(key, words, the split's block): the network first, then the headline baselines, then the others."""
    out = []
    network = (baselines.get("network") or {}).get("splits", {}).get(split)
    if network is not None:
        out.append(("network", "the network", network))
    entries = baselines["baselines"]
    for key in sorted(entries, key=lambda k: (k not in HEADLINE_BASELINES, k)):
        block = entries[key]["splits"].get(split)
        if block is not None:
            out.append((key, BASELINE_WORDS.get(key) or text(entries[key].get("words", key)), block))
    return out


def baselines_section(baselines: Mapping[str, Any]) -> list[str]:
    """The network beside the colour-only models, on the same images, per split and per stage."""
    chance = baselines.get("chance") or {}
    lines = ["## Beside colour-only models", "",
             "Each colour-only model sees 12 numbers per image (median, spread and 10th and 90th percentiles of R, G "
             "and B) of the background or of the cells only, fitted on the training images "
             f"({text((baselines.get('images') or {}).get('train', '?'))} with a mask). The network is scored again "
             "on exactly the images they saw (those with a leukocyte mask).", ""]
    for split in ("val", "test"):
        models = baseline_models(baselines, split)
        if not models:
            continue
        rows = [[capital(words), text(block["n"]), block_pct(block), pct(block.get("balanced_accuracy"))]
                for _, words, block in models]
        lines += [f"{capital(split)} images (always answering the most common stage: {pct(chance.get(split))}):", "",
                  *table(["model", "images", "accuracy", "balanced accuracy"], rows), ""]
    models = [(k, w, b) for k, w, b in baseline_models(baselines, "test") if k == "network" or k in HEADLINE_BASELINES]
    if models:
        rows = [[stage, *(block_pct((block.get("per_stage") or {}).get(stage)) for _, _, block in models)]
                for stage in CLASSES]
        lines += ["Per stage, test:", "", *table(["stage", *(capital(w) for _, w, _ in models)], rows), ""]
    return lines


def context_section(context: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> list[str]:
    """Accuracy per stage with the leukocytes removed, the background removed, another stage's stain, greyscale;
    with ``config``, which of the stain probes the training saw (stain mixing, greyscale) and so are not held out."""
    variants = [v for v in CONTEXT_VARIANTS if v in context["variants"]]
    follows = (context.get("stain_swapped") or {}).get("follows_donor")
    header_row = ["stage", "images", *(CONTEXT_VARIANTS[v] for v in variants)]
    if follows:
        header_row.append("answer = the stain donor's stage")
    rows = []
    for stage in (*CLASSES, "all"):
        blocks = [context["variants"][v]["all"] if stage == "all" else context["variants"][v]["per_stage"][stage]
                  for v in variants]
        row = [stage, text(blocks[0]["n"]), *(block_pct(b) for b in blocks)]
        if follows:
            f = follows["all"] if stage == "all" else follows["per_stage"].get(stage, {})
            row.append(pct_ci(f.get("share"), f.get("ci95")))
        rows.append(row)
    lines = ["## What the model reads: context and stain probes", "",
             f"The {text(context.get('split', 'test'))} images with a leukocyte mask "
             f"({text(context['variants'][variants[0]]['all']['n'])}), classified as they are and changed:", "",
             "- leukocytes removed: the cells inpainted from the surrounding background;",
             "- background removed: everything outside the cells set to one flat background colour;",
             "- stain of another stage: each image recoloured to the colours of an image of another stage (cells "
             "and layout untouched);",
             "- in greyscale: the colour taken away.", "",
             *table(header_row, rows), "",
             f"Always answering the most common stage: {pct(context.get('chance'))}. A model that decides from the "
             "cells falls to about that without them; one that reads the stain follows the donor's stage.", ""]
    if "stain_swapped" not in context["variants"]:
        lines += [f"The stain probes were not run (an older `evaluate`): `{EVALUATE}` adds them.", ""]
    trained_on = (("stain_mix", "stain_swapped"), ("greyscale_p", "greyscale"))
    seen = [f'"{CONTEXT_VARIANTS[probe]}"' for key, probe in trained_on if config and _positive(config.get(key))]
    if seen:
        lines += [f"This model was trained on images changed as in {' and '.join(seen)} (colour augmentation, above): "
                  "for it, that is an invariance it was trained for, not a held-out test.", ""]
    return lines


def best_localisation(localisation: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The result of localisation.json's first-ranked method x layer, or None."""
    ranking = localisation.get("ranking") or []
    if not ranking:
        return None
    top = ranking[0]
    return next((r for r in localisation.get("results", []) if r["method"] == top["method"]
                 and r["layer"] == top["layer"]), None)


def localisation_section(localisation: Mapping[str, Any]) -> list[str]:
    """Per method x layer and stage: do the maps point at the leukocytes, and the best one."""
    results = localisation.get("results") or []
    rows = [[f"{text(r['method'])} at {text(r['layer'])}",
             *(LOCALISATION_VERDICTS.get(r["per_stage"].get(s, {}).get("verdict"), "n/a") for s in CLASSES),
             LOCALISATION_VERDICTS.get(r["all"]["verdict"], "n/a")] for r in results]
    lines = ["## Where the maps point", "",
             f"Grad-CAM maps of the {text(localisation.get('split', 'test'))} images with a leukocyte mask "
             f"({text(localisation.get('images', '?'))}), scored against the masks and against two maps that know "
             "nothing of the model: a centred blob and another image's map of the same stage. Verdict per stage:", "",
             *table(["method at layer", *CLASSES, "all stages"], rows), ""]
    best = best_localisation(localisation)
    if best is not None:
        all_ = best["all"]
        lines += [f"Best: **{text(best['method'])} at {text(best['layer'])}**, "
                  f"{LOCALISATION_VERDICTS.get(all_['verdict'], 'n/a')}: concentration on the leukocytes "
                  f"{num(all_['map']['concentration']['mean'], 2)} (centred blob "
                  f"{num(all_['centre']['concentration']['mean'], 2)}; 1 is a uniform map), map maximum on a "
                  f"leukocyte in {pct(all_['map']['pointing']['mean'])} of the images (centred blob "
                  f"{pct(all_['centre']['pointing']['mean'])}).", ""]
    return lines


def faithfulness_section(faithfulness: Mapping[str, Any] | None, sanity: Mapping[str, Any] | None) -> list[str]:
    """ROAD per method with its interval (faithfulness_summary.json) and the sanity check per method (sanity.json)."""
    lines = ["## Faithfulness and sanity check", ""]
    if faithfulness:
        rank_by = faithfulness.get("rank_by", "road_combined")
        order = (faithfulness.get("ranking") or {}).get("all") or list(faithfulness["methods"])
        rows = []
        for method in order:
            entry = faithfulness["methods"][method]
            stat = entry["overall"][rank_by]
            rows.append([text(method), text(entry.get("layer", "?")),
                         num(stat.get("mean")) + (f" ({interval(stat.get('ci95'), percent=False)})"
                                                  if interval(stat.get("ci95")) else "")])
        lines += [f"Faithfulness ({text(rank_by)}: confidence lost when the pixels the map ranks highest are removed, "
                  "against the lowest; above 0 is better than a random map):", "",
                  *table(["method", "layer", text(rank_by)], rows), ""]
    else:
        lines += [f"Faithfulness: {MISSING['faithfulness'][0].lower()}{MISSING['faithfulness'][1:]}", ""]
    checked = {m: r for m, r in (sanity or {}).items() if isinstance(r, Mapping) and "passed" in r}
    if checked:
        rows = [[text(m), text(r.get("layer", "?")), "passed" if r["passed"] else "**failed**",
                 num(((r.get("steps") or [{}])[-1]).get("spearman"), 2)] for m, r in checked.items()]
        lines += ["Sanity check (the model's weights randomised from the top down; maps that do not change show the "
                  "image, not the model):", "",
                  *table(["method", "layer", "verdict", "similarity after full randomisation"], rows), ""]
    else:
        lines += [f"Sanity check: {MISSING['sanity'][0].lower()}{MISSING['sanity'][1:]}", ""]
    return lines


# ----------------------------------------------------------------------------- limitations, from the numbers


def _acc(block: Mapping[str, Any] | None) -> float | None:
    return (block or {}).get("accuracy")


def interval_limitation(metrics: Mapping[str, Any] | None) -> str | None:
    """When the test accuracy's 95% interval is wider than WIDE_INTERVAL."""
    test = ((metrics or {}).get("splits") or {}).get("test")
    ci = (test or {}).get("accuracy_ci95")
    if not ci or None in ci or ci[1] - ci[0] <= WIDE_INTERVAL:
        return None
    return (f"Few test images ({text(test.get('n', '?'))}): the accuracy's 95% interval spans {pct(ci[0])}-"
            f"{pct(ci[1])}, too wide to tell close models apart.")


def baseline_limitation(baselines: Mapping[str, Any] | None, split: str = "test") -> str | None:
    """When a headline colour-only model comes within CLOSE of the network (or names the stage well by itself)."""
    if not baselines:
        return None
    models = baseline_models(baselines, split)
    network = next((b for k, _, b in models if k == "network"), None)
    colour = [(w, b) for k, w, b in models if k in HEADLINE_BASELINES and _acc(b) is not None]
    if not colour:
        return None
    words, best = max(colour, key=lambda wb: wb[1]["accuracy"])
    chance = (baselines.get("chance") or {}).get(split)
    if network is not None and _acc(network) is not None and best["accuracy"] >= network["accuracy"] - CLOSE:
        gap = network["accuracy"] - best["accuracy"]
        where = (f"{abs(gap) * 100:.1f} points above the network's {pct(network['accuracy'])}" if gap < 0
                 else f"within {gap * 100:.1f} points of the network's {pct(network['accuracy'])}")
        return (f"{capital(words)} names the stage of {pct(best['accuracy'])} of the same {split} images, {where}: "
                "in this data set the colour gives the stage away, so the network's accuracy is no evidence by itself "
                "that it learned leukocyte morphology.")
    low = (best.get("ci95") or [None])[0]
    if chance is not None and low is not None and low >= chance + SHORTCUT_MARGIN:
        return (f"{capital(words)} names the stage of {pct(best['accuracy'])} of the same {split} images (always "
                f"answering the most common stage: {pct(chance)}): much of the stage can be read from the colour.")
    return None


def and_list(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _unchanged(variants: Mapping[str, Any], stage: str, variant: str) -> bool:
    """Whether a stage's accuracy stays within PARTLY_MARGIN of the original one under ``variant`` (and above half)."""
    before = _acc(variants["original"]["per_stage"].get(stage))
    after = _acc(variants[variant]["per_stage"].get(stage))
    return before is not None and after is not None and after > 0.5 and before - after < PARTLY_MARGIN


def context_limitations(context: Mapping[str, Any] | None) -> list[str]:
    """What the probes say the model needs or ignores, where the numbers cross the thresholds."""
    if not context:
        return []
    variants, chance = context["variants"], context.get("chance") or 0.0
    original = _acc(variants["original"]["all"])
    if original is None:
        return []
    out = []
    without = _acc(variants.get("cells_removed", {}).get("all"))
    if without is not None and without > chance + PARTLY_MARGIN:
        how = "much" if without > chance + CONTEXT_MARGIN else "part"
        kept = [(s, variants["cells_removed"]["per_stage"][s]["accuracy"]) for s in CLASSES
                if _unchanged(variants, s, "cells_removed")]
        stages = (f" For {and_list([s for s, _ in kept])} it barely changes "
                  f"({and_list([pct(a) for _, a in kept])} without the leukocytes)." if kept else "")
        out.append(f"With the leukocytes removed the network still classifies {pct(without)} of the test images "
                   f"correctly (as they are: {pct(original)}; always the most common stage: {pct(chance)}): {how} of "
                   f"its accuracy comes from the slide around the cells, not from the cells.{stages}")
    background = _acc(variants.get("background_removed", {}).get("all"))
    if background is not None and original - background >= COLLAPSE:
        out.append(f"With the background replaced by a flat colour, accuracy falls from {pct(original)} to "
                   f"{pct(background)}: the cells alone do not carry the network's answers.")
    swapped = _acc(variants.get("stain_swapped", {}).get("all"))
    follows = ((context.get("stain_swapped") or {}).get("follows_donor") or {}).get("all") or {}
    share, low = follows.get("share"), (follows.get("ci95") or [None])[0]
    follows_donor = low is not None and low > FOLLOW_SHARE
    if swapped is not None and (original - swapped >= COLLAPSE or follows_donor):
        donor = f", and {pct(share)} of its answers name the donor's stage" if share is not None else ""
        out.append(f"With the stain of an image of another stage, accuracy collapses from {pct(original)} to "
                   f"{pct(swapped)}{donor}: the answers follow the stain colours, so a lab with another stain "
                   "protocol would get other answers.")
    grey = _acc(variants.get("greyscale", {}).get("all"))
    if grey is not None and original - grey >= COLLAPSE:
        out.append(f"In greyscale, accuracy falls from {pct(original)} to {pct(grey)}: the network depends on colour.")
    return out


def localisation_limitations(localisation: Mapping[str, Any] | None) -> list[str]:
    if not localisation:
        return []
    best = best_localisation(localisation)
    if best is None:
        return []
    where = f"{text(best['method'])} at {text(best['layer'])}"
    if best["all"]["verdict"] != "points":
        return [f"No method and layer's maps clearly point at the leukocytes (the best, {where}: "
                f"{LOCALISATION_VERDICTS.get(best['all']['verdict'], 'n/a')}): the maps cannot show which cell "
                "features the model uses."]
    off = [s for s in CLASSES if best["per_stage"].get(s, {}).get("verdict") not in (None, "points")]
    if off:
        return [f"The best maps ({where}) point at the leukocytes overall, but not for {and_list(off)}: "
                f"read {'that stage' if len(off) == 1 else 'those stages'}' maps with care."]
    return []


def explanation_limitations(faithfulness: Mapping[str, Any] | None, sanity: Mapping[str, Any] | None) -> list[str]:
    out = []
    failed = [m for m, r in (sanity or {}).items() if isinstance(r, Mapping) and r.get("passed") is False]
    if failed:
        out.append(f"The sanity check failed for {', '.join(text(m) for m in failed)}: those maps change little when "
                   "the model's weights are randomised, so they show the image more than the model.")
    if faithfulness:
        rank_by = faithfulness.get("rank_by", "road_combined")
        weak = [m for m, e in faithfulness.get("methods", {}).items()
                if (e.get("overall", {}).get(rank_by) or {}).get("ci95")
                and e["overall"][rank_by]["ci95"][0] is not None and e["overall"][rank_by]["ci95"][0] <= 0]
        if weak:
            out.append(f"The faithfulness interval of {', '.join(text(m) for m in weak)} includes 0: on the images "
                       "scored, those maps are not clearly better than a random map.")
    return out


def limitations(config: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None,
                baselines: Mapping[str, Any] | None, context: Mapping[str, Any] | None,
                localisation: Mapping[str, Any] | None, faithfulness: Mapping[str, Any] | None = None,
                sanity: Mapping[str, Any] | None = None) -> list[str]:
    """Known limitations, each one sentence, written from the numbers (the first from the split); a file of
    another shape adds none (its section says so)."""
    split, fold = runs.run_split(dict(config or {}))
    out = []
    if split == "smear":
        out.append(f"The test accuracy is that of one held-out smear fold ({fold}); other folds can differ, and "
                   "the smear groups are estimated from colour, not known: it is not a patient-level result.")
    else:
        out.append("The test images come from the same smears as the training images (image split): the test "
                   "accuracy does not say how the model does on a new smear or patient.")
    for piece in (lambda: [x for x in [interval_limitation(metrics)] if x],
                  lambda: [x for x in [baseline_limitation(baselines)] if x],
                  lambda: context_limitations(context),
                  lambda: localisation_limitations(localisation),
                  lambda: explanation_limitations(faithfulness, sanity)):
        out += _safe(piece, [])
    return out


def not_measured(found: Mapping[str, Any], problems: Mapping[str, str]) -> list[str]:
    """Evidence that is missing, as a limitation: what cannot be said, and what to run."""
    out = []
    for key, what in (("baselines", "what a colour-only model scores"),
                      ("context", "whether the network needs the cells and the stain"),
                      ("localisation", "whether the maps point at the leukocytes")):
        if found.get(key) is None:
            reason = "could not be read" if key in problems else "was not measured"
            out.append(f"{capital(what)} {reason}: run `{WRITTEN_BY[key]}`.")
    return out


def limitations_section(lines: Sequence[str]) -> list[str]:
    return ["## Known limitations", "", *(f"- {line}" for line in lines), ""]


# ----------------------------------------------------------------------------- key lines and the whole card


def key_lines(found: Mapping[str, Any]) -> list[str]:
    """The card's few headline lines (for the deck and the dashboard): accuracy and split, the colour baseline,
    the probes, where the maps point. Only what the files hold; nothing for a missing file."""
    out = []
    metrics, config = found.get("metrics") or {}, found.get("config")
    test = (metrics.get("splits") or {}).get("test")
    words, _ = split_words(config)
    try:
        if test:
            out.append(f"Test accuracy {pct_ci(test['accuracy'], test.get('accuracy_ci95'))}, n = {text(test['n'])}, "
                       f"{words}")
    except SectionError:
        pass
    try:
        baselines = found.get("baselines")
        if baselines:
            models = baseline_models(baselines, "test")
            colour = [(w, b) for k, w, b in models if k in HEADLINE_BASELINES and _acc(b) is not None]
            if colour:
                w, b = max(colour, key=lambda wb: wb[1]["accuracy"])
                network = next((b2 for k, _, b2 in models if k == "network"), None)
                beside = f" (the network: {pct(network['accuracy'])})" if network and _acc(network) is not None else ""
                out.append(f"{capital(w)}: {pct(b['accuracy'])} on the same images{beside}")
    except SectionError:
        pass
    try:
        context = found.get("context")
        if context:
            variants = context["variants"]
            without = _acc(variants.get("cells_removed", {}).get("all"))
            if without is not None:
                out.append(f"Leukocytes removed: {pct(without)} still correct (always the most common stage: "
                           f"{pct(context.get('chance'))})")
            swapped = _acc(variants.get("stain_swapped", {}).get("all"))
            share = (((context.get("stain_swapped") or {}).get("follows_donor") or {}).get("all") or {}).get("share")
            if swapped is not None:
                out.append(f"Another stage's stain: {pct(swapped)} correct"
                           + (f", {pct(share)} name the donor's stage" if share is not None else ""))
    except SectionError:
        pass
    try:
        localisation = found.get("localisation")
        best = best_localisation(localisation) if localisation else None
        if best is not None:
            out.append(f"Maps ({text(best['method'])} at {text(best['layer'])}): "
                       f"{LOCALISATION_VERDICTS.get(best['all']['verdict'], 'n/a')}")
    except SectionError:
        pass
    return out


def _section(key: str, found: Mapping[str, Any], problems: Mapping[str, str], title: str,
             build: Callable[[], list[str]]) -> list[str]:
    """A section from its file, or its title and what to run: the file is missing, unreadable or of another shape."""
    if key in problems:
        return [f"## {title}", "", f"{code(problems[key])}: run `{WRITTEN_BY[key]}` again.", ""]
    if found.get(key) is None:
        return [f"## {title}", "", MISSING[key], ""]
    try:
        return build()
    except SectionError as exc:
        return [f"## {title}", "", f"`{CARD_FILES[key]}` has an unexpected shape "
                                   f"({code(f'{type(exc).__name__}: {exc}')}): run `{WRITTEN_BY[key]}` again.", ""]


def _safe(build: Callable[[], Any], default: Any) -> Any:
    try:
        return build()
    except SectionError:
        return default


def compose(found: Mapping[str, Any], problems: Mapping[str, str], name: str) -> str:
    """The whole card from the parsed files (``read``'s pair) and the run's name."""
    config, env, complete = (x if isinstance(x, Mapping) else None
                             for x in (found.get("config"), found.get("env"), found.get("complete")))
    valid = {k: (v if isinstance(v, Mapping) else None) for k, v in found.items()}
    shape = {k: f"{CARD_FILES[k]} is not a JSON object" for k, v in found.items()
             if v is not None and not isinstance(v, Mapping) and k in WRITTEN_BY}
    problems = {**shape, **problems}
    lines = [*_safe(lambda: header(name, config, complete), [f"# Model card: {text(name)}", ""]), *intended_use(),
             *_safe(lambda: model_section(config, env, complete, valid.get("metrics")), ["## Model", ""]),
             *_safe(lambda: data_section(config, env, valid.get("metrics")), ["## Data and split", ""])]
    lines += _section("metrics", valid, problems, "Metrics", lambda: metrics_section(valid["metrics"]))
    lines += _section("baselines", valid, problems, "Beside colour-only models",
                      lambda: baselines_section(valid["baselines"]))
    lines += _section("context", valid, problems, "What the model reads: context and stain probes",
                      lambda: context_section(valid["context"], config))
    lines += _section("localisation", valid, problems, "Where the maps point",
                      lambda: localisation_section(valid["localisation"]))
    if valid.get("faithfulness") is None and valid.get("sanity") is None and "faithfulness" not in problems \
            and "sanity" not in problems:
        lines += ["## Faithfulness and sanity check", "", MISSING["faithfulness"], ""]
    else:
        key = "faithfulness" if "faithfulness" in problems or valid.get("faithfulness") is not None else "sanity"
        lines += _section(key, valid, problems, "Faithfulness and sanity check",
                          lambda: faithfulness_section(valid.get("faithfulness"), valid.get("sanity")))

    known = [*limitations(config, valid.get("metrics"), valid.get("baselines"), valid.get("context"),
                          valid.get("localisation"), valid.get("faithfulness"), valid.get("sanity")),
             *not_measured(valid, problems), GENERAL_LIMITATION]
    lines += limitations_section(known)
    return "\n".join(lines).rstrip("\n") + "\n"
