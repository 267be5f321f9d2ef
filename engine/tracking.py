"""MLflow tracking, opt-in: a copy of run folders in an MLflow tracking server.

``--mlflow URI`` on ``python -m engine train``, ``evaluate`` and ``explain`` and on
``python -m tuning sweep`` (or the ``MLFLOW_TRACKING_URI`` environment variable) copies what a run folder
holds into one MLflow run: the resolved configuration as params, every epoch of ``history.csv`` as metrics
(step = epoch), the evaluation of ``metrics.json`` with its 95% intervals, the context probes of
``context.json`` (and a sweep trial's ``val_context.json``), and as artefacts ``metrics.json``, a
confusion-matrix figure per split, ``MODEL_CARD.md``, the explanation summaries and the dashboard's decks
of the run. A sweep is a parent MLflow run with one nested run per trial. ``python -m engine.tracking
FOLDER... --mlflow URI`` copies run folders made without it (or while the server was down).

The run folder stays the record: MLflow gets a copy, never the other way round, and nothing here writes
into a run folder. An MLflow run is tied to its folder by the tag FOLDER_TAG (the folder's absolute path),
so every command finds the same MLflow run again and copying twice adds nothing.

Tracking never stops the work it copies: the first failure (an unreachable server, a refused request) is
logged as one warning naming the server, and tracking is off for that server for the rest of the process.
Requests fail fast (CLIENT_DEFAULTS: no retries, a few seconds' timeout) unless the environment says
otherwise.

mlflow and matplotlib are imported only when a tracker is opened: without ``--mlflow`` this module costs
nothing, and the engine imports neither.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import runs

log = logging.getLogger(__name__)

ENV_URI = "MLFLOW_TRACKING_URI"  # MLflow's own variable: set once, every command tracks
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"  # MLflow's own variable too
DEFAULT_EXPERIMENT = "all-stage-densenet"
# Fail fast: MLflow's defaults retry a refused request for minutes, which would hold a training up. And no
# "View run ... at" lines on stdout, where the commands print their results (the run's address is logged).
# setdefault: a user who wants otherwise sets these variables themselves.
TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", TIMEOUT_ENV: "5",
                   "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}

# Tags of the MLflow runs this module makes.
FOLDER_TAG = "engine.folder"  # the folder's absolute path, for people
FOLDER_KEY_TAG = "engine.folder_key"  # its sha256: what runs are searched by (a path may hold quotes)
KIND_TAG = "engine.kind"  # KIND_RUN, KIND_TRIAL or KIND_SWEEP
STATUS_TAG = "engine.status"  # COMPLETE's status once training ended (runs.STATUSES)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: what nests a trial under its sweep in the UI
RUN_NAME_TAG = "mlflow.runName"
KIND_RUN, KIND_TRIAL, KIND_SWEEP = "run", "trial", "sweep"

# history.csv columns logged per epoch (all but the epoch itself, which is the step).
EPOCH_METRICS = tuple(c for c in runs.HISTORY_COLUMNS if c != "epoch")
# metrics.json: the scalars logged per split as "<split>/<key>" (intervals as "<key>_ci95_low/high").
SPLIT_SCALARS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "roc_auc_ovr_macro", "n")
SPLIT_INTERVALS = ("accuracy_ci95", "macro_f1_ci95")
PER_CLASS_SCALARS = ("precision", "recall", "f1")
# Artefacts: the folder's files copied as they are (those present), and where they go in the MLflow run.
RUN_FILES = (runs.METRICS, runs.CONTEXT, runs.BASELINES, runs.VAL_CONTEXT, runs.MODEL_CARD, runs.CONFIG, runs.ENV)
CAMS_FILES = (runs.CAMS_META, runs.LOCALISATION, runs.FAITHFULNESS_SUMMARY, runs.SANITY)
FIGURES_DIR = "figures"
DECKS_DIR = "decks"
DECK_SUFFIXES = (".pptx", ".html")
EXPORTS = "exports"  # the dashboard's folder of decks in an outputs folder (dashboard/loaders.py EXPORTS)

MAX_BATCH_METRICS = 1000  # MLflow's limits for one log_batch
MAX_BATCH_PARAMS = 100
MAX_PARAM_CHARS = 6000

# Servers that failed in this process: tracking stays off for them (one warning each, not one per call).
_FAILED: set[str] = set()


# ----------------------------------------------------------------------------- the command line


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--mlflow URI`` for a command line (the same words on every command)."""
    parser.add_argument("--mlflow", metavar="URI", default=None,
                        help=f"also copy the run to this MLflow tracking server, e.g. http://127.0.0.1:5000 "
                        f"(default: ${ENV_URI}; unset: no tracking). The run folder stays the record; see "
                        "docs/mlflow.md")


