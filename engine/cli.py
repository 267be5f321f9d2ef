"""``python -m engine COMMAND ...``: dispatches to ``engine.commands.COMMAND.main(argv) -> int``."""

from __future__ import annotations

import importlib
import logging
import sys

# Command name -> one line of help; the command itself is the module engine/commands/<name>.py.
COMMANDS = {
    "prepare": "validate, deduplicate and split an image folder",
    "train": "train a DenseNet into a new run folder",
    "evaluate": "metrics, intervals and calibration of a trained run",
    "explain": "Grad-CAM maps, faithfulness and sanity checks of a run",
    "evidence": "context reliance and leukocyte localisation of runs, as Markdown tables",
    "card": "write a run's model card (MODEL_CARD.md) from its files",
    "predict": "class probabilities of image files, one JSON line each",
    "bench": "the engine's speed against a plain torchvision loop",
}


def usage() -> str:
    lines = ["usage: python -m engine COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, help_ in COMMANDS.items()]
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
    # Imported only now, so that the usage above does not wait for PyTorch.
    module = importlib.import_module(f"engine.commands.{command}")
    from .config import ConfigError
    from .data import DataError
    from .models import WeightsError

    try:
        return module.main(rest)
    except (ConfigError, DataError, WeightsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
