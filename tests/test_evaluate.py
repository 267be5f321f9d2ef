import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from engine.metrics import bootstrap_ci, calibration, classification_metrics, resampled_statistic
from engine.runs import CLASSES

pytestmark = pytest.mark.numerics


def test_resampled_statistics_are_sklearns_scores_row_by_row():
    rng = np.random.default_rng(0)
    for k in (2, 3, 4):
        true, pred = rng.integers(0, k, (200, 17)), rng.integers(0, k + 1, (200, 17))  # a label never true, too
        labels = np.unique(true)
        f1 = resampled_statistic("macro_f1", true, pred, labels)
        accuracy = resampled_statistic("accuracy", true.T, pred.T, labels, axis=0)
        for i in range(len(true)):
            assert f1[i] == skm.f1_score(true[i], pred[i], labels=labels, average="macro", zero_division=0)
            assert accuracy[i] == skm.accuracy_score(true[i], pred[i])


def test_bootstrap_interval_is_scipys_over_sklearns_scorers():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 4, 60)
    pred = np.where(rng.random(60) < 0.7, true, rng.integers(0, 4, 60))
    scorers = {"accuracy": skm.accuracy_score,
               "macro_f1": lambda t, p: skm.f1_score(t, p, labels=np.unique(true), average="macro", zero_division=0)}
    for name, scorer in scorers.items():
        reference = stats.bootstrap((true, pred), scorer, paired=True, vectorized=False, n_resamples=300,
                                    method="percentile", random_state=np.random.default_rng(0)).confidence_interval
        assert bootstrap_ci(true, pred, name, n_resamples=300, seed=0) == (reference.low, reference.high)


def test_metrics_json_is_exactly_what_sklearn_computes_from_predictions(trained_tiny_run):
    metrics = json.loads((trained_tiny_run / "metrics.json").read_text())
    predictions = pd.read_csv(trained_tiny_run / "predictions.csv")
    assert set(predictions["split"]) == {"val", "test"}
    for split, m in metrics["splits"].items():
        rows = predictions[predictions["split"] == split]
        y = rows["true"].map(CLASSES.index).to_numpy()
        proba = rows[[f"prob_{c}" for c in CLASSES]].to_numpy()
        pred = proba.argmax(1)
        assert (rows["pred"].map(CLASSES.index).to_numpy() == pred).all()
        assert m["n"] == len(rows)
        assert m["accuracy"] == skm.accuracy_score(y, pred)
        assert m["balanced_accuracy"] == skm.balanced_accuracy_score(y, pred)
        assert m["macro_f1"] == skm.f1_score(y, pred, average="macro", labels=range(4), zero_division=0)
        assert m["weighted_f1"] == skm.f1_score(y, pred, average="weighted", labels=range(4), zero_division=0)
        assert m["roc_auc_ovr_macro"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", labels=range(4)))
        assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(4)).tolist()
        recall = skm.recall_score(y, pred, average=None, labels=range(4), zero_division=0)
        assert [m["per_class"][c]["recall"] for c in CLASSES] == pytest.approx(recall)
        assert m["calibration"]["brier"] == pytest.approx(skm.brier_score_loss(y, proba, labels=range(4)))
        assert len(m["misclassified"]) == int((pred != y).sum())
        lo, hi = m["accuracy_ci95"]
        assert lo <= m["accuracy"] <= hi


def test_perfect_predictions():
    y = np.repeat(np.arange(4), 10)
    proba = np.eye(4)[y] * 0.96 + 0.01
    m = classification_metrics(y, proba, CLASSES, n_bootstrap=200)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["accuracy_ci95"] == [1.0, 1.0]
    assert all(m["per_class"][c]["specificity"] == 1.0 for c in CLASSES)
    assert m["confusion_matrix_normalized"] == np.eye(4).tolist()
    assert m["calibration"]["ece"] == pytest.approx(0.03)  # confidence 0.97, accuracy 1


def test_specificity_and_missing_class():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y, np.eye(4)[pred] * 0.92 + 0.02, CLASSES, n_bootstrap=100)
    # benign: negatives are the 4 non-benign images, one of them predicted benign.
    assert m["per_class"]["benign"]["specificity"] == pytest.approx(3 / 4)
    assert m["per_class"]["pro"]["support"] == 0 and m["per_class"]["pro"]["roc_auc"] is None
    assert m["roc_auc_ovr_macro"] is None


def test_overconfident_model_has_large_ece():
    y = np.array([0, 1] * 50)
    proba = np.tile([[0.99, 0.0033, 0.0033, 0.0034]], (100, 1))  # always "benign", sure of it
    cal = calibration(y, proba)
    assert cal["ece"] == pytest.approx(0.49, abs=1e-6)
    assert sum(b["count"] for b in cal["bins"]) == 100
