"""``python -m engine COMMAND ...``: each command is a module with ``main(argv) -> int``."""

from __future__ import annotations

import importlib
import logging
import sys

COMMANDS = {
    "prepare": ("engine.prepare_cli", "validate, deduplicate and split an image folder"),
    "train": ("engine.train", "train a DenseNet into a new run folder"),
    "evaluate": ("engine.evaluate", "metrics, intervals and calibration of a trained run"),
    "explain": ("engine.explain.cli", "Grad-CAM maps, faithfulness and sanity checks of a run"),
    "predict": ("engine.predict", "class probabilities of image files, one JSON line each"),
    "bench": ("engine.bench", "the engine's speed against a plain torchvision loop"),
}


def usage() -> str:
    lines = ["usage: python -m engine COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "python -m engine COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[command][0])
    from .config import ConfigError
    from .data import DataError
    from .models import WeightsError

    try:
        return module.main(rest)
    except (ConfigError, DataError, WeightsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
