"""``python -m engine evidence RUN [RUN ...]``: context reliance and leukocyte localisation as Markdown tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evidence import report


def _pair(text: str) -> tuple[str, str]:
    method, sep, layer = text.partition("@")
    if not sep or not method or not layer:
        raise argparse.ArgumentTypeError(f"expected METHOD@LAYER, e.g. layercam@denseblock2, got {text!r}")
    return method, layer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine evidence", description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="evaluated (and explained) run folders")
    parser.add_argument("--pairs", type=_pair, nargs="+", default=[], metavar="METHOD@LAYER",
                        help="method x layer pairs shown per stage (default: each run's best localising pair)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(report(args.runs, args.pairs))
    return 0
