"""The end of a sweep: evaluate and explain the best trial, write best.json, rank the trials; name the
recommended trial (recommended.json), evaluated and explained too when it is another one.

Works from the sweep folder alone (summary.csv and the trial run folders), without Ray, so
``python -m tuning finish SWEEP_DIR`` can redo it at any time. The trials it weighs (those that
trained to the end, or all with a checkpoint if none did) get their context probe measured where
they lack one (a sweep from before the probe, a trial whose probe failed), and summary.csv gains
the probe columns.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

from engine import runs
from engine.errors import DamagedFileError, EngineError

from . import recommend as rule
from .layout import (
    BEST,
    PARAM_PREFIX,
    PROBE_COLUMNS,
    RECOMMENDED,
    REPEAT_PARAMS,
    REPEAT_SCORES,
    REPEATS,
    SUMMARY,
    TRIAL_COMPLETE,
    TRIAL_JSON,
    TRIAL_PENDING,
    TRIAL_RUNNING,
    TRIAL_STOPPED,
)

log = logging.getLogger(__name__)


class FinishError(EngineError, RuntimeError):
    """A sweep folder without a trial that can be evaluated."""


# The columns every summary.csv has (tuning/summary.py writes them first); without them it is damaged.
SUMMARY_REQUIRED = ("trial_id", "status", "run_dir")


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    """summary.csv's rows ([] before the first trial); DamagedFileError naming it when it is not that table,
    so that nothing rewrites a damaged one from a misreading of it."""
    path = Path(sweep_dir) / SUMMARY
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DamagedFileError(path, f"damaged: not the table of trials ({exc})", SUMMARY_ADVICE) from None
    missing = [c for c in SUMMARY_REQUIRED if c not in columns]
    if missing or any(None in row for row in rows):
        what = f"lacks the column(s) {', '.join(missing)}" if missing else "has rows longer than its header"
        raise DamagedFileError(path, f"damaged: the table of trials {what}", SUMMARY_ADVICE)
    return rows


SUMMARY_ADVICE = ("the trial folders under trials/ are untouched: restore summary.csv from a copy; each trial can "
                  "still be evaluated with `python -m engine evaluate TRIAL`")


def _score(row: dict[str, str]) -> float:
    """The trial's best val macro-F1, or -inf for a trial that never finished an epoch."""
    try:
        return float(row.get("best_val_macro_f1") or "-inf")
    except ValueError:
        return float("-inf")


