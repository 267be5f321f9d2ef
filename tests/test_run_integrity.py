"""A run stays tied to what made it: the split it trained on, and one training at a time.

- The prepared manifest's hash is recorded in ``config.json``; once the folder is prepared again
  with another split, ``evaluate``, ``explain`` and ``--resume`` refuse the run, and
  ``runs.manifest_matches`` tells the dashboard so without torch.
- ``fit`` holds an exclusive ``flock`` on ``runs.TRAIN_LOCK`` while it trains: a second training
  (or ``--resume``) into the same folder is refused, and a killed holder blocks nothing.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cli, runs
from engine.config import build_config
from engine.errors import DataError
from engine.evaluate import evaluate
from engine.prepare import prepare
from engine.runs import MANIFEST
from engine.train import fit
from tests.support.images import write_image_folder

QUICK = {"epochs": 1, "max_train_images": 32}
# Holds the lock file given as argv[1] the plain way (open + flock), like any other process would.
HOLD = ("import fcntl, sys, time\n"
        "handle = open(sys.argv[1], 'a+')\n"
        "fcntl.flock(handle, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n")


class Interrupt(Exception):
    pass


@pytest.fixture
def own_prepared(tmp_path: Path) -> tuple[Path, Path]:
    """A raw folder and its prepared folder (seed 0), private to one test: it gets prepared again."""
    raw = write_image_folder(tmp_path / "raw", per_class=16)
    prepare(raw, tmp_path / "prepared", seed=0)
    return raw, tmp_path / "prepared"


# ----------------------------------------------------------------------------- the split a run trained on


def test_a_run_records_its_manifest_and_is_refused_once_the_split_changes(own_prepared, tmp_path, capsys):
    raw, prepared = own_prepared
    run = fit(build_config("tiny", QUICK), prepared, tmp_path / "run", preset="tiny")
    config = runs.read_json(run / runs.CONFIG)
    assert len(config[runs.MANIFEST_SHA256]) == 64 and len(config[runs.SPLIT_SHA256]) == 64
    assert runs.manifest_matches(run) is True and runs.manifest_problem(run) is None
    evaluate(run, n_bootstrap=10)

    # Prepared again, same images, same seed: the manifest is byte-identical, the run still matches.
    prepare(raw, prepared, seed=0)
    assert runs.manifest_matches(run) is True

    prepare(raw, prepared, seed=1)
    assert runs.manifest_matches(run) is False
    problem = runs.manifest_problem(run)
    assert problem and "another split" in problem and str(prepared / MANIFEST) in problem
    with pytest.raises(DataError, match="another split"):
        evaluate(run, n_bootstrap=10)
    assert cli.main(["evaluate", str(run)]) == 2
    assert "another split" in capsys.readouterr().err
    assert cli.main(["explain", str(run), "--no-faithfulness", "--no-sanity", "--multilayer", "0"]) == 2
    assert "another split" in capsys.readouterr().err
    assert not (run / runs.CAMS).exists()


def test_the_same_split_in_other_bytes_still_matches_and_a_lost_manifest_does_not(own_prepared, tmp_path):
    _, prepared = own_prepared
    run = tmp_path / "run"
    run.mkdir()
    runs.write_json(run / runs.CONFIG, {"data_dir": str(prepared), **runs.manifest_record(prepared)})
    # Rows in another order (as when the images moved, or masks were added): another hash, the same split.
    text = (prepared / MANIFEST).read_text()
    header, *rows = text.splitlines(keepends=True)
    (prepared / MANIFEST).write_text(header + "".join(reversed(rows)))
    assert runs.manifest_matches(run) is True
    # One image moved from train to test: the split differs.
    table = list(csv.DictReader(io.StringIO(text)))
    moved = next(r for r in table if r["split"] == "train")
    moved["split"] = "test"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    (prepared / MANIFEST).write_text(out.getvalue())
    assert runs.manifest_matches(run) is False
    (prepared / MANIFEST).unlink()
    assert runs.manifest_matches(run) is False and "no longer" in runs.manifest_problem(run)


def test_a_run_from_before_the_record_cannot_be_checked(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    runs.write_json(run / runs.CONFIG, {"data_dir": str(tmp_path / "prepared"), "model": "densenet-tiny"})
    assert runs.manifest_matches(run) is None and runs.manifest_problem(run) is None
    assert runs.manifest_matches(tmp_path / "nothing-here") is None


def test_resume_refuses_a_run_whose_split_changed(own_prepared, tmp_path, capsys):
    raw, prepared = own_prepared

    def stop(row, run_dir):
        raise Interrupt

    with pytest.raises(Interrupt):
        fit(build_config("tiny", {**QUICK, "epochs": 2}), prepared, tmp_path / "run", on_epoch=stop)
    prepare(raw, prepared, seed=1)
    assert cli.main(["train", "--resume", str(tmp_path / "run")]) == 2
    assert "another split" in capsys.readouterr().err
    assert not runs.is_complete(tmp_path / "run")


# ----------------------------------------------------------------------------- one training at a time


def test_a_second_training_is_refused_while_one_runs_and_a_killed_one_blocks_nothing(prepared_tiny, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = build_config("tiny", {**QUICK, "epochs": 2})

    def stop_after_one(row, run_dir):
        # fit holds the lock while it trains: nobody else can take it.
        with (run_dir / runs.TRAIN_LOCK).open("a+") as handle, pytest.raises(BlockingIOError):
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        raise Interrupt

    with pytest.raises(Interrupt):
        fit(cfg, prepared_tiny, run, on_epoch=stop_after_one)
    assert not (run / runs.TRAIN_LOCK).exists()  # released and removed when fit ends, even by an exception

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run / runs.TRAIN_LOCK)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        history = (run / runs.HISTORY).read_text()
        with pytest.raises(runs.RunBusyError, match="being trained by another process"):
            fit(cfg, prepared_tiny, run, resume=True)
        assert cli.main(["train", "--resume", str(run)]) == 2
        assert "being trained by another process" in capsys.readouterr().err
        with pytest.raises(runs.RunBusyError):
            fit(cfg, prepared_tiny, run)  # a fresh training into the same folder, too
        assert (run / runs.HISTORY).read_text() == history  # refused before touching anything
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs; the kernel drops the flock with the process
        holder.wait()
    assert (run / runs.TRAIN_LOCK).exists()
    assert cli.main(["train", "--resume", str(run)]) == 0
    assert runs.is_complete(run) and not (run / runs.TRAIN_LOCK).exists()
    assert [int(r["epoch"]) for r in csv.DictReader((run / runs.HISTORY).open())] == [1, 2]


def test_the_lock_names_its_holder(prepared_tiny, tmp_path):
    run = tmp_path / "run"
    seen = {}

    def look(row, run_dir):
        seen.update(json.loads((run_dir / runs.TRAIN_LOCK).read_text()))

    fit(build_config("tiny", QUICK), prepared_tiny, run, on_epoch=look)
    import os

    assert seen["pid"] == os.getpid() and seen["host"] and seen["since"]
