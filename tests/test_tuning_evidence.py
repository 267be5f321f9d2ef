"""Choosing a model by evidence, for real: a two-objective Ray Tune sweep of the tiny DenseNet on generated images
with leukocyte masks (``tiny-evidence``: multi-objective Optuna TPE, FIFO), every trial probed on its validation
images, and the finish step's recommendation; then the finish step on an older sweep without the probe, and on
a sweep whose most accurate trial reads the context. Every expected value is recomputed here from the files
(manifest, predictions, summary.csv), not copied from the code under test.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest

from engine import runs
from engine.evaluate import probe_val_context
from engine.manifest import read_manifest
from engine.prepare import prepare
from tests.support.fixture import private_ray
from tests.support.images import write_image_folder
from tuning import layout
from tuning.cli import main

pytestmark = pytest.mark.slow  # real Ray clusters or servers: left out by make test-fast

PROBE = list(layout.PROBE_COLUMNS)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def expected_recommendation(rows: list[dict[str, str]], margin: float = 0.10) -> tuple[str, str, bool]:
    """The rule of docs/sweeps.md, written out again: (recommended, most accurate, rule met) among the complete
    trials in summary order."""
    done = [r for r in rows if r["status"] == "complete"]
    f1 = {r["trial_id"]: float(r["best_val_macro_f1"]) for r in done}
    top = max(done, key=lambda r: f1[r["trial_id"]])  # max keeps the first of equals: summary order
    reading = [r for r in done if r["val_acc_without_cells"] and r["val_chance"]
               and float(r["val_acc_without_cells"]) <= float(r["val_chance"]) + margin + 1e-12]
    if not reading:
        return top["trial_id"], top["trial_id"], False
    best_f1 = max(f1[r["trial_id"]] for r in reading)
    tied = [r for r in reading if f1[r["trial_id"]] == best_f1]
    return min(tied, key=lambda r: float(r["val_acc_without_cells"]))["trial_id"], top["trial_id"], True


@pytest.fixture(scope="module")
def evidence_sweep(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished tiny-evidence sweep of 3 trials (FIFO: all train to the end), and what the command printed."""
    out = tmp_path_factory.mktemp("evidence") / "sweeps"
    printed = io.StringIO()
    with private_ray(), contextlib.redirect_stdout(printed):
        code = main(["sweep", "--space", "tiny-evidence", "--data", str(prepared_tiny), "--out", str(out),
                     "--name", "ev", "--num-samples", "3", "--no-explain"])
    assert code == 0, printed.getvalue()[-3000:]
    return {"sweep": out / "ev", "stdout": printed.getvalue(), "prepared": prepared_tiny}


def test_every_trial_reports_its_probe_on_the_validation_images(evidence_sweep: dict) -> None:
    sweep, prepared = evidence_sweep["sweep"], evidence_sweep["prepared"]
    info = json.loads((sweep / layout.SWEEP_JSON).read_text())
    assert (info["metric"], info["mode"]) == (["val_macro_f1", "val_acc_without_cells"], ["max", "min"])
    assert (info["search"], info["scheduler"]) == ("optuna", "fifo")

    rows = read_csv(sweep / layout.SUMMARY)
    assert len(rows) == 3 and set(PROBE) <= set(rows[0])
    # The validation images with a mask, and chance on them, straight from the manifest.
    val = [r for r in read_manifest(prepared) if r["split"] == "val" and r["mask"]]
    counts = {c: sum(r["class"] == c for r in val) for c in runs.CLASSES}
    chance = max(counts.values()) / len(val)
    for row in rows:
        assert row["status"] == "complete"
        run = sweep / row["run_dir"]
        probe = json.loads((run / runs.VAL_CONTEXT).read_text())
        scores = probe["scores"]
        # summary.csv holds what the trial reported to Tune, which is its val_context.json.
        assert {k: float(row[k]) for k in PROBE} == pytest.approx({k: float(scores[k]) for k in PROBE})
        assert int(float(row["val_probe_images"])) == probe["images"] == len(val)
        assert scores["val_chance"] == pytest.approx(chance)
        assert scores["val_context_gap"] == pytest.approx(scores["val_acc_without_cells"] - chance)
        variants = probe["variants"]
        assert set(variants) == {"original", "cells_removed", "stain_swapped"}
        assert variants["cells_removed"]["all"]["n"] == len(val)
        assert scores["val_acc_without_cells"] == variants["cells_removed"]["all"]["correct"] / len(val)
        # Measured once, with the best checkpoint: after training, of the epoch COMPLETE names as the best.
        complete = json.loads((run / runs.COMPLETE).read_text())
        assert probe["checkpoint"] == "best" and probe["checkpoint_epoch"] == complete["best_epoch"]
        assert (run / runs.VAL_CONTEXT).stat().st_mtime_ns >= (run / runs.HISTORY).stat().st_mtime_ns
        assert set(read_csv(run / runs.HISTORY)[0]) == set(runs.HISTORY_COLUMNS)  # nothing per epoch


