"""Classification metrics from true labels and predicted probabilities: pure functions.

Everything is computed by scikit-learn and SciPy; this module arranges the results into the
``metrics.json`` structure documented in docs/run-folder.md. The one exception is the score of each
bootstrap resample, computed for all resamples at once with the values scikit-learn gives (tested).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm

CALIBRATION_BINS = 15


@dataclasses.dataclass(frozen=True)
class Headline:
    """A headline metric of one split of metrics.json, as every page, deck and comparison shows it."""

    key: str  # its key in the split (in the split's ``section`` when there is one)
    label: str
    ci: str | None = None  # the key of its 95% bootstrap interval, where ``classification_metrics`` gives one
    section: str | None = None  # e.g. "calibration"
    lower_is_better: bool = False

    def value(self, split: dict[str, Any]) -> Any:
        return (split.get(self.section) or {}).get(self.key) if self.section else split.get(self.key)

    def interval(self, split: dict[str, Any]) -> Any:
        return split.get(self.ci) if self.ci else None


# The headline metrics, in the order they are shown; a new one is an entry here plus its value in
# ``classification_metrics``.
HEADLINE_METRICS = (
    Headline("accuracy", "Accuracy", ci="accuracy_ci95"),
    Headline("macro_f1", "Macro-F1", ci="macro_f1_ci95"),
    Headline("balanced_accuracy", "Balanced accuracy"),
    Headline("weighted_f1", "Weighted F1"),
    Headline("roc_auc_ovr_macro", "ROC-AUC (macro, one-vs-rest)"),
    Headline("ece", "ECE", section="calibration", lower_is_better=True),
    Headline("brier", "Brier", section="calibration", lower_is_better=True),
)


def _clean(value: float) -> float | None:
    """JSON has no NaN: an undefined metric (e.g. AUC of an absent class) becomes null."""
    value = float(value)
    return None if math.isnan(value) else value


def bootstrap_ci(
    y_true: np.ndarray, y_pred: np.ndarray, statistic: str, *, n_resamples: int = 1000,
    seed: int = 0, confidence: float = 0.95,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of ``accuracy`` or ``macro_f1`` over images (SciPy's bootstrap).

    The statistic is computed for all resamples at once (``resampled_statistic``): scikit-learn's scorers,
    called once per resample, cost seconds per split; these give the same values (tests/test_evaluate.py).
    """
    if len(y_true) < 2:
        return None, None
    labels = np.unique(y_true)
    result = stats.bootstrap(
        (np.asarray(y_true), np.asarray(y_pred)),
        lambda t, p, axis=-1: resampled_statistic(statistic, t, p, labels, axis), paired=True,
        vectorized=True, n_resamples=n_resamples, confidence_level=confidence,
        method="percentile", random_state=np.random.default_rng(seed),
    )
    return _clean(result.confidence_interval.low), _clean(result.confidence_interval.high)


def resampled_statistic(statistic: str, t: np.ndarray, p: np.ndarray, labels: np.ndarray,
                        axis: int = -1) -> np.ndarray:
    """``accuracy`` or ``macro_f1`` along ``axis`` of true and predicted labels: the values
    ``skm.accuracy_score`` and ``skm.f1_score(labels=labels, average="macro", zero_division=0)`` give per row."""
    t, p = np.moveaxis(t, axis, -1), np.moveaxis(p, axis, -1)
    if statistic == "accuracy":
        return (t == p).mean(-1)
    if statistic != "macro_f1":
        raise ValueError(f"unknown statistic {statistic!r}")
    scores = []
    for label in labels:
        true, pred = t == label, p == label
        tp = (true & pred).sum(-1)
        # F1 = 2 tp / (2 tp + fp + fn); 0 where the label is neither true nor predicted (zero_division=0).
        denominator = 2 * tp + (~true & pred).sum(-1) + (true & ~pred).sum(-1)
        scores.append(np.divide(2 * tp, denominator, out=np.zeros(denominator.shape), where=denominator > 0))
    return np.mean(scores, axis=0)


