"""The whole engine path on the real ALL data set (skipped when ../shared/data/ALL is absent)."""

import csv
import json
from collections import defaultdict

import pytest

from engine.cli import main
from tests.support.images import REAL_DATA

pytestmark = [pytest.mark.slow, pytest.mark.numerics]


def test_full_data_set_prepare_accounts_for_every_file(real_prepared):
    first, _ = real_prepared
    report = json.loads((first / "data_report.json").read_text())
    with (first / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    files = sum(1 for p in (REAL_DATA / "Original").rglob("*") if p.is_file() and not p.name.startswith("."))
    assert files == 3256 == report["files_found"] == len(rows) + len(report["rejected"])
    splits_of = defaultdict(set)
    for row in rows:
        splits_of[row["sha256"]].add(row["split"])
    assert all(len(s) == 1 for s in splits_of.values()), "a sha256 appears in two splits"
    counts = report["counts"]
    assert {c: sum(v.values()) for c, v in counts.items()} == {"benign": 504, "early": 985, "pre": 963, "pro": 804}


def test_prepare_train_evaluate_explain_predict_on_real_images(real_subset, real_subset_prepared, tmp_path, capsys):
    prepared, runs_dir = tmp_path / "prepared", tmp_path / "runs"
    assert main(["prepare", "--data-dir", str(real_subset), "--out", str(prepared)]) == 0
    # Reproducible: the same images and seed, prepared again in another process, give the same manifest
    # (hashes, near-duplicate groups, masks, smear groups and splits), byte for byte.
    shared, _ = real_subset_prepared
    assert (prepared / "manifest.csv").read_bytes() == (shared / "manifest.csv").read_bytes()
    assert main(["train", "--data", str(prepared), "--preset", "tiny", "--set", "epochs=2",
                 "--out", str(runs_dir), "--name", "real"]) == 0
    run = runs_dir / "real"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run)
    assert main(["evaluate", str(run), "--bootstrap", "200"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    test_rows = (prepared / "manifest.csv").read_text().count(",test,")
    assert metrics["splits"]["test"]["n"] == test_rows == sum(map(sum, metrics["splits"]["test"]["confusion_matrix"]))
    assert main(["explain", str(run)]) == 0
    assert (run / "cams" / "index.csv").is_file()
    image = next((real_subset / "Original" / "Pro").iterdir())
    assert main(["predict", str(run), str(image)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["path"] == str(image) and line["pred"] in ("benign", "early", "pre", "pro")
