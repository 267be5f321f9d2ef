"""Real Ray Tune sweeps of the tiny DenseNet on generated images (each test starts its own Ray).

Every test runs Ray under its own RAY_TMPDIR (tests/support/ray_tmp.py), so that "no Ray process left
behind" can be checked for exactly this test's processes, even while someone else runs Ray on the machine.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuning.cli import main

pytestmark = pytest.mark.slow  # real Ray clusters or servers: left out by make test-fast

REPO = Path(__file__).resolve().parents[1]
CONTRACT_SWEEP_KEYS = {"name", "space", "space_file", "base_preset", "search", "scheduler", "metric", "mode",
                       "num_samples", "max_concurrent_trials", "gpus_per_trial", "cpus_per_trial", "address",
                       "started_at", "finished_at", "status"}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("base_preset: tiny\n" + text)
    return path


def test_tiny_sweep_writes_the_sweep_folder(dashboard_outputs: dict[str, Path]) -> None:
    # The sweep of the tests' tiny outputs folder (tests/support/fixture.py): the `tiny` space, 3 samples, no
    # explanations, run once per test run; the dashboard tests read the same folder.
    sweep = dashboard_outputs["sweep"]
    info = json.loads((sweep / "sweep.json").read_text())
    assert set(info) >= CONTRACT_SWEEP_KEYS
    assert info["status"] == "complete" and info["finished_at"] and info["space"] == "tiny"
    assert (info["metric"], info["mode"], info["num_samples"]) == ("val_macro_f1", "max", 3)

    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 3
    assert list(rows[0])[:2] == ["trial_id", "status"]
    assert {"param_lr", "param_batch_size", "param_epochs", "val_macro_f1", "best_val_macro_f1", "val_acc",
            "epochs", "seconds", "run_dir", "error"} <= set(rows[0])
    for row in rows:
        assert row["status"] in ("complete", "stopped")
        run = sweep / row["run_dir"]
        assert row["run_dir"] == f"trials/{row['trial_id']}"
        trial = json.loads((run / "trial.json").read_text())
        assert trial["status"] == row["status"] and trial["error"] is None
        assert set(trial["params"]) == {"lr", "batch_size", "epochs"}
        config = json.loads((run / "config.json").read_text())
        assert {k: config[k] for k in trial["params"]} == trial["params"]  # nothing translated
        assert config["device"] == "cpu" and config["num_threads"] == 1  # no GPU: 2 CPUs, 2 at once
        history = read_csv(run / "history.csv")
        assert int(row["epochs"]) == len(history)
        assert (run / "checkpoints" / "best.pt").is_file() and (run / "env.json").is_file()
        assert (run / "COMPLETE").is_file() == (row["status"] == "complete")
    # Ray's own files stay in ray/<name>/<trial_id>/.
    assert all((sweep / "ray" / sweep.name / r["trial_id"] / "progress.csv").is_file() for r in rows)

    best = json.loads((sweep / "best.json").read_text())
    top = max(rows, key=lambda r: float(r["best_val_macro_f1"]) if r["status"] == "complete" else -1)
    assert best["trial_id"] == top["trial_id"] and best["run_dir"] == top["run_dir"]
    assert set(best["test"]) == {"accuracy", "macro_f1", "accuracy_ci95", "macro_f1_ci95"}
    assert 0 <= best["test"]["accuracy"] <= 1
    assert (sweep / best["run_dir"] / "metrics.json").is_file()


def test_fractional_gpu_trials_spread_over_two_gpus(prepared_tiny: Path, tmp_path: Path, ray_tmpdir: str) -> None:
    # Two logical GPUs on a 2-CPU machine, half a GPU per trial: all four trials must run at
    # once, two per GPU. With one CPU per trial only two would fit, both on GPU 0.
    space = space_file(tmp_path, "fixed: {epochs: 1, max_train_images: 32}\n"
                                 "params:\n  lr: {choice: [0.002, 0.003]}\n")
    out = tmp_path / "sweeps"
    code = main(["sweep", "--space", str(space), "--data", str(prepared_tiny), "--out", str(out), "--name", "g",
                 "--num-samples", "4", "--search", "optuna", "--scheduler", "fifo", "--gpus-per-trial", "0.5",
                 "--num-gpus", "2",
                 "--num-cpus", "2", "--no-explain"])
    assert code == 0
    info = json.loads((out / "g" / "sweep.json").read_text())
    assert (info["gpus_per_trial"], info["cpus_per_trial"], info["search"]) == (0.5, 0.5, "optuna")
    gpu_ids = [json.loads(p.read_text())["gpu_ids"] for p in sorted((out / "g" / "trials").glob("*/trial.json"))]
    assert len(gpu_ids) == 4 and all(len(ids) == 1 for ids in gpu_ids)
    assert sorted(ids[0] for ids in gpu_ids) == [0, 0, 1, 1]


def test_crashing_trial_is_recorded_and_the_sweep_goes_on(prepared_tiny: Path, tmp_path: Path, ray_tmpdir: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # image_size 16 passes the space check (keys and types) but the engine rejects it in
    # the trial: the trial is retried once (max_failures), then recorded as an error.
    space = space_file(tmp_path, "fixed: {epochs: 1}\nparams:\n  image_size: {grid: [64, 16]}\n"
                                 "scheduler: fifo\nmax_failures: 1\n")
    out = tmp_path / "sweeps"
    code = main(["sweep", "--space", str(space), "--data", str(prepared_tiny), "--out", str(out), "--name", "c",
                 "--num-samples", "1", "--no-explain"])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "c")  # the folder, last, for scripts
    rows = {r["param_image_size"]: r for r in read_csv(out / "c" / "summary.csv")}
    assert rows["64"]["status"] == "complete" and not rows["64"]["error"]
    assert rows["16"]["status"] == "error" and "image_size must be at least 32" in rows["16"]["error"]
    trial = json.loads((out / "c" / rows["16"]["run_dir"] / "trial.json").read_text())
    assert trial["status"] == "error" and "image_size" in trial["error"]
    assert json.loads((out / "c" / "best.json").read_text())["trial_id"] == rows["64"]["trial_id"]


def test_interrupted_sweep_resumes_without_repeating_finished_trials(prepared_tiny: Path, tmp_path: Path,
                                                                     ray_tmpdir: str) -> None:
    # One trial at a time, so that the interrupt finds one trial complete and the next part-way. One CPU per
    # trial on two CPUs would run both at once: --max-concurrent 1 must hold, with the random searcher too.
    space = space_file(tmp_path, "fixed: {epochs: 4}\nparams:\n  lr: {choice: [0.002, 0.003]}\n"
                                 "search: random\nscheduler: fifo\n")
    out = tmp_path / "sweeps"
    args = ["sweep", "--space", str(space), "--out", str(out), "--name", "r", "--num-samples", "2", "--no-explain",
            "--max-concurrent", "1", "--cpus-per-trial", "1", "--num-cpus", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "tuning", *args, "--data", str(prepared_tiny)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    summary, sweep = out / "r" / "summary.csv", out / "r"
    try:
        # Interrupt once one trial is complete and the next is part-way (an epoch reported).
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            rows = read_csv(summary) if summary.is_file() else []
            if (any(r["status"] == "complete" for r in rows)
                    and any(r["status"] == "running" and r["epochs"] for r in rows)):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)  # Ctrl+C: Tune saves its state and the CLI shuts Ray down
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert json.loads((sweep / "sweep.json").read_text())["status"] == "interrupted"

    before = {r["trial_id"]: r for r in read_csv(summary)}
    finished = [t for t, r in before.items() if r["status"] == "complete"]
    assert finished
    marks = {t: (sweep / "trials" / t / "COMPLETE").read_text() for t in finished}
    started = {p.parent.name: p.read_text() for p in (sweep / "trials").glob("*/env.json")}
    assert set(started) - set(finished), "no trial was caught part-way"
    assert all(r["status"] in ("complete", "pending") for r in before.values())

    assert main([*args, "--resume"]) == 0
    after = read_csv(summary)
    assert len(after) == 2 and all(r["status"] == "complete" for r in after)
    assert {r["trial_id"] for r in after} >= set(before)  # the same trials, continued
    for trial_id in finished:  # finished trials were not trained again
        assert (sweep / "trials" / trial_id / "COMPLETE").read_text() == marks[trial_id]
    for trial_id, env in started.items():  # begun trials resumed (env.json is written only at a fresh start)
        assert (sweep / "trials" / trial_id / "env.json").read_text() == env
        epochs = [int(r["epoch"]) for r in read_csv(sweep / "trials" / trial_id / "history.csv")]
        assert epochs == [1, 2, 3, 4]
    info = json.loads((sweep / "sweep.json").read_text())
    assert info["status"] == "complete" and (sweep / "best.json").is_file()
    assert info["max_concurrent_trials"] == 1  # as given before the interrupt, kept on --resume
    spans = sorted((json.loads((sweep / "trials" / t / "env.json").read_text())["started_at"],
                    json.loads((sweep / "trials" / t / "COMPLETE").read_text())["finished_at"]) for t in before)
    assert spans[1][0] >= spans[0][1], spans  # the second trial began after the first had ended
    # It began in the first one's process (reuse_actors), not in a new one that imports torch again.
    first = sorted(before, key=lambda t: json.loads((sweep / "trials" / t / "env.json").read_text())["started_at"])
    pids = [json.loads((sweep / "trials" / t / "trial.json").read_text())["attempts"][0]["pid"] for t in first]
    assert pids[0] == pids[1], pids


def test_a_spent_time_budget_stops_each_trial_at_an_epoch_and_the_sweep_completes(
        prepared_tiny: Path, tmp_path: Path, ray_tmpdir: str) -> None:
    # A budget spent before the first report: every trial, the one waiting for a slot too, trains one epoch
    # of three and stops there as an ASHA cut would (checkpoint kept), not interrupted.
    # The space's hour is overridden by the command line's millisecond.
    space = space_file(tmp_path, "fixed: {epochs: 3, max_train_images: 32}\n"
                                 "params:\n  lr: {choice: [0.002, 0.003]}\nscheduler: fifo\n"
                                 "max_concurrent_trials: 1\ntime_budget_s: 3600\n")
    out = tmp_path / "sweeps"
    assert main(["sweep", "--space", str(space), "--data", str(prepared_tiny), "--out", str(out), "--name", "b",
                 "--num-samples", "2", "--no-explain", "--time-budget", "-1"]) == 2  # refused before Ray starts
    assert not (out / "b").exists()
    assert main(["sweep", "--space", str(space), "--data", str(prepared_tiny), "--out", str(out), "--name", "b",
                 "--num-samples", "2", "--no-explain", "--time-budget", "0.001"]) == 0
    info = json.loads((out / "b" / "sweep.json").read_text())
    assert info["status"] == "complete" and info["time_budget_s"] == 0.001
    rows = read_csv(out / "b" / "summary.csv")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"stopped"} and {r["epochs"] for r in rows} == {"1"}
    for row in rows:
        run = out / "b" / row["run_dir"]
        assert len(read_csv(run / "history.csv")) == 1 and (run / "checkpoints" / "best.pt").is_file()
    best = json.loads((out / "b" / "best.json").read_text())
    assert best["trial_id"] in {r["trial_id"] for r in rows}  # chosen among the stopped trials
