"""``python -m engine tensorboard SOURCE... --out DIR``: TensorBoard event files from run folders' history.csv.

Training never writes TensorBoard events itself: it stays torch-only and history.csv is the record. This
exporter reads each run's history.csv afterwards (or while it trains: run it again to catch up) and writes
one TensorBoard run per run folder with tensorboardX, so single runs and sweep trials look the same.
``make tensorboard`` runs it and then serves the result on 127.0.0.1.

SOURCE is a run folder, a sweep folder or any folder above them (e.g. ``outputs``): every folder below it
holding a history.csv is exported to ``DIR/<its path relative to --root>``, replacing what an earlier
export wrote there. Sweep trials also get their parameters (trial.json) as a text summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shutil
from collections.abc import Iterable
from pathlib import Path

from .. import runs

log = logging.getLogger(__name__)

EVENTS_PREFIX = "events.out.tfevents."
# history.csv columns shown as scalars, under TensorBoard tags that group them into panels.
TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val",
    "train_acc": "accuracy/train", "val_acc": "accuracy/val",
    "val_macro_f1": "macro_f1/val",
    "lr": "optim/lr", "epoch_seconds": "speed/epoch_seconds", "train_images_per_s": "speed/train_images_per_s",
}
TRIAL_JSON = "trial.json"  # tuning/layout.py's name; the engine does not import tuning


def find_runs(source: Path) -> list[Path]:
    """Run folders (holding history.csv) at or below ``source``, in path order."""
    source = Path(source)
    if (source / runs.HISTORY).is_file():
        return [source]
    return sorted(p.parent for p in source.rglob(runs.HISTORY) if p.is_file())


def read_history(path: Path) -> list[dict[str, float]]:
    """history.csv's rows as numbers; cells that are empty or not numbers are left out."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for key, value in raw.items():
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(number):
                    row[key] = number
            if "epoch" in row:
                rows.append(row)
    return rows


def _clear(folder: Path) -> None:
    # Only event files: the folder is ours, but a user may have put notes next to them.
    for old in folder.glob(f"{EVENTS_PREFIX}*"):
        old.unlink()


def export_run(run: Path, dest: Path) -> int:
    """Write ``run``'s history as TensorBoard scalars into ``dest``; returns the number of epochs written."""
    from tensorboardX import SummaryWriter  # only this exporter needs it, not training

    rows = read_history(run / runs.HISTORY)
    dest.mkdir(parents=True, exist_ok=True)
    _clear(dest)
    writer = SummaryWriter(logdir=str(dest), flush_secs=1)
    try:
        for row in rows:
            step = int(row["epoch"])
            for column, tag in TAGS.items():
                if column in row:
                    writer.add_scalar(tag, row[column], global_step=step)
        trial = run / TRIAL_JSON
        if trial.is_file():
            try:
                params = json.loads(trial.read_text()).get("params") or {}
                text = "\n".join(f"    {k} = {v}" for k, v in sorted(params.items()))
                writer.add_text("params", text or "(none)", global_step=0)
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("%s: %s not readable (%s); exporting without params", run, TRIAL_JSON, exc)
    finally:
        writer.close()
    return len(rows)


def export(sources: Iterable[Path], out: Path, root: Path) -> list[Path]:
    """Export every run below ``sources`` into ``out``, mirroring their paths under ``root``; returns the
    TensorBoard logdir to serve (the common folder of what was written)."""
    out, root = Path(out).resolve(), Path(root).resolve()
    written = []
    for source in sources:
        for run in find_runs(Path(source)):
            resolved = run.resolve()
            if resolved == out or out in resolved.parents:
                continue  # never export our own output
            try:
                rel = resolved.relative_to(root)
            except ValueError:
                rel = Path(resolved.name)
            dest = out / rel
            try:
                epochs = export_run(run, dest)
            except (OSError, csv.Error) as exc:
                log.warning("%s: history not exported (%s)", run, exc)
                continue
            log.info("%s: %d epoch(s) -> %s", run, epochs, dest)
            written.append(dest)
    return written


def logdir_for(written: list[Path], out: Path) -> Path:
    """The folder holding every written run: TensorBoard names each run by its path below it."""
    if not written:
        return Path(out)
    common = Path(*Path(written[0]).parts)
    for path in written[1:]:
        while common not in path.parents and common != path:
            common = common.parent
    # One run alone: serve its parent, so TensorBoard still shows it under its name.
    return common.parent if len(written) == 1 else common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine tensorboard", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", type=Path, help="run folders, sweep folders or folders above them")
    parser.add_argument("--out", type=Path, default=Path("outputs/tensorboard"), help="where event files go")
    parser.add_argument("--root", type=Path, default=Path("outputs"),
                        help="exported runs are named by their path below this folder")
    parser.add_argument("--clean", action="store_true", help="remove --out first (runs deleted since)")
    args = parser.parse_args(argv)
    if args.clean and args.out.is_dir():
        shutil.rmtree(args.out)
    missing = [s for s in args.sources if not s.exists()]
    if missing:
        parser.error(f"not found: {', '.join(map(str, missing))}")
    written = export(args.sources, args.out, args.root)
    if not written:
        log.error("no history.csv below %s", ", ".join(map(str, args.sources)))
        return 1
    # The last line is the logdir, for `make tensorboard` to serve.
    print(logdir_for(written, args.out))
    return 0

