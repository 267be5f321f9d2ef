"""``python -m engine train``: train a DenseNet on prepared data into a new run folder, or resume one."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from .. import preflight, runs, tracking
from ..config import ConfigError, build_config, config_from_dict, parse_overrides
from ..errors import Interrupted, interruptible
from ..train import EpochCallback, fit

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine train", description="Train a DenseNet on prepared data.")
    parser.add_argument("--data", type=Path, help="prepared data folder (from `prepare`)")
    parser.add_argument("--preset", default="cpu-quick", help="preset name or JSON file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("outputs/runs"), help="folder for new run folders")
    parser.add_argument("--name", help="run id (default: timestamp)")
    parser.add_argument("--resume", type=Path, metavar="RUN", help="continue an interrupted run folder")
    tracking.add_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # SIGINT and SIGTERM unwind the current epoch; engine.train.fit says which checkpoint is intact.
        with interruptible():
            run_dir = _train(args)
    except runs.RunBusyError as exc:
        raise ConfigError(str(exc)) from None  # the command line prints it as an error, without a traceback
    print(run_dir)
    return 0


def _train(args: argparse.Namespace) -> Path:
    if args.resume:
        run_dir = args.resume
        saved = runs.read_json(run_dir / runs.CONFIG)
        prepared, preset = Path(saved.pop("data_dir")), saved.pop("preset", None)
        for key in (runs.MANIFEST_SHA256, runs.SPLIT_SHA256):  # what fit records of the data, not config keys
            saved.pop(key, None)
        cfg = config_from_dict(saved)
        if runs.is_complete(run_dir):
            log.info("%s is already complete", run_dir)
            return run_dir
        resume = (run_dir / runs.CHECKPOINTS / runs.LAST_CHECKPOINT).is_file()
        _tracked(args, run_dir, lambda on_epoch: fit(cfg, prepared, run_dir, preset=preset, resume=resume,
                                                     on_epoch=on_epoch))
    else:
        if args.data is None:
            raise ConfigError("--data is required (the folder written by `python -m engine prepare`)")
        cfg = build_config(args.preset, parse_overrides(args.overrides))
        run_dir = args.out / (args.name or runs.new_run_id())
        preflight.require_writable(args.out, f"training {run_dir}")  # before reading anything of the folder
        # The lock file alone is what a training killed before writing anything leaves.
        if run_dir.exists() and any(p.name != runs.TRAIN_LOCK for p in run_dir.iterdir()):
            raise ConfigError(f"{run_dir} already exists and is not empty; choose another --name")
        _tracked(args, run_dir, lambda on_epoch: fit(cfg, args.data, run_dir, preset=args.preset, on_epoch=on_epoch))
    return run_dir


def _tracked(args: argparse.Namespace, run_dir: Path, train: Callable[[EpochCallback | None], Path]) -> None:
    """``train(on_epoch)``, copied to MLflow as it goes when --mlflow (or MLFLOW_TRACKING_URI) asks for it.

    Each epoch is logged as it ends; at the end (or when training stops) the folder is copied as it is, and the
    MLflow run is marked FINISHED, KILLED (a signal) or FAILED. Tracking never stops the training
    (engine.tracking): without a server that answers, this is ``train(None)``.
    """
    run = tracking.track(tracking.resolve_uri(args.mlflow), run_dir)
    if run is None:
        train(None)
        return
    run.reopen()  # a resumed run's MLflow run is running again
    try:
        train(run.on_epoch)
    except runs.RunBusyError:
        raise  # another process trains the folder: its MLflow run is that process's to end
    except BaseException as exc:
        run.sync()  # the epochs trained so far
        run.end("KILLED" if isinstance(exc, Interrupted | KeyboardInterrupt) else "FAILED")
        raise
    run.sync()
    run.end("FINISHED")
