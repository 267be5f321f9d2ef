"""Group K-fold cross-validation as a sweep: one trial per smear fold, their mean and spread at the end.

A real Ray Tune sweep of the ``tiny-smear-cv`` space (3 folds, 2 epochs each) on generated smears
prepared with ``--folds 3``; then the repeats.json the finish step writes is checked against each
trial's own metrics.json and predictions.csv.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

from engine import runs
from engine.manifest import read_manifest
from engine.prepare import prepare
from engine.runs import SMEAR_FOLD
from tests.support.smears import write_smear_folder
from tuning.cli import main
from tuning.layout import REPEATS

pytestmark = pytest.mark.slow  # real Ray clusters or servers: left out by make test-fast

FOLDS = 3


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("smear-cv")
    write_smear_folder(root / "ALL", smears_per_stage=4, per_smear=10, seed=3)
    prepare(root / "ALL", root / "prepared", seed=0, folds=FOLDS)
    return root / "prepared"


def test_a_fold_sweep_reports_the_mean_and_spread_over_the_folds(prepared, tmp_path, ray_tmpdir,
                                                                 capsys):
    out = tmp_path / "sweeps"
    assert main(["sweep", "--space", "tiny-smear-cv", "--data", str(prepared), "--out", str(out), "--name", "cv",
                 "--no-explain"]) == 0
    sweep = out / "cv"
    printed = capsys.readouterr().out
    with (sweep / "summary.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(int(r["param_fold"]) for r in rows) == list(range(FOLDS))
    assert {r["status"] for r in rows} == {"complete"}

    folds = {r["path"]: int(r[SMEAR_FOLD]) for r in read_manifest(prepared)}
    data = json.loads((sweep / REPEATS).read_text())
    assert data["repeat_params"] == ["fold"]
    (setting,) = data["settings"]
    assert setting["left_out"] == [] and [t["fold"] for t in setting["trials"]] == list(range(FOLDS))
    accuracy = []
    for trial in setting["trials"]:
        run = sweep / trial["run_dir"]
        config = json.loads((run / runs.CONFIG).read_text())
        assert (config["split"], config["fold"]) == ("smear", trial["fold"])
        # Each fold's trial was scored on its own test fold, validated on the next.
        with (run / runs.PREDICTIONS).open(newline="") as handle:
            predicted = defaultdict(set)
            for row in csv.DictReader(handle):
                predicted[row["split"]].add(row["path"])
        assert predicted["test"] == {p for p, f in folds.items() if f == trial["fold"]}
        assert predicted["val"] == {p for p, f in folds.items() if f == (trial["fold"] + 1) % FOLDS}
        metrics = json.loads((run / runs.METRICS).read_text())["splits"]
        assert trial["test_accuracy"] == metrics["test"]["accuracy"]
        assert trial["val_accuracy"] == metrics["val"]["accuracy"]
        accuracy.append(metrics["test"]["accuracy"])
    spread = setting["test_accuracy"]
    assert spread["n"] == FOLDS
    assert spread["mean"] == pytest.approx(statistics.mean(accuracy))
    assert spread["std"] == pytest.approx(statistics.stdev(accuracy))
    assert (spread["min"], spread["max"]) == (min(accuracy), max(accuracy))
    assert f"{FOLDS} repeats over fold: test accuracy {spread['mean']:.4f}" in printed

    # `tuning finish` reports the same from the folder alone.
    assert main(["finish", str(sweep), "--no-explain"]) == 0
    assert f"{FOLDS} repeats over fold: test accuracy {spread['mean']:.4f}" in capsys.readouterr().out


def test_a_fold_sweep_beyond_the_prepared_folds_is_refused_before_it_starts(prepared, tmp_path, capsys):
    space = tmp_path / "five.yaml"
    space.write_text("base_preset: tiny\nfixed: {split: smear}\nparams:\n  fold: {grid: [0, 1, 2, 3, 4]}\n"
                     "scheduler: fifo\n")
    assert main(["sweep", "--space", str(space), "--data", str(prepared), "--out", str(tmp_path / "s")]) == 2
    assert "fold values [3, 4] are out of range" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_repeats_group_trials_by_every_parameter_but_fold_and_leave_unfinished_ones_out(tmp_path):
    """repeats() from the folder alone (no Ray): two settings of lr, each over folds; a stopped trial left out."""
    import os

    from tuning.finish import format_repeats, repeats

    trials = [("a", 0.1, 0, "complete", 0.6), ("b", 0.1, 1, "complete", 0.8), ("c", 0.2, 0, "complete", 0.7),
              ("d", 0.2, 1, "stopped", 0.9)]
    rows = []
    for trial_id, lr, fold, status, accuracy in trials:
        run = tmp_path / "trials" / trial_id
        (run / runs.CHECKPOINTS).mkdir(parents=True)
        best = run / runs.CHECKPOINTS / runs.BEST_CHECKPOINT
        best.write_bytes(b"")
        os.utime(best, ns=(1, 1))  # older than metrics.json: no evaluation needed
        runs.write_json(run / runs.METRICS, {"splits": {"test": {"accuracy": accuracy, "macro_f1": accuracy / 2},
                                                        "val": {"accuracy": 1 - accuracy, "macro_f1": 0.5}}})
        runs.write_json(run / "trial.json", {"params": {"lr": lr, "fold": fold}})
        rows.append({"trial_id": trial_id, "status": status, "param_lr": str(lr), "param_fold": str(fold),
                     "run_dir": f"trials/{trial_id}"})
    data = repeats(tmp_path, rows)
    assert data["repeat_params"] == ["fold"]
    by_setting = {s["setting"]: s for s in data["settings"]}
    assert set(by_setting) == {"lr=0.1", "lr=0.2"}
    first, second = by_setting["lr=0.1"], by_setting["lr=0.2"]
    assert first["test_accuracy"] == pytest.approx({"n": 2, "mean": 0.7, "std": statistics.stdev([0.6, 0.8]),
                                                    "min": 0.6, "max": 0.8})
    assert first["val_accuracy"]["mean"] == pytest.approx(0.3) and first["left_out"] == []
    assert second["test_accuracy"]["n"] == 1 and second["test_accuracy"]["std"] is None
    assert [t["trial_id"] for t in second["left_out"]] == ["d"]
    assert "lr=0.2: 1 repeats over fold" in format_repeats(data) and "1 left out" in format_repeats(data)
    # A sweep that searches neither fold nor seed has no repeats.
    assert repeats(tmp_path, [{k: v for k, v in r.items() if k != "param_fold"} for r in rows]) is None
