"""``python -m tuning sweep ...`` and ``python -m tuning finish SWEEP_DIR``.

The last line a command prints is the sweep folder, so scripts can capture it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tuning", description="Hyperparameter sweeps with Ray Tune.")
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser("sweep", help="run (or --resume) a sweep over a search space")
    sweep.add_argument("--space", required=True, help="space name (tuning/spaces/NAME.yaml) or a YAML file")
    sweep.add_argument("--data", type=Path, help="prepared data folder (from `python -m engine prepare`)")
    sweep.add_argument("--out", type=Path, default=Path("outputs/sweeps"), help="folder of sweep folders")
    sweep.add_argument("--name", help="sweep folder name (default: SPACE-TIMESTAMP; with --resume: the "
                                      "newest unfinished sweep of the space)")
    sweep.add_argument("--num-samples", type=int, help="trials to sample (grid: repeats of the grid)")
    sweep.add_argument("--max-concurrent", type=int, help="trials at once (0: as many as resources allow)")
    sweep.add_argument("--search", choices=("random", "grid", "optuna"))
    sweep.add_argument("--scheduler", choices=("asha", "fifo"))
    sweep.add_argument("--gpus-per-trial", type=float, help="GPU share per trial, e.g. 0.25 = four per GPU; "
                                                            "0 = CPU only (default: the space's, if GPUs exist)")
    sweep.add_argument("--cpus-per-trial", type=float, help="CPU share per trial (default: sized so that "
                                                            "GPUs, not CPUs, limit concurrency)")
    sweep.add_argument("--time-budget", type=float, metavar="SECONDS",
                       help="after this long each trial stops at its next epoch (default: the space's "
                            "time_budget_s; 0: none)")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    sweep.add_argument("--address", help="an existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    sweep.add_argument("--storage", help="Ray's experiment storage: a shared path or s3:// URI "
                                         "(default: SWEEP/ray)")
    sweep.add_argument("--no-explain", dest="explain", action="store_false",
                       help="skip the Grad-CAM explanations of the best trial")
    sweep.add_argument("--num-cpus", type=int, help="local Ray only: CPUs it may use (default: all)")
    sweep.add_argument("--num-gpus", type=int, help="local Ray only: GPUs it advertises (default: detected)")
    sweep.add_argument("--mlflow", metavar="URI", help="also track the sweep in this MLflow server: a parent run "
                       "with one nested run per trial (default: $MLFLOW_TRACKING_URI; unset: no tracking; "
                       "docs/mlflow.md)")

    finish = commands.add_parser("finish", help="evaluate and explain the best and the recommended trial of a "
                                                "finished sweep (measuring missing context probes first)")
    finish.add_argument("sweep_dir", type=Path)
    finish.add_argument("--no-explain", dest="explain", action="store_false")
    return parser


def print_outcome(sweep_dir: Path, best: dict | None) -> None:
    from engine import runs

    from .finish import format_recommendation, format_repeats, format_table, read_summary
    from .layout import RECOMMENDED, REPEATS

    rows = read_summary(sweep_dir)
    recommended = runs.read_json(sweep_dir / RECOMMENDED) if best and (sweep_dir / RECOMMENDED).is_file() else None
    if rows:
        print(format_table(rows, best["trial_id"] if best else None,
                           recommended["trial_id"] if recommended else None))
    if best:
        test = best["test"]
        lo, hi = test.get("accuracy_ci95") or (None, None)
        ci = f" (95% CI {lo:.4f}-{hi:.4f})" if lo is not None and hi is not None else ""
        print(f"best trial {best['trial_id']}: val macro-F1 {best['best_val_macro_f1']:.4f}, "
              f"test accuracy {test['accuracy']:.4f}{ci}, test macro-F1 {test['macro_f1']:.4f}")
    if recommended:
        print(format_recommendation(recommended))
    if best and (sweep_dir / REPEATS).is_file():
        print(format_repeats(runs.read_json(sweep_dir / REPEATS)))


def main(argv: list[str] | None = None) -> int:
    """The engine's one error path (engine.errors.run_cli): one line and a documented exit status."""
    from engine.errors import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    doing = "finishing the sweep" if argv[:1] == ["finish"] else "sweeping"
    return run_cli(_main, argv, doing)


def _resume_command(args: argparse.Namespace, sweep_dir: Path) -> str:
    return (f"`python -m tuning sweep --space {args.space} --out {sweep_dir.parent} --name {sweep_dir.name} "
            "--resume`")


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from engine.errors import Interrupted, interruptible, signal_name

    from .driver import exclusive
    from .finish import finish
    from .layout import SWEEP_COMPLETE
    from .sweep import SweepOptions, run_sweep

    if args.command == "finish":
        def stopped(signum: int) -> str:
            return (f"finishing {args.sweep_dir} was stopped by {signal_name(signum)}; the trials are untouched "
                    f"and best.json is written only at the end: run `python -m tuning finish {args.sweep_dir}` again")

        with interruptible(stopped), exclusive(args.sweep_dir):  # not while the sweep's driver runs
            best = finish(args.sweep_dir, explain=args.explain)
        print_outcome(args.sweep_dir, best)
        print(args.sweep_dir)
        return 0
    options = {k: v for k, v in vars(args).items() if k != "command"}
    received: list[int] = []
    try:
        with interruptible(), _sigterm_as_ctrl_c(received):
            result = run_sweep(SweepOptions(**options))
    except Interrupted as exc:
        signum = received[-1] if received else exc.signum
        where = f"sweep {exc.where}" if exc.where else "the sweep"
        advice = (f"finished trials are kept and unfinished ones continue: run {_resume_command(args, exc.where)}"
                  if exc.where else "run the command again")
        raise Interrupted(signum, f"{where} was stopped by {signal_name(signum)}; {advice}") from None
    print_outcome(result.sweep_dir, result.best)
    print(result.sweep_dir)
    if result.status != SWEEP_COMPLETE:
        signum = received[-1] if received else signal.SIGINT
        print(f"interrupted: sweep {result.sweep_dir} was stopped by {signal_name(signum)}; finished trials are "
              f"kept and unfinished ones continue: run {_resume_command(args, result.sweep_dir)}", file=sys.stderr)
        return 128 + signum
    return 0


@contextlib.contextmanager
def _sigterm_as_ctrl_c(received: list[int]) -> Iterator[None]:
    """SIGTERM does what Ctrl+C does: inside ``Tuner.fit`` Ray Tune saves its state and returns (its own SIGINT
    handler), elsewhere engine.errors.interruptible unwinds. ``received`` records it for the exit status."""
    def forward(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