def test_the_probe_agrees_with_evaluate_on_the_same_images(evidence_sweep: dict) -> None:
    # The finish step evaluated the best trial: its predictions.csv (fp32, best checkpoint) on the masked
    # validation images must score exactly the probe's accuracy "as they are".
    sweep, prepared = evidence_sweep["sweep"], evidence_sweep["prepared"]
    best = json.loads((sweep / layout.BEST).read_text())
    run = sweep / best["run_dir"]
    masked = {r["sha256"] for r in read_manifest(prepared) if r["split"] == "val" and r["mask"]}
    predictions = [r for r in read_csv(run / runs.PREDICTIONS) if r["split"] == "val" and r["sha256"] in masked]
    assert len(predictions) == len(masked)
    accuracy = sum(r["true"] == r["pred"] for r in predictions) / len(predictions)
    probe = json.loads((run / runs.VAL_CONTEXT).read_text())
    assert probe["scores"]["val_acc_as_is"] == pytest.approx(accuracy)


def test_optuna_was_told_both_objectives(evidence_sweep: dict) -> None:
    sweep = evidence_sweep["sweep"]
    [state_file] = glob.glob(str(sweep / layout.RAY_STORAGE / "ev" / "searcher-state-*.pkl"))
    with open(state_file, "rb") as handle:
        state = pickle.load(handle)
    study = state["_ot_study"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    rows = {(round(float(r["param_lr"]), 12)): r for r in read_csv(sweep / layout.SUMMARY)}
    assert len(study.trials) == 3
    for trial in study.trials:
        assert trial.state.name == "COMPLETE"
        row = rows[round(trial.params["lr"], 12)]
        assert trial.values == pytest.approx([float(row["val_macro_f1"]), float(row["val_acc_without_cells"])])


def test_recommended_json_follows_the_rule(evidence_sweep: dict) -> None:
    sweep = evidence_sweep["sweep"]
    rows = read_csv(sweep / layout.SUMMARY)
    recommended, most_accurate, met = expected_recommendation(rows)
    data = json.loads((sweep / layout.RECOMMENDED).read_text())
    best = json.loads((sweep / layout.BEST).read_text())
    assert (data["trial_id"], data["most_accurate"]["trial_id"], data["rule_met"]) == (recommended, most_accurate,
                                                                                        met)
    assert best["trial_id"] == most_accurate
    assert data["verdict"] == ("reads the cells" if met else "no trial reads the cells")
    assert "10 points above chance" in data["rule"] and data["margin"] == 0.10
    row = next(r for r in rows if r["trial_id"] == recommended)
    assert data["run_dir"] == row["run_dir"]
    assert data["scores"]["val_acc_without_cells"] == pytest.approx(float(row["val_acc_without_cells"]))
    assert data["scores"]["best_val_macro_f1"] == pytest.approx(float(row["best_val_macro_f1"]))
    metrics = json.loads((sweep / row["run_dir"] / runs.METRICS).read_text())  # evaluated, whichever trial it is
    assert data["test"]["accuracy"] == pytest.approx(metrics["splits"]["test"]["accuracy"])
    assert data["same_as_most_accurate"] == (recommended == most_accurate)
    printed = evidence_sweep["stdout"]
    assert f"recommended trial {recommended} ({data['verdict']})" in printed
    assert "rule: the most accurate trial" in printed


def test_finish_adds_the_probe_to_an_older_sweep(evidence_sweep: dict, tmp_path: Path) -> None:
    # An older sweep: summary.csv without the probe columns, no val_context.json, no recommended.json.
    old = tmp_path / "old"
    shutil.copytree(evidence_sweep["sweep"], old, ignore=shutil.ignore_patterns(layout.RAY_STORAGE))
    before = {r["trial_id"]: r for r in read_csv(old / layout.SUMMARY)}
    columns = [c for c in next(iter(before.values())) if c not in PROBE]
    runs.write_csv(old / layout.SUMMARY, columns, [{c: r[c] for c in columns} for r in before.values()])
    for path in old.glob(f"{layout.TRIALS}/*/{runs.VAL_CONTEXT}"):
        path.unlink()
    (old / layout.RECOMMENDED).unlink()

    assert main(["finish", str(old), "--no-explain"]) == 0
    after = {r["trial_id"]: r for r in read_csv(old / layout.SUMMARY)}
    assert set(PROBE) <= set(next(iter(after.values())))
    for trial_id, row in after.items():  # measured again, the same: fp32, the same checkpoint and seed
        assert (old / row["run_dir"] / runs.VAL_CONTEXT).is_file()
        assert {k: float(row[k]) for k in PROBE} == pytest.approx({k: float(before[trial_id][k]) for k in PROBE})
    data = json.loads((old / layout.RECOMMENDED).read_text())
    assert (data["trial_id"], data["most_accurate"]["trial_id"]) == expected_recommendation(list(after.values()))[:2]


def test_finish_evaluates_a_recommended_trial_that_is_not_the_most_accurate(evidence_sweep: dict,
                                                                            tmp_path: Path) -> None:
    # The generated cells carry the stage, so every trial reads them. Make the most accurate trial's probe say it
    # keeps 90% without its leukocytes, and the runner-up's that it falls to chance: the rule must then choose the
    # runner-up, and the finish step evaluate it on the test split too.
    sweep = tmp_path / "doctored"
    shutil.copytree(evidence_sweep["sweep"], sweep, ignore=shutil.ignore_patterns(layout.RAY_STORAGE))
    rows = read_csv(sweep / layout.SUMMARY)
    ranked = sorted(rows, key=lambda r: -float(r["best_val_macro_f1"]))
    top, runner_up = ranked[0], ranked[1]
    assert float(top["best_val_macro_f1"]) > float(runner_up["best_val_macro_f1"]), "a tie: nothing to tell apart"
    for row, without in ((top, 0.9), (runner_up, None)):
        path = sweep / row["run_dir"] / runs.VAL_CONTEXT
        probe = json.loads(path.read_text())
        chance = probe["scores"]["val_chance"]
        without = chance if without is None else without
        probe["scores"].update(val_acc_without_cells=without, val_context_gap=without - chance)
        runs.write_json(path, probe)
        row.update(val_acc_without_cells=str(without), val_context_gap=str(without - chance))
    for other in ranked[2:]:  # leave no third trial that reads the cells
        other.update(val_acc_without_cells="0.95")
    runs.write_csv(sweep / layout.SUMMARY, list(rows[0]), rows)
    (sweep / runner_up["run_dir"] / runs.METRICS).unlink(missing_ok=True)  # so the finish step must evaluate it

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["finish", str(sweep), "--no-explain"]) == 0
    data = json.loads((sweep / layout.RECOMMENDED).read_text())
    assert data["trial_id"] == runner_up["trial_id"] and data["most_accurate"]["trial_id"] == top["trial_id"]
    assert data["rule_met"] and not data["same_as_most_accurate"]
    metrics = json.loads((sweep / runner_up["run_dir"] / runs.METRICS).read_text())
    assert data["test"]["accuracy"] == pytest.approx(metrics["splits"]["test"]["accuracy"])
    assert data["most_accurate"]["test"] == json.loads((sweep / layout.BEST).read_text())["test"]
    assert data["most_accurate"]["scores"]["val_acc_without_cells"] == pytest.approx(0.9)
    assert "90%" in data["reason"] and "colour and background" in data["reason"]
    text = printed.getvalue()
    assert f"recommended trial {runner_up['trial_id']} (reads the cells)" in text
    assert f"most accurate trial {top['trial_id']}: val macro-F1" in text


