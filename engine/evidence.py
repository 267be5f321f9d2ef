"""The evidence of one or more runs as Markdown tables: colour-only baselines, context reliance and
leukocyte localisation, and for several runs (the K smear folds of one setting) their test accuracy side by
side with the mean and spread.

Reads ``baselines.json`` and ``context.json`` (``evaluate``) and ``cams/localisation.json``
(``explain``) and prints them as the docs show them, so every figure there comes from
``python -m engine evidence RUN``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import runs
from .runs import CLASSES, LOCALISATION_VERDICTS

VARIANT_TITLES = runs.CONTEXT_VARIANTS


def _pct(block: dict[str, Any]) -> str:
    if block.get("accuracy") is None:
        return "n/a"
    low, high = block["ci95"]
    return f"{block['accuracy']:.1%} ({low:.1%}-{high:.1%})"


def _stat(block: dict[str, Any]) -> str:
    if block.get("mean") is None:
        return "n/a"
    low, high = block["ci95"]
    return f"{block['mean']:.2f}" + (f" ({low:.2f}-{high:.2f})" if low is not None else "")


def context_table(contexts: dict[str, dict[str, Any]]) -> str:
    """Accuracy per run and stage on the test images as they are, without leukocytes, without background."""
    lines = ["| run | stage | n | " + " | ".join(VARIANT_TITLES.values()) + " |",
             "|---|---|---|" + "---|" * len(VARIANT_TITLES)]
    for name, context in contexts.items():
        variants = context["variants"]
        for stage in (*CLASSES, "all"):
            blocks = [variants[v]["all"] if stage == "all" else variants[v]["per_stage"][stage]
                      for v in VARIANT_TITLES if v in variants]
            lines.append(f"| {name} | {stage} | {blocks[0]['n']} | " + " | ".join(_pct(b) for b in blocks) + " |")
    return "\n".join(lines)


def donor_table(contexts: dict[str, dict[str, Any]]) -> str:
    """Per run and stage: how often the answer on a stain-swapped image is the donor's stage."""
    lines = ["| run | stage | n | answer = the donor's stage |", "|---|---|---|---|"]
    for name, context in contexts.items():
        follows = (context.get("stain_swapped") or {}).get("follows_donor")
        if not follows:
            continue
        for stage, block in {**follows["per_stage"], "all": follows["all"]}.items():
            share = "n/a" if block["share"] is None else \
                f"{block['share']:.1%} ({block['ci95'][0]:.1%}-{block['ci95'][1]:.1%})"
            lines.append(f"| {name} | {stage} | {block['n']} | {share} |")
    return "\n".join(lines)


