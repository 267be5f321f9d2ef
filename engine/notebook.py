"""A small Python API over run and sweep folders, for notebooks and scripts.

    from engine.notebook import explain, load_run, load_sweep, predict

    run = load_run("outputs/runs/<run-id>")
    run.metrics["splits"]["test"]["accuracy"]         # metrics.json, as written by `evaluate`
    run.predictions                                   # predictions.csv as a DataFrame
    run.confusion_matrix("test")                      # a DataFrame, true stages by predicted stages
    run.context, run.context_table()                  # context.json, and its accuracies as a table
    run.history, run.config, run.localisation         # history.csv, config.json, cams/localisation.csv
    for m in run.maps(stage="pre", method="layercam", layer="denseblock2"):
        m.image, m.map, m.mask                        # the stored maps of `explain`, with their masks
    predict(run, ["a.png", "b.png"])                  # probabilities per stage, as `predict` computes them
    explain(run, "a.png", "layercam", "denseblock2")  # one image's map, as the dashboard's Predict page draws it
    load_sweep("outputs/sweeps/demo").trials          # summary.csv as a DataFrame

Everything is read from the folders through the contract the engine writes with (engine.runs for a run
folder, tuning.layout for a sweep folder): the same names and readers as the command lines and the
dashboard, no copy of them. Files are read when asked for, so a notebook sees a run's files as they are
now. A file that is missing raises FileNotFoundError naming it and the command that writes it; one that
is there but cannot be read as what it should be raises engine.errors.DamagedFileError naming it.

Importing this module needs pandas and NumPy only; PyTorch is loaded by ``predict`` and ``explain``
(engine.predict.Predictor, the model the CLI and the dashboard use), and a sweep is read without Ray.

A sweep folder is read by ``tuning.notebook.load_sweep`` (imports run dashboard -> tuning -> engine).
"""

from __future__ import annotations

import csv
import errno
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import runs
from .errors import DamagedFileError
from .runs import CLASSES

if TYPE_CHECKING:
    from .predict import Predictor

# An image for predict and explain: a file, its bytes, or an RGB uint8 array (H x W x 3, any size).
ImageLike = str | os.PathLike[str] | bytes | np.ndarray

# The command that writes each file, for the message about a missing one.
_EVALUATE = "python -m engine evaluate RUN"
_WRITTEN_BY = {runs.CONFIG: "python -m engine train", runs.ENV: "python -m engine train",
               runs.HISTORY: "python -m engine train", runs.METRICS: _EVALUATE, runs.PREDICTIONS: _EVALUATE,
               runs.CONTEXT: _EVALUATE, runs.CONTEXT_TABLE: _EVALUATE, runs.BASELINES: _EVALUATE,
               runs.MODEL_CARD: _EVALUATE}
# localisation.csv's columns (engine.explain.pipeline.LOCALISATION_COLUMNS, which imports torch to be read).
LOCALISATION_REQUIRED = ("path", "sha256", "true", "pred", "correct", "method", "layer", "mask", "concentration",
                         "pointing")


# ----------------------------------------------------------------------------- reading files


def _missing(path: Path) -> FileNotFoundError:
    """FileNotFoundError naming ``path`` and the command that writes it."""
    writer = "python -m engine explain RUN" if runs.CAMS in path.parts else _WRITTEN_BY.get(path.name)
    why = f"not found (written by `{writer}`)" if writer else "not found"
    return FileNotFoundError(errno.ENOENT, why, str(path))


