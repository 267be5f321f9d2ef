"""``python -m engine predict RUN IMAGE...``: one JSON line per image with class probabilities.

A file that cannot be read as an image gets a JSON line with an ``error`` and the others
still answer; the exit status is 1 when any file failed. When the run was evaluated (it has
``ood.npz``), each line also says whether the image looks out of distribution. ``--backend onnx``
answers from the run's ONNX export (``python -m engine export RUN``) through ONNX Runtime on the
CPU, with the same fields.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import DEVICES
from ..predict import FilePredictor, OnnxPredictor, Predictor
from ..runs import CHECKPOINT_CHOICES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine predict", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder")
    parser.add_argument("images", type=Path, nargs="+", help="image files")
    parser.add_argument("--checkpoint", choices=CHECKPOINT_CHOICES, default="best")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"),
                        help="torch: the checkpoint in PyTorch; onnx: RUN/export/model.onnx in ONNX Runtime (CPU)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend == "onnx" and args.device == "cuda":
        parser.error("--backend onnx runs on the CPU: leave out --device cuda")
    predictor: FilePredictor = (OnnxPredictor(args.run, args.checkpoint) if args.backend == "onnx"
                                else Predictor(args.run, args.checkpoint, args.device))
    results = predictor.predict_files(args.images)
    for result in results:
        print(json.dumps(result), flush=True)
    failed = [r for r in results if "error" in r]
    if failed:
        print(f"{len(failed)} of {len(results)} file(s) could not be classified", file=sys.stderr)
    return 1 if failed else 0
