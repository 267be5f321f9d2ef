"""``python -m engine explain`` end to end on the tiny run: every file of the cams/ contract."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import cli, runs
from engine.explain.pipeline import INDEX_COLUMNS
from engine.runs import CLASSES

METHODS, LAYERS = ("gradcam", "layercam"), ("norm5", "denseblock3")
QUICK = ["--faithfulness-images", "8", "--road-percentiles", "50", "--sanity-images", "4", "--multilayer", "1"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().out.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def run_copy(trained_tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy: the session fixture is shared with other test files."""
    return Path(shutil.copytree(trained_tiny_run, tmp_path_factory.mktemp("explain") / "tiny"))


@pytest.fixture(scope="module")
def cams(run_copy: Path) -> Path:
    assert cli.main(["explain", str(run_copy), "--methods", *METHODS, "--layers", ",".join(LAYERS), *QUICK]) == 0
    return run_copy / "cams"


def test_meta_records_checkpoint_and_settings(cams: Path, run_copy: Path):
    meta = json.loads((cams / "meta.json").read_text())
    best = (run_copy / "checkpoints" / "best.pt").read_bytes()
    assert meta["checkpoint"] == "best" and isinstance(meta["checkpoint_epoch"], int)
    assert meta["checkpoint_sha256"] == hashlib.sha256(best).hexdigest()
    assert (meta["split"], meta["image_size"], meta["targets"]) == ("test", 64, ["pred", "true"])
    assert meta["methods"] == list(METHODS) and meta["layers"] == list(LAYERS)
    assert set(meta["images_per_s"]) == set(METHODS) and all(v > 0 for v in meta["images_per_s"].values())
    assert meta["images"] == len(read_csv(run_copy / "predictions.csv")) // 2  # test half of val+test
    assert meta["created_at"]


