"""split=smear: whole smear folds held out, through every reader of a run's split.

One rule (engine.runs.effective_split): test = smear fold ``fold``, validation = fold ``(fold + 1) % K``,
training = the rest. The manifest reader, the recorded split digest and ``require_same_split``, the
dashboard's ``split_problem``, training, evaluation, the similar-images index and explain all follow it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from engine import cli, runs, similar
from engine.config import ConfigError, build_config
from engine.errors import DataError
from engine.manifest import read_manifest
from engine.prepare import prepare
from engine.runs import MANIFEST, SMEAR_COLUMNS, SMEAR_FOLD, SMEAR_GROUP
from tests.support.smears import write_smear_folder

FOLDS = 3


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated smears (4 per stage, 10 images each) prepared with 3 smear folds, inside an outputs-like root."""
    root = tmp_path_factory.mktemp("smear-split")
    write_smear_folder(root / "raw" / "ALL", smears_per_stage=4, per_smear=10, seed=2)
    prepare(root / "raw" / "ALL", root / "prepared", seed=0, folds=FOLDS)
    return root / "prepared"


def fold_of(rows: list[dict]) -> dict[str, int]:
    return {r["path"]: int(r[SMEAR_FOLD]) for r in rows}


def rewrite(manifest: Path, rows: list[dict], columns: list[str]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    manifest.write_text(out.getvalue())


def test_each_fold_is_tested_once_with_the_next_one_validating_and_no_group_on_two_sides(prepared):
    raw = read_manifest(prepared)
    folds = fold_of(raw)
    assert read_manifest(prepared, "image", 0) == raw  # the default is the manifest's own split
    with (prepared / MANIFEST).open(newline="") as handle:
        assert [r["split"] for r in raw] == [r["split"] for r in csv.DictReader(handle)]
    tested = []
    for fold in range(FOLDS):
        rows = read_manifest(prepared, "smear", fold)
        assert [r["path"] for r in rows] == [r["path"] for r in raw]
        expected = {fold: "test", (fold + 1) % FOLDS: "val"}
        assert all(r["split"] == expected.get(folds[r["path"]], "train") for r in rows)
        groups = defaultdict(set)
        for row in rows:
            groups[row["split"]].add(row[SMEAR_GROUP])
        assert set(groups) == {"train", "val", "test"}
        assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"]
                    or groups["val"] & groups["test"])
        tested += [r["path"] for r in rows if r["split"] == "test"]
    assert sorted(tested) == sorted(r["path"] for r in raw)  # every image is tested exactly once


def test_the_split_digest_is_the_effective_split_s_and_the_image_one_is_unchanged(prepared):
    data = (prepared / MANIFEST).read_bytes()
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    legacy = hashlib.sha256("\n".join(sorted(f"{r['sha256']},{r['class']},{r['split']}" for r in rows)).encode())
    assert runs.split_digest(data) == runs.split_digest(data, "image", 0) == legacy.hexdigest()
    smear = [runs.split_digest(data, "smear", k) for k in range(FOLDS)]
    assert len(set(smear)) == FOLDS and runs.split_digest(data) not in smear
    assert runs.manifest_record(prepared, "smear", 1)[runs.SPLIT_SHA256] == smear[1]
    assert runs.manifest_record(prepared)[runs.SPLIT_SHA256] == legacy.hexdigest()


def test_a_run_is_checked_against_its_own_folds_by_the_engine_and_the_dashboard(prepared, tmp_path):
    import shutil

    from dashboard import loaders

    root = tmp_path / "outputs"
    data = root / "prepared"
    shutil.copytree(prepared, data, ignore=shutil.ignore_patterns("cache"))
    manifest = data / MANIFEST
    smear_run, image_run = root / "runs" / "smear", root / "runs" / "image"
    for run, split, fold in ((smear_run, "smear", 1), (image_run, "image", 0)):
        run.mkdir(parents=True)
        runs.write_json(run / runs.CONFIG, {"data_dir": str(data), "split": split, "fold": fold,
                                            **runs.manifest_record(data, split, fold)})

    def problems() -> tuple[str | None, str | None, str | None]:
        return (runs.manifest_problem(smear_run), loaders.split_problem(root, smear_run),
                runs.manifest_problem(image_run))

    assert problems() == (None, None, None)
    runs.require_same_split(smear_run)
    text = manifest.read_text()
    table = list(csv.DictReader(io.StringIO(text)))
    columns = list(table[0])

    # One image moved from the image split's train to its test: the image run's split changed, not the smear run's.
    moved = [dict(r) for r in table]
    next(r for r in moved if r["split"] == "train")["split"] = "test"
    rewrite(manifest, moved, columns)
    smear_problem, dashboard_problem, image_problem = problems()
    assert smear_problem is None and dashboard_problem is None and "another split" in image_problem

    # One smear group moved to another fold: now the smear run's split changed.
    regrouped = [dict(r) for r in table]
    group = regrouped[0][SMEAR_GROUP]
    for row in regrouped:
        if row[SMEAR_GROUP] == group:
            row[SMEAR_FOLD] = str((int(row[SMEAR_FOLD]) + 1) % FOLDS)
    rewrite(manifest, regrouped, columns)
    smear_problem, dashboard_problem, image_problem = problems()
    assert "another split" in smear_problem and "another split" in dashboard_problem and image_problem is None
    with pytest.raises(DataError, match="another split"):
        runs.require_same_split(smear_run)

    # Prepared by a version without smear folds: the smear run's split is gone, the image run's is intact.
    rewrite(manifest, table, [c for c in columns if c not in SMEAR_COLUMNS])
    smear_problem, dashboard_problem, image_problem = problems()
    assert "another split" in smear_problem and "another split" in dashboard_problem and image_problem is None
    manifest.write_text(text)
    assert problems() == (None, None, None)


