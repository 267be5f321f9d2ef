"""``python -m engine card RUN [RUN ...]``: write each run's model card, MODEL_CARD.md, from its files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import modelcard, runs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine card", description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (trained; evaluated and explained for a "
                        "full card)")
    parser.add_argument("--print", dest="show", action="store_true",
                        help="print the card instead of writing MODEL_CARD.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [str(run) for run in args.runs if not (run / runs.CONFIG).is_file()]
    if missing:
        print(f"error: not a run folder (no {runs.CONFIG}): {', '.join(missing)}", file=sys.stderr)
        return 2
    for run in args.runs:
        if args.show:
            print(modelcard.render(run), end="")
        else:
            print(modelcard.write(run))
    return 0