def resolve_uri(option: str | None) -> str | None:
    """The tracking URI to use: the ``--mlflow`` option, else MLFLOW_TRACKING_URI, else None (no tracking)."""
    uri = (option or os.environ.get(ENV_URI) or "").strip()
    return uri or None


def experiment_name() -> str:
    return os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT


# ----------------------------------------------------------------------------- pure helpers (no mlflow)


def folder_key(folder: Path | str) -> str:
    """The search key of a folder's MLflow run: the sha256 of its absolute path."""
    return hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool); None otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    """config.json as MLflow params: each key once, lists and objects as JSON, None as "None"."""
    params = {}
    for key, value in config.items():
        text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, list | dict) else str(value)
        params[str(key)] = text[:MAX_PARAM_CHARS]
    return params


def history_metrics(rows: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, float, int]]:
    """(key, value, step) of every epoch row of history.csv; cells that are not finite numbers are left out."""
    for row in rows:
        try:
            step = int(float(row["epoch"]))
        except (KeyError, TypeError, ValueError):
            continue
        for key in EPOCH_METRICS:
            try:
                value = _finite(float(row[key]))
            except (KeyError, TypeError, ValueError):
                continue
            if value is not None:
                yield key, value, step


def evaluation_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """metrics.json as flat MLflow metrics: per split its scores, their 95% intervals, per-stage precision,
    recall and F1 and the calibration error, named "<split>/<score>"."""
    out: dict[str, float] = {}
    for split, block in (metrics.get("splits") or {}).items():
        if not isinstance(block, Mapping):
            continue
        for key in SPLIT_SCALARS:
            if (value := _finite(block.get(key))) is not None:
                out[f"{split}/{key}"] = value
        for key in SPLIT_INTERVALS:
            interval = block.get(key)
            if isinstance(interval, list | tuple) and len(interval) == 2:
                for end, bound in zip(("low", "high"), interval, strict=True):
                    if (value := _finite(bound)) is not None:
                        out[f"{split}/{key}_{end}"] = value
        calibration = block.get("calibration")
        if isinstance(calibration, Mapping) and (value := _finite(calibration.get("ece"))) is not None:
            out[f"{split}/ece"] = value
        for stage, scores in (block.get("per_class") or {}).items():
            if isinstance(scores, Mapping):
                for key in PER_CLASS_SCALARS:
                    if (value := _finite(scores.get(key))) is not None:
                        out[f"{split}/{stage}/{key}"] = value
    return out


def _accuracy(prefix: str, block: Any, out: dict[str, float]) -> None:
    """An accuracy block of context.json ({"accuracy", "ci95", "n"}) as "<prefix>accuracy", its interval, n."""
    if not isinstance(block, Mapping):
        return
    if (value := _finite(block.get("accuracy"))) is not None:
        out[f"{prefix}accuracy"] = value
    interval = block.get("ci95")
    if isinstance(interval, list | tuple) and len(interval) == 2:
        for end, bound in zip(("low", "high"), interval, strict=True):
            if (value := _finite(bound)) is not None:
                out[f"{prefix}accuracy_ci95_{end}"] = value


