"""Reading the outputs folder: discovery of prepared data, runs and sweeps, and their files.

Every reader is cached with ``st.cache_data`` on (path, mtime, size), so a file that changes
is read again on the next rerun, and an unchanged one costs one ``stat``. Discovery is cached
for a few seconds. Readers raise :class:`LoadError` with a readable reason for missing,
partial or corrupt files; pages turn that into a warning. Nothing here imports torch or ray:
the file and column names come from the contract modules (engine.runs for run folders,
tuning.layout for sweep folders, engine.data for prepared data), which need neither.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from engine import runs
from engine.data import MANIFEST, REPORT
from engine.runs import CLASSES, SPLITS
from tuning import layout

from .paths import OutsideOutputs, inside, relative

EXPORTS = "exports"  # the dashboard's own folder: decks written by the Present page
SAMPLES = "samples"  # prepared data: samples/<stage>/*.png (engine.data)
# Folders that never hold runs, sweeps or prepared data (and can be large).
PRUNE = {layout.RAY_STORAGE, runs.CAMS, runs.CHECKPOINTS, EXPORTS, "screenshots", "cache", SAMPLES, "__pycache__"}
# A run's status as the pages show it, read from COMPLETE (engine.runs), trial.json (tuning.layout)
# or, for a run without either, from how recently it wrote.
RUN_COMPLETE = "complete"
RUN_STOPPED = "stopped"  # by early stopping (patience) or, in a sweep, by the scheduler (ASHA)
RUN_RUNNING = "running"
RUN_INTERRUPTED = "interrupted"
RUN_CORRUPT = "corrupt"
RUN_STATUSES = (RUN_COMPLETE, RUN_STOPPED, RUN_RUNNING, RUN_INTERRUPTED, RUN_CORRUPT)
RUNNING_WINDOW_S = 15 * 60  # a run without COMPLETE that wrote within this window counts as running
DISCOVERY_TTL_S = 3


class LoadError(Exception):
    """A file is missing, partial or corrupt; the message says which and why."""


# ----------------------------------------------------------------------------- files


def stamp(path: Path | str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


@st.cache_data(show_spinner=False, max_entries=4096)
def _read_json(path: str, version: tuple[int, int] | None) -> Any:
    return json.loads(Path(path).read_text())


@st.cache_data(show_spinner=False, max_entries=2048)
def _read_csv(path: str, version: tuple[int, int] | None) -> pd.DataFrame:
    return pd.read_csv(path)


def _existing(root: Path | str, path: Path | str) -> tuple[Path, tuple[int, int]]:
    """A file inside ``root`` and its cache key (mtime, size); LoadError when outside or missing."""
    try:
        full = inside(root, path)
    except OutsideOutputs as exc:
        raise LoadError(str(exc)) from None
    key = stamp(full)
    if key is None or not full.is_file():
        raise LoadError(f"{relative(root, full)} not found")
    return full, key


def read_json(root: Path | str, path: Path | str) -> Any:
    """A JSON file inside ``root``; LoadError when missing or corrupt."""
    full, key = _existing(root, path)
    try:
        return _read_json(str(full), key)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LoadError(f"{relative(root, full)} is not valid JSON ({exc})") from None
    except OSError as exc:
        raise LoadError(f"{relative(root, full)} cannot be read ({exc.strerror})") from None


def read_csv(root: Path | str, path: Path | str, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV file inside ``root`` as a DataFrame; LoadError when missing, corrupt or lacking columns."""
    full, key = _existing(root, path)
    try:
        frame = _read_csv(str(full), key)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise LoadError(f"{relative(root, full)} is not a readable CSV ({exc})") from None
    except OSError as exc:
        raise LoadError(f"{relative(root, full)} cannot be read ({exc.strerror})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise LoadError(f"{relative(root, full)} lacks column(s) {', '.join(missing)}")
    return frame


def file_in(root: Path | str, base: Path | str, rel: str) -> Path:
    """``base/rel`` for a relative path taken from a file; LoadError unless it stays inside ``root``."""
    if not isinstance(rel, str) or not rel:
        raise LoadError("empty path")
    try:
        full = inside(root, Path(base) / rel)
    except OutsideOutputs as exc:
        raise LoadError(str(exc)) from None
    return full


# ----------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class RunInfo:
    path: str  # absolute, resolved, inside the outputs folder
    label: str  # relative to the outputs folder
    status: str  # one of RUN_STATUSES
    evaluated: bool
    explained: bool
    has_checkpoint: bool
    sweep: str | None
    problem: str | None = None

    @property
    def display(self) -> str:
        marks = {RUN_COMPLETE: "", RUN_STOPPED: " (stopped early)", RUN_RUNNING: " (running)",
                 RUN_INTERRUPTED: " (interrupted)", RUN_CORRUPT: " (corrupt)"}
        return f"{self.label}{marks.get(self.status, '')}"


@dataclass(frozen=True)
class SweepInfo:
    path: str
    label: str
    name: str
    status: str
    problem: str | None = None


def run_status(folder: Path) -> tuple[str, str | None]:
    """A run folder's status (one of RUN_STATUSES) and, for corrupt or interrupted runs, why."""
    try:
        json.loads((folder / runs.CONFIG).read_text())
    except (OSError, ValueError) as exc:
        return RUN_CORRUPT, f"{runs.CONFIG} unreadable ({exc})"
    finished = runs.complete_status(folder)
    if finished is not None:
        return (RUN_STOPPED if finished == runs.STATUS_EARLY_STOPPED else RUN_COMPLETE), None
    try:  # a sweep trial cut short by ASHA says so in its trial.json
        if json.loads((folder / layout.TRIAL_JSON).read_text()).get("status") == layout.TRIAL_STOPPED:
            return RUN_STOPPED, None
    except (OSError, ValueError, AttributeError):
        pass
    newest = max((s[0] for s in (stamp(folder / n) for n in (runs.HISTORY, runs.CONFIG)) if s), default=0)
    if time.time() - newest / 1e9 < RUNNING_WINDOW_S:
        return RUN_RUNNING, None
    return RUN_INTERRUPTED, f"no {runs.COMPLETE} marker and no recent writes: the run was interrupted"


def _sweep_status(folder: Path) -> tuple[str, str, str | None]:
    try:
        info = json.loads((folder / layout.SWEEP_JSON).read_text())
        return str(info.get("name") or folder.name), str(info.get("status", "unknown")), None
    except (OSError, ValueError, AttributeError) as exc:
        return folder.name, RUN_CORRUPT, f"{layout.SWEEP_JSON} unreadable ({exc})"


@st.cache_data(ttl=DISCOVERY_TTL_S, show_spinner=False)
def _scan(root: str) -> dict[str, list[dict[str, Any]]]:
    base = Path(root)
    prepared: list[dict[str, Any]] = []
    found_runs: list[dict[str, Any]] = []
    sweeps: list[dict[str, Any]] = []
    if not base.is_dir():
        return {"prepared": [], "runs": [], "sweeps": []}
    for current, dirs, names in os.walk(base, followlinks=False):
        folder = Path(current)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in PRUNE)
        names_set = set(names)
        label = relative(base, folder)
        if MANIFEST in names_set:
            prepared.append({"path": str(folder), "label": label})
        if layout.SWEEP_JSON in names_set:
            name, status, problem = _sweep_status(folder)
            sweeps.append(asdict(SweepInfo(str(folder), label, name, status, problem)))
        if runs.CONFIG in names_set:
            status, problem = run_status(folder)
            parts = Path(label).parts
            sweep = "/".join(parts[: parts.index(layout.TRIALS)]) if layout.TRIALS in parts else None
            found_runs.append(asdict(RunInfo(
                str(folder), label, status,
                evaluated=runs.METRICS in names_set and runs.PREDICTIONS in names_set,
                explained=(folder / runs.CAMS / runs.CAMS_INDEX).is_file(),
                has_checkpoint=(folder / runs.CHECKPOINTS / runs.BEST_CHECKPOINT).is_file(),
                sweep=sweep, problem=problem,
            )))
            dirs[:] = []  # run folders do not nest
    return {"prepared": prepared, "runs": found_runs, "sweeps": sweeps}


