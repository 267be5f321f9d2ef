"""engine.notebook on real folders: a trained and evaluated tiny run, and a tiny sweep with explained trials."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine import runs
from engine.errors import DamagedFileError
from engine.notebook import Run, StoredMap, explain, load_run, predict, read_map
from engine.predict import Predictor
from tuning.notebook import load_sweep

REPO = Path(__file__).resolve().parents[1]


def raw_images(prepared: Path, per_stage: int = 2) -> list[Path]:
    """Generated image files of the tiny data set (tests/conftest.py writes them beside the prepared folder)."""
    folders = sorted((prepared.parent / "raw" / "Original").iterdir())
    return [path for folder in folders for path in sorted(folder.iterdir())[:per_stage]]


def test_a_run_reads_its_files_as_the_engine_wrote_them(trained_tiny_run: Path) -> None:
    run = load_run(trained_tiny_run)
    assert isinstance(run, Run) and run.name == trained_tiny_run.name
    assert run.config == runs.read_json(trained_tiny_run / runs.CONFIG)
    assert run.metrics == runs.read_json(trained_tiny_run / runs.METRICS)
    assert run.status == runs.STATUS_COMPLETE

    history = run.history
    assert list(history.columns) == list(runs.HISTORY_COLUMNS) and list(history["epoch"]) == [1, 2, 3, 4]
    predictions = run.predictions
    assert list(predictions.columns) == list(runs.PREDICTION_COLUMNS)
    assert set(predictions["split"]) == {"val", "test"}
    probabilities = predictions[[f"prob_{c}" for c in runs.CLASSES]].to_numpy()
    assert np.allclose(probabilities.sum(1), 1, atol=1e-4)

    test = run.metrics["splits"]["test"]
    matrix = run.confusion_matrix("test")
    assert list(matrix.index) == list(matrix.columns) == list(runs.CLASSES)
    assert matrix.to_numpy().tolist() == test["confusion_matrix"] and matrix.to_numpy().sum() == test["n"]
    assert np.allclose(run.confusion_matrix("test", normalized=True).sum(axis=1), 1)
    scores = run.scores()
    assert scores.loc["test", "accuracy"] == test["accuracy"]
    assert [scores.loc["test", "accuracy_low"], scores.loc["test", "accuracy_high"]] == test["accuracy_ci95"]
    with pytest.raises(ValueError, match="no split 'train'"):
        run.confusion_matrix("train")

    context = run.context_table()  # the tiny data has leukocyte masks, so evaluate measured the probes
    assert list(context.index) == list(runs.CONTEXT_VARIANTS)
    assert context.loc["original", "accuracy"] == run.context["variants"]["original"]["all"]["accuracy"]
    assert context.loc["cells_removed", "words"] == "leukocytes removed"
    assert "research" in run.model_card.lower()


def test_a_missing_file_names_the_command_that_writes_it(trained_tiny_run: Path) -> None:
    run = load_run(trained_tiny_run)  # evaluated, never explained
    with pytest.raises(FileNotFoundError, match="python -m engine explain"):
        run.maps()
    with pytest.raises(FileNotFoundError, match=r"localisation\.csv"):
        _ = run.localisation
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        load_run(trained_tiny_run.parent)


def test_damaged_files_are_named(trained_tiny_run: Path, dashboard_outputs: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(dashboard_outputs["best"], copy, ignore=shutil.ignore_patterns(runs.CHECKPOINTS, "*.npz"))
    run = load_run(copy)
    (copy / runs.METRICS).write_text('{"splits": {"test": ')
    with pytest.raises(DamagedFileError, match=re.escape(runs.METRICS)) as caught:
        _ = run.metrics
    assert caught.value.path == copy / runs.METRICS and "evaluate" in str(caught.value)
    (copy / runs.PREDICTIONS).write_text("split,path\ntest,a.png\n")
    with pytest.raises(DamagedFileError, match="lacks the column"):
        _ = run.predictions
    (copy / runs.HISTORY).write_text("epoch," + ",".join(runs.HISTORY_COLUMNS[1:]) + "\n1," + "x," * 7 + "x\n")
    with pytest.raises(DamagedFileError, match="not numbers"):
        _ = run.history

    first = next(run.maps())
    stored = copy / runs.CAMS / runs.cam_map(first.method, first.layer, first.target, first.sha256)
    stored.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DamagedFileError, match=re.escape(stored.name)) as caught:
        list(run.maps())
    assert caught.value.path == stored and "explain" in caught.value.next_step
    np.save(stored, np.zeros((2, 2, 2), dtype=np.float16))
    with pytest.raises(DamagedFileError, match="not a 2-D map"):
        read_map(stored)


def test_stored_maps_come_with_their_images_and_masks(dashboard_outputs: dict[str, Path]) -> None:
    run = load_run(dashboard_outputs["best"])
    meta, index = run.cams_meta, run.cams_index
    method, layer = meta["methods"][0], meta["layers"][0]
    for stage in runs.CLASSES:
        maps = list(run.maps(stage=stage))
        chosen = index[(index["method"] == method) & (index["layer"] == layer) & (index["target"] == "pred")
                       & (index["true"] == stage)]
        assert len(maps) == len(chosen)
        for m in maps:
            assert isinstance(m, StoredMap) and (m.true, m.method, m.layer, m.target) == (stage, method, layer, "pred")
            size = meta["image_size"]
            assert m.image.shape == (size, size, 3) and m.image.dtype == np.uint8
            assert m.map.shape == (size, size) and m.map.dtype == np.float32 and 0 <= m.map.min() <= m.map.max() <= 1
            # The tiny data has a mask for every image, and explain stored each one.
            assert m.mask is not None and m.mask.dtype == bool and m.mask.shape == (size, size) and m.mask.any()
            stored = np.load(run.path / runs.CAMS / runs.cam_map(method, layer, "pred", m.sha256))
            assert np.array_equal(m.map, stored.astype(np.float32))
    other = index["layer"].iloc[-1]
    assert all(m.layer == other for m in run.maps(layer=other, limit=2))
    wrong = list(run.maps(target="true", correct=False))
    assert all(not m.correct and m.target_class == m.true for m in wrong)
    assert len(list(run.maps(limit=3))) == 3
    with pytest.raises(ValueError, match="unknown stage"):
        run.maps(stage="blast")
    with pytest.raises(ValueError, match="no maps of method 'scorecam'"):
        run.maps(method="scorecam")

    localisation = run.localisation
    assert {"concentration", "pointing", "centre_concentration"} <= set(localisation.columns)
    assert set(localisation["method"]) == set(meta["methods"]) and len(localisation) > 0
    assert run.localisation_summary["results"]


def test_predict_and_explain_are_the_engines(trained_tiny_run: Path, prepared_tiny: Path) -> None:
    files = raw_images(prepared_tiny)
    run = load_run(trained_tiny_run)
    table = predict(run, files, device="cpu")
    assert list(table["image"]) == [str(f) for f in files]
    expected = Predictor(trained_tiny_run, "best", "cpu").predict_files(files)
    for row, result in zip(table.to_dict("records"), expected, strict=True):
        assert row["pred"] == result["pred"]
        assert all(abs(row[f"prob_{c}"] - p) < 1e-6 for c, p in result["probabilities"].items())
        assert row["out_of_distribution"] == result["out_of_distribution"]  # evaluate wrote ood.npz

    # Arrays (any size) and bytes get the same preprocessing as files.
    from PIL import Image

    array = np.asarray(Image.open(files[0]).convert("RGB"))
    mixed = predict(trained_tiny_run, [array, files[0].read_bytes(), files[0]], device="cpu")
    assert list(mixed["image"]) == ["array 0", "bytes 1", str(files[0])]
    probabilities = mixed[[f"prob_{c}" for c in runs.CLASSES]].to_numpy()
    assert np.allclose(probabilities, probabilities[2], atol=1e-6)
    failed = predict(run, [files[0], REPO / "README.md"], device="cpu")
    assert pd.isna(failed.loc[0, "error"]) and failed.loc[0, "pred"] in runs.CLASSES
    assert isinstance(failed.loc[1, "error"], str) and pd.isna(failed.loc[1, "pred"])

    result = explain(run, files[0], "gradcam", "norm5", device="cpu")
    size = run.config["image_size"]
    assert result.map.shape == (size, size) and 0 <= result.map.min() <= result.map.max() <= 1
    assert result.overlay.shape == (size, size, 3) and result.target == result.pred
    assert abs(sum(result.probabilities.values()) - 1) < 1e-6
    predictor = run.predictor("best", "cpu")
    same = predictor.explain(predictor.preprocess(files[0]), runs.CLASSES.index(result.target), "gradcam", "norm5")
    assert np.allclose(result.map, same)
    other = next(c for c in runs.CLASSES if c != result.pred)
    assert explain(run, array, target=other, device="cpu").target == other
    with pytest.raises(ValueError, match="RGB uint8"):
        explain(run, array.astype(np.float32), device="cpu")


def test_a_sweep_reads_its_trials_without_ray(dashboard_outputs: dict[str, Path]) -> None:
    sweep = load_sweep(dashboard_outputs["sweep"])
    trials = sweep.trials
    summary = (sweep.path / "summary.csv").read_text().splitlines()
    assert len(trials) == len(summary) - 1 == 3
    assert sweep.params == ["param_lr", "param_batch_size", "param_epochs"]
    for column in ("best_val_macro_f1", "param_lr", "param_batch_size", "epochs"):
        assert pd.api.types.is_numeric_dtype(trials[column]), column
    assert all(Path(p).is_dir() for p in trials["run_path"])
    best = sweep.best
    assert best == json.loads((sweep.path / "best.json").read_text())
    top = trials.sort_values("best_val_macro_f1", ascending=False)
    assert best["trial_id"] in set(top["trial_id"])
    assert sweep.trial(best["trial_id"]).metrics["splits"]["test"]["accuracy"] == best["test"]["accuracy"]
    assert sweep.info["status"] == "complete"
    with pytest.raises(FileNotFoundError, match="not a sweep folder"):
        load_sweep(sweep.path / "trials")

    code = ("import sys; from engine.notebook import load_run; from tuning.notebook import load_sweep; "
            f"t = load_sweep({str(sweep.path)!r}).trials; r = load_run(t['run_path'][0]); r.history; r.metrics "
            "if (__import__('pathlib').Path(t['run_path'][0]) / 'metrics.json').is_file() else None; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'streamlit', 'mlflow'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_damaged_summary_is_named(dashboard_outputs: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "sweep"
    copy.mkdir()
    shutil.copy(dashboard_outputs["sweep"] / "sweep.json", copy)
    (copy / "summary.csv").write_text("trial_id,lr\na,0.1\n")
    with pytest.raises(DamagedFileError, match=r"summary\.csv"):
        _ = load_sweep(copy).trials