def test_two_objectives_with_asha_cut_on_the_first(prepared_tiny: Path, tmp_path: Path,
                                                   ray_tmpdir: str) -> None:
    space = tmp_path / "asha.yaml"
    space.write_text("base_preset: tiny\nfixed: {epochs: 2, max_train_images: 48, eval_batch_size: 64}\n"
                     "params:\n  lr: {loguniform: [0.001, 0.01]}\n"
                     "metric: [val_macro_f1, val_acc_without_cells]\nmode: [max, min]\n"
                     "search: optuna\nscheduler: asha\ngrace_period: 1\nreduction_factor: 2\n"
                     "max_concurrent_trials: 1\n")
    out = tmp_path / "sweeps"
    assert main(["sweep", "--space", str(space), "--data", str(prepared_tiny), "--out", str(out), "--name", "a",
                 "--num-samples", "3", "--no-explain"]) == 0
    rows = read_csv(out / "a" / layout.SUMMARY)
    assert len(rows) == 3 and {r["status"] for r in rows} <= {"complete", "stopped"}
    for row in rows:  # a trial ASHA cut has no probe; one that finished has it
        assert bool(row["val_acc_without_cells"]) == (row["status"] == "complete")
    [state_file] = glob.glob(str(out / "a" / layout.RAY_STORAGE / "a" / "searcher-state-*.pkl"))
    with open(state_file, "rb") as handle:
        study = pickle.load(handle)["_ot_study"]
    states = sorted(t.state.name for t in study.trials)
    assert states == sorted("COMPLETE" if r["status"] == "complete" else "PRUNED" for r in rows)
    assert (out / "a" / layout.RECOMMENDED).is_file()