def scan(root: Path | str) -> dict[str, list]:
    """Everything under the outputs folder: {"prepared": [dict], "runs": [RunInfo], "sweeps": [SweepInfo]}."""
    raw = _scan(str(Path(root).resolve()))
    return {"prepared": raw["prepared"], "runs": [RunInfo(**r) for r in raw["runs"]],
            "sweeps": [SweepInfo(**s) for s in raw["sweeps"]]}


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

def run_config(root: Path | str, run: Path | str) -> dict[str, Any]:
    return read_json(root, Path(run) / runs.CONFIG)


def history(root: Path | str, run: Path | str) -> pd.DataFrame:
    frame = read_csv(root, Path(run) / runs.HISTORY, required=runs.HISTORY_COLUMNS)
    return frame.sort_values("epoch")


def metrics(root: Path | str, run: Path | str) -> dict[str, Any]:
    data = read_json(root, Path(run) / runs.METRICS)
    if not isinstance(data, dict) or not isinstance(data.get("splits"), dict) or not data["splits"]:
        raise LoadError(f"{relative(root, run)}/{runs.METRICS} has no evaluated split")
    for split, m in data["splits"].items():
        for key in ("accuracy", "macro_f1", "confusion_matrix", "per_class"):
            if key not in m:
                raise LoadError(f"{relative(root, run)}/{runs.METRICS}: split {split} lacks {key!r}")
    return data


