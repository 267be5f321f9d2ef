"""A real tiny outputs folder for the dashboard tests: a tiny sweep (tuning), evaluated and explained
trials, plus a corrupt run and an interrupted one. ``build(out, prepared)`` fills ``out``."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _python(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _explain(run: Path) -> None:
    """Grad-CAM maps by ``engine explain`` when it exists, else the contract's stand-in."""
    if importlib.util.find_spec("engine.explain.cli") is not None:
        done = _python("-m", "engine", "explain", str(run))
        if done.returncode == 0 and (run / "cams" / "index.csv").is_file():
            return
        warnings.warn(f"engine explain failed, using synthetic cams: {done.stderr[-800:]}", stacklevel=2)
    from dashboard.synthetic import write_cams
    from engine.data import data_root, load_image
    from engine.runs import read_json

    config = read_json(run / "config.json")
    root = data_root(Path(config["data_dir"]))
    write_cams(run, lambda row: load_image(root / row["path"], int(config.get("image_size", 64))),
               image_size=int(config.get("image_size", 64)))


def _train_sweep(prepared: Path, sweep: Path) -> None:
    """Fallback when ``tuning`` cannot run here: tiny runs in the sweep layout, with its files."""
    import csv
    import json

    from engine import train

    rows = []
    for i, lr in enumerate((0.003, 0.006)):
        trial_id = f"fallback_{i:05d}"
        run = sweep / "trials" / trial_id
        assert train.main(["--data", str(prepared), "--preset", "tiny", "--set", f"lr={lr}",
                           "--out", str(sweep / "trials"), "--name", trial_id]) == 0
        (run / "trial.json").write_text(json.dumps({"trial_id": trial_id, "params": {"lr": lr}, "status": "complete",
                                                    "gpu_ids": [], "error": None}))
        with (run / "history.csv").open() as handle:
            hist = list(csv.DictReader(handle))
        f1 = max(float(h["val_macro_f1"]) for h in hist)
        rows.append({"trial_id": trial_id, "status": "complete", "param_lr": lr, "val_macro_f1": f1,
                     "best_val_macro_f1": f1, "val_acc": hist[-1]["val_acc"], "epochs": len(hist), "seconds": 1,
                     "run_dir": f"trials/{trial_id}", "error": ""})
    with (sweep / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    best = max(rows, key=lambda r: r["best_val_macro_f1"])
    (sweep / "sweep.json").write_text(json.dumps({"name": "fixture", "status": "complete", "metric": "val_macro_f1",
                                                  "mode": "max", "num_samples": 2, "search": "random"}))
    (sweep / "best.json").write_text(json.dumps({"trial_id": best["trial_id"], "run_dir": best["run_dir"],
                                                 "params": {"lr": best["param_lr"]},
                                                 "best_val_macro_f1": best["best_val_macro_f1"], "test": {}}))


def build(out: Path, prepared_source: Path) -> dict[str, Path]:
    """Fill ``out`` (an outputs folder); returns the paths the tests look at."""
    from engine import evaluate

    prepared = out / "prepared"
    shutil.copytree(prepared_source, prepared, ignore=shutil.ignore_patterns("cache"))
    sweeps = out / "sweeps"
    done = _python("-m", "tuning", "sweep", "--space", "tiny", "--data", str(prepared), "--out", str(sweeps),
                   "--name", "fixture", "--num-samples", "3", "--no-explain")
    sweep = sweeps / "fixture"
    if done.returncode != 0 or not (sweep / "summary.csv").is_file():
        warnings.warn(f"tuning sweep failed ({done.returncode}), training the fixture directly: "
                      f"{done.stderr[-800:]}", stacklevel=2)
        shutil.rmtree(sweep, ignore_errors=True)
        _train_sweep(prepared, sweep)
    import json

    best_id = json.loads((sweep / "best.json").read_text())["trial_id"]
    trials = sorted(p for p in (sweep / "trials").iterdir() if (p / "checkpoints" / "best.pt").is_file())
    best = sweep / "trials" / best_id
    other = next(t for t in trials if t.name != best_id)
    for run in (best, other):
        if not (run / "metrics.json").is_file():
            assert evaluate.main([str(run), "--bootstrap", "50"]) == 0
        _explain(run)
    broken = out / "runs" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    partial = out / "runs" / "partial"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text('{"model": "densenet-tiny"}')
    (partial / "history.csv").write_text("epoch,val_macro_f1\n")
    os.utime(partial / "config.json", (1, 1))
    os.utime(partial / "history.csv", (1, 1))
    (partial / "metrics.json").write_text('{"splits": {"test": {"accuracy": 0.5')  # half a file
    (partial / "predictions.csv").write_text("split,path\n")
    return {"root": out, "prepared": prepared, "sweep": sweep, "best": best, "other": other, "broken": broken,
            "partial": partial}


_BUILT: dict[str, dict[str, Path]] = {}


def shared(tmp_path_factory, prepared_source: Path) -> dict[str, Path]:
    """``build`` once per test process (session fixtures of several test modules share it)."""
    key = str(prepared_source)
    if key not in _BUILT:
        _BUILT[key] = build(tmp_path_factory.mktemp("dashboard-outputs"), prepared_source)
    return _BUILT[key]
