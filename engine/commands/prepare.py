"""``python -m engine prepare --data-dir DIR --out OUT``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import preflight
from ..cache import load_cache
from ..config import ConfigError
from ..errors import EXIT_RESOURCES, interruptible, needs_space, oserror_status, resource_error, signal_name
from ..prepare import prepare
from ..smears import DEFAULT_FOLDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine prepare",
                                     description="Validate, deduplicate and split an ALL image folder.")
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="Kaggle ALL folder (Original/<Class>), or a folder of class folders")
    parser.add_argument("--out", type=Path, default=Path("outputs/prepared"), help="where to write the manifest")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--split", default="0.7,0.15,0.15", help="train,val,test fractions")
    parser.add_argument("--masks", default="auto", metavar="DIR",
                        help="segmented copies of the images (leukocytes on black, same class folders and file "
                        "names) to take the leukocyte masks from; auto (default): Segmented/ beside Original/; "
                        "none: no masks")
    parser.add_argument("--derived-masks", action=argparse.BooleanOptionalAction, default=True,
                        help="where a segmented copy cannot serve (missing, empty, most of the image), derive the "
                        "mask from the image's stain (default on)")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                        help="smear folds: whole smear groups held out per fold, for runs with split=smear "
                        f"(default {DEFAULT_FOLDS}, at least 3)")
    parser.add_argument("--cache-size", type=int, action="append", default=[],
                        help="also build the decoded cache at this resolution (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        fractions = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        raise ConfigError(f"--split expects three fractions like 0.7,0.15,0.15, got {args.split!r}") from None
    if len(fractions) != 3:
        raise ConfigError(f"--split expects three fractions, got {args.split!r}")
    doing = f"preparing {args.out}"
    preflight.require_writable(args.out, doing)  # before decoding the whole folder, not after

    # engine.prepare.prepare writes its masks, manifest and report with signals held back, each atomically.
    kept = f"{args.out} holds a complete manifest and report, the previous ones or the new ones"

    def stopped(signum: int) -> str:
        return f"{doing} was stopped by {signal_name(signum)}; {kept}: run the command again"

    try:
        with interruptible(stopped):
            report = prepare(args.data_dir, args.out, seed=args.seed, fractions=fractions, masks=args.masks,
                             derive_masks=args.derived_masks, folds=args.folds)
            for size in args.cache_size:
                load_cache(args.out, size)
    except OSError as exc:
        if oserror_status(exc) != EXIT_RESOURCES:  # a missing or unreadable input is the user's input, not a resource
            raise
        fix = "free space and " if needs_space(exc) else ""
        raise resource_error(exc, doing, f"{kept}: {fix}run the command again") from exc
    print(f"{report['images']} images ({report['files_found']} files, {len(report['rejected'])} rejected, "
          f"{len(report['duplicate_groups'])} duplicate groups, {len(report['near_duplicates'])} near-duplicate pairs)")
    if report["masks"]["dir"]:
        print("leukocyte masks (segmented / derived / none): " + ", ".join(
            f"{cls} {m['segmented']}/{m['derived']}/{m['none']}" for cls, m in report["masks"]["per_class"].items()))
    smear = report["smear"]
    if smear["made"]:
        check = smear["shortcut_check"]
        print(f"smear groups in {smear['folds']} folds: " + ", ".join(
            f"{cls} {s['groups']}" for cls, s in smear["per_stage"].items())
            + f"; background-colour forest {check['image_split']['mean']:.1%} by image, "
            f"{check['smear_split']['mean']:.1%} by smear fold")
    else:
        print(f"no smear folds: {smear['problem']}")
    for item in report["rejected"]:
        print(f"rejected {item['path']}: {item['reason']}")
    print(args.out)
    return 0