def context_metrics(context: Mapping[str, Any]) -> dict[str, float]:
    """context.json as flat MLflow metrics: each variant's accuracy with its interval ("context/<variant>/..."),
    chance, the survival ratios and the share of answers that follow the stain donor's stage."""
    out: dict[str, float] = {}
    for variant, block in (context.get("variants") or {}).items():
        if isinstance(block, Mapping):
            _accuracy(f"context/{variant}/", block.get("all"), out)
    for key in ("chance", "survival_without_cells", "survival_without_background", "survival_with_swapped_stain",
                "survival_in_greyscale", "images"):
        if (value := _finite(context.get(key))) is not None:
            out[f"context/{key}"] = value
    follows = ((context.get("stain_swapped") or {}).get("follows_donor") or {}).get("all") or {}
    if isinstance(follows, Mapping) and (value := _finite(follows.get("share"))) is not None:
        out["context/stain_swapped/follows_donor"] = value
    return out


def probe_metrics(val_context: Mapping[str, Any]) -> dict[str, float]:
    """A sweep trial's val_context.json: its scores under the names summary.csv and Ray Tune use."""
    scores = val_context.get("scores") or {}
    return {key: value for key in runs.VAL_CONTEXT_SCORES if (value := _finite(scores.get(key))) is not None}


def localisation_metrics(localisation: Mapping[str, Any]) -> dict[str, float]:
    """cams/localisation.json: per method and layer, the mean concentration and pointing over all images."""
    out: dict[str, float] = {}
    for result in localisation.get("results") or []:
        if not isinstance(result, Mapping):
            continue
        scores = ((result.get("all") or {}).get("map")) or {}
        for score in ("concentration", "pointing"):
            value = _finite((scores.get(score) or {}).get("mean"))
            if value is not None:
                out[f"localisation/{result.get('method')}/{result.get('layer')}/{score}"] = value
    return out


def confusion_png(matrix: list[list[int]], classes: list[str], title: str) -> bytes:
    """A confusion matrix (rows true, columns predicted) as PNG bytes, each cell with its count."""
    import io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=float)
    fig = Figure(figsize=(5.2, 4.6), dpi=100)
    FigureCanvasAgg(fig)  # the object API, never pyplot: nothing global changes
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted stage")
    ax.set_ylabel("true stage")
    ax.set_title(title)
    high = counts.max() if counts.size else 0
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, f"{int(count)}", ha="center", va="center", color="white" if count > high / 2 else "black")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def _slug(text: str) -> str:
    # The dashboard's deck names (dashboard/report.py save): anything else than [A-Za-z0-9_.-] becomes "-".
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:60] or "deck"


def find_decks(folder: Path | str) -> list[Path]:
    """The dashboard's newest deck (PPTX and HTML) of the run in ``folder``, if it made one.

    The Present page writes ``OUTPUTS/exports/<stamp>-<run label>.{pptx,html}``, the label being the run's path
    inside the outputs folder with "/" as "-"; each folder above the run holding ``exports/`` is tried as OUTPUTS.
    """
    folder = Path(folder).resolve()
    for outputs in folder.parents:
        exports = outputs / EXPORTS
        if not exports.is_dir():
            continue
        slug = _slug(str(folder.relative_to(outputs)).replace("/", "-"))
        # "<YYYYmmdd>-<HHMMSS>-<slug>": the stamp keeps another run whose label ends like this one's apart.
        pattern = re.compile(r"\d{8}-\d{6}-" + re.escape(slug))
        found = []
        for suffix in DECK_SUFFIXES:
            decks = sorted(p for p in exports.glob(f"*{suffix}") if pattern.fullmatch(p.stem) and p.is_file())
            found += decks[-1:]  # the stamp sorts by time: the newest
        if found:
            return found
    return []


def failure_reason(exc: BaseException) -> str:
    """Why a request to the tracking server failed, in a few words: MLflow's own message quotes a page of
    urllib3's retry machinery for a server that is simply not there."""
    text = " ".join(str(exc).split())
    for marks, words in ((("Connection refused", "Errno 111"), "connection refused: no server listens there"),
                         (("timed out", "Timeout"), f"no answer within {os.environ.get(TIMEOUT_ENV)} s"),
                         (("Name or service not known", "NameResolutionError", "nodename nor servname"),
                          "the host name is unknown")):
        if any(mark in text for mark in marks):
            return words
    status = re.search(r"error code (\d{3}) != 200", text)
    if status:  # something answered, but not as an MLflow server does (a proxy, a login page, another service)
        return f"the server answered HTTP {status.group(1)}"
    return text[:300] or type(exc).__name__