def test_a_second_objective_is_refused_where_it_cannot_work(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # Before Ray starts: without masks there is no probe to optimise; random search optimises nothing.
    plain = tmp_path / "plain"
    prepare(write_image_folder(tmp_path / "raw", per_class=6), plain, seed=0)
    assert main(["sweep", "--space", "tiny-evidence", "--data", str(plain), "--out", str(tmp_path / "s")]) == 2
    assert "optimises val_acc_without_cells, the context probe, but" in capsys.readouterr().err
    assert main(["sweep", "--space", "tiny-evidence", "--data", str(plain), "--out", str(tmp_path / "s"),
                 "--search", "random"]) == 2
    assert "need search: optuna; random search samples without looking at results" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_a_run_without_masks_has_no_probe_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plain = tmp_path / "plain"
    prepare(write_image_folder(tmp_path / "raw", per_class=6), plain, seed=0)
    run = tmp_path / "run"
    runs.write_json(run / runs.CONFIG, {"data_dir": str(plain), "split": "image", "fold": 0})
    with caplog.at_level(logging.INFO, logger="engine.evaluate"):
        assert probe_val_context(run) is None
    assert "no leukocyte masks on the validation images" in caplog.text and "not measured" in caplog.text
    assert not (run / runs.VAL_CONTEXT).exists()

    from tuning.trainable import probe_scores

    assert probe_scores(run, "cpu") == {}  # the trial's probe columns stay empty


def test_the_sweeps_page_shows_the_real_sweep(evidence_sweep: dict, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.apptest import boxes, chart, sweeps_app, values

    root = tmp_path / "outputs"
    shutil.copytree(evidence_sweep["sweep"], root / "sweeps" / "ev", ignore=shutil.ignore_patterns(layout.RAY_STORAGE))
    data = json.loads((root / "sweeps" / "ev" / layout.RECOMMENDED).read_text())
    at = sweeps_app(root, monkeypatch)
    figure = chart(at, "context_")
    assert figure is not None
    points = [(x, y) for t in figure["data"] if not str(t.get("name")).startswith("★")
              for x, y in zip(values(t["x"]), values(t["y"]), strict=True)]
    rows = read_csv(root / "sweeps" / "ev" / layout.SUMMARY)
    expected = sorted((float(r["val_acc_without_cells"]), float(r["best_val_macro_f1"])) for r in rows)
    assert len(points) == len(expected)
    for got, want in zip(sorted(points), expected, strict=True):
        assert got == pytest.approx(want)
    stars = [t.get("name") for t in figure["data"] if str(t.get("name")).startswith("★")]
    assert any(f"({data['trial_id']})" in name and "recommended" in name for name in stars)
    assert f"Trial {data['trial_id']}" in boxes(at)
