"""``python -m engine export RUN``: write a run's model as ONNX, with a JSON sidecar, for other tools.

The model goes to ``RUN/export/model.onnx`` (``--out FILE`` elsewhere) and its sidecar beside it
(same name, ``.json``): classes, preprocessing, checksums, the run's test metrics, versions and how
closely ONNX Runtime matched PyTorch on the run's test images. An export that does not match to
1e-4 is refused and nothing is written. docs/export.md describes the files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import TOLERANCE, VERIFY_IMAGES, default_path, export_run, sidecar_path
from ..runs import CHECKPOINT_CHOICES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine export", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="the format written (only ONNX)")
    parser.add_argument("--checkpoint", choices=CHECKPOINT_CHOICES, default="best")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="the .onnx file to write (default RUN/export/model.onnx); the sidecar goes beside it. "
                        "`predict --backend onnx` reads the default place only")
    parser.add_argument("--verify-images", type=int, default=VERIFY_IMAGES, metavar="N",
                        help=f"test images ONNX Runtime and PyTorch must agree on, to {TOLERANCE:.0e} "
                        f"(default {VERIFY_IMAGES})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify_images < 1:
        parser.error("--verify-images must be at least 1")
    if args.out is not None and args.out.suffix != ".onnx":
        parser.error(f"--out {args.out}: the file name must end in .onnx (the sidecar is the same name, .json)")
    sidecar = export_run(args.run, args.checkpoint, args.out, args.verify_images)
    check = sidecar["verification"]
    out = args.out or default_path(args.run)
    print(f"ONNX Runtime matches PyTorch on {check['images']} images ({check['source']}): largest probability "
          f"difference {check['max_abs_diff']:.1e}, the same class on {check['same_class']}")
    print(sidecar_path(out))
    print(out)
    return 0
