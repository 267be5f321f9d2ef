"""engine/commands/tensorboard.py: event files from history.csv, readable by TensorBoard and served by it."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from engine.commands import tensorboard
from tests.support import synthetic

REPO = Path(__file__).resolve().parents[1]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_export_writes_readable_scalars_for_runs_and_sweeps(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "outputs"
    synthetic.make_sweep(root / "sweeps" / "s", 4, rng, str(tmp_path), status="complete")
    synthetic.write_run(root / "runs" / "single", rng, epochs=3, final_f1=0.7, lr=1e-3, data_dir=str(tmp_path))
    out = root / "tensorboard"

    written = tensorboard.export([root], out, root)
    # Three of the four trials trained (the last is pending), plus the single run.
    assert {p.relative_to(out).as_posix() for p in written} == {
        "runs/single", "sweeps/s/trials/trial_0000", "sweeps/s/trials/trial_0001", "sweeps/s/trials/trial_0002"}
    got = scalars(out / "runs" / "single")
    assert [s for s, _ in got["macro_f1/val"]] == [1, 2, 3]
    history = tensorboard.read_history(root / "runs" / "single" / "history.csv")
    assert got["loss/train"][-1][1] == pytest.approx(history[-1]["train_loss"], rel=1e-6)
    assert set(got) == set(tensorboard.TAGS.values())

    # A second export replaces the first instead of doubling the points; our own output is never exported.
    tensorboard.export([root], out, root)
    assert len(list((out / "runs" / "single").glob("events.out.tfevents.*"))) == 1
    assert len(scalars(out / "runs" / "single")["macro_f1/val"]) == 3
    assert tensorboard.logdir_for(written, out) == out
    assert tensorboard.logdir_for(written[1:], out) == out / "sweeps" / "s" / "trials"


def test_make_tensorboard_target_exists_and_binds_localhost() -> None:
    text = (REPO / "Makefile").read_text()
    assert re.search(r"^tensorboard: setup$", text, re.M)
    assert "-m engine tensorboard" in text and "--host $(HOST)" in text
    assert re.search(r"^HOST \?= 127\.0\.0\.1$", text, re.M)
    dry = subprocess.run(["make", "-n", "tensorboard", "LOGDIR=outputs/runs/x"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "--host 127.0.0.1" in dry.stdout


def test_the_cli_prints_a_logdir_that_tensorboard_serves(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "outputs"
    synthetic.make_sweep(root / "sweeps" / "s", 3, rng, str(tmp_path), status="complete")
    cli = subprocess.run([sys.executable, "-m", "engine", "tensorboard", str(root / "sweeps" / "s"),
                          "--root", str(root), "--out", str(root / "tensorboard")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    logdir = Path(cli.stdout.strip().splitlines()[-1])
    assert logdir == root / "tensorboard" / "sweeps" / "s" / "trials"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("tensorboard")), "--logdir", str(logdir),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tags: dict = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as r:
                    tags = json.load(r)
                if len(tags) == 2:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert set(tags) == {"trial_0000", "trial_0001"}, tags
        assert "macro_f1/val" in tags["trial_0000"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as r:
            assert set(json.load(r)) == {"trial_0000", "trial_0001"}
    finally:
        server.terminate()
        server.wait(timeout=30)