def mean_ci(values: Sequence[float], *, seed: int = 0, n_resamples: int = 2000) -> dict[str, Any]:
    """Mean with a percentile-bootstrap 95% interval (null bounds below two values)."""
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    n = len(values)
    if n == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    mean = float(values.mean())
    if n < 2:
        return {"mean": mean, "ci95": [None, None], "n": n}
    if np.ptp(values) == 0:
        return {"mean": mean, "ci95": [mean, mean], "n": n}
    result = stats.bootstrap((values,), np.mean, n_resamples=n_resamples, confidence_level=0.95,
                             method="percentile", random_state=np.random.default_rng(seed))
    return {"mean": mean, "ci95": [float(result.confidence_interval.low), float(result.confidence_interval.high)],
            "n": n}


def proportion_ci(successes: int, n: int, confidence: float = 0.95) -> list[float | None]:
    """Wilson score interval of a proportion (null bounds for n = 0)."""
    if n == 0:
        return [None, None]
    interval = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(interval.low), float(interval.high)]


def calibration(y_true: np.ndarray, proba: np.ndarray, n_bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Top-label calibration: reliability bins, expected calibration error and Brier score."""
    confidence = proba.max(1)
    correct = (proba.argmax(1) == y_true).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    count, _, _ = stats.binned_statistic(confidence, correct, "count", bins=edges)
    accuracy, _, _ = stats.binned_statistic(confidence, correct, "mean", bins=edges)
    mean_conf, _, _ = stats.binned_statistic(confidence, confidence, "mean", bins=edges)
    filled = count > 0
    ece = float(np.sum(count[filled] / len(y_true) * np.abs(accuracy[filled] - mean_conf[filled])))
    return {
        "ece": ece,
        "brier": float(skm.brier_score_loss(y_true, proba, labels=list(range(proba.shape[1])))),
        "bins": [
            {"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(count[i]),
             "confidence": _clean(mean_conf[i]) if filled[i] else None,
             "accuracy": _clean(accuracy[i]) if filled[i] else None}
            for i in range(n_bins)
        ],
    }


def classification_metrics(
    y_true: Sequence[int], proba: np.ndarray, classes: Sequence[str], *, n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of one split. ``proba`` is N x len(classes); predictions are its argmax."""
    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=float)
    y_pred = proba.argmax(1)
    labels = list(range(len(classes)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    # Specificity of class k: true negatives over all negatives, from the one-vs-rest matrices.
    mcm = skm.multilabel_confusion_matrix(y_true, y_pred, labels=labels)
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    specificity = np.divide(tn, tn + fp, out=np.full(len(labels), np.nan), where=(tn + fp) > 0)
    # One-vs-rest AUC of class k is defined only when the split holds both k and not-k.
    auc = [skm.roc_auc_score(y_true == k, proba[:, k]) if len(np.unique(y_true == k)) == 2 else float("nan")
           for k in labels]
    per_class = {
        name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
               "specificity": _clean(specificity[k]), "support": int(support[k]), "roc_auc": _clean(auc[k])}
        for k, name in enumerate(classes)
    }
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average,
                                                         zero_division=0)
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    averages["macro"]["specificity"] = _clean(np.nanmean(specificity))
    # A split without every class has no multi-class AUC.
    auc_macro = (skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=labels)
                 if len(np.unique(y_true)) == len(labels) else float("nan"))
    acc_ci = bootstrap_ci(y_true, y_pred, "accuracy", n_resamples=n_bootstrap, seed=seed)
    f1_ci = bootstrap_ci(y_true, y_pred, "macro_f1", n_resamples=n_bootstrap, seed=seed)
    return {
        "n": len(y_true),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "accuracy_ci95": list(acc_ci),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": averages["macro"]["f1"],
        "macro_f1_ci95": list(f1_ci),
        "weighted_f1": averages["weighted"]["f1"],
        "roc_auc_ovr_macro": _clean(auc_macro),
        "per_class": per_class,
        "macro": averages["macro"],
        "weighted": averages["weighted"],
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "confusion_matrix_normalized": np.nan_to_num(
            skm.confusion_matrix(y_true, y_pred, labels=labels, normalize="true")).tolist(),
        "calibration": calibration(y_true, proba),
    }