def ranked(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Trials by best val macro-F1, best first (a stable sort: ties keep summary order)."""
    return sorted(rows, key=_score, reverse=True)


def candidates(sweep_dir: Path, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The trials a sweep's result is chosen from, in summary order: those with a val macro-F1 and a best.pt that
    trained to the end, or, if none did, those cut short by ASHA (or interrupted) too; [] when there are none."""
    def usable(row: dict[str, str]) -> bool:
        return (_score(row) > float("-inf")
                and (Path(sweep_dir) / row["run_dir"] / runs.CHECKPOINTS / runs.BEST_CHECKPOINT).is_file())

    for statuses in ((TRIAL_COMPLETE,), (TRIAL_COMPLETE, TRIAL_STOPPED, TRIAL_RUNNING, TRIAL_PENDING)):
        found = [r for r in rows if r["status"] in statuses and usable(r)]
        if found:
            return found
    return []


def pick_best(sweep_dir: Path, rows: list[dict[str, str]]) -> dict[str, str]:
    """The best trial with a best.pt: complete trials first, trials cut by ASHA only if none completed."""
    found = candidates(sweep_dir, rows)
    if not found:
        raise FinishError(f"{sweep_dir}: no trial with a val macro-F1 and checkpoints/best.pt to evaluate")
    return ranked(found)[0]


def fill_probes(sweep_dir: Path, rows: list[dict[str, str]], which: list[dict[str, str]]) -> bool:
    """Give each trial of ``which`` (rows of ``rows``) its context-probe columns: from its val_context.json, measured
    first where it has none newer than its best checkpoint. Rewrites summary.csv (with the probe columns, added to
    an older sweep's header) when a value changed; returns whether any did."""
    from .trainable import probe_scores

    changed = False
    for row in which:
        if row.get("val_acc_without_cells") not in (None, "") and row.get("val_chance") not in (None, ""):
            continue  # reported by the trial itself
        scores = probe_scores(Path(sweep_dir) / row["run_dir"], "auto", reuse=True)
        for key in PROBE_COLUMNS:
            value = "" if scores.get(key) is None else str(scores[key])
            if str(row.get(key) or "") != value:
                row[key], changed = value, True
    if changed:
        header = list(rows[0]) + [k for k in PROBE_COLUMNS if k not in rows[0]]
        runs.write_csv(Path(sweep_dir) / SUMMARY, header, rows)
    return changed


def _probe(row: dict[str, str]) -> dict[str, float | int | None]:
    """A trial's probe columns as numbers (the image count as an integer), None where empty."""
    out: dict[str, float | int | None] = {k: rule.number(row.get(k)) for k in PROBE_COLUMNS}
    if out.get("val_probe_images") is not None:
        out["val_probe_images"] = int(out["val_probe_images"])
    return out


def _entry(row: dict[str, str]) -> dict[str, Any]:
    """A trial as the rule reads it (tuning.recommend)."""
    return {"trial_id": row["trial_id"], "score": rule.number(row.get("best_val_macro_f1")),
            "without_cells": rule.number(row.get("val_acc_without_cells")),
            "chance": rule.number(row.get("val_chance"))}


def _test(metrics: dict[str, Any]) -> dict[str, Any]:
    test = metrics["splits"].get("test", {})
    return {k: test.get(k) for k in ("accuracy", "macro_f1", "accuracy_ci95", "macro_f1_ci95")}


def recommendation(sweep_dir: Path, rows: list[dict[str, str]], best: dict[str, Any], *,
                   explain: bool) -> dict[str, Any]:
    """Apply the rule (tuning.recommend) to the candidate trials; evaluate and explain the recommended trial when
    it is not the best one (already evaluated); the content of recommended.json."""
    from engine.evaluate import evaluate

    found = candidates(sweep_dir, rows)
    by_id = {r["trial_id"]: r for r in found}
    top = by_id[best["trial_id"]]  # the rule's most accurate trial: the same ranking as pick_best's
    chosen = rule.recommend([_entry(r) for r in found]) or {
        "trial_id": top["trial_id"], "rule_met": False, "verdict": rule.NOT_MEASURED, "candidates": len(found),
        "measured": 0, "reading_cells": 0, "margin": rule.MARGIN}
    row = by_id[chosen["trial_id"]] if chosen["rule_met"] else top
    same = row is top
    if same:
        test, explained = best["test"], best["explained"]
    else:
        run_dir = Path(sweep_dir) / row["run_dir"]
        log.info("recommended trial %s (%s): evaluating %s", row["trial_id"], chosen["verdict"], run_dir)
        test = _test(evaluate(run_dir))
        explained = explain_best(run_dir) if explain else False

    def scores(r: dict[str, str]) -> dict[str, Any]:
        return {"best_val_macro_f1": _score(r), **_probe(r)}

    return {
        "trial_id": row["trial_id"], "run_dir": row["run_dir"], "params": _params(sweep_dir, row),
        "scores": scores(row), "test": test, "explained": explained,
        "rule": rule.RULE, "margin": chosen["margin"], "rule_met": chosen["rule_met"], "verdict": chosen["verdict"],
        "reason": rule.explain(_entry(row), _entry(top), chosen["verdict"], chosen["margin"]),
        "same_as_most_accurate": same,
        "most_accurate": {"trial_id": top["trial_id"], "run_dir": top["run_dir"], "params": best["params"],
                          "scores": scores(top), "test": best["test"]},
        "candidates": chosen["candidates"], "measured": chosen["measured"], "reading_cells": chosen["reading_cells"],
    }


def explain_best(run_dir: Path) -> bool:
    """Grad-CAM explanations of ``run_dir`` with the explainer's defaults; a failure is logged, not fatal.

    The sweep's result (best.json, the test metrics) stands without them, and ``python -m engine
    explain RUN`` can add them later.
    """
    from engine.explain.pipeline import explain_run

    try:
        explain_run(run_dir)
    except Exception:  # an explainer bug (or a full disk) must not lose the sweep's result
        log.warning("explanations of %s failed; the sweep result stands without them", run_dir, exc_info=True)
        return False
    return True


def finish(sweep_dir: Path, *, explain: bool = True) -> dict[str, Any]:
    """Evaluate (and explain) the best trial on the test split; write and return best.json. Then name the
    recommended trial (recommended.json), evaluated and explained too where it is another trial."""
    from engine.evaluate import evaluate

    sweep_dir = Path(sweep_dir)
    rows = read_summary(sweep_dir)
    best = pick_best(sweep_dir, rows)
    fill_probes(sweep_dir, rows, candidates(sweep_dir, rows))
    run_dir = sweep_dir / best["run_dir"]
    log.info("best trial %s (val macro-F1 %s): evaluating %s", best["trial_id"], best["best_val_macro_f1"], run_dir)
    metrics = evaluate(run_dir)
    explained = explain_best(run_dir) if explain else False
    trial_json = run_dir / TRIAL_JSON
    params = runs.read_json(trial_json).get("params", {}) if trial_json.is_file() else {
        k.removeprefix(PARAM_PREFIX): v for k, v in best.items() if k.startswith(PARAM_PREFIX)}
    result = {
        "trial_id": best["trial_id"],
        "run_dir": best["run_dir"],
        "params": params,
        "best_val_macro_f1": _score(best),
        "test": _test(metrics),
        "explained": explained,
    }
    runs.write_json(sweep_dir / BEST, result)
    runs.write_json(sweep_dir / RECOMMENDED, recommendation(sweep_dir, rows, result, explain=explain))
    spread = repeats(sweep_dir, read_summary(sweep_dir))
    if spread is not None:
        runs.write_json(sweep_dir / REPEATS, spread)
    return result


# ----------------------------------------------------------------------------- repeats: folds and seeds


def _params(sweep_dir: Path, row: dict[str, str]) -> dict[str, Any]:
    """A trial's sampled parameters, typed as trial.json holds them (summary.csv's are text)."""
    trial_json = Path(sweep_dir) / row["run_dir"] / TRIAL_JSON
    if trial_json.is_file():
        params = runs.read_json(trial_json).get("params")
        if isinstance(params, dict):
            return params
    return {k.removeprefix(PARAM_PREFIX): v for k, v in row.items() if k.startswith(PARAM_PREFIX)}


def _scores(run_dir: Path) -> dict[str, float | None]:
    """REPEAT_SCORES of an evaluated run, from its metrics.json; the run is evaluated first where metrics.json is
    missing or older than its best checkpoint."""
    metrics_file, best = run_dir / runs.METRICS, run_dir / runs.CHECKPOINTS / runs.BEST_CHECKPOINT
    try:
        fresh = metrics_file.is_file() and metrics_file.stat().st_mtime_ns >= best.stat().st_mtime_ns
        metrics = runs.read_json(metrics_file) if fresh else None
    except DamagedFileError as exc:  # derived from the checkpoint: written again below
        log.warning("%s; evaluating the trial again", exc)
        metrics = None
    if not isinstance(metrics, dict):
        from engine.evaluate import evaluate

        metrics = evaluate(run_dir)
    splits = metrics.get("splits", {})
    return {f"{split}_{key}": splits.get(split, {}).get(key)
            for split, key in (("test", "accuracy"), ("test", "macro_f1"), ("val", "accuracy"), ("val", "macro_f1"))}


def spread(values: list[float]) -> dict[str, float | int | None]:
    """n, mean, sample standard deviation (n - 1; None below two values), min and max."""
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"n": len(values), "mean": mean, "std": std, "min": min(values), "max": max(values)}


