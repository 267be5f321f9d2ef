"""Which trial to recommend: the most accurate one that reads the cells, and the trade-off it comes from.

In the ALL data set each stage comes from its own smears, so a model can name the stage from the slide's
colour without reading a leukocyte. Validation macro-F1 alone rewards that shortcut. Every trial therefore
also measures, on its validation images with a leukocyte mask, its accuracy with the leukocytes removed
(``val_context.json``, engine.evaluate.probe_val_context). The rule (``RULE``):

    the recommended trial is the most accurate trial (validation macro-F1) whose validation accuracy
    without leukocytes is at most MARGIN (10 points) above chance, chance being the share of the most
    common stage on those images; if no trial meets that, the most accurate trial, flagged
    "no trial reads the cells".

One-sided on purpose: a model that, without the cells, falls *below* chance has nothing right left to go on,
which is what reading the cells looks like. Ties in macro-F1 go to the trial that keeps less without the
leukocytes, then to the earlier trial in the order given (summary.csv's).

Pure functions of plain values (no Ray, no pandas, no files), shared by the finish step, the Sweeps page and
the tests; ``pareto_front`` is the trade-off the page draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

MARGIN = 0.10
RULE = ("the most accurate trial (validation macro-F1) whose validation accuracy without leukocytes is at most "
        f"{MARGIN * 100:.0f} points above chance (chance: the share of the most common stage on those images); "
        "if no trial meets it, the most accurate trial, flagged \"no trial reads the cells\"")
# The verdicts recommended.json carries.
READS_CELLS = "reads the cells"  # the rule is met
NO_TRIAL_READS_CELLS = "no trial reads the cells"  # measured, but every trial keeps too much without leukocytes
NOT_MEASURED = "not measured"  # no trial has a context probe: the data has no masks, or the sweep predates it
VERDICTS = (READS_CELLS, NO_TRIAL_READS_CELLS, NOT_MEASURED)


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, empty text, NaN, not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def reads_cells(without_cells: Any, chance: Any, margin: float = MARGIN) -> bool | None:
    """Whether accuracy without leukocytes stays at most ``margin`` above ``chance``; None when either is missing."""
    acc, base = number(without_cells), number(chance)
    if acc is None or base is None:
        return None
    return acc <= base + margin + 1e-12


def recommend(trials: Sequence[Mapping[str, Any]], margin: float = MARGIN) -> dict[str, Any] | None:
    """Apply the rule to ``trials``: mappings with ``trial_id``, ``score`` (validation macro-F1),
    ``without_cells`` (validation accuracy without leukocytes) and ``chance``; any value may be missing.

    Only trials with a score take part. Returns None when none has one, else ``{"trial_id"`` (recommended),
    ``"most_accurate"`` (its id), ``"rule_met"``, ``"verdict"`` (one of VERDICTS), ``"measured"`` (trials with a
    probe), ``"reading_cells"`` (trials that meet the margin), ``"candidates"``, ``"margin"``}.
    """
    scored = [(i, t) for i, t in enumerate(trials) if number(t.get("score")) is not None]
    if not scored:
        return None
    # The most accurate: highest score, the earlier trial on ties (as the finish step's ranking).
    most = min(scored, key=lambda it: (-number(it[1]["score"]), it[0]))[1]
    measured = [(i, t) for i, t in scored if reads_cells(t.get("without_cells"), t.get("chance"), margin) is not None]
    eligible = [(i, t) for i, t in measured if reads_cells(t.get("without_cells"), t.get("chance"), margin)]
    if eligible:
        chosen = min(eligible, key=lambda it: (-number(it[1]["score"]), number(it[1]["without_cells"]), it[0]))[1]
        verdict = READS_CELLS
    else:
        chosen, verdict = most, (NO_TRIAL_READS_CELLS if measured else NOT_MEASURED)
    return {"trial_id": str(chosen["trial_id"]), "most_accurate": str(most["trial_id"]), "rule_met": bool(eligible),
            "verdict": verdict, "candidates": len(scored), "measured": len(measured), "reading_cells": len(eligible),
            "margin": margin}


def pareto_front(points: Sequence[tuple[Any, Any]]) -> list[bool]:
    """For each (reliance, accuracy) point, whether it is on the Pareto front: no other point has reliance as low
    or lower *and* accuracy as high or higher, with one of the two strictly better. Reliance is minimised
    (validation accuracy without leukocytes, or its gap to chance), accuracy maximised (validation macro-F1).

    Equal points are all on the front (neither dominates the other); a point with a missing value is not.
    """
    values = [(number(x), number(y)) for x, y in points]
    out = []
    for x, y in values:
        if x is None or y is None:
            out.append(False)
            continue
        dominated = any(ox is not None and oy is not None and ox <= x and oy >= y and (ox < x or oy > y)
                        for ox, oy in values)
        out.append(not dominated)
    return out


def _pct(value: Any) -> str:
    v = number(value)
    return "?" if v is None else f"{v:.0%}"


def _f1(value: Any) -> str:
    v = number(value)
    return "?" if v is None else f"{v:.3f}"


def explain(recommended: Mapping[str, Any], most_accurate: Mapping[str, Any], verdict: str,
            margin: float = MARGIN) -> str:
    """The recommendation in words a meeting reads: ``recommended`` and ``most_accurate`` are mappings with
    ``trial_id``, ``score``, ``without_cells`` and ``chance`` (plain text, no markup: the caller escapes it)."""
    rec, top = recommended, most_accurate
    points = f"{margin * 100:.0f} points"
    if verdict == NOT_MEASURED:
        return (f"No trial was measured without its leukocytes, so nothing says whether any of them reads the cells. "
                f"Trial {top['trial_id']} is shown as the most accurate (validation macro-F1 {_f1(top['score'])}).")
    if verdict == NO_TRIAL_READS_CELLS:
        return (f"No trial reads the cells: with the leukocytes removed, every trial measured still gets more than "
                f"{points} above chance right, so its accuracy comes at least partly from the slide around the "
                f"cells. Trial {top['trial_id']}, the most accurate (validation macro-F1 {_f1(top['score'])}), keeps "
                f"{_pct(top.get('without_cells'))} without leukocytes (chance {_pct(top.get('chance'))}); it is "
                f"shown, flagged.")
    own = (f"Trial {rec['trial_id']} (validation macro-F1 {_f1(rec['score'])}) falls to "
           f"{_pct(rec.get('without_cells'))} when its leukocytes are removed, against {_pct(rec.get('chance'))} "
           f"for always naming the most common stage: its answers come from the cells.")
    if str(rec["trial_id"]) == str(top["trial_id"]):
        return f"The most accurate trial also reads the cells. {own}"
    kept = number(top.get("without_cells"))
    why = ("was not measured without its leukocytes" if kept is None else
           f"still gets {_pct(kept)} right with no leukocyte in the image (chance {_pct(top.get('chance'))}): part "
           "of its accuracy comes from the slide's colour and background, not from the cells")
    return f"{own} The most accurate trial, {top['trial_id']} (validation macro-F1 {_f1(top['score'])}), {why}."
