"""The story a meeting deck tells, in order, one message per slide, each in a title and a few short lines:

(a) what the headline accuracy means: the split it was measured on, accuracy on smears never seen in
    training (the run itself or a sibling trial of its sweep with ``split=smear``; otherwise the command
    that measures it), and what a model that sees only the colour scores;
(b) what the model reads: the probes (leukocytes removed, background removed, another stage's stain,
    greyscale);
(c) where its maps point (localisation per stage);
(d) which model to use: the recommendation the sweep's finish step recorded (``recommended.json``,
    tuning/recommend.py's rule), or else the most accurate comparable run, said to be no recommendation;
then the model card's key lines (engine.modelcard).

Plain text only: each document (PPTX, HTML) escapes it for itself. The thresholds are the model card's,
so a slide and the card never disagree. ``smear_results`` and ``choice`` read other runs' files through
the dashboard's confined reader (dashboard.loaders); everything else is a pure function of parsed files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine import modelcard, runs
from tuning import layout

from . import evidence, loaders
from .paths import OutsideOutputs, inside, relative

# The headline colour-only models in a few words, for a slide.
SHORT_BASELINES = {"background_colour": "Background colour alone", "cell_colour": "Cells' colour alone"}
SHORT_VERDICTS = {"points": "points at the cells", "baseline": "no better than a blob",
                  "away": "points away from the cells", "unknown": "too few images"}
SMEAR_SWEEP = "python -m tuning sweep --space cpu-smear-cv --data {data}"
MAX_FOLD_LINES = 5


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def pct_ci(value: float | None, ci: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        return f"{value:.1%} (95% CI {ci[0]:.1%}–{ci[1]:.1%})"
    return f"{value:.1%}"


# ----------------------------------------------------------------------------- (a) the headline accuracy


def headline(m: Mapping[str, Any], config: Mapping[str, Any] | None, split: str) -> tuple[str, list[str]]:
    """The headline slide: title (the accuracy and the split it was measured on) and what that split measures."""
    words, _ = modelcard.split_words(config)
    title = f"{split[:1].upper()}{split[1:]} accuracy {pct(m.get('accuracy'))}, {words}"
    ci = m.get("accuracy_ci95")
    lines = [f"95% CI {ci[0]:.1%}–{ci[1]:.1%} · {m.get('n', '?')} images" if isinstance(ci, list) and len(ci) == 2
             and None not in ci else f"{m.get('n', '?')} images"]
    f1, balanced = m.get("macro_f1"), m.get("balanced_accuracy")
    if f1 is not None and balanced is not None:
        lines.append(f"Macro-F1 {f1:.3f} · balanced accuracy {balanced:.1%}")
    if runs.run_split(dict(config or {}))[0] == "smear":
        lines.append("Whole smear groups held out: accuracy on smears never seen in training (one fold).")
    else:
        lines.append("The test images come from the same smears as the training images: this is accuracy on "
                     "known smears, not on new ones or new patients.")
    return title, lines


def _sweep_of(root: Path, run: Path) -> Path | None:
    """The sweep folder a run is a trial of (``<sweep>/trials/<id>``), or None."""
    if run.parent.name != layout.TRIALS:
        return None
    sweep = run.parent.parent
    try:
        inside(root, sweep / layout.SWEEP_JSON)
    except OutsideOutputs:
        return None
    return sweep if (sweep / layout.SWEEP_JSON).is_file() else None


def _trial_folders(root: Path, sweep: Path) -> list[Path]:
    try:
        folder = inside(root, sweep / layout.TRIALS)
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    except (OutsideOutputs, OSError):
        return []


def _scored(root: Path, run: Path, split: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(config.json, metrics.json's ``split`` block) of a run, each None where missing or unreadable."""
    try:
        config = loaders.run_config(root, run)
    except loaders.LoadError:
        return None, None
    try:
        m = loaders.metrics(root, run)["splits"].get(split)
    except loaders.LoadError:
        m = None
    return config, m if isinstance(m, dict) else None