def read_json(path: Path | str) -> Any:
    """A JSON file of a run or sweep folder (engine.runs.read_json): FileNotFoundError naming it and the command
    that writes it when missing, DamagedFileError when it is not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    return runs.read_json(path)


def read_table(path: Path | str, required: Sequence[str] = (), numbers: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV file of a run folder as a DataFrame.

    FileNotFoundError when missing; DamagedFileError naming it when it is not a CSV table, lacks a ``required``
    column, or holds something other than a number in a ``numbers`` column (blank cells are allowed: NaN).
    """
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        frame = pd.read_csv(path, dtype={"sha256": str, "path": str})
    except pd.errors.EmptyDataError:
        raise DamagedFileError(path, "damaged: empty, not even a header", runs.remake_hint(path)) from None
    except (ValueError, UnicodeDecodeError, csv.Error, pd.errors.ParserError) as exc:
        raise DamagedFileError(path, f"damaged: not a readable CSV table ({exc})", runs.remake_hint(path)) from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DamagedFileError(path, f"damaged: it lacks the column(s) {', '.join(missing)}", runs.remake_hint(path))
    for column in numbers:
        # A table of no rows (a run before its first epoch) has no values to be numbers.
        if len(frame) and column in frame.columns and not pd.api.types.is_numeric_dtype(frame[column]):
            raise DamagedFileError(path, f"damaged: column {column} holds values that are not numbers",
                                   runs.remake_hint(path))
    return frame


def read_png(path: Path | str, *, mode: str = "RGB") -> np.ndarray:
    """A PNG of ``cams/`` as an array (RGB uint8 H x W x 3, or "L": H x W); DamagedFileError when not an image."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        with Image.open(path) as opened:
            return np.asarray(opened.convert(mode))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DamagedFileError(path, f"damaged: not an image ({exc})", runs.remake_hint(path)) from None


def read_map(path: Path | str) -> np.ndarray:
    """A map stored by ``explain`` (.npy, float16 H x W in [0, 1]) as float32; DamagedFileError when it is not one.

    Loaded without pickles (a .npy can hold code otherwise).
    """
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        cam = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DamagedFileError(path, f"damaged: not a stored map ({exc})", runs.remake_hint(path)) from None
    if not isinstance(cam, np.ndarray) or cam.ndim != 2 or not np.issubdtype(cam.dtype, np.floating):
        raise DamagedFileError(path, f"damaged: not a 2-D map of floats ({getattr(cam, 'dtype', '?')}, shape "
                               f"{getattr(cam, 'shape', '?')})", runs.remake_hint(path))
    return np.nan_to_num(cam.astype(np.float32), nan=0.0).clip(0, 1)


# ----------------------------------------------------------------------------- a run


@dataclass(frozen=True)
class StoredMap:
    """One map ``explain`` stored in ``cams/``, with the image it explains and that image's leukocyte mask."""

    path: str  # the image's path in the prepared data
    sha256: str
    true: str  # the image's stage
    pred: str  # the stage the model predicted
    confidence: float  # the predicted stage's probability
    correct: bool
    method: str
    layer: str
    target: str  # "pred" (the map of the predicted stage) or "true"
    target_class: str  # the stage the map explains
    image: np.ndarray  # uint8 H x W x 3: the image as the model saw it
    map: np.ndarray  # float32 H x W in [0, 1]
    mask: np.ndarray | None  # bool H x W: the leukocyte mask, None where the image has none (or no localisation)


@dataclass(frozen=True)
class Explanation:
    """One image's map computed now by ``explain``."""

    image: np.ndarray  # uint8 H x W x 3: the image as the model sees it
    map: np.ndarray  # float32 H x W in [0, 1]
    overlay: np.ndarray  # uint8 H x W x 3: the map over the image, drawn as `explain` draws its overlays
    method: str
    layer: str
    target: str  # the stage the map explains
    pred: str  # the stage the model predicts
    probabilities: dict[str, float]  # per stage