def repeats(sweep_dir: Path, rows: list[dict[str, str]]) -> dict[str, Any] | None:
    """Mean and spread of every setting's repeats (trials equal but for REPEAT_PARAMS), or None when the sweep
    searches none of those parameters.

    Each trial that trained to the end (status complete) and has a best checkpoint counts, evaluated on its own
    test split (for split=smear: its fold) where it has not been yet; trials stopped early by the scheduler,
    unfinished or failing to evaluate are listed in ``left_out`` with the reason, since the spread of a
    cross-validation over the folds that happened to finish would mislead.
    """
    sweep_dir = Path(sweep_dir)
    searched = [k.removeprefix(PARAM_PREFIX) for k in (rows[0] if rows else {}) if k.startswith(PARAM_PREFIX)]
    repeat_params = [k for k in searched if k in REPEAT_PARAMS]
    if not repeat_params:
        return None
    settings: dict[str, dict[str, Any]] = {}
    for row in rows:
        params = _params(sweep_dir, row)
        fixed = {k: v for k, v in params.items() if k not in REPEAT_PARAMS}
        label = ", ".join(f"{k}={_short(str(v))}" for k, v in sorted(fixed.items())) or "(every trial)"
        entry = settings.setdefault(label, {"setting": label, "params": fixed, "trials": [], "left_out": []})
        trial = {"trial_id": row["trial_id"], "run_dir": row["run_dir"], **{k: params.get(k) for k in repeat_params}}
        run_dir = sweep_dir / row["run_dir"]
        if row["status"] != TRIAL_COMPLETE or not (run_dir / runs.CHECKPOINTS / runs.BEST_CHECKPOINT).is_file():
            entry["left_out"].append({**trial, "status": row["status"], "reason": "did not train to the end"})
            continue
        try:
            trial.update(_scores(run_dir))
        except Exception as exc:  # one trial that cannot be evaluated must not lose the others' spread
            log.warning("%s could not be evaluated; left out of the spread", run_dir, exc_info=True)
            entry["left_out"].append({**trial, "status": row["status"], "reason": f"evaluation failed: {exc}"})
            continue
        entry["trials"].append(trial)
    for entry in settings.values():
        entry["trials"].sort(key=lambda t: tuple(str(t.get(k)) for k in repeat_params))
        for score in REPEAT_SCORES:
            entry[score] = spread([t[score] for t in entry["trials"] if isinstance(t.get(score), (int, float))])
    return {"repeat_params": repeat_params, "settings": list(settings.values())}