def smear_results(root: Path, run: Path, config: Mapping[str, Any] | None, split: str = "test") -> dict[str, Any]:
    """Accuracy on held-out smear folds: the run's own (``split=smear``) and its sweep's other trials with
    ``split=smear``, each fold's ``split`` block; ``unevaluated`` counts such trials without metrics."""
    folds: list[dict[str, Any]] = []
    unevaluated = 0
    own_split, own_fold = runs.run_split(dict(config or {}))
    if own_split == "smear":
        _, m = _scored(root, run, split)
        if m is not None:
            folds.append({"label": relative(root, run), "fold": own_fold, "this": True, **_block(m)})
    sweep = _sweep_of(root, run)
    for trial in _trial_folders(root, sweep) if sweep else []:
        if trial.resolve() == run.resolve():
            continue
        trial_config, m = _scored(root, trial, split)
        if trial_config is None or runs.run_split(trial_config)[0] != "smear":
            continue
        if m is None:
            unevaluated += 1
            continue
        folds.append({"label": relative(root, trial), "fold": runs.run_split(trial_config)[1], "this": False,
                      **_block(m)})
    folds.sort(key=lambda f: (f["fold"], not f["this"], f["label"]))
    return {"folds": folds, "unevaluated": unevaluated, "sweep": relative(root, sweep) if sweep else None,
            "data": str((config or {}).get("data_dir") or "PREPARED")}


def _block(m: Mapping[str, Any]) -> dict[str, Any]:
    return {"accuracy": m.get("accuracy"), "ci95": m.get("accuracy_ci95"), "n": m.get("n")}


def smear_lines(results: Mapping[str, Any], image_accuracy: float | None) -> tuple[list[str], str | None]:
    """The unseen-smears slide: per fold its accuracy (and their mean), or that it was not measured and the
    command that measures it (returned apart, to be shown as code)."""
    folds = results["folds"]
    if not folds:
        lines = ["Not measured for this model."]
        if results["unevaluated"]:
            lines.append(f"{results['unevaluated']} smear-split trial(s) of its sweep are not evaluated yet.")
        lines.append("Measure it: one trial per smear fold, each testing on smear groups never seen in training:")
        return lines, SMEAR_SWEEP.format(data=results["data"])
    lines = [f"Fold {f['fold']}{' (this run)' if f['this'] else ''}: {pct_ci(f['accuracy'], f['ci95'])}"
             for f in folds[:MAX_FOLD_LINES]]
    if len(folds) > MAX_FOLD_LINES:
        lines.append(f"... and {len(folds) - MAX_FOLD_LINES} more folds")
    scores = [f["accuracy"] for f in folds if f["accuracy"] is not None]
    if len(scores) > 1:
        lines.append(f"Mean over {len(scores)} folds: {sum(scores) / len(scores):.1%}")
    if image_accuracy is not None:
        lines.append(f"On the image split: {image_accuracy:.1%}")
    return lines, None


def colour_lines(baselines: Mapping[str, Any], split: str) -> list[str]:
    """The colour slide: each headline colour-only model and the network on the same images, chance, verdict."""
    entries = evidence.baseline_entries(baselines, split, headline_only=True)
    lines = []
    network = None
    for key, words, block in entries:
        if key == evidence.NETWORK:
            network = block
            continue
        lines.append(f"{SHORT_BASELINES.get(key, words[:1].upper() + words[1:])}: {pct(block.get('accuracy'))}")
    if network is not None:
        lines.append(f"The network, same images: {pct(network.get('accuracy'))}")
    chance = (baselines.get("chance") or {}).get(split)
    if chance is not None:
        lines.append(f"Always the most common stage: {pct(chance)}")
    best = max((b.get("accuracy") or 0 for k, _, b in entries if k != evidence.NETWORK), default=None)
    if best is not None and network is not None and network.get("accuracy") is not None \
            and best >= network["accuracy"] - modelcard.CLOSE:
        lines.append("Colour alone does as well as the network.")
    elif best is not None and chance is not None and best >= chance + modelcard.SHORTCUT_MARGIN:
        lines.append("Colour alone names most stages.")
    else:
        lines.append("Colour alone does not give the stage away.")
    return lines


# ----------------------------------------------------------------------------- (b) what the model reads


def _variant(context: Mapping[str, Any], name: str) -> float | None:
    return ((context["variants"].get(name) or {}).get("all") or {}).get("accuracy")


def reads_lines(context: Mapping[str, Any]) -> list[str]:
    """The cells-or-context slide: accuracy as they are, without the leukocytes, without the background."""
    chance = context.get("chance") or 0.0
    lines = [f"As they are: {pct(_variant(context, 'original'))}"]
    without = _variant(context, "cells_removed")
    lines.append(f"Leukocytes removed: {pct(without)}")
    background = _variant(context, "background_removed")
    if background is not None:
        lines.append(f"Background removed: {pct(background)}")
    lines.append(f"Always the most common stage: {pct(chance)}")
    if without is not None:
        lines.append("It reads the slide around the cells." if without > chance + modelcard.CONTEXT_MARGIN
                     else "It leans partly on the slide around the cells."
                     if without > chance + modelcard.PARTLY_MARGIN else "It needs the leukocytes.")
    return lines