def predictions(root: Path | str, run: Path | str) -> pd.DataFrame:
    return read_csv(root, Path(run) / runs.PREDICTIONS, required=runs.PREDICTION_COLUMNS)


def cams_meta(root: Path | str, run: Path | str) -> dict[str, Any]:
    return read_json(root, Path(run) / runs.CAMS / runs.CAMS_META)


def cams_index(root: Path | str, run: Path | str) -> pd.DataFrame:
    frame = read_csv(root, Path(run) / runs.CAMS / runs.CAMS_INDEX, required=runs.INDEX_COLUMNS)
    frame["correct"] = frame["correct"].astype(int)
    return frame


def faithfulness(root: Path | str, run: Path | str) -> dict[str, Any]:
    return read_json(root, Path(run) / runs.CAMS / runs.FAITHFULNESS_SUMMARY)


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
                         ("predictions", predictions)):
        try:
            out[name] = reader(root, run)
        except LoadError as exc:
            out[name] = None
            out["problems"].append(str(exc))
    return out


# ----------------------------------------------------------------------------- sweeps

def sweep_info(root: Path | str, sweep: Path | str) -> dict[str, Any]:
    info = read_json(root, Path(sweep) / layout.SWEEP_JSON)
    if not isinstance(info, dict):
        raise LoadError(f"{relative(root, sweep)}/{layout.SWEEP_JSON} is not an object")
    return info


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
        except LoadError:
            trial = {"trial_id": trial_dir.name, "status": layout.TRIAL_ERROR,
                     "error": f"{layout.TRIAL_JSON} unreadable"}
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


def outputs_summary(found: dict[str, list]) -> dict[str, int]:
    runs = found["runs"]
    return {"prepared": len(found["prepared"]), "runs": len(runs), "sweeps": len(found["sweeps"]),
            "evaluated": sum(r.evaluated for r in runs), "explained": sum(r.explained for r in runs)}


def evidence(root: Path | str, run: Path | str) -> dict[str, Any]:
    """The evidence files of a run (localisation, faithfulness, sanity, context), each dict or None.

    A missing file is simply None; an unreadable one is None with its reason in ``problems``.
    """
    files = {"localisation": Path(runs.CAMS) / runs.LOCALISATION,
             "faithfulness": Path(runs.CAMS) / runs.FAITHFULNESS_SUMMARY,
             "sanity": Path(runs.CAMS) / runs.SANITY, "context": Path(runs.CONTEXT)}
    out: dict[str, Any] = {"problems": []}
    for key, rel in files.items():
        out[key] = None
        try:
            data = read_json(root, Path(run) / rel)
        except LoadError as exc:
            if "not found" not in str(exc):
                out["problems"].append(str(exc))
            continue
        if isinstance(data, dict):
            out[key] = data
        else:
            out["problems"].append(f"{relative(root, Path(run) / rel)} is not a JSON object")
    return out


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
    """Rows of two runs' tables (path, sha256, true, ...) for the same images, joined with suffixes _a and _b.

    Matched by sha256, else by stage and path inside the class folder, so a model trained on the
    originals and one trained on the segmented copies are compared on the same cases.
    """
    def keyed(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.drop_duplicates("sha256").copy()
        frame["class_path"] = frame["true"].astype(str) + "/" + frame["path"].astype(str).str.split("/", n=1).str[-1]
        return frame

    a, b = keyed(a), keyed(b)
    by_sha = a.merge(b, on="sha256", suffixes=("_a", "_b"))
    by_sha["sha256_a"] = by_sha["sha256_b"] = by_sha["sha256"]
    rest_a, rest_b = a[~a["sha256"].isin(by_sha["sha256"])], b[~b["sha256"].isin(by_sha["sha256"])]
    by_path = rest_a.merge(rest_b, on="class_path", suffixes=("_a", "_b"))
    by_path["class_path_a"] = by_path["class_path_b"] = by_path["class_path"]
    both = pd.concat([by_sha.drop(columns="sha256"), by_path.drop(columns="class_path")], ignore_index=True)
    return both.set_index("sha256_a", drop=False)