def baselines_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Per run and split: the network and each colour-only model on the same images, overall and per stage."""
    lines = ["| run | split | model | n | accuracy | balanced | " + " | ".join(CLASSES) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(CLASSES)]
    for name, summary in summaries.items():
        models = [("the network", summary.get("network", {}).get("splits", {}))]
        models += [(entry["words"], entry["splits"]) for entry in summary["baselines"].values()]
        for split in summary.get("chance", {}):
            for words, splits in models:
                block = splits.get(split)
                if block is None:
                    continue
                balanced = "n/a" if block.get("balanced_accuracy") is None else f"{block['balanced_accuracy']:.1%}"
                lines.append(f"| {name} | {split} | {words} | {block['n']} | {_pct(block)} | {balanced} | "
                             + " | ".join(_pct(block["per_stage"][s]) for s in CLASSES) + " |")
    return "\n".join(lines)


def _test_accuracy(block: dict[str, Any] | None) -> float | None:
    return None if block is None else block.get("accuracy")


def across_runs_table(runs_read: dict[str, dict[str, Any]]) -> str:
    """One row per run with its test accuracy as the images are, under each probe and for the colour-only
    models; then the mean, standard deviation and range over the runs. Over the K smear folds of one setting
    this is the group cross-validation: the spread says how much one held-out split can mislead.

    ``runs_read`` maps a run's name to {"split": words, "context": context.json or None,
    "baselines": baselines.json or None}.
    """
    columns = {**VARIANT_TITLES, **{b: f"{runs.BASELINE_WORDS[b]} (test)" for b in runs.HEADLINE_BASELINES}}
    rows = {}
    for name, read in runs_read.items():
        variants = (read.get("context") or {}).get("variants", {})
        shortcuts = (read.get("baselines") or {}).get("baselines", {})
        rows[name] = {v: _test_accuracy(variants.get(v, {}).get("all")) for v in VARIANT_TITLES}
        rows[name] |= {b: _test_accuracy(shortcuts.get(b, {}).get("splits", {}).get("test"))
                       for b in runs.HEADLINE_BASELINES}
    shown = [c for c in columns if any(row[c] is not None for row in rows.values())]
    lines = ["| run | split | " + " | ".join(columns[c] for c in shown) + " |", "|---|---|" + "---|" * len(shown)]
    for name, row in rows.items():
        lines.append(f"| {name} | {runs_read[name]['split']} | "
                     + " | ".join("n/a" if row[c] is None else f"{row[c]:.1%}" for c in shown) + " |")
    cells = []
    for c in shown:
        values = np.array([row[c] for row in rows.values() if row[c] is not None], float)
        cells.append(f"{values.mean():.1%} ± {values.std(ddof=1):.1%} ({values.min():.1%}-{values.max():.1%})"
                     if len(values) > 1 else "n/a")
    lines.append(f"| mean ± SD (range) over {len(rows)} runs | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _split_words(run: Path) -> str:
    if not (run / runs.CONFIG).is_file():
        return "n/a"
    split, fold = runs.run_split(runs.read_json(run / runs.CONFIG))
    return f"smear fold {fold}" if split == "smear" else split


def ranking_table(localised: dict[str, dict[str, Any]]) -> str:
    """Every method x layer of each run, best localising first."""
    lines = ["| run | method | layer | concentration | pointing | verdict |", "|---|---|---|---|---|---|"]
    for name, summary in localised.items():
        for r in summary["ranking"]:
            lines.append(f"| {name} | {r['method']} | {r['layer']} | {r['concentration']:.2f} | {r['pointing']:.2f} | "
                         f"{LOCALISATION_VERDICTS[r['verdict']]} |")
    return "\n".join(lines)


def stage_table(localised: dict[str, dict[str, Any]], pairs: Sequence[tuple[str, str]]) -> str:
    """Per stage, for the chosen method x layer pairs: the maps against both baselines, with 95% intervals."""
    lines = ["| run | method at layer | stage | concentration | centred blob | shuffled | pointing | "
             "pointing, blob | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for name, summary in localised.items():
        for result in summary["results"]:
            if (result["method"], result["layer"]) not in pairs:
                continue
            for stage, block in {**result["per_stage"], "all": result["all"]}.items():
                lines.append(
                    f"| {name} | {result['method']} at {result['layer']} | {stage} | "
                    f"{_stat(block['map']['concentration'])} | {_stat(block['centre']['concentration'])} | "
                    f"{_stat(block['shuffled']['concentration'])} | {_stat(block['map']['pointing'])} | "
                    f"{_stat(block['centre']['pointing'])} | {LOCALISATION_VERDICTS[block['verdict']]} |")
    return "\n".join(lines)


def report(run_dirs: Sequence[Path], pairs: Sequence[tuple[str, str]] = ()) -> str:
    """All three tables for the runs that have the files; each run named by its folder."""
    contexts, localised, shortcuts = {}, {}, {}
    for run in map(Path, run_dirs):
        if (run / runs.BASELINES).is_file():
            shortcuts[run.name] = runs.read_json(run / runs.BASELINES)
        if (run / runs.CONTEXT).is_file():
            contexts[run.name] = runs.read_json(run / runs.CONTEXT)
        if (run / runs.CAMS / runs.LOCALISATION).is_file():
            localised[run.name] = runs.read_json(run / runs.CAMS / runs.LOCALISATION)
    parts = []
    if len(set(contexts) | set(shortcuts)) > 1:
        runs_read = {run.name: {"split": _split_words(run), "context": contexts.get(run.name),
                                "baselines": shortcuts.get(run.name)}
                     for run in map(Path, run_dirs) if run.name in contexts or run.name in shortcuts}
        parts += ["Test accuracy per run, and over the runs (for the K smear folds of one setting: the group "
                  "cross-validation):", "", across_runs_table(runs_read), ""]
    if shortcuts:
        parts += ["Colour-only models beside the network, on the same images (Wilson 95% intervals):", "",
                  baselines_table(shortcuts), ""]
    if contexts:
        parts += ["Accuracy on the test images (Wilson 95% intervals):", "", context_table(contexts)]
        if any("stain_swapped" in c for c in contexts.values()):
            parts += ["", "With another stage's stain, answers that name the donor's stage (Wilson 95% intervals):",
                      "", donor_table(contexts)]
    if localised:
        chosen = list(pairs) or sorted({(r["method"], r["layer"]) for s in localised.values()
                                        for r in s["ranking"][:1]})
        parts += ["", "Method x layer, best localising first (mean over stages):", "", ranking_table(localised),
                  "", "Per stage (bootstrap 95% intervals):", "", stage_table(localised, chosen)]
    return "\n".join(parts) if parts else "no baselines.json, context.json or cams/localisation.json in these runs"