class Run:
    """A run folder (``outputs/runs/<id>`` or a sweep trial's): its files, read when asked for."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not (self.path / runs.CONFIG).is_file():
            raise FileNotFoundError(errno.ENOENT, f"not a run folder (no {runs.CONFIG})", str(self.path))
        self._predictors: dict[tuple[str, str], Predictor] = {}

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # -- the run folder's files

    @property
    def config(self) -> dict[str, Any]:
        """config.json: the resolved configuration, the data folder, the preset and the data's fingerprint."""
        return read_json(self.path / runs.CONFIG)

    @property
    def env(self) -> dict[str, Any]:
        """env.json: versions, device, git commit, seed, host, start time."""
        return read_json(self.path / runs.ENV)

    @property
    def status(self) -> str | None:
        """How training ended (engine.runs.STATUSES), or None while it trains or after an interruption."""
        return runs.complete_status(self.path)

    @property
    def history(self) -> pd.DataFrame:
        """history.csv: one row per finished epoch (engine.runs.HISTORY_COLUMNS)."""
        return read_table(self.path / runs.HISTORY, runs.HISTORY_COLUMNS, runs.HISTORY_COLUMNS)

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.json: per split ("val", "test") accuracy, macro-F1 with their 95% intervals, per stage
        scores, the confusion matrix, calibration (docs/run-folder.md)."""
        return read_json(self.path / runs.METRICS)

    @property
    def predictions(self) -> pd.DataFrame:
        """predictions.csv: one row per evaluated image (engine.runs.PREDICTION_COLUMNS)."""
        probabilities = [c for c in runs.PREDICTION_COLUMNS if c.startswith("prob_")]
        return read_table(self.path / runs.PREDICTIONS, runs.PREDICTION_COLUMNS, ("confidence", *probabilities))

    @property
    def context(self) -> dict[str, Any]:
        """context.json: accuracy as the images are, without leukocytes, without background, with another stage's
        stain and in greyscale (written by `evaluate` when the data has leukocyte masks)."""
        return read_json(self.path / runs.CONTEXT)

    @property
    def baselines(self) -> dict[str, Any]:
        """baselines.json: the colour-only models beside the network."""
        return read_json(self.path / runs.BASELINES)

    @property
    def model_card(self) -> str:
        """MODEL_CARD.md, as Markdown."""
        path = self.path / runs.MODEL_CARD
        if not path.is_file():
            raise _missing(path)
        return path.read_text(encoding="utf-8")

    @property
    def cams_meta(self) -> dict[str, Any]:
        """cams/meta.json: what `explain` computed (methods, layers, split, checkpoint)."""
        return read_json(self.path / runs.CAMS / runs.CAMS_META)

    @property
    def cams_index(self) -> pd.DataFrame:
        """cams/index.csv: one row per image x method x layer x target (engine.runs.INDEX_COLUMNS)."""
        return read_table(self.path / runs.CAMS / runs.CAMS_INDEX, runs.INDEX_COLUMNS, ("confidence", "correct"))

    @property
    def localisation(self) -> pd.DataFrame:
        """cams/localisation.csv: per image x method x layer, how much of the map lies on the leukocytes, beside a
        centred blob and another image's map (docs/explanations.md)."""
        return read_table(self.path / runs.CAMS / runs.LOCALISATION_TABLE, LOCALISATION_REQUIRED,
                          ("concentration", "pointing"))

    @property
    def localisation_summary(self) -> dict[str, Any]:
        """cams/localisation.json: per method x layer and stage, the scores, their intervals and a verdict."""
        return read_json(self.path / runs.CAMS / runs.LOCALISATION)

    # -- views of those files

    def confusion_matrix(self, split: str = "test", *, normalized: bool = False) -> pd.DataFrame:
        """metrics.json's confusion matrix of ``split``: rows the true stages, columns the predicted ones (counts, or
        with ``normalized`` each row's shares)."""
        metrics = self.metrics
        splits = metrics.get("splits") or {}
        if split not in splits:
            raise ValueError(f"{self.path / runs.METRICS} has no split {split!r}; it has {', '.join(splits) or 'none'}")
        key = "confusion_matrix_normalized" if normalized else "confusion_matrix"
        classes = list(metrics.get("classes") or CLASSES)
        try:
            return pd.DataFrame(splits[split][key], index=pd.Index(classes, name="true"),
                                columns=pd.Index(classes, name="predicted"))
        except (KeyError, TypeError, ValueError) as exc:
            path = self.path / runs.METRICS
            raise DamagedFileError(path, f"damaged: the {split} confusion matrix cannot be read ({exc})",
                                   runs.remake_hint(path)) from None

    def scores(self) -> pd.DataFrame:
        """metrics.json's headline scores, one row per split: accuracy and macro-F1 with their 95% intervals,
        balanced accuracy, images."""
        rows = []
        for split, m in (self.metrics.get("splits") or {}).items():
            acc_lo, acc_hi = m.get("accuracy_ci95") or (None, None)
            f1_lo, f1_hi = m.get("macro_f1_ci95") or (None, None)
            rows.append({"split": split, "n": m.get("n"), "accuracy": m.get("accuracy"), "accuracy_low": acc_lo,
                         "accuracy_high": acc_hi, "macro_f1": m.get("macro_f1"), "macro_f1_low": f1_lo,
                         "macro_f1_high": f1_hi, "balanced_accuracy": m.get("balanced_accuracy")})
        return pd.DataFrame(rows).set_index("split") if rows else pd.DataFrame()

    def context_table(self) -> pd.DataFrame:
        """context.json as a table: per probe (variant), in words, the accuracy with its Wilson 95% interval and the
        images, plus the chance level of these images."""
        context = self.context
        rows = []
        for variant, block in (context.get("variants") or {}).items():
            overall = block.get("all") or {}
            low, high = overall.get("ci95") or (None, None)
            rows.append({"variant": variant, "words": runs.CONTEXT_VARIANTS.get(variant, variant),
                         "accuracy": overall.get("accuracy"), "accuracy_low": low, "accuracy_high": high,
                         "n": overall.get("n"), "chance": context.get("chance")})
        return pd.DataFrame(rows).set_index("variant") if rows else pd.DataFrame()

    def maps(self, stage: str | None = None, method: str | None = None, layer: str | None = None, *,
             target: str = "pred", correct: bool | None = None, limit: int | None = None) -> Iterator[StoredMap]:
        """The maps ``explain`` stored, one ``StoredMap`` per image, read as they are yielded.

        ``stage``: images of this true stage (default all); ``method`` and ``layer``: default the first ``explain``
        computed (the scored ones, cams/meta.json); ``target``: "pred" (the map of the predicted stage) or "true";
        ``correct``: only the correctly (True) or wrongly (False) classified images; ``limit``: at most this many.
        """
        if stage is not None and stage not in CLASSES:
            raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(CLASSES)}")
        if target not in runs.TARGETS:
            raise ValueError(f"unknown target {target!r}; choose one of {', '.join(runs.TARGETS)}")
        index = self.cams_index
        meta = self.cams_meta
        method = method or (meta.get("methods") or [index["method"].iloc[0]])[0]
        layer = layer or (meta.get("layers") or [index["layer"].iloc[0]])[0]
        for name, value, present in (("method", method, index["method"]), ("layer", layer, index["layer"]),
                                     ("target", target, index["target"])):
            if value not in set(present):
                raise ValueError(f"cams/ has no maps of {name} {value!r}; it has {', '.join(sorted(set(present)))}")
        chosen = index[(index["method"] == method) & (index["layer"] == layer) & (index["target"] == target)]
        if stage is not None:
            chosen = chosen[chosen["true"] == stage]
        if correct is not None:
            chosen = chosen[chosen["correct"].astype(bool) == correct]
        if limit is not None:
            chosen = chosen.head(limit)
        # Checked above, read below: a wrong stage or method fails at the call, not at the first map.
        return self._read_maps(chosen)

    def _read_maps(self, chosen: pd.DataFrame) -> Iterator[StoredMap]:
        cams = self.path / runs.CAMS
        for row in chosen.itertuples(index=False):
            mask_file = cams / runs.cam_mask(row.sha256)
            yield StoredMap(path=row.path, sha256=row.sha256, true=row.true, pred=row.pred,
                            confidence=float(row.confidence), correct=bool(row.correct), method=row.method,
                            layer=row.layer, target=row.target, target_class=row.target_class,
                            image=read_png(cams / row.image), map=read_map(cams / row.map),
                            mask=read_png(mask_file, mode="L") >= 128 if mask_file.is_file() else None)

    # -- the model

    def predictor(self, checkpoint: str = "best", device: str = "auto") -> Predictor:
        """The run's model (engine.predict.Predictor, as `python -m engine predict` and the dashboard load it),
        loaded once per checkpoint and device."""
        key = (checkpoint, device)
        if key not in self._predictors:
            from .predict import Predictor

            self._predictors[key] = Predictor(self.path, checkpoint, device)
        return self._predictors[key]


