"""``python -m engine evaluate RUN``: predictions and metrics of a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import tracking
from ..config import DEVICES
from ..evaluate import evaluate
from ..runs import CHECKPOINT_CHOICES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder")
    parser.add_argument("--checkpoint", choices=CHECKPOINT_CHOICES, default="best")
    parser.add_argument("--splits", default="val,test", help="comma-separated splits to evaluate")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--context-split", default="test", metavar="SPLIT",
                        help="with leukocyte masks, also classify this split without cells and without background "
                        "(context.json; '' to skip)")
    tracking.add_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = evaluate(args.run, checkpoint=args.checkpoint, splits=tuple(args.splits.split(",")),
                      n_bootstrap=args.bootstrap, device=args.device, context_split=args.context_split)
    for split, m in result["splits"].items():
        lo, hi = m["accuracy_ci95"]
        print(f"{split}: accuracy {m['accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f}), macro-F1 {m['macro_f1']:.4f}, "
              f"n={m['n']}")
    # The scores, intervals, context probes and figures into the run's MLflow run (created when there is none).
    tracking.copy_folder(tracking.resolve_uri(args.mlflow), args.run, status="FINISHED")
    print(args.run)
    return 0
