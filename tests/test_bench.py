import json
from pathlib import Path

from engine.commands.bench import main


def test_bench_measures_both_loops_and_writes_its_report(prepared_tiny, tmp_path, capsys):
    # An explicit batch: the GPU default (gpu-full, 256) is larger than the tiny data set.
    assert main(["--prepared", str(prepared_tiny), "--set", "model=densenet-tiny", "--set", "image_size=48",
                 "--set", "batch_size=16", "--steps", "2", "--workers", "1", "--cam-images", "4",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(Path(out[-1]).read_text())
    assert report["config"]["model"] == "densenet-tiny" and report["config"]["image_size"] == 48
    for loop in ("plain", "engine"):
        assert report[loop]["train_images_per_s"] > 0 and report[loop]["images"] == 2 * report["config"]["batch_size"]
    assert report["speedup"] == report["engine"]["train_images_per_s"] / report["plain"]["train_images_per_s"]
    assert report["engine"]["eval_images_per_s"] > 0
    assert report["fastest"]["variant"] == "default"  # no ladder of variants on a CPU
    assert any("speed-up (engine / plain)" in line for line in out)


def test_bench_leaves_out_the_stages_it_is_told_to_skip(prepared_tiny, tmp_path, capsys):
    import pytest

    args = ["--prepared", str(prepared_tiny), "--set", "model=densenet-tiny", "--set", "image_size=48",
            "--set", "batch_size=16", "--steps", "1", "--workers", "0", "--out", str(tmp_path)]
    with pytest.raises(ValueError, match="unknown stage"):
        main([*args, "--skip", "gradcam,warp"])
    assert main([*args, "--skip", "gradcam"]) == 0
    report = json.loads(Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text())
    assert "gradcam" not in report and report["engine"]["train_images_per_s"] > 0


def test_plain_loop_trains_on_the_train_split_and_scores_the_val_split(prepared_tiny):
    import torch

    from engine import runs
    from engine.bench import plain_accuracy
    from engine.config import build_config
    from engine.manifest import read_manifest

    cfg = build_config("tiny", {"epochs": 2, "batch_size": 16})
    data_dir = Path(runs.read_json(prepared_tiny / "data_report.json")["data_dir"])
    result = plain_accuracy(data_dir, prepared_tiny, cfg, torch.device("cpu"), workers=0)
    val_rows = [r for r in read_manifest(prepared_tiny) if r["split"] == "val"]
    train_rows = [r for r in read_manifest(prepared_tiny) if r["split"] == "train"]
    assert result["val_images"] == len(val_rows) and result["epochs"] == 2
    assert 0 <= result["val_acc"] <= 1 and result["training_seconds"] > 0
    # drop_last: whole batches of the train split only, so a leak of val/test images would show here
    steps = len(train_rows) // 16
    assert result["train_images_per_s"] == 2 * steps * 16 / result["training_seconds"]


def test_time_to_accuracy_reports_the_first_epoch_at_target_and_trains_on(prepared_tiny, tmp_path):
    from engine.bench import time_to_accuracy
    from engine.config import build_config

    cfg = build_config("tiny", {"epochs": 3, "early_stop_patience": 0})
    result = time_to_accuracy(prepared_tiny, cfg, "tiny", 0.0, tmp_path)
    assert result["reached"] and result["epoch"] == 1 and result["epochs_run"] == 3
    assert result["training_seconds"] == result["history"][0]["epoch_seconds"]
    assert result["total_training_seconds"] >= result["training_seconds"]
    never = time_to_accuracy(prepared_tiny, cfg, "tiny", 1.01, tmp_path)
    assert not never["reached"] and never["epoch"] is None and never["epochs_run"] == 3


def test_plain_loop_says_when_the_data_is_smaller_than_one_batch(prepared_tiny):
    import pytest
    import torch

    from engine import runs
    from engine.bench import plain_loop
    from engine.config import build_config

    data_dir = Path(runs.read_json(prepared_tiny / "data_report.json")["data_dir"])
    with pytest.raises(ValueError, match="fewer than one batch of 4096"):
        plain_loop(data_dir, build_config("tiny", {"batch_size": 4096}), torch.device("cpu"), 1, 0, 0)


def test_a_failing_variant_is_recorded_and_the_others_still_run(prepared_tiny):
    import torch

    from engine.bench import format_table, ladder
    from engine.config import build_config

    cfg = build_config("tiny", {"batch_size": 16, "image_size": 48})
    rows = ladder(prepared_tiny, cfg, torch.device("cpu"), steps=1, warmup=1,
                  variants=(("broken", {"model": "resnet50"}), ("as is", {})))
    assert "model must be one of" in rows[0]["error"] and rows[1]["train_images_per_s"] > 0
    table = format_table(report_of(cfg, rows))
    assert "engine: broken" in table and "failed" in table
    fastest = {"variant": "as is", "train_images_per_s": 3.0, "speedup": 3.0}
    assert "fastest engine variant: as is" in format_table({**report_of(cfg, rows), "fastest": fastest})


def report_of(cfg, rows):
    """The smallest bench report ``format_table`` accepts, around these ladder rows."""
    return {"device_name": "cpu", "device": "cpu", "config": cfg.to_dict(), "prepare_images_per_s": 1.0,
            "cache_load_seconds": 0.1, "plain": {"train_images_per_s": 1.0}, "ladder": rows,
            "engine": rows[1], "speedup": 1.0, "plain_epoch_seconds": 1.0, "engine_epoch_seconds": 1.0}
