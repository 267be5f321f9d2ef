"""Sweeps against a multi-node Ray cluster (head + one worker node on this machine), as a user runs them.

The cluster runs in its own process (tests/support/ray_cluster.py) with Ray's token
authentication on, the sweep driver in another (``python -m tuning sweep --address ...``); the
test only watches the sweep folder and kills the worker node mid-sweep.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ray_tmp import remove_when_ray_has_left
from tuning import layout

pytestmark = pytest.mark.slow  # real Ray clusters or servers: left out by make test-fast

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ray_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The environment of a user's shell on a cluster with token authentication, private to this test."""
    tmpdir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths must stay under 107 chars
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_TMPDIR": tmpdir, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    monkeypatch.setenv("RAY_TMPDIR", tmpdir)
    yield env
    remove_when_ray_has_left(tmpdir)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def trial_jsons(sweep: Path) -> dict[str, dict]:
    found = {}
    for path in (sweep / layout.TRIALS).glob(f"*/{layout.TRIAL_JSON}"):
        try:
            found[path.parent.name] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return found


EPOCHS = 12


def test_sweep_spreads_over_two_nodes_and_survives_losing_one(prepared_tiny: Path, tmp_path: Path,
                                                              ray_env: dict[str, str]) -> None:
    space = tmp_path / "space.yaml"
    # Epochs enough that the worker is killed mid-trial, however fast the machine finishes the rest.
    space.write_text(f"base_preset: tiny\nfixed: {{epochs: {EPOCHS}, max_train_images: 48}}\n"
                     "params:\n  lr: {grid: [0.002, 0.003]}\n"
                     "search: grid\nscheduler: fifo\nnum_samples: 1\nmax_concurrent_trials: 2\nmax_failures: 2\n")
    out = tmp_path / "sweeps"
    sweep = out / "c"
    cluster = subprocess.Popen([sys.executable, "-m", "tests.support.ray_cluster"], cwd=REPO, env=ray_env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    driver = None
    try:
        nodes = json.loads(cluster.stdout.readline())
        args = [sys.executable, "-m", "tuning", "sweep", "--space", str(space), "--data", str(prepared_tiny),
                "--out", str(out), "--address", nodes["address"], "--no-explain"]

        # A driver without the cluster's token is told what to set, instead of Ray's bare gRPC error.
        # (Ray retries the refused connection for ~30 s by default; one retry is enough here.)
        no_token = {k: v for k, v in ray_env.items() if not k.startswith("RAY_AUTH")}
        refused = subprocess.run([*args, "--name", "n"], cwd=REPO, capture_output=True, text=True, timeout=120,
                                 env={**no_token, "HOME": str(tmp_path), "RAY_NUM_REDIS_GET_RETRIES": "1"})
        assert refused.returncode == 2 and "RAY_AUTH_MODE=token" in refused.stderr, refused.stderr[-2000:]

        driver = subprocess.Popen([*args, "--name", "c"], cwd=REPO, env=ray_env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Kill the worker node once a trial on it has finished an epoch (and before it completes).
        lost = None
        deadline = time.monotonic() + 240
        while lost is None and time.monotonic() < deadline and driver.poll() is None:
            for trial_id, trial in trial_jsons(sweep).items():
                run = sweep / layout.TRIALS / trial_id
                history = run / "history.csv"
                if (trial.get("node", {}).get("id") == nodes["worker"] and history.is_file()
                        and len(history.read_text().splitlines()) >= 2 and not (run / "COMPLETE").exists()):
                    lost = trial_id
                    break
            time.sleep(0.1)
        if lost is None:
            driver.kill()
            pytest.fail(f"no trial ran on the worker node; the driver says: {driver.communicate()[1][-3000:]}")
        cluster.stdin.write("kill-worker\n")
        cluster.stdin.flush()
        assert cluster.stdout.readline().strip() == "killed"
        _, stderr = driver.communicate(timeout=300)
        assert driver.returncode == 0, stderr[-3000:]
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        if cluster.poll() is None:
            cluster.communicate("stop\n", timeout=120)

    info = json.loads((sweep / layout.SWEEP_JSON).read_text())
    assert info["status"] == layout.SWEEP_COMPLETE and info["address"] == nodes["address"]
    rows = read_csv(sweep / layout.SUMMARY)
    assert len(rows) == 2 and all(r["status"] == layout.TRIAL_COMPLETE for r in rows)
    trials = trial_jsons(sweep)
    # Both nodes ran trials; the lost trial went on from its last epoch on the head node.
    assert {a["node_id"] for t in trials.values() for a in t["attempts"]} == {nodes["head"], nodes["worker"]}
    assert [a["node_id"] for a in trials[lost]["attempts"]] == [nodes["worker"], nodes["head"]]
    assert trials[lost]["node"]["id"] == nodes["head"] and trials[lost]["status"] == layout.TRIAL_COMPLETE
    epochs = [int(r["epoch"]) for r in read_csv(sweep / layout.TRIALS / lost / "history.csv")]
    assert epochs == list(range(1, EPOCHS + 1))  # each epoch once: resumed, not restarted
    by_id = {r["trial_id"]: r for r in rows}
    assert by_id[lost]["node_id"] == nodes["head"]
    assert all(r["node_ip"] for r in rows)