# ----------------------------------------------------------------------------- the MLflow run of a folder


class FolderRun:
    """The MLflow run that copies one folder: a run folder, a sweep trial's, or a sweep's (the parent).

    ``start()`` finds the run by the folder's tag or creates it; every other method logs what the folder
    holds. None of them raises: the first failure disables the tracker with one warning (``active`` is then
    False), and the work being tracked goes on.
    """

    def __init__(self, uri: str, folder: Path | str, *, kind: str = KIND_RUN, name: str | None = None,
                 parent_run_id: str | None = None) -> None:
        self.uri = uri
        self.folder = Path(folder).resolve()
        self.kind = kind
        self.name = name or self.folder.name
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self.created = False  # this process created the MLflow run (rather than finding it)
        self._client: Any = None
        self._config_logged = False

    # -- plumbing

    @property
    def active(self) -> bool:
        return self.run_id is not None and self.uri not in _FAILED

    def _fail(self, doing: str, exc: BaseException) -> None:
        if self.uri not in _FAILED:
            _FAILED.add(self.uri)
            reason = failure_reason(exc)
            log.warning("MLflow tracking at %s is off for the rest of this command: %s failed (%s). The work "
                        "goes on and its folder keeps everything: `python -m engine.tracking RUN --mlflow %s` "
                        "copies a run folder to MLflow later", self.uri, doing, reason, self.uri)
        self.run_id = None

    def _guarded(self, doing: str, action: Any, *args: Any, **kwargs: Any) -> Any:
        """``action(*args, **kwargs)``, or None with the one warning when it fails (or tracking is off)."""
        if self.uri in _FAILED:
            return None
        try:
            return action(*args, **kwargs)
        except Exception as exc:  # a tracking failure of any kind must never stop the tracked work
            self._fail(doing, exc)
            return None

    # -- finding or creating the run

    def start(self) -> bool:
        """Find this folder's MLflow run, or create it; True when tracking is on."""
        if self.uri in _FAILED:
            return False
        self.run_id = self._guarded(f"opening the MLflow run of {self.folder}", self._start)
        return self.active

    def _start(self) -> str:
        for key, value in CLIENT_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)
        experiment_id = self._experiment_id()
        key = folder_key(self.folder)
        found = self._client.search_runs([experiment_id], filter_string=f"tags.`{FOLDER_KEY_TAG}` = '{key}'",
                                         max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            run_id = found[0].info.run_id
        else:
            tags = {FOLDER_TAG: str(self.folder), FOLDER_KEY_TAG: key, KIND_TAG: self.kind, RUN_NAME_TAG: self.name}
            if self.parent_run_id:
                tags[PARENT_TAG] = self.parent_run_id
            run_id = self._client.create_run(experiment_id, tags=tags, run_name=self.name).info.run_id
            self.created = True
        log.info("MLflow run %s of experiment %s at %s copies %s", run_id, experiment_id, self.uri, self.folder)
        return run_id

    def _experiment_id(self) -> str:
        if self.parent_run_id:  # a trial goes where its sweep is, whatever this process's environment says
            return self._client.get_run(self.parent_run_id).info.experiment_id
        name = experiment_name()
        experiment = self._client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self._client.create_experiment(name)
        except Exception:
            # Another process (a trial, a second command) created it meanwhile.
            experiment = self._client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    # -- logging

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params not logged yet (MLflow keeps a param's first value: a folder's configuration does not change)."""
        if self.active:
            self._guarded("logging params", self._log_params, config_params(params))

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        logged = self._client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for start in range(0, len(new), MAX_BATCH_PARAMS):
            self._client.log_batch(self.run_id, params=new[start:start + MAX_BATCH_PARAMS], synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Metrics at ``step``, each one only when its latest logged value differs (copying twice adds nothing)."""
        if self.active and metrics:
            self._guarded("logging metrics", self._log_metrics, [(k, float(v), step) for k, v in metrics.items()],
                          only_changed=True)

    def _log_metrics(self, points: list[tuple[str, float, int]], *, only_changed: bool = False,
                     skip_steps: Mapping[str, set[int]] | None = None) -> None:
        import time

        from mlflow.entities import Metric

        latest = self._client.get_run(self.run_id).data.metrics if only_changed else {}
        stamp = int(time.time() * 1000)
        new = [Metric(key, value, stamp, step) for key, value, step in points
               if not (only_changed and latest.get(key) == value)
               and step not in (skip_steps or {}).get(key, set())]
        for start in range(0, len(new), MAX_BATCH_METRICS):
            self._client.log_batch(self.run_id, metrics=new[start:start + MAX_BATCH_METRICS], synchronous=True)

    def on_epoch(self, row: Mapping[str, Any], run_dir: Path) -> None:
        """``engine.train.fit``'s on_epoch callback: the epoch's row as metrics (step = epoch), as it ends.

        The first call also logs the configuration, which ``fit`` has written by then.
        """
        if not self.active:
            return
        if not self._config_logged:
            self.log_config()
            self._config_logged = True
        self._guarded("logging an epoch", self._log_metrics, list(history_metrics([row])))

    def log_history(self) -> None:
        """Every epoch of history.csv not logged yet (a run trained without tracking, or resumed)."""
        path = self.folder / runs.HISTORY
        if self.active and path.is_file():
            self._guarded(f"copying {path}", self._log_history, path)

    def _log_history(self, path: Path) -> None:
        import csv

        with path.open(newline="") as handle:
            points = list(history_metrics(csv.DictReader(handle)))
        logged = {key: {m.step for m in self._client.get_metric_history(self.run_id, key)}
                  for key in {key for key, _, _ in points}}
        self._log_metrics(points, skip_steps=logged)

    def log_config(self) -> None:
        """config.json as params (with the preset and data folder it records), and env.json's git commit as a tag."""
        config = self._read(runs.CONFIG)
        if isinstance(config, dict):
            self.log_params(config)
        env = self._read(runs.ENV)
        if isinstance(env, dict) and env.get("git_commit"):
            self.set_tags({"mlflow.source.git.commit": str(env["git_commit"])})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.active and tags:
            self._guarded("setting tags", self._set_tags, tags)

    def _set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def log_file(self, path: Path, artifact_dir: str | None = None) -> None:
        """A file of the folder as an artefact (the same path again replaces it)."""
        if self.active and Path(path).is_file():
            self._guarded(f"copying {path}", self._client.log_artifact, self.run_id, str(path), artifact_dir)

    def log_bytes(self, data: bytes, name: str, artifact_dir: str | None = None) -> None:
        """Bytes made for MLflow alone (a figure) as an artefact; written to a temporary folder, never the run's."""
        if not self.active:
            return
        with tempfile.TemporaryDirectory(prefix="mlflow-") as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self._guarded(f"logging {name}", self._client.log_artifact, self.run_id, str(path), artifact_dir)

    def _read(self, name: str) -> Any:
        """A JSON file of the folder; None when it is missing or damaged (named in the log: the copy skips it)."""
        path = self.folder / name
        if not path.is_file():
            return None
        try:
            return runs.read_json(path)
        except (OSError, ValueError) as exc:
            log.warning("MLflow: %s is not copied: %s", path, exc)
            return None

    # -- what a folder holds

    def sync(self) -> None:
        """Copy everything the run folder holds now; what was copied before is not logged again."""
        if not self.active:
            return
        self.log_config()
        self.log_history()
        self.log_evaluation()
        self.log_explanation()
        status = runs.complete_status(self.folder)
        if status:
            self.set_tags({STATUS_TAG: status})
        for name in RUN_FILES:
            self.log_file(self.folder / name)
        for deck in find_decks(self.folder):
            self.log_file(deck, DECKS_DIR)

    def log_evaluation(self) -> None:
        """metrics.json (scores with intervals, one confusion-matrix figure per split), context.json and, for a
        sweep trial, val_context.json."""
        metrics = self._read(runs.METRICS)
        if isinstance(metrics, dict):
            self.log_metrics(evaluation_metrics(metrics), step=int(metrics.get("checkpoint_epoch") or 0))
            classes = list(metrics.get("classes") or runs.CLASSES)
            for split, block in (metrics.get("splits") or {}).items():
                matrix = block.get("confusion_matrix") if isinstance(block, dict) else None
                if matrix:
                    try:
                        png = confusion_png(matrix, classes, f"{self.name}: {split} ({block.get('n', '?')} images)")
                    except (ValueError, TypeError) as exc:
                        log.warning("MLflow: the %s confusion matrix of %s is not drawn: %s", split, self.folder, exc)
                        continue
                    self.log_bytes(png, f"confusion_matrix_{split}.png", FIGURES_DIR)
        context = self._read(runs.CONTEXT)
        if isinstance(context, dict):
            self.log_metrics(context_metrics(context))
        probe = self._read(runs.VAL_CONTEXT)
        if isinstance(probe, dict):
            self.log_metrics(probe_metrics(probe))

    def log_explanation(self) -> None:
        """cams/: the summaries (meta, localisation, faithfulness, sanity) and the per-stage panels as artefacts,
        and each method and layer's localisation scores as metrics."""
        cams = self.folder / runs.CAMS
        if not self.active or not cams.is_dir():
            return
        for name in CAMS_FILES:
            self.log_file(cams / name, runs.CAMS)
        localisation = self._read(f"{runs.CAMS}/{runs.LOCALISATION}")
        if isinstance(localisation, dict):
            self.log_metrics(localisation_metrics(localisation))
        for stage in runs.CLASSES:
            self.log_file(cams / runs.CAMS_STAGES / stage / runs.STAGE_PANEL, f"{runs.CAMS}/{runs.CAMS_STAGES}/{stage}")

    def end(self, status: str = "FINISHED") -> None:
        """Mark the MLflow run ended (FINISHED, FAILED or KILLED)."""
        if self.active:
            self._guarded("ending the MLflow run", self._client.set_terminated, self.run_id, status)

    def reopen(self) -> None:
        """Mark a found run running again (a resumed training)."""
        if self.active and not self.created:
            self._guarded("reopening the MLflow run", self._client.update_run, self.run_id, "RUNNING")


def track(uri: str | None, folder: Path | str, *, kind: str = KIND_RUN, name: str | None = None,
          parent_run_id: str | None = None) -> FolderRun | None:
    """The started FolderRun of ``folder`` when ``uri`` is given and the server answers; None otherwise."""
    if not uri:
        return None
    run = FolderRun(uri, folder, kind=kind, name=name, parent_run_id=parent_run_id)
    return run if run.start() else None


def copy_folder(uri: str | None, folder: Path | str, *, status: str | None = None) -> str | None:
    """Copy what ``folder`` holds now into its MLflow run (created when there is none); the run id or None.

    ``status`` ends the run with that status when this call created it (an MLflow run made after the fact is
    complete at once); a run found is left as it is.
    """
    run = track(uri, folder)
    if run is None:
        return None
    run.sync()
    if run.created and status:
        run.end(status)
    return run.run_id


# ----------------------------------------------------------------------------- python -m engine.tracking


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.tracking FOLDER... [--mlflow URI]``: copy run folders into MLflow after the fact."""
    parser = argparse.ArgumentParser(prog="python -m engine.tracking",
                                     description="Copy run folders (config, history, evaluation, explanation) into "
                                     "an MLflow tracking server; what was copied before is not logged again.")
    parser.add_argument("folders", type=Path, nargs="+", metavar="RUN", help="run folders (or sweep trials)")
    add_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uri = resolve_uri(args.mlflow)
    if uri is None:
        print(f"no tracking server: give --mlflow URI or set {ENV_URI}", file=sys.stderr)
        return 2
    missing = [f for f in args.folders if not (f / runs.CONFIG).is_file()]
    if missing:
        print(f"not a run folder (no {runs.CONFIG}): {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    copied = 0
    for folder in args.folders:
        run_id = copy_folder(uri, folder, status="FINISHED")
        if run_id is None:
            break  # the one warning said why; the other folders would fail the same way
        copied += 1
        print(f"{folder}\t{run_id}")
    return 0 if copied == len(args.folders) else 1


if __name__ == "__main__":
    sys.exit(main())