def format_repeats(data: dict[str, Any]) -> str:
    """One line per setting: its repeats' test and validation accuracy, mean ± std (min-max)."""
    def block(name: str, s: dict[str, Any]) -> str:
        if not s["n"]:
            return f"{name} -"
        std = f" ± {s['std']:.4f}" if s["std"] is not None else ""
        return f"{name} {s['mean']:.4f}{std} (min {s['min']:.4f}, max {s['max']:.4f})"

    lines = []
    for entry in data["settings"]:
        over = " and ".join(data["repeat_params"])
        left = f"; {len(entry['left_out'])} left out (did not finish)" if entry["left_out"] else ""
        lines.append(f"{entry['setting']}: {entry['test_accuracy']['n']} repeats over {over}: "
                     f"{block('test accuracy', entry['test_accuracy'])}, "
                     f"{block('val accuracy', entry['val_accuracy'])}, "
                     f"{block('test macro-F1', entry['test_macro_f1'])}{left}")
    return "\n".join(lines)


def _short(value: str) -> str:
    """A float parameter in 4 significant digits (0.0031622 -> 0.003162); anything else as is."""
    if not any(c in value for c in ".e"):
        return value
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def format_recommendation(data: dict[str, Any]) -> str:
    """recommended.json for the terminal: the recommended trial, the most accurate one, the rule and the reason."""
    def line(entry: dict[str, Any]) -> str:
        s, test = entry.get("scores") or {}, entry.get("test") or {}
        parts = [f"val macro-F1 {s['best_val_macro_f1']:.4f}" if rule.number(s.get("best_val_macro_f1")) is not None
                 else "val macro-F1 -"]
        if rule.number(s.get("val_acc_without_cells")) is not None and rule.number(s.get("val_chance")) is not None:
            parts.append(f"val accuracy without leukocytes {s['val_acc_without_cells']:.3f} "
                         f"(chance {s['val_chance']:.3f})")
        else:
            parts.append("val accuracy without leukocytes not measured")
        if rule.number(test.get("accuracy")) is not None:
            parts.append(f"test accuracy {test['accuracy']:.4f}")
        return ", ".join(parts)

    top = data["most_accurate"]
    lines = [f"recommended trial {data['trial_id']} ({data['verdict']}): {line(data)}"]
    if not data.get("same_as_most_accurate"):
        lines.append(f"most accurate trial {top['trial_id']}: {line(top)}")
    lines += [f"rule: {data['rule']}", data.get("reason") or ""]
    return "\n".join(x for x in lines if x)


def format_table(rows: list[dict[str, str]], best_id: str | None = None, recommended_id: str | None = None) -> str:
    """A ranked, fixed-width table of the trials for the terminal: * the best trial, + the recommended one."""
    params = [k for k in (rows[0] if rows else {}) if k.startswith(PARAM_PREFIX)]
    header = ["rank", "trial_id", "status", "best_f1", "val_acc", "no_cells", "chance", "epochs", "seconds",
              *(p.removeprefix(PARAM_PREFIX) for p in params)]
    lines = []
    for rank, row in enumerate(ranked(rows), 1):
        def num(key: str, digits: int, row: dict[str, str] = row) -> str:
            try:
                return f"{float(row[key]):.{digits}f}"
            except (KeyError, ValueError):
                return "-"
        mark = ("*" if row["trial_id"] == best_id else "") + ("+" if row["trial_id"] == recommended_id else "")
        values = [f"{rank}{mark}", row["trial_id"], row["status"], num("best_val_macro_f1", 4), num("val_acc", 4),
                  num("val_acc_without_cells", 3), num("val_chance", 3), row.get("epochs") or "-", num("seconds", 0)]
        for p in params:
            values.append(_short(row.get(p) or ""))
        lines.append(values)
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
    render = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
              for line in [header, *lines]]
    return "\n".join(render)