def load_run(path: Path | str) -> Run:
    """The run folder at ``path``; FileNotFoundError when it is not one (no config.json)."""
    return Run(path)


# ----------------------------------------------------------------------------- the model on new images


def _model_image(predictor: Predictor, image: ImageLike) -> np.ndarray:
    """``image`` as the model sees it (uint8 H x W x 3 at its size), by the predictor's own preprocessing."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image array must be RGB uint8 (H x W x 3), not {image.dtype} {image.shape}")
        from PIL import Image

        # Through PNG bytes, so that an array gets exactly the resizing and cropping a file gets.
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        image = buffer.getvalue()
    return predictor.preprocess(image if isinstance(image, bytes) else Path(image))


def _images(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, str | bytes | os.PathLike):
        return [images]
    return list(images)


def _label(image: ImageLike, i: int) -> str:
    if isinstance(image, np.ndarray):
        return f"array {i}"
    if isinstance(image, bytes):
        return f"bytes {i}"
    return str(image)


def predict(run: Run | Path | str, images: ImageLike | Sequence[ImageLike], *, checkpoint: str = "best",
            device: str = "auto") -> pd.DataFrame:
    """Stage probabilities of ``images`` (files, bytes or RGB arrays), one row each, in order.

    Columns: image, pred, confidence, prob_<stage> per stage and, when the run was evaluated (ood.npz), ood_distance
    and out_of_distribution; an image that cannot be read has only its ``error``. Files go through
    ``Predictor.predict_files``, the code of `python -m engine predict`.
    """
    run = run if isinstance(run, Run) else load_run(run)
    predictor = run.predictor(checkpoint, device)
    items = _images(images)
    results: list[dict[str, Any]] = [{} for _ in items]
    files = [i for i, item in enumerate(items) if isinstance(item, str | os.PathLike)]
    for i, result in zip(files, predictor.predict_files([Path(items[i]) for i in files]), strict=True):
        results[i] = result
    for i, item in enumerate(items):
        if i in files:
            continue
        try:
            picture = _model_image(predictor, item)
        except ValueError as exc:
            results[i] = {"path": _label(item, i), "error": str(exc)}
            continue
        proba, distance = predictor.scores(picture[None])
        k = int(proba[0].argmax())
        results[i] = {"path": _label(item, i), "pred": CLASSES[k], "confidence": float(proba[0, k]),
                      "probabilities": {c: float(p) for c, p in zip(CLASSES, proba[0], strict=True)}}
        if distance is not None:
            results[i].update(ood_distance=float(distance[0]),
                              out_of_distribution=bool(distance[0] > predictor.ood.threshold))
    rows = [{"image": r.get("path"), **{k: v for k, v in r.items() if k not in ("path", "probabilities")},
             **{f"prob_{c}": p for c, p in (r.get("probabilities") or {}).items()}} for r in results]
    return pd.DataFrame(rows)


def explain(run: Run | Path | str, image: ImageLike, method: str | None = None, layer: str | None = None, *,
            target: str | None = None, checkpoint: str = "best", device: str = "auto") -> Explanation:
    """The map of one image (a file, its bytes or an RGB array), computed now with the engine's CAM code
    (``Predictor.analyse``, as the dashboard's Predict page computes it).

    ``method`` and ``layer`` default to the explanation defaults (engine.explain.pipeline); ``target`` is the stage
    the map explains (default: the predicted one).
    """
    run = run if isinstance(run, Run) else load_run(run)
    predictor = run.predictor(checkpoint, device)
    picture = _model_image(predictor, image)
    if target is not None and target not in CLASSES:
        raise ValueError(f"unknown stage {target!r}; choose one of {', '.join(CLASSES)}")
    found = predictor.analyse(picture, None if target is None else CLASSES.index(target), method, layer)
    return Explanation(image=picture, map=found.map, overlay=found.overlay, method=found.method, layer=found.layer,
                       target=found.target, pred=found.pred, probabilities=found.probabilities)
