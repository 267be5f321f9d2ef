"""``python -m engine COMMAND ...``: dispatches to ``engine.commands.COMMAND.main(argv) -> int``.

Every command shares one error path (``engine.errors.run_cli``): an expected error is one line on stderr
and a documented exit status (2 bad input, 3 a damaged file, 4 disk or permission, 128+N a signal);
``--debug`` or ENGINE_DEBUG=1 adds the traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

from .errors import run_cli

# Command name -> one line of help; the command itself is the module engine/commands/<name>.py.
COMMANDS = {
    "prepare": "validate, deduplicate and split an image folder",
    "train": "train a DenseNet into a new run folder",
    "evaluate": "metrics, intervals and calibration of a trained run",
    "explain": "Grad-CAM maps, faithfulness and sanity checks of a run",
    "evidence": "context reliance and leukocyte localisation of runs, as Markdown tables",
    "card": "write a run's model card (MODEL_CARD.md) from its files",
    "predict": "class probabilities of image files, one JSON line each",
    "export": "write a run's model as ONNX for other tools",
    "bench": "the engine's speed against a plain torchvision loop",
    "tensorboard": "TensorBoard event files from the history.csv of runs and sweeps",
}
# What each command was doing, for the first words of its error line.
DOING = {
    "prepare": "preparing the data",
    "train": "training",
    "evaluate": "evaluating",
    "explain": "explaining",
    "evidence": "reading the evidence",
    "card": "writing the model card",
    "predict": "predicting",
    "export": "exporting",
    "bench": "benchmarking",
    "tensorboard": "exporting to TensorBoard",
}


def usage() -> str:
    lines = ["usage: python -m engine COMMAND [options]", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}} {help_}" for name, help_ in COMMANDS.items()]
    lines += ["", "python -m engine COMMAND --help shows a command's options; --debug (or ENGINE_DEBUG=1) shows the "
              "traceback of an error.", "exit status: 0 done, 1 a bug, 2 bad input, 3 a damaged file, 4 disk or "
              "permission, 128+N stopped by signal N"]
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
    return run_cli(module.main, rest, DOING[command])
