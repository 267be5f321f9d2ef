"""The artefacts of prepared data, runs and sweeps, read through the confined reader (dashboard.files).

Each reader returns what a page shows, or raises LoadError with the reason; the file and column names come
from the contract modules (engine.runs for run folders and prepared data, tuning.layout for sweep folders),
which need neither torch nor ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from engine import modelcard, runs
from engine.matching import match_images
from engine.runs import CLASSES, MANIFEST, REPORT, SPLITS
from tuning import layout

from .discovery import SAMPLES
from .evidence import shape_problem as evidence_shape_problem
from .files import LoadError, MissingFile, engine_reader, file_in, read_csv, read_json, read_text, usable_rows
from .paths import OutsideOutputs, inside, relative

# ----------------------------------------------------------------------------- prepared data


def data_report(root: Path | str, prepared: Path | str) -> dict[str, Any]:
    report = read_json(root, Path(prepared) / REPORT)
    if not isinstance(report, dict) or "counts" not in report:
        raise LoadError(f"{relative(root, prepared)}/{REPORT} lacks 'counts'")
    return report


def manifest(root: Path | str, prepared: Path | str) -> pd.DataFrame:
    return read_csv(root, Path(prepared) / MANIFEST, required=("path", "class", "split"))


def counts_frame(report: dict[str, Any]) -> pd.DataFrame:
    """Long table: stage, split, images."""
    rows = [{"stage": cls, "split": split, "images": int(report["counts"].get(cls, {}).get(split, 0))}
            for cls in CLASSES for split in SPLITS]
    return pd.DataFrame(rows)


def samples(root: Path | str, prepared: Path | str) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for cls in CLASSES:
        try:
            folder = inside(root, Path(prepared) / SAMPLES / cls)
        except OutsideOutputs:
            continue
        out[cls] = sorted(p for p in folder.glob("*.png") if p.is_file()) if folder.is_dir() else []
    return out


# ----------------------------------------------------------------------------- runs

def json_object(root: Path | str, path: Path | str) -> dict[str, Any]:
    """A JSON file that must hold an object (config.json, sweep.json ...); LoadError naming it otherwise."""
    data = read_json(root, path)
    if not isinstance(data, dict):
        raise LoadError(f"{relative(root, path)} is not a JSON object")
    return data


def run_config(root: Path | str, run: Path | str) -> dict[str, Any]:
    return json_object(root, Path(run) / runs.CONFIG)


def history(root: Path | str, run: Path | str) -> pd.DataFrame:
    frame = read_csv(root, Path(run) / runs.HISTORY, required=runs.HISTORY_COLUMNS)
    return frame.sort_values("epoch")


def metrics(root: Path | str, run: Path | str) -> dict[str, Any]:
    data = read_json(root, Path(run) / runs.METRICS)
    if not isinstance(data, dict) or not isinstance(data.get("splits"), dict) or not data["splits"]:
        raise LoadError(f"{relative(root, run)}/{runs.METRICS} has no evaluated split")
    for split, m in data["splits"].items():
        if not isinstance(m, dict):
            raise LoadError(f"{relative(root, run)}/{runs.METRICS}: split {split} is not a JSON object")
        for key in ("accuracy", "macro_f1", "confusion_matrix", "per_class"):
            if key not in m:
                raise LoadError(f"{relative(root, run)}/{runs.METRICS}: split {split} lacks {key!r}")
    return data


def predictions(root: Path | str, run: Path | str, problems: list[str] | None = None) -> pd.DataFrame:
    """predictions.csv, rows with blank or malformed fields dropped (and counted in ``problems``)."""
    path = Path(run) / runs.PREDICTIONS
    frame = read_csv(root, path, required=runs.PREDICTION_COLUMNS, as_text=True)
    probabilities = [c for c in runs.PREDICTION_COLUMNS if c.startswith("prob_")]
    return usable_rows(frame, relative(root, path), text=("split", "path", "sha256", "true", "pred"),
                       numbers={c: (0.0, 1.0) for c in ("confidence", *probabilities)}, problems=problems)


def cams_meta(root: Path | str, run: Path | str) -> dict[str, Any]:
    return read_json(root, Path(run) / runs.CAMS / runs.CAMS_META)


def cams_index(root: Path | str, run: Path | str, problems: list[str] | None = None) -> pd.DataFrame:
    """cams/index.csv, rows with blank or malformed fields dropped (and counted in ``problems``).

    The pages filter, sort and format these columns, so a blank method or a confidence of "high"
    would otherwise fail a page; LoadError when no row is usable.
    """
    path = Path(run) / runs.CAMS / runs.CAMS_INDEX
    frame = read_csv(root, path, required=runs.INDEX_COLUMNS, as_text=True)
    text = tuple(c for c in runs.INDEX_COLUMNS if c not in ("confidence", "correct", "target"))
    frame = usable_rows(frame, relative(root, path), text=text, numbers={"confidence": (0.0, 1.0)},
                        allowed={"target": runs.TARGETS, "correct": ("0", "1")}, problems=problems)
    return frame.assign(correct=frame["correct"].astype(int))


def split_problem(root: Path | str, run: Path | str) -> str | None:
    """Why a run's prepared data no longer holds the split it was trained on (engine.runs' rule and sentence),
    or None when it still does or this cannot be told: a run from before the record, or prepared data outside
    the outputs folder (which the dashboard does not read)."""
    return runs.manifest_check(Path(run), engine_reader(root), lambda p: relative(root, p))[1]


def faithfulness(root: Path | str, run: Path | str) -> dict[str, Any]:
    """``cams/faithfulness_summary.json``; LoadError when missing, unreadable or of the wrong shape."""
    path = Path(run) / runs.CAMS / runs.FAITHFULNESS_SUMMARY
    data = read_json(root, path)
    problem = evidence_shape_problem("faithfulness", data) if isinstance(data, dict) else "not a JSON object"
    if problem:
        raise LoadError(f"{relative(root, path)} cannot be shown ({problem})")
    return data


def stage_file(root: Path | str, run: Path | str, stage: str, name: str) -> Path | None:
    """``cams/stages/<stage>/<name>`` when it exists (stage must be one of the classes)."""
    if stage not in CLASSES:
        return None
    try:
        path = inside(root, Path(run) / runs.CAMS / runs.CAMS_STAGES / stage / name)
    except OutsideOutputs:
        return None
    return path if path.is_file() else None


def cam_path(root: Path | str, run: Path | str, rel: str) -> Path | None:
    """A file named in cams/index.csv (relative to cams/), or None if missing or escaping the outputs."""
    try:
        path = file_in(root, Path(run) / runs.CAMS, rel)
    except LoadError:
        return None
    return path if path.is_file() else None


def load_run(root: Path | str, run: Path | str) -> dict[str, Any]:
    """What the pages need of one run, each part or the reason it is missing (never raises)."""
    out: dict[str, Any] = {"problems": []}
    for name, reader in (("config", run_config), ("history", history), ("metrics", metrics),
                         ("predictions", lambda r, p: predictions(r, p, out["problems"]))):
        try:
            out[name] = reader(root, run)
        except LoadError as exc:
            out[name] = None
            out["problems"].append(str(exc))
    return out


# ----------------------------------------------------------------------------- sweeps

def sweep_info(root: Path | str, sweep: Path | str) -> dict[str, Any]:
    return json_object(root, Path(sweep) / layout.SWEEP_JSON)


def best_trial(root: Path | str, sweep: Path | str) -> dict[str, Any] | None:
    try:
        best = read_json(root, Path(sweep) / layout.BEST)
    except LoadError:
        return None
    return best if isinstance(best, dict) else None


def _trials_from_folders(root: Path | str, sweep: Path) -> pd.DataFrame:
    rows = []
    folder = inside(root, sweep / layout.TRIALS)
    for trial_dir in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        try:
            trial = read_json(root, trial_dir / layout.TRIAL_JSON)
            if not isinstance(trial, dict):
                raise LoadError(f"{layout.TRIAL_JSON} is not a JSON object")
        except LoadError as exc:
            trial = {"trial_id": trial_dir.name, "status": layout.TRIAL_ERROR, "error": f"unreadable: {exc}"}
        row = {"trial_id": trial.get("trial_id", trial_dir.name),
               "status": trial.get("status", layout.TRIAL_PENDING),
               **{f"{layout.PARAM_PREFIX}{k}": v for k, v in (trial.get("params") or {}).items()},
               "run_dir": relative(sweep, trial_dir), "error": trial.get("error") or ""}
        try:
            hist = history(root, trial_dir)
            row.update(val_macro_f1=float(hist["val_macro_f1"].iloc[-1]),
                       best_val_macro_f1=float(hist["val_macro_f1"].max()),
                       val_acc=float(hist["val_acc"].iloc[-1]) if "val_acc" in hist else None,
                       epochs=int(hist["epoch"].max()))
        except (LoadError, IndexError, ValueError):
            pass
        rows.append(row)
    return pd.DataFrame(rows)


def trials(root: Path | str, sweep: Path | str) -> pd.DataFrame:
    """One row per trial: summary.csv when present (else built from trials/*/trial.json).

    Adds ``run_path`` (absolute, checked inside the outputs) or "" when the trial has no folder.
    """
    sweep = Path(sweep)
    try:
        frame = read_csv(root, sweep / layout.SUMMARY, required=("trial_id", "status")).copy()
    except LoadError:
        frame = _trials_from_folders(root, sweep)
    if frame.empty:
        return pd.DataFrame(columns=["trial_id", "status", "best_val_macro_f1", "run_path"])
    frame["trial_id"] = frame["trial_id"].astype(str)
    frame["status"] = frame["status"].fillna(layout.TRIAL_PENDING).astype(str)
    for column in ("val_macro_f1", "best_val_macro_f1", "val_acc", "epochs", "seconds"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    if "best_val_macro_f1" not in frame:
        frame["best_val_macro_f1"] = frame.get("val_macro_f1", float("nan"))
    if "error" in frame:
        frame["error"] = frame["error"].astype("string").fillna("").astype(str)

    def locate(rel: Any) -> str:
        if not isinstance(rel, str) or not rel:
            return ""
        try:
            path = inside(root, sweep / rel)
        except OutsideOutputs:
            return ""
        return str(path) if path.is_dir() else ""

    run_dirs = frame["run_dir"] if "run_dir" in frame else f"{layout.TRIALS}/" + frame["trial_id"]
    frame["run_path"] = [locate(r) for r in run_dirs]
    return frame


def param_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(layout.PARAM_PREFIX)]


def evidence(root: Path | str, run: Path | str) -> dict[str, Any]:
    """The evidence files of a run (localisation, faithfulness, sanity, context, baselines), each dict or None.

    A missing file is simply None; an unreadable one is None with its reason in ``problems`` (and in
    ``problem_of``, by key, for a page that shows one file's problem where the file would be shown).
    """
    files = {"localisation": Path(runs.CAMS) / runs.LOCALISATION,
             "faithfulness": Path(runs.CAMS) / runs.FAITHFULNESS_SUMMARY,
             "sanity": Path(runs.CAMS) / runs.SANITY, "context": Path(runs.CONTEXT),
             "baselines": Path(runs.BASELINES)}
    out: dict[str, Any] = {"problems": [], "problem_of": {}}
    for key, rel in files.items():
        out[key] = None
        try:
            data = read_json(root, Path(run) / rel)
        except MissingFile:
            continue
        except LoadError as exc:
            out["problems"].append(str(exc))
            out["problem_of"][key] = str(exc)
            continue
        problem = evidence_shape_problem(key, data) if isinstance(data, dict) else "not a JSON object"
        if problem:
            out["problems"].append(f"{relative(root, Path(run) / rel)} cannot be shown ({problem})")
            out["problem_of"][key] = out["problems"][-1]
        else:
            out[key] = data
    return out


def card_files(root: Path | str, run: Path | str) -> tuple[dict[str, Any], dict[str, str]]:
    """The files a model card is made of (engine.modelcard.CARD_FILES), read through this reader: ({key: parsed
    JSON or None when missing}, {key: why it could not be read})."""
    found: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for key, rel in modelcard.CARD_FILES.items():
        found[key] = None
        try:
            found[key] = read_json(root, Path(run) / rel)
        except MissingFile:
            continue
        except LoadError as exc:
            problems[key] = str(exc)
    return found, problems


def model_card(root: Path | str, run: Path | str) -> tuple[str, bool]:
    """The run's model card and whether it is the one in the run folder (``MODEL_CARD.md``, written by the engine).

    A run without the file (evaluated before cards existed, or not yet) gets the card rendered here from its
    files by the engine's own function (engine.modelcard, which needs no torch), so it reads the same.
    A card file that cannot be read raises LoadError.
    """
    try:
        return read_text(root, Path(run) / runs.MODEL_CARD), True
    except MissingFile:
        found, problems = card_files(root, run)
        return modelcard.compose(found, problems, Path(run).name), False


def localisation_table(root: Path | str, run: Path | str) -> pd.DataFrame | None:
    """``cams/localisation.csv`` (per image, method and layer), or None when the run has none or it is unreadable."""
    try:
        frame = read_csv(root, Path(run) / runs.CAMS / runs.LOCALISATION_TABLE,
                         required=("sha256", "method", "layer", "mask", "concentration", "pointing"))
    except LoadError:
        return None
    for column in ("concentration", "pointing"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.drop_duplicates(["sha256", "method", "layer"])



def pair_images(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Rows of two runs' tables (path, sha256, true, ...) for the same images (engine.matching), side by side
    with suffixes _a and _b, indexed by ``sha256_a``."""
    a, b = a.drop_duplicates("sha256").reset_index(drop=True), b.drop_duplicates("sha256").reset_index(drop=True)
    pairs = match_images(a.to_dict("records"), b.to_dict("records"), stage="true")
    left = a.iloc[list(pairs)].add_suffix("_a").reset_index(drop=True)
    right = b.iloc[list(pairs.values())].add_suffix("_b").reset_index(drop=True)
    return pd.concat([left, right], axis=1).set_index("sha256_a", drop=False)