def stain_lines(context: Mapping[str, Any]) -> list[str]:
    """The stain slide: accuracy with another stage's stain, answers naming the donor, greyscale, verdict."""
    original, swapped = _variant(context, "original"), _variant(context, "stain_swapped")
    follows = ((context.get("stain_swapped") or {}).get("follows_donor") or {}).get("all") or {}
    share, low = follows.get("share"), (follows.get("ci95") or [None])[0]
    lines = [f"Another stage's stain: {pct(swapped)} correct"]
    if share is not None:
        lines.append(f"Answers naming the donor's stage: {pct(share)}")
    grey = _variant(context, "greyscale")
    if grey is not None:
        lines.append(f"In greyscale: {pct(grey)} correct")
    lines.append(f"As they are: {pct(original)}")
    if low is not None and low > modelcard.FOLLOW_SHARE:
        lines.append("Its answers follow the stain.")
    elif original is not None and swapped is not None and original - swapped >= modelcard.COLLAPSE:
        lines.append("It needs this data set's stain colours.")
    else:
        lines.append("The stain alone does not decide.")
    return lines


# ----------------------------------------------------------------------------- (c) where the maps point


def map_lines(located: Mapping[str, Any]) -> list[str]:
    """The localisation slide: the method and layer, then each stage's verdict, then all stages pooled."""
    lines = [f"{located['method']} at {located['layer']}:"]
    lines += [f"{stage}: {SHORT_VERDICTS.get(block['verdict'], block['verdict'])}"
              for stage, block in located["per_stage"].items()]
    lines.append(f"All stages: {SHORT_VERDICTS.get(located['all']['verdict'], located['all']['verdict'])}")
    return lines


# ----------------------------------------------------------------------------- (d) which model


def _trial_entry(root: Path, sweep: Path, entry: Mapping[str, Any], split: str) -> dict[str, Any] | None:
    """A trial that recommended.json names: its label, its ``split`` accuracy (from its metrics.json, else the
    file's ``test``) and its validation accuracy without leukocytes against chance (the file's ``scores``)."""
    folder = entry.get("run_dir") or (f"{layout.TRIALS}/{entry['trial_id']}" if entry.get("trial_id") else None)
    if not isinstance(folder, str):
        return None
    try:
        target = inside(root, sweep / folder)
    except OutsideOutputs:
        return None
    _, m = _scored(root, target, split)
    test = entry.get("test") if isinstance(entry.get("test"), Mapping) and split == "test" else {}
    scores = entry.get("scores") if isinstance(entry.get("scores"), Mapping) else {}
    return {"label": relative(root, target), "accuracy": (m or test).get("accuracy"),
            "ci95": (m or test).get("accuracy_ci95"), "without": scores.get("val_acc_without_cells"),
            "chance": scores.get("val_chance")}


def _recorded(root: Path, sweep: Path, split: str) -> dict[str, Any] | None:
    """The sweep's recommended.json (written by its finish step, tuning/recommend.py's rule), or None."""
    try:
        data = loaders.read_json(root, sweep / layout.RECOMMENDED)
    except loaders.LoadError:
        return None
    if not isinstance(data, Mapping) or not data.get("trial_id"):
        return None
    chosen = _trial_entry(root, sweep, data, split)
    if chosen is None:
        return None
    most = data.get("most_accurate") if isinstance(data.get("most_accurate"), Mapping) else None
    return {**chosen, "verdict": str(data.get("verdict") or ""), "rule_met": bool(data.get("rule_met")),
            "reason": str(data.get("reason") or ""), "rule": str(data.get("rule") or ""),
            "most": None if data.get("same_as_most_accurate") or most is None else _trial_entry(root, sweep, most,
                                                                                                 split)}