def test_index_has_one_row_per_image_method_layer_target_and_its_files_exist(cams: Path):
    rows = read_csv(cams / "index.csv")
    meta = json.loads((cams / "meta.json").read_text())
    assert tuple(rows[0]) == INDEX_COLUMNS
    assert len(rows) == meta["images"] * len(METHODS) * len(LAYERS) * 2
    assert {(r["method"], r["layer"], r["target"]) for r in rows} == {
        (m, layer, t) for m in METHODS for layer in LAYERS for t in ("pred", "true")}
    for row in rows[:: max(1, len(rows) // 40)] + [r for r in rows if r["correct"] == "0"]:
        assert row["correct"] in ("0", "1") and (row["correct"] == "1") == (row["true"] == row["pred"])
        assert row["target_class"] == (row["pred"] if row["target"] == "pred" else row["true"])
        key = row["sha256"][:16]
        assert row["image"] == f"images/{key}.png"
        assert row["overlay"] == f"{row['method']}/{row['layer']}/{row['target']}/{key}.png"
        assert row["map"] == row["overlay"][:-4] + ".npy"
        assert Image.open(cams / row["image"]).size == (64, 64)
        assert Image.open(cams / row["image"]).mode == "RGB"
        assert Image.open(cams / row["overlay"]).size == (64, 64)
        cam = np.load(cams / row["map"])
        assert cam.dtype == np.float16 and cam.shape == (64, 64)
        assert cam.min() >= 0 and cam.max() <= 1


def test_misclassified_images_have_distinct_pred_and_true_maps(cams: Path):
    rows = read_csv(cams / "index.csv")
    wrong = [r for r in rows if r["correct"] == "0" and r["target"] == "pred"]
    if not wrong:
        pytest.skip("the tiny run classified every test image correctly")
    row = wrong[0]
    twin = next(r for r in rows if r["sha256"] == row["sha256"] and r["target"] == "true"
                and r["method"] == row["method"] and r["layer"] == row["layer"])
    assert not np.array_equal(np.load(cams / row["map"]), np.load(cams / twin["map"]))
    assert (cams / row["method"] / row["layer"] / "pairs" / f"{row['sha256'][:16]}.png").is_file()


def test_faithfulness_files_are_parseable_and_ranked(cams: Path):
    for method in METHODS:
        rows = read_csv(cams / "faithfulness" / f"{method}.csv")
        assert list(rows[0]) == ["path", "sha256", "true", "pred", "correct", "layer", "road_morf", "road_lerf",
                                 "road_combined", "confidence_change"]
        assert len(rows) == 8 and {r["layer"] for r in rows} == {"norm5"}
        for r in rows:
            assert float(r["road_combined"]) == pytest.approx((float(r["road_lerf"]) - float(r["road_morf"])) / 2,
                                                             abs=2e-6)
    summary = json.loads((cams / "faithfulness_summary.json").read_text())
    assert summary["metrics"] == ["road_combined", "road_morf", "road_lerf", "confidence_change"]
    assert summary["higher_is_better"]["road_combined"] is True and summary["higher_is_better"]["road_morf"] is False
    for method in METHODS:
        entry = summary["methods"][method]
        assert entry["layer"] == "norm5"
        for block in [entry["overall"], *entry["per_stage"].values()]:
            for metric in summary["metrics"]:
                assert set(block[metric]) == {"mean", "ci95", "n"} and len(block[metric]["ci95"]) == 2
        assert set(entry["per_stage"]) == set(CLASSES)
    assert set(summary["ranking"]) == {"all", *CLASSES}
    assert all(sorted(order) == sorted(METHODS) for order in summary["ranking"].values())


def test_sanity_and_stage_files(cams: Path):
    sanity = json.loads((cams / "sanity.json").read_text())
    assert set(sanity) == set(METHODS)
    for result in sanity.values():
        assert isinstance(result["passed"], bool) and len(result["steps"]) == 5
        assert {"randomized_from", "spearman", "ssim"} <= set(result["steps"][0])
    summary = json.loads((cams / "stages" / "summary.json").read_text())
    assert set(summary) == set(CLASSES)
    for stage, entry in summary.items():
        assert {"n", "n_correct", "area", "top_confident", "misclassified"} <= set(entry)
        assert entry["method"] == "gradcam" and entry["layer"] == "norm5"
        for name in ("panel.png", "mean_map.png"):
            Image.open(io.BytesIO((cams / "stages" / stage / name).read_bytes())).verify()
    assert len(list((cams / "multilayer").glob("*.png"))) == 1


def test_compare_then_rerun_keeps_the_comparison_and_drops_stale_maps(cams: Path, run_copy: Path, capsys, tmp_path):
    other = Path(shutil.copytree(run_copy, tmp_path / "other", ignore=shutil.ignore_patterns("cams")))
    code, last = run_cli(["explain", str(run_copy), "--compare", str(other), "--compare-images", "4"], capsys)
    assert code == 0 and Path(last) == run_copy / "cams" / "compare" / "other"
    rows = read_csv(Path(last) / "compare.csv")
    assert len(rows) == 4
    # The same checkpoint on the same images: identical maps.
    assert all(float(r["spearman"]) > 0.99 and r["pred_a"] == r["pred_b"] for r in rows)
    assert (Path(last) / "compare.png").is_file() and json.loads((Path(last) / "meta.json").read_text())["b"]

    code, last = run_cli(["explain", str(run_copy), "--no-faithfulness", "--no-sanity", "--no-stages",
                          "--multilayer", "0", "--limit", "8"], capsys)
    assert code == 0 and Path(last) == cams
    # The defaults (engine.explain.pipeline) leave out denseblock3: the folder is replaced, not merged.
    assert not (cams / "gradcam" / "denseblock3").exists() and not (cams / "layercam" / "denseblock3").exists()
    assert (cams / "compare" / "other" / "compare.csv").is_file()
    assert json.loads((cams / "meta.json").read_text())["images"] == 8
    assert json.loads((cams / "sanity.json").read_text()) == {}
    assert json.loads((cams / "faithfulness_summary.json").read_text())["methods"] == {}
    assert not list(run_copy.glob(".cams-*"))


def test_explain_removes_what_killed_explains_left_and_never_a_running_ones(run_copy: Path, capsys):
    """A killed explain leaves its hidden work folder behind; the next explain of the run removes it.

    The work folder of an explain that is still running (its lock file is locked) stays, as does a
    young lock-less one (an older engine may be writing it); a lock-less one older than a day and the
    previous cams/ of an interrupted swap go.
    """
    def work(name: str, *, lock: bool, age_s: float = 0) -> Path:
        folder = run_copy / f"{runs.CAMS_WORK_PREFIX}{name}"
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "a.png").write_bytes(b"x")
        if lock:
            folder.with_name(folder.name + runs.LOCK_SUFFIX).write_text("")
        if age_s:
            stamp = time.time() - age_s
            for path in (folder / "images" / "a.png", folder / "images", folder):
                os.utime(path, (stamp, stamp))
        return folder

    killed = work("111-1", lock=True)  # its owner is gone: nobody holds the lock
    running = work("222-2", lock=True)
    legacy_old, legacy_young = work("333-3", lock=False, age_s=2 * 86400), work("444-4", lock=False)
    swapped = work("old-5", lock=False)
    orphan_lock = run_copy / f"{runs.CAMS_WORK_PREFIX}555-5{runs.LOCK_SUFFIX}"
    orphan_lock.write_text("")
    running_lock = running.with_name(running.name + runs.LOCK_SUFFIX)
    with running_lock.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _ = run_cli(["explain", str(run_copy), "--no-faithfulness", "--no-sanity", "--no-stages",
                           "--no-localisation", "--multilayer", "0", "--limit", "4"], capsys)
        assert code == 0
        assert not killed.exists() and not killed.with_name(killed.name + runs.LOCK_SUFFIX).exists()
        assert not legacy_old.exists() and not swapped.exists() and not orphan_lock.exists()
        assert (running / "images" / "a.png").is_file() and running_lock.is_file()
        assert (legacy_young / "images" / "a.png").is_file()
    shutil.rmtree(running)
    shutil.rmtree(legacy_young)
    running_lock.unlink()
    assert not list(run_copy.glob(f"{runs.CAMS_WORK_PREFIX}*"))


def test_cli_rejects_unknown_names_with_the_choices(run_copy: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", str(run_copy), "--methods", "gradcam,nocam"])
    assert exit_info.value.code == 2
    assert "unknown method nocam; choose from gradcam" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["explain", str(run_copy), "--layer", "norm6"])
    assert "unknown layer norm6" in capsys.readouterr().err


def test_stratified_takes_classes_in_turn_for_any_n():
    from engine.explain.pipeline import stratified

    labels = np.array([0] * 10 + [1] * 3 + [2] * 5)
    assert stratified(labels, 0).tolist() == list(range(18))
    picked = stratified(labels, 2, seed=1)
    assert len(picked) == 2 and len(set(labels[picked])) == 2
    counts = np.bincount(labels[stratified(labels, 9)], minlength=3)
    assert counts.tolist() == [3, 3, 3]
