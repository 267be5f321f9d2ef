"""``python -m engine explain RUN``: Grad-CAM maps, faithfulness and sanity checks of a run.

Writes ``RUN/cams/`` and prints that folder as the last line. With ``--compare OTHER_RUN``
it only writes both runs' maps on the same images to ``RUN/cams/compare/OTHER/`` and
prints that folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import tracking
from ..config import DEVICES
from ..errors import interruptible
from ..explain.methods import METHOD_NAMES
from ..explain.pipeline import DEFAULT_LAYERS, DEFAULT_METHODS, TARGETS, ExplainOptions, compare_runs, explain_run
from ..models import CAM_LAYERS
from ..runs import CHECKPOINT_CHOICES, SPLITS


def _names(choices: tuple[str, ...], what: str):
    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad) or repr(text)}; "
                                             f"choose from {', '.join(choices)}")
        return names
    return parse


def _percentiles(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 < v < 100 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers in 1..99, got {text!r}")
    return values


def _flatten(groups: list[list[list[str]]] | None, default: tuple[str, ...]) -> list[str]:
    # append + nargs="+" + a list-valued type: one list per option, one per word, of names.
    names = [n for option in groups or [] for word in option for n in word]
    return list(dict.fromkeys(names)) or list(default)


def build_parser() -> argparse.ArgumentParser:
    default = ExplainOptions()  # the defaults are ExplainOptions' own, written once
    parser = argparse.ArgumentParser(prog="python -m engine explain", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="trained (and evaluated) run folder")
    parser.add_argument("--methods", "--method", nargs="+", action="append", type=_names(METHOD_NAMES, "method"),
                        metavar="METHOD", help="CAM methods, space- or comma-separated (default "
                        f"{','.join(DEFAULT_METHODS)}): "
                        f"{', '.join(METHOD_NAMES)}. ablationcam and scorecam cost one forward pass per channel")
    parser.add_argument("--layers", "--layer", nargs="+", action="append", type=_names(CAM_LAYERS, "layer"),
                        metavar="LAYER", help=f"target layers (default {','.join(DEFAULT_LAYERS)}): "
                        f"{', '.join(CAM_LAYERS)}; the first "
                        "is the one scored, sanity-checked and summarised per stage")
    parser.add_argument("--targets", type=_names(TARGETS, "target"), default=list(default.targets),
                        help="maps for the predicted and/or the true class (default pred,true)")
    parser.add_argument("--split", default=default.split, choices=SPLITS)
    parser.add_argument("--checkpoint", default=default.checkpoint, choices=CHECKPOINT_CHOICES)
    parser.add_argument("--limit", type=int, default=default.limit, metavar="N",
                        help="a stratified N images of the split (0: all)")
    parser.add_argument("--batch-size", type=int, default=default.batch_size)
    parser.add_argument("--device", default=default.device, choices=DEVICES)
    parser.add_argument("--faithfulness", action=argparse.BooleanOptionalAction, default=default.faithfulness,
                        help="ROAD and confidence-change scores (default on)")
    parser.add_argument("--faithfulness-images", type=int, default=default.faithfulness_images, metavar="N",
                        help="stratified images scored per method (0: all; about 1 s each at 112 px on a 2-core CPU)")
    parser.add_argument("--road-percentiles", type=_percentiles, default=list(default.road_percentiles),
                        help="removal percentiles averaged by ROAD (default 20,50,80)")
    parser.add_argument("--sanity", action=argparse.BooleanOptionalAction, default=default.sanity,
                        help="model-randomisation sanity check (default on)")
    parser.add_argument("--sanity-images", type=int, default=default.sanity_images, metavar="N")
    parser.add_argument("--localisation", action=argparse.BooleanOptionalAction, default=default.localisation,
                        help="score every method x layer against the leukocyte masks, with a centred and a shuffled "
                        "baseline (default on; needs data prepared with masks)")
    parser.add_argument("--stages", action=argparse.BooleanOptionalAction, default=default.stages,
                        help="per-stage summaries and panels (default on)")
    parser.add_argument("--multilayer", type=int, default=default.multilayer_images, metavar="N",
                        help="images shown at every layer in multilayer/ (0: none)")
    parser.add_argument("--multilayer-method", default=default.multilayer_method, choices=METHOD_NAMES)
    parser.add_argument("--compare", type=Path, metavar="OTHER_RUN",
                        help="only compare this run's maps with OTHER_RUN's on the same images")
    parser.add_argument("--compare-images", type=int, default=8, metavar="N")
    parser.add_argument("--seed", type=int, default=default.seed)
    tracking.add_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    methods = _flatten(args.methods, DEFAULT_METHODS)
    layers = _flatten(args.layers, DEFAULT_LAYERS)
    # SIGINT and SIGTERM abandon the maps under way; explain_run says what was kept.
    with interruptible():
        out = _run(args, methods, layers)
    # The explanation summaries, localisation scores and the model card into the run's MLflow run.
    tracking.copy_folder(tracking.resolve_uri(args.mlflow), args.run, status="FINISHED")
    print(out)
    return 0


def _run(args: argparse.Namespace, methods: list[str], layers: list[str]) -> Path:
    if args.compare is not None:
        out = compare_runs(args.run, args.compare, ExplainOptions(
            methods=tuple(methods), layers=tuple(layers), split=args.split, checkpoint=args.checkpoint,
            device=args.device, batch_size=args.batch_size, seed=args.seed), images=args.compare_images)
    else:
        out = explain_run(args.run, ExplainOptions(
            methods=tuple(methods), layers=tuple(layers), split=args.split, checkpoint=args.checkpoint,
            targets=tuple(args.targets), limit=args.limit, batch_size=args.batch_size, device=args.device,
            faithfulness=args.faithfulness, faithfulness_images=args.faithfulness_images,
            road_percentiles=tuple(args.road_percentiles), sanity=args.sanity, sanity_images=args.sanity_images,
            localisation=args.localisation, stages=args.stages, multilayer_images=args.multilayer,
            multilayer_method=args.multilayer_method, seed=args.seed))
    return out
