import json
from pathlib import Path

from engine.bench import main


def test_bench_measures_both_loops_and_writes_its_report(prepared_tiny, tmp_path, capsys):
    assert main(["--prepared", str(prepared_tiny), "--set", "model=densenet-tiny", "--set", "image_size=48",
                 "--steps", "2", "--workers", "1", "--cam-images", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(Path(out[-1]).read_text())
    assert report["config"]["model"] == "densenet-tiny" and report["config"]["image_size"] == 48
    for loop in ("plain", "engine"):
        assert report[loop]["train_images_per_s"] > 0 and report[loop]["images"] == 2 * report["config"]["batch_size"]
    assert report["speedup"] == report["engine"]["train_images_per_s"] / report["plain"]["train_images_per_s"]
    assert report["engine"]["eval_images_per_s"] > 0
    assert any("speed-up (engine / plain)" in line for line in out)
