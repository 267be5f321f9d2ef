"""``python -m engine bench``: the engine's speed against the plain torchvision loop, side by side.

The measurements are ``engine.bench``'s; this picks the stages, writes the results to
``outputs/bench/<timestamp>.json`` after every stage and prints the table. ``--onnx RUN`` adds
ONNX Runtime against PyTorch on the CPU for that run's export; alone, it measures only that.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import runs
from ..bench import (
    ALTERNATIVES,
    SKIPPABLE,
    cpu_name,
    engine_loop,
    format_table,
    gradcam_rows,
    ladder,
    onnx_rows,
    plain_accuracy,
    plain_loop,
    profile_step,
    shared_gpu,
    time_to_accuracy,
)
from ..cache import load_cache
from ..config import build_config, parse_overrides
from ..export import load_export
from ..inference import resolve_device
from ..prepare import prepare

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine bench", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="raw image folder (Kaggle layout)")
    parser.add_argument("--prepared", type=Path, help="prepared folder (default: --data-dir prepared in a temp folder)")
    parser.add_argument("--preset", default=None, help="preset (default: cpu-quick at 64 px on CPU, gpu-full on GPU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=0, help="timed training steps per loop (default 12 CPU, 40 GPU)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="plain-loop workers")
    parser.add_argument("--cam-images", type=int, default=0,
                        help="test images for the Grad-CAM rows (default: 32 on CPU, the whole test split on GPU)")
    parser.add_argument("--skip", default="", metavar="STAGES",
                        help=f"comma-separated stages to leave out: {', '.join(SKIPPABLE)}")
    parser.add_argument("--shared-gpu", default="1,2,4", help="process counts for the shared-GPU measurement")
    parser.add_argument("--time-to-accuracy", type=float, default=0.0, metavar="VAL_ACC",
                        help="also train the preset in full and report when it first reached this val accuracy")
    parser.add_argument("--compare-accuracy", action="store_true",
                        help="also train the plain loop for the preset's epochs and report its val accuracy")
    parser.add_argument("--profile", action="store_true",
                        help="also profile a few eager training steps (top operators by GPU time; CPU time on a CPU)")
    parser.add_argument("--onnx", type=Path, default=None, metavar="RUN",
                        help="also time ONNX Runtime against PyTorch on the CPU (1 image, batch 32) with RUN's "
                        "export (`python -m engine export RUN` first); without --data-dir/--prepared, only that")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    skip = {name for name in args.skip.split(",") if name}
    if skip - set(SKIPPABLE):
        raise ValueError(f"--skip: unknown stage(s) {', '.join(sorted(skip - set(SKIPPABLE)))}; "
                         f"choose from {', '.join(SKIPPABLE)}")
    device = resolve_device("auto")
    cuda = device.type == "cuda"
    preset = args.preset or ("gpu-full" if cuda else "cpu-quick")
    overrides: dict[str, Any] = {} if cuda else {"image_size": 64}
    overrides.update(parse_overrides(args.overrides))
    cfg = build_config(preset, overrides)
    steps = args.steps or (40 if cuda else 12)
    warmup = 3 if cuda else 2

    if args.worker:  # one training of the shared-GPU measurement
        result = engine_loop(args.prepared, cfg, device, steps, warmup)
        print(json.dumps({"train_images_per_s": result["train_images_per_s"]}))
        return 0

    if args.prepared is None and args.data_dir is None and args.onnx is None:
        raise FileNotFoundError("pass --data-dir (raw images) or --prepared (a prepared folder), or --onnx RUN")
    if args.onnx is not None:
        load_export(args.onnx, None)  # a missing or damaged export is refused now, not after the training loops
    out = args.out / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    result: dict[str, Any] = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "git_commit": runs.git_commit(),
        "preset": preset, "config": cfg.to_dict(), "steps": steps, "warmup_steps": warmup,
        "command": " ".join(sys.argv),
    }

    def stage(name: str, value: Any) -> None:
        # Written after every stage, so a long GPU bench that is cut off keeps what it measured.
        result[name] = value
        runs.write_json(out, result)

    if args.prepared is None and args.data_dir is None:  # --onnx RUN alone: the training preset plays no part
        for key in ("preset", "config", "steps", "warmup_steps"):
            result.pop(key)
        result.update(device="cpu", device_name=cpu_name())  # both sides run on the CPU, GPU or not
        log.info("bench: ONNX Runtime against PyTorch on %s", args.onnx)
        stage("onnx", onnx_rows(args.onnx))
        print(format_table(result))
        print(out)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if args.data_dir is not None:
            prepared = args.prepared or Path(tmp) / "prepared"
            report = prepare(args.data_dir, prepared)
            stage("prepare_images_per_s", report["files_found"] / (time.perf_counter() - start))
        else:
            prepared = args.prepared
            stage("prepare_images_per_s", float("nan"))
        load_cache(prepared, cfg.image_size, cfg.view)  # build it once; the timed load below reads it
        start = time.perf_counter()
        np.array(load_cache(prepared, cfg.image_size, cfg.view))
        stage("cache_load_seconds", time.perf_counter() - start)
        data_dir = args.data_dir or Path(runs.read_json(prepared / "data_report.json")["data_dir"])

        log.info("bench: plain torchvision loop")
        stage("plain", plain_loop(data_dir, dataclasses.replace(cfg, compile="off"), device, steps, warmup,
                                  args.workers))
        if cuda and "ladder" not in skip:
            log.info("bench: engine loop, one fast-path switch at a time")
            stage("ladder", ladder(prepared, cfg, device, steps, warmup))
        if cuda and "alternatives" not in skip:
            log.info("bench: engine loop, alternatives beside the default")
            stage("alternatives", ladder(prepared, cfg, device, steps, warmup, ALTERNATIVES))
        log.info("bench: engine loop")
        eng = engine_loop(prepared, cfg, device, steps, warmup)
        model, data = eng.pop("model"), eng.pop("data")
        train_images = len(data.split["train"])
        stage("engine", eng)
        plain_rate = result["plain"]["train_images_per_s"]
        variants = [row for row in result.get("ladder", []) + result.get("alternatives", []) if "error" not in row]
        fastest = max([{"variant": "default", **eng}, *variants], key=lambda row: row["train_images_per_s"])
        result["fastest"] = {"variant": fastest["variant"], "train_images_per_s": fastest["train_images_per_s"],
                             "speedup": fastest["train_images_per_s"] / plain_rate}
        result.update({"speedup": eng["train_images_per_s"] / plain_rate,
                       "plain_epoch_seconds": train_images / result["plain"]["train_images_per_s"],
                       "engine_epoch_seconds": train_images / eng["train_images_per_s"]})
        if "gradcam" not in skip:
            log.info("bench: Grad-CAM")
            stage("gradcam", gradcam_rows(model, data, cfg, device, args.cam_images or (0 if cuda else 32)))
        del model, data
        if cuda:
            torch.cuda.empty_cache()
            log.info("bench: trainings sharing the GPU")
            counts = tuple(int(n) for n in args.shared_gpu.split(",") if n)
            stage("shared_gpu", shared_gpu(prepared, overrides, counts, steps))
        if args.time_to_accuracy:
            log.info("bench: %s to %.3f validation accuracy", preset, args.time_to_accuracy)
            stage("time_to_accuracy", time_to_accuracy(prepared, cfg, preset, args.time_to_accuracy, Path(tmp) / "tta"))
        if args.compare_accuracy:
            log.info("bench: plain loop trained in full")
            stage("plain_accuracy", plain_accuracy(data_dir, prepared, cfg, device, args.workers))
        if args.onnx is not None:
            log.info("bench: ONNX Runtime against PyTorch on %s", args.onnx)
            stage("onnx", onnx_rows(args.onnx))
        if args.profile:
            # Last: the profiler's hooks can slow launch-bound work measured after it.
            log.info("bench: profiling the training step")
            stage("profile", profile_step(prepared, cfg, device, out.with_suffix(".profile.txt")))
    print(format_table(result))
    print(out)
    return 0
