"""Reading the outputs folder: discovery of prepared data, runs and sweeps, and their files.

Every reader is cached with ``st.cache_data`` on (path, mtime, size), so a file that changes
is read again on the next rerun, and an unchanged one costs one ``stat``. Discovery is cached
for a few seconds. Readers raise :class:`LoadError` with a readable reason for missing,
partial or corrupt files; pages turn that into a warning. Nothing here imports torch or ray:
the file and column names come from the contract modules (engine.runs for run folders
and prepared data, tuning.layout for sweep folders), which need neither.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from engine import modelcard, runs
from engine.errors import DataError
from engine.runs import CACHE, CLASSES, MANIFEST, REPORT, SPLITS
from tuning import layout

from . import paths
from .evidence import shape_problem as evidence_shape_problem
from .paths import OutsideOutputs, inside, relative

EXPORTS = "exports"  # the dashboard's own folder: decks written by the Present page
SAMPLES = "samples"  # prepared data: samples/<stage>/*.png (engine.runs.SAMPLES)
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


class MissingFile(LoadError):
    """The file does not exist (often expected: a run not yet evaluated or explained)."""


class RefusedFile(LoadError):
    """Not read at all: outside the outputs folder, not a regular file, or over its size limit."""


# ----------------------------------------------------------------------------- files

# Limits on what is read. The small files are the ones discovery opens for every run and sweep
# (and best.json, cams/meta.json): a few kB when the engine writes them.
MAX_SMALL_BYTES = 2**20
MAX_JSON_BYTES = 64 * 2**20
MAX_CSV_BYTES = paths.MAX_BYTES
SMALL_FILES = frozenset({runs.CONFIG, runs.COMPLETE, runs.ENV, runs.CAMS_META, layout.TRIAL_JSON,
                         layout.SWEEP_JSON, layout.BEST})


def stamp(path: Path | str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


@st.cache_data(show_spinner=False, max_entries=4096)
def _read_json(root: str, path: str, version: tuple[int, int], limit: int) -> Any:
    return json.loads(paths.read_bytes(root, path, limit))


@st.cache_data(show_spinner=False, max_entries=2048)
def _read_csv(root: str, path: str, version: tuple[int, int], as_text: bool) -> pd.DataFrame:
    data = io.BytesIO(paths.read_bytes(root, path, MAX_CSV_BYTES))
    # As text, a blank field stays "" and nothing is guessed: the caller checks each column itself.
    return pd.read_csv(data, dtype=str, keep_default_na=False) if as_text else pd.read_csv(data)


def _limit(path: Path | str, default: int) -> int:
    return MAX_SMALL_BYTES if Path(path).name in SMALL_FILES else default


def _existing(root: Path | str, path: Path | str, limit: int) -> tuple[Path, tuple[int, int]]:
    """A regular file inside ``root`` within ``limit`` bytes, and its cache key (mtime, size)."""
    try:
        full = inside(root, path)
    except OutsideOutputs as exc:
        raise RefusedFile(str(exc)) from None
    try:
        info = paths.regular_file(root, full, limit)
    except FileNotFoundError:
        raise MissingFile(f"{relative(root, full)} not found") from None
    except paths.RefusedFile as exc:
        raise RefusedFile(f"{relative(root, full)} {exc}") from None
    except OSError as exc:
        raise LoadError(f"{relative(root, full)} cannot be read ({exc.strerror})") from None
    return full, (info.st_mtime_ns, info.st_size)


def _read(root: Path | str, full: Path, reader: Any, *args: Any) -> Any:
    try:
        return reader(str(Path(root).resolve()), str(full), *args)
    except (OutsideOutputs, paths.RefusedFile) as exc:  # swapped for something else since the check
        raise RefusedFile(f"{relative(root, full)}: {exc}") from None
    except OSError as exc:
        raise LoadError(f"{relative(root, full)} cannot be read ({exc.strerror})") from None


def read_json(root: Path | str, path: Path | str, limit: int | None = None) -> Any:
    """A JSON file inside ``root``; LoadError when missing, refused or corrupt."""
    limit = limit or _limit(path, MAX_JSON_BYTES)
    full, key = _existing(root, path, limit)
    try:
        return _read(root, full, _read_json, key, limit)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise LoadError(f"{relative(root, full)} is not valid JSON ({exc})") from None


@st.cache_data(show_spinner=False, max_entries=256)
def _read_text(root: str, path: str, version: tuple[int, int], limit: int) -> str:
    return paths.read_bytes(root, path, limit).decode("utf-8")


def read_text(root: Path | str, path: Path | str, limit: int = MAX_SMALL_BYTES) -> str:
    """A UTF-8 text file inside ``root``; LoadError when missing, refused or not UTF-8."""
    full, key = _existing(root, path, limit)
    try:
        return _read(root, full, _read_text, key, limit)
    except UnicodeDecodeError as exc:
        raise LoadError(f"{relative(root, full)} is not UTF-8 text ({exc})") from None


def read_csv(root: Path | str, path: Path | str, required: tuple[str, ...] = (), *,
             as_text: bool = False) -> pd.DataFrame:
    """A CSV file inside ``root`` as a DataFrame; LoadError when missing, refused, corrupt or lacking columns.

    ``as_text``: every column as strings, blank fields as "" (for :func:`usable_rows`).
    """
    full, key = _existing(root, path, MAX_CSV_BYTES)
    try:
        frame = _read(root, full, _read_csv, key, as_text)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise LoadError(f"{relative(root, full)} is not a readable CSV ({exc})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise LoadError(f"{relative(root, full)} lacks column(s) {', '.join(missing)}")
    return frame


def usable_rows(frame: pd.DataFrame, name: str, text: tuple[str, ...], numbers: dict[str, tuple[float, float]],
                allowed: dict[str, tuple[str, ...]] | None = None,
                problems: list[str] | None = None) -> pd.DataFrame:
    """The rows of a text-read CSV (``read_csv(as_text=True)``) whose fields a page can use.

    ``text`` columns must not be blank, ``numbers`` must parse as finite numbers within their
    (low, high) range (they become floats), ``allowed`` columns must hold one of their values.
    The other rows are dropped and one line in ``problems`` says how many and why; LoadError when
    no row is left, since a page has nothing to show then.
    """
    bad = pd.Series(False, index=frame.index)
    reasons = []
    frame = frame.copy()

    def flag(column: str, wrong: pd.Series, what: str) -> None:
        nonlocal bad
        if wrong.any():
            reasons.append(f"{column}: {int(wrong.sum())} {what}")
            bad |= wrong

    for column in text:
        flag(column, frame[column].str.strip() == "", "blank")
    for column, (low, high) in numbers.items():
        values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
        flag(column, ~values.between(low, high), "blank or malformed")  # NaN, inf and strings fail between
        frame[column] = values
    for column, values in (allowed or {}).items():
        flag(column, ~frame[column].isin(values), "not one of " + "/".join(values))
    usable = frame[~bad]
    if len(usable) < len(frame) and problems is not None:
        problems.append(f"{name}: {len(frame) - len(usable)} of {len(frame)} rows skipped "
                        f"(blank or malformed fields: {'; '.join(reasons)})")
    if usable.empty:
        raise LoadError(f"{name} has no usable row" + (f" ({'; '.join(reasons)})" if reasons else ""))
    return usable


def file_in(root: Path | str, base: Path | str, rel: str) -> Path:
    """``base/rel`` for a relative path taken from a file; LoadError unless it stays inside ``root``."""
    if not isinstance(rel, str) or not rel:
        raise LoadError("empty path")
    try:
        full = inside(root, Path(base) / rel)
    except OutsideOutputs as exc:
        raise LoadError(str(exc)) from None
    return full


def _regular(root: Path | str, path: Path | str, limit: int = paths.MAX_BYTES) -> bool:
    """Whether ``path`` is a regular file inside ``root`` within ``limit`` (stat only: nothing is opened)."""
    try:
        paths.regular_file(root, path, limit)
    except (OSError, ValueError):
        return False
    return True


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


def _complete_status(root: Path | str, folder: Path) -> str | None:
    """engine.runs.complete_status, read through the checks: a marker that is not a regular file inside
    the outputs folder raises RefusedFile; one that is unreadable JSON still means training ended."""
    try:
        marker = read_json(root, folder / runs.COMPLETE)
    except MissingFile:
        return None
    except RefusedFile:
        raise
    except LoadError:
        return runs.STATUS_COMPLETE
    status = marker.get("status") if isinstance(marker, dict) else None
    return status if status in runs.STATUSES else runs.STATUS_COMPLETE


def run_status(folder: Path, root: Path | str | None = None) -> tuple[str, str | None]:
    """A run folder's status (one of RUN_STATUSES) and, for corrupt or interrupted runs, why.

    Every file is read through :func:`read_json` (regular files inside ``root``, by default the
    folder itself, below MAX_SMALL_BYTES), so a FIFO, a link to a device or a huge file makes the
    run corrupt instead of blocking or exhausting the scan.
    """
    folder = Path(folder)
    root = folder if root is None else root
    try:
        config = read_json(root, folder / runs.CONFIG)
        if not isinstance(config, dict):
            raise LoadError("not a JSON object")
        finished = _complete_status(root, folder)
    except LoadError as exc:
        return RUN_CORRUPT, f"unreadable: {exc}"
    if finished is not None:
        return (RUN_STOPPED if finished == runs.STATUS_EARLY_STOPPED else RUN_COMPLETE), None
    try:  # a sweep trial cut short by ASHA says so in its trial.json
        trial = read_json(root, folder / layout.TRIAL_JSON)
    except RefusedFile as exc:
        return RUN_CORRUPT, f"unreadable: {exc}"
    except LoadError:
        trial = None
    if isinstance(trial, dict) and trial.get("status") == layout.TRIAL_STOPPED:
        return RUN_STOPPED, None
    newest = max((s[0] for s in (stamp(folder / n) for n in (runs.HISTORY, runs.CONFIG)) if s), default=0)
    if time.time() - newest / 1e9 < RUNNING_WINDOW_S:
        return RUN_RUNNING, None
    return RUN_INTERRUPTED, f"no {runs.COMPLETE} marker and no recent writes: the run was interrupted"


def _sweep_status(root: Path | str, folder: Path) -> tuple[str, str, str | None]:
    try:
        info = read_json(root, folder / layout.SWEEP_JSON)
        if not isinstance(info, dict):
            raise LoadError(f"{relative(root, folder / layout.SWEEP_JSON)} is not a JSON object")
    except LoadError as exc:
        return folder.name, RUN_CORRUPT, f"unreadable: {exc}"
    return str(info.get("name") or folder.name), str(info.get("status", "unknown")), None


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
            name, status, problem = _sweep_status(base, folder)
            sweeps.append(asdict(SweepInfo(str(folder), label, name, status, problem)))
        if runs.CONFIG in names_set:
            status, problem = run_status(folder, base)
            parts = Path(label).parts
            sweep = "/".join(parts[: parts.index(layout.TRIALS)]) if layout.TRIALS in parts else None
            # A corrupt run is listed (the Run page says why) but offered to no page that reads its files.
            usable = status != RUN_CORRUPT
            found_runs.append(asdict(RunInfo(
                str(folder), label, status,
                evaluated=usable and all(_regular(base, folder / n) for n in (runs.METRICS, runs.PREDICTIONS)),
                explained=usable and _regular(base, folder / runs.CAMS / runs.CAMS_INDEX),
                has_checkpoint=usable and _regular(base, folder / runs.CHECKPOINTS / runs.BEST_CHECKPOINT, 2**62),
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
    config = read_json(root, Path(run) / runs.CONFIG)
    if not isinstance(config, dict):
        raise LoadError(f"{relative(root, run)}/{runs.CONFIG} is not a JSON object")
    return config


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


@st.cache_data(show_spinner=False, max_entries=64)
def _manifest_digests(root: str, path: str, version: tuple[int, int], split: str = "image",
                      fold: int = 0) -> tuple[str, str | None]:
    """The manifest's sha256 and the split digest of a run's ``split`` and ``fold`` (None: the manifest does
    not hold that split, e.g. no smear folds)."""
    data = paths.read_bytes(root, path, MAX_CSV_BYTES)
    try:
        digest: str | None = runs.split_digest(data, split, fold, source=path)
    except DataError:
        digest = None
    return hashlib.sha256(data).hexdigest(), digest


def split_problem(root: Path | str, run: Path | str) -> str | None:
    """Why a run's prepared data no longer holds the split it was trained on (engine.runs' sentence), or None
    when it still does or this cannot be told: a run from before the record, or prepared data outside the
    outputs folder (which the dashboard does not read)."""
    try:
        config = read_json(root, Path(run) / runs.CONFIG)
        recorded, prepared = config[runs.MANIFEST_SHA256], Path(str(config["data_dir"]))
    except (LoadError, KeyError, TypeError):
        return None
    manifest, shown = prepared / MANIFEST, relative(root, run)
    if not prepared.is_absolute():
        return None  # relative to wherever training ran: not a folder this check can find
    try:
        full, key = _existing(root, manifest, MAX_CSV_BYTES)
        whole, split = _read(root, full, _manifest_digests, key, *runs.run_split(config))
    except MissingFile:
        return runs.split_unreadable(shown, relative(root, manifest))
    except RefusedFile:
        return None
    except (LoadError, ValueError):
        return runs.split_unreadable(shown, relative(root, manifest))
    if whole == recorded or (split is not None and split == config.get(runs.SPLIT_SHA256)):
        return None
    return runs.split_changed(shown, relative(root, manifest))


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


def outputs_summary(found: dict[str, list]) -> dict[str, int]:
    runs = found["runs"]
    return {"prepared": len(found["prepared"]), "runs": len(runs), "sweeps": len(found["sweeps"]),
            "evaluated": sum(r.evaluated for r in runs), "explained": sum(r.explained for r in runs)}


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


# ----------------------------------------------------------------------------- the feature space

MAX_FEATURES_BYTES = paths.MAX_BYTES


def embedding(root: Path | str, run: Path | str, problems: list[str] | None = None) -> pd.DataFrame:
    """embedding.csv (the 2-D feature map), rows with blank or malformed fields dropped (counted in ``problems``)."""
    path = Path(run) / runs.EMBEDDING
    frame = read_csv(root, path, required=runs.EMBEDDING_COLUMNS, as_text=True)
    frame = usable_rows(frame, relative(root, path), text=("split", "sha256", "path", "true", "pred"),
                        numbers={"confidence": (0.0, 1.0), "x": (-1e12, 1e12), "y": (-1e12, 1e12)},
                        allowed={"true": CLASSES, "pred": CLASSES}, problems=problems)
    for column in ("ood_distance", "out_of_distribution"):
        frame[column] = pd.to_numeric(frame[column].str.strip(), errors="coerce")
    return frame.reset_index(drop=True)


@st.cache_resource(show_spinner=False, max_entries=8)
def _feature_space(root: str, path: str, version: tuple[int, int]) -> tuple[dict, Any]:
    from engine import features as feature_space
    from engine import similar

    stored = feature_space.load(io.BytesIO(paths.read_bytes(root, path, MAX_FEATURES_BYTES)))
    train = stored.get(similar.TRAIN)
    index = similar.TrainingIndex(train) if train is not None and len(train.features) else None
    return stored, index


def feature_space(root: Path | str, run: Path | str) -> tuple[dict, Any]:
    """The run's stored features per split and a nearest-neighbour index over the training ones (None
    without training features): ``engine.features`` / ``engine.similar`` objects, built once per file version.
    LoadError when features.npz is missing, refused or malformed."""
    full, key = _existing(root, Path(run) / runs.FEATURES, MAX_FEATURES_BYTES)
    try:
        return _read(root, full, _feature_space, key)
    except (ValueError, KeyError) as exc:
        raise LoadError(f"{relative(root, full)} is not a readable feature file ({exc})") from None


def similar_cases(root: Path | str, run: Path | str, *, sha256: str | None = None, vector: Any = None,
                  k: int = 8) -> list[dict[str, Any]]:
    """The ``k`` training images nearest to a stored image (by ``sha256``) or to a feature ``vector``
    (``engine.similar``: rank, sha256, path, stage, distance); [] when the image is not stored.
    LoadError when the run has no usable features.npz."""
    stored, index = feature_space(root, run)
    if index is None:
        raise LoadError(f"{relative(root, Path(run) / runs.FEATURES)} holds no training features")
    if vector is None:
        for part in stored.values():
            hit = np.flatnonzero(part.sha256 == sha256)
            if len(hit):
                vector = part.features[hit[0]]
                break
        else:
            return []
    try:
        return index.query(vector, k)
    except ValueError as exc:  # a vector of another width: features.npz from another model than the checkpoint
        raise LoadError(str(exc)) from None


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_images(prepared: str, size: int, sha256s: tuple[str, ...], version: tuple[int, int]) -> dict[str, Any]:
    from engine import similar

    return similar.cached_images(Path(prepared), size, list(sha256s))


def training_images(root: Path | str, run: Path | str, sha256s: list[str]) -> dict[str, Any]:
    """Images (uint8 HWC, as the run's model saw them) of training images by sha256, from the decoded cache
    in the run's prepared folder; only those found, and nothing when that folder lies outside the outputs."""
    try:
        config = run_config(root, run)
        prepared = inside(root, str(config["data_dir"]))
        size = int(config["image_size"])
        inside(root, prepared / CACHE)  # the cache too must not lead out of the outputs folder
        _, version = _existing(root, prepared / MANIFEST, MAX_CSV_BYTES)
        return _cached_images(str(prepared), size, tuple(sha256s), version)
    except (LoadError, OutsideOutputs, KeyError, TypeError, ValueError, OSError):
        return {}
