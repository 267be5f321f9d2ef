"""``python -m tuning sweep ...`` and ``python -m tuning finish SWEEP_DIR``.

The last line a command prints is the sweep folder, so scripts can capture it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

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
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    sweep.add_argument("--address", help="an existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    sweep.add_argument("--storage", help="Ray's experiment storage: a shared path or s3:// URI "
                                         "(default: SWEEP/ray)")
    sweep.add_argument("--no-explain", dest="explain", action="store_false",
                       help="skip the Grad-CAM explanations of the best trial")
    sweep.add_argument("--num-cpus", type=int, help="local Ray only: CPUs it may use (default: all)")
    sweep.add_argument("--num-gpus", type=int, help="local Ray only: GPUs it advertises (default: detected)")

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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from engine.config import ConfigError

    from .driver import SweepError, exclusive
    from .finish import FinishError, finish
    from .resources import ResourceError
    from .space import SpaceError
    from .sweep import SweepOptions, run_sweep

    try:
        if args.command == "finish":
            with exclusive(args.sweep_dir):  # not while the sweep's driver runs (it finishes itself)
                best = finish(args.sweep_dir, explain=args.explain)
            print_outcome(args.sweep_dir, best)
            print(args.sweep_dir)
            return 0
        options = {k: v for k, v in vars(args).items() if k != "command"}
        result = run_sweep(SweepOptions(**options))
    except (SpaceError, SweepError, ResourceError, FinishError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    print_outcome(result.sweep_dir, result.best)
    if result.status != "complete":
        print(f"sweep interrupted; continue it with --resume --name {result.sweep_dir.name}", file=sys.stderr)
    print(result.sweep_dir)
    return 0 if result.status == "complete" else 130