def choice(root: Path, run: Path, config: Mapping[str, Any] | None, split: str = "test") -> dict[str, Any]:
    """Which model to use: the recommendation the run's sweep recorded (``recommended.json``), else the most
    accurate comparable run.

    Comparable: evaluated on the same prepared data with the same split (``split``, ``fold``), so the same
    test images; among the trials of the run's sweep, or among every run in the outputs folder for a run
    outside a sweep.
    """
    sweep = _sweep_of(root, run)
    if sweep is not None:
        recorded = _recorded(root, sweep, split)
        if recorded is not None:
            return {"recommended": recorded, "best": None, "candidates": 0, "scope": relative(root, sweep)}
        folders = _trial_folders(root, sweep)
        scope = f"the trials of {relative(root, sweep)}"
    else:
        folders = [Path(r.path) for r in loaders.scan(root)["runs"] if r.evaluated]
        scope = "the runs in the outputs folder"
    key = (str((config or {}).get("data_dir")), runs.run_split(dict(config or {})))
    best_entry, candidates = None, 0
    for folder in folders:
        other_config, m = _scored(root, folder, split)
        if other_config is None or m is None or m.get("accuracy") is None:
            continue
        if (str(other_config.get("data_dir")), runs.run_split(other_config)) != key:
            continue
        candidates += 1
        if best_entry is None or m["accuracy"] > best_entry["accuracy"]:
            best_entry = {"label": relative(root, folder), "accuracy": m["accuracy"], "ci95": m.get("accuracy_ci95"),
                          "this": folder.resolve() == run.resolve()}
    return {"recommended": None, "best": best_entry, "candidates": candidates, "scope": scope}


def choice_title(result: Mapping[str, Any]) -> str:
    recommended = result.get("recommended")
    if not recommended:
        return "Which model? No rule applied"
    if recommended["rule_met"]:
        return "Recommended model"
    return f"Which model? {recommended['verdict'][:1].upper()}{recommended['verdict'][1:]}" \
        if recommended["verdict"] else "Which model? The rule was not met"


def _without(entry: Mapping[str, Any]) -> str | None:
    if entry.get("without") is None or entry.get("chance") is None:
        return None
    return f"without leukocytes {pct(entry['without'])} right (chance {pct(entry['chance'])})"


def choice_lines(result: Mapping[str, Any], split: str) -> tuple[list[str], str]:
    """The which-model slide: a few large lines, and a note in smaller type (the recorded reason, or why the
    most accurate run is no recommendation)."""
    name = f"{split[:1].upper()}{split[1:]}"
    recommended = result.get("recommended")
    if recommended:
        lead = "Recommended" if recommended["rule_met"] else "Shown (the most accurate)"
        lines = [f"{lead}: {recommended['label']}"]
        if recommended.get("accuracy") is not None:
            lines.append(f"{name} accuracy {pct_ci(recommended['accuracy'], recommended['ci95'])}")
        if _without(recommended):
            lines.append(f"Validation images {_without(recommended)}")
        most = recommended.get("most")
        if most:
            lines.append(f"Most accurate: {most['label']}, {name.lower()} {pct(most.get('accuracy'))}"
                         + (f", {_without(most)}" if _without(most) else ""))
        return lines, recommended.get("reason") or f"The sweep's rule: {recommended.get('rule')}."
    best = result.get("best")
    lines = ["No recommendation rule was applied."]
    if best is None:
        return [*lines, f"No evaluated run on the same {split} images to compare."], ""
    lines += [f"Most accurate on the same {split} images: {best['label']}" + (" (this run)" if best["this"] else ""),
              f"{name} accuracy {pct_ci(best['accuracy'], best['ci95'])}"]
    return lines, (f"Compared: {result['candidates']} evaluated run(s) on these images, among {result['scope']}. "
                   f"Picked by {split} accuracy, which rewards luck and the colour shortcut: not a recommendation.")


# ----------------------------------------------------------------------------- the card


# The entities engine.modelcard.text writes for < > & (every other punctuation mark is backslash-escaped).
CARD_ENTITIES = {"&lt;": "<", "&gt;": ">", "&amp;": "&"}


def card_lines(found: Mapping[str, Any]) -> list[str]:
    """The model card's key lines (engine.modelcard.key_lines) as plain text (its Markdown escapes undone)."""
    return [unescape(line) for line in modelcard.key_lines(found)]


def unescape(line: str) -> str:
    """A line of the card's Markdown as plain text: backslash escapes, its three entities (engine.modelcard.text
    writes < > & so) and code-span backticks undone."""
    out, i = [], 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line):
            out.append(line[i + 1])
            i += 2
            continue
        entity = next((e for e in CARD_ENTITIES if line.startswith(e, i)), None)
        if entity:
            out.append(CARD_ENTITIES[entity])
            i += len(entity)
            continue
        if line[i] != "`":
            out.append(line[i])
        i += 1
    return "".join(out)