def test_bad_split_settings_are_refused_with_what_to_do(prepared, tmp_path, capsys):
    with pytest.raises(ConfigError, match="split must be one of"):
        build_config("tiny", {"split": "patient"})
    with pytest.raises(ConfigError, match="fold must be 0 or more"):
        build_config("tiny", {"split": "smear", "fold": -1})
    with pytest.raises(ConfigError, match="fold applies only with split=smear"):
        build_config("tiny", {"fold": 2})
    with pytest.raises(DataError, match=rf"fold=3 is out of range: .*{MANIFEST} has 3 smear folds, 0 to 2"):
        read_manifest(prepared, "smear", 3)

    # A manifest without smear folds: the error names the file and says to prepare again.
    old = tmp_path / "old"
    old.mkdir()
    (old / "data_report.json").write_text((prepared / "data_report.json").read_text())
    rows = read_manifest(prepared)
    rewrite(old / MANIFEST, rows, [c for c in rows[0] if c not in SMEAR_COLUMNS])
    with pytest.raises(DataError, match=rf"{old / MANIFEST} has no smear folds .*run `python -m engine prepare`"):
        read_manifest(old, "smear", 0)
    assert cli.main(["train", "--data", str(old), "--preset", "tiny", "--set", "split=smear",
                     "--out", str(tmp_path / "runs"), "--name", "r"]) == 2
    err = capsys.readouterr().err
    assert "has no smear folds" in err and str(old / MANIFEST) in err
    assert not (tmp_path / "runs" / "r" / runs.CONFIG).exists()
    assert cli.main(["train", "--data", str(prepared), "--preset", "tiny", "--set", "split=smear", "--set", "fold=5",
                     "--out", str(tmp_path / "runs"), "--name", "r5"]) == 2
    assert "fold=5 is out of range" in capsys.readouterr().err


def test_a_tiny_training_on_a_smear_fold_trains_validates_and_tests_on_its_folds(prepared, tmp_path):
    from engine.evaluate import evaluate
    from engine.explain.pipeline import load_run
    from engine.features import load as load_features
    from engine.train import fit

    fold = 1
    run = fit(build_config("tiny", {"epochs": 2, "split": "smear", "fold": fold}), prepared, tmp_path / "run",
              preset="tiny")
    folds = fold_of(read_manifest(prepared))
    in_split = {s: {p for p, f in folds.items() if f == k} for s, k in (("test", fold), ("val", (fold + 1) % FOLDS))}
    in_split["train"] = set(folds) - in_split["test"] - in_split["val"]

    config = json.loads((run / runs.CONFIG).read_text())
    assert (config["split"], config["fold"]) == ("smear", fold)
    assert config[runs.SPLIT_SHA256] == runs.manifest_record(prepared, "smear", fold)[runs.SPLIT_SHA256]
    env = json.loads((run / runs.ENV).read_text())
    assert (env["train_images"], env["val_images"]) == (len(in_split["train"]), len(in_split["val"]))
    assert runs.manifest_matches(run) is True

    evaluate(run, n_bootstrap=10)
    with (run / runs.PREDICTIONS).open(newline="") as handle:
        predicted = defaultdict(set)
        for row in csv.DictReader(handle):
            predicted[row["split"]].add(row["path"])
    assert predicted["test"] == in_split["test"] and predicted["val"] == in_split["val"]
    stored = load_features(run / runs.FEATURES)
    assert set(stored["train"].path.tolist()) == in_split["train"]

    # Similar cases are looked up among the run's own training images only.
    test_row = next(r for r in read_manifest(prepared, "smear", fold) if r["split"] == "test")
    found = similar.nearest(run, similar.stored_vector(run, test_row["sha256"]), k=len(folds))
    assert found and {f["path"] for f in found} <= in_split["train"]

    # Explain reads the same test images.
    loaded = load_run(run, split="test", device="cpu")
    assert {r["path"] for r in loaded.rows} == in_split["test"]
    assert np.isfinite(loaded.proba).all()
