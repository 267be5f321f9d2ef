"""``python -m engine bench``: the engine's speed against the plain torchvision loop, side by side.

The yardstick is what a user writes without this project: ``ImageFolder``, PIL decoding every
epoch, a ``DataLoader`` with workers, fp32. Both loops train the same model at the same
resolution and batch size on the same images, in one process, one after the other. Results go
to ``outputs/bench/<timestamp>.json`` and a printed table. Runs on CPU (small defaults) and on
a GPU as it is; it imports nothing beyond PyTorch, torchvision, NumPy and scikit-learn
(pytorch-grad-cam only for the Grad-CAM rows, skipped when it is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import runs
from .config import build_config
from .data import find_class_dirs, load_cache, prepare
from .models import create_model
from .runs import CLASSES
from .train import Data, make_optimizer, make_scheduler, predict_proba, resolve_device, switch, train_one_epoch

log = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(data_dir: Path, cfg, device: torch.device, steps: int, warmup: int, workers: int) -> dict[str, float]:
    """The baseline: torchvision ImageFolder + PIL + DataLoader workers, fp32, NCHW.

    Its augmentation is what a user would write for the engine's own (flips, free rotation,
    +-10% scale, colour jitter of 0.2), so both loops do the same work per image.
    """
    from torchvision import datasets, transforms

    root = next(iter(find_class_dirs(data_dir).values())).parent
    transform = transforms.Compose([
        transforms.Resize(cfg.image_size), transforms.CenterCrop(cfg.image_size),
        transforms.RandomHorizontalFlip(), transforms.RandomAffine(180, scale=(0.9, 1.1)),
        transforms.ColorJitter(0.2, 0.2, 0.2), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    dataset = datasets.ImageFolder(root, transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    torch.manual_seed(0)
    model = create_model(cfg, len(CLASSES)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    model.train()
    seen, start = 0, None
    batches = iter(loader)
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            seen += len(y)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"train_images_per_s": seen / seconds, "images": seen, "seconds": seconds}


def engine_loop(prepared: Path, cfg, device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    """The engine's own train_one_epoch on the decoded cache, over the same number of images."""
    torch.manual_seed(cfg.seed)
    data = Data.load(prepared, cfg.image_size, device, switch(cfg.data_on_device, device))
    use_amp, channels_last = switch(cfg.amp, device), switch(cfg.channels_last, device)
    model = create_model(cfg, len(CLASSES)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = make_scheduler(optimizer, cfg, 10 * (steps + warmup))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    forward = model if cfg.compile == "off" else torch.compile(
        model, mode=None if cfg.compile == "default" else cfg.compile)
    train_idx = data.split["train"]
    rng = np.random.default_rng(0)

    def run(n_steps: int) -> dict[str, float]:
        idx = rng.choice(train_idx, size=n_steps * cfg.batch_size, replace=len(train_idx) < n_steps * cfg.batch_size)
        return train_one_epoch(forward, data, idx, cfg, optimizer, scheduler, criterion, device, gen,
                               epoch=0, use_amp=use_amp, channels_last=channels_last)

    compile_start = time.perf_counter()
    run(warmup)
    warm_seconds = time.perf_counter() - compile_start
    result = run(steps)
    val = data.split["val"]
    _sync(device)
    start = time.perf_counter()
    predict_proba(model, data.images, val, device, batch_size=cfg.eval_batch_size, use_amp=use_amp,
                  channels_last=channels_last)
    _sync(device)
    eval_seconds = time.perf_counter() - start
    return {"train_images_per_s": result["train_images_per_s"], "images": steps * cfg.batch_size,
            "seconds": result["train_seconds"], "warmup_seconds": warm_seconds,
            "eval_images_per_s": len(val) / eval_seconds, "amp_bf16": use_amp, "channels_last": channels_last,
            "data_on_device": data.images.device.type == "cuda", "compile": cfg.compile,
            "model": model, "data": data}


def gradcam_rows(model: nn.Module, data: Data, cfg, device: torch.device, n_images: int) -> dict[str, Any]:
    try:
        from .explain.methods import cam_throughput
    except ImportError as exc:
        return {"skipped": f"Grad-CAM unavailable: {exc}"}
    images = data.images[torch.from_numpy(data.split["test"][:n_images]).to(data.images.device)]
    batched = cam_throughput(model, images, "gradcam", "norm5", batch_size=min(32, n_images), device=device)
    single = cam_throughput(model, images[: max(2, n_images // 4)], "gradcam", "norm5", batch_size=1, device=device)
    return {"batched_images_per_s": batched, "single_images_per_s": single, "speedup": batched / single}


def shared_gpu(prepared: Path, overrides: dict[str, Any], counts: tuple[int, ...], steps: int) -> list[dict[str, Any]]:
    """Total throughput of 1, 2, 4 trainings sharing one GPU, as separate processes."""
    rows = []
    for n in counts:
        cmd = [sys.executable, "-m", "engine", "bench", "--worker", "--prepared", str(prepared),
               "--steps", str(steps), *[arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        total = sum(o["train_images_per_s"] for o in outs)
        rows.append({"processes": n, "total_images_per_s": total,
                     "per_process": [o["train_images_per_s"] for o in outs]})
    return rows


def time_to_accuracy(prepared: Path, preset: str, target: float, out: Path) -> dict[str, Any]:
    """Train ``preset`` until validation accuracy reaches ``target``; seconds of training spent."""
    from .train import fit

    spent = {"seconds": 0.0, "epoch": None, "val_acc": 0.0}

    class Reached(Exception):
        pass

    def on_epoch(row: dict[str, Any], run_dir: Path) -> None:
        spent["seconds"] += row["epoch_seconds"]
        spent["val_acc"] = row["val_acc"]
        if row["val_acc"] >= target:
            spent["epoch"] = row["epoch"]
            raise Reached

    cfg = build_config(preset)
    with contextlib.suppress(Reached):
        fit(cfg, prepared, out / runs.new_run_id("tta-"), preset=preset, on_epoch=on_epoch)
    return {"preset": preset, "target_val_acc": target, "reached": spent["epoch"] is not None,
            "training_seconds": spent["seconds"], "epochs": spent["epoch"], "last_val_acc": spent["val_acc"]}


def format_table(result: dict[str, Any]) -> str:
    plain, eng = result["plain"], result["engine"]
    lines = [
        f"bench on {result['device_name']} ({result['device']}), {result['config']['model']} "
        f"{result['config']['image_size']} px, batch {result['config']['batch_size']}",
        f"{'measure':<44}{'value':>14}",
        f"{'data prep: hash + decode (parallel), img/s':<44}{result['prepare_images_per_s']:>14.1f}",
        f"{'decoded cache load, s':<44}{result['cache_load_seconds']:>14.3f}",
        f"{'plain loop train, img/s':<44}{plain['train_images_per_s']:>14.1f}",
        f"{'engine train, img/s':<44}{eng['train_images_per_s']:>14.1f}",
        f"{'speed-up (engine / plain)':<44}{result['speedup']:>14.2f}",
        f"{'plain epoch estimate, s':<44}{result['plain_epoch_seconds']:>14.1f}",
        f"{'engine epoch estimate, s':<44}{result['engine_epoch_seconds']:>14.1f}",
        f"{'engine evaluation, img/s':<44}{eng['eval_images_per_s']:>14.1f}",
    ]
    cam = result.get("gradcam", {})
    if "speedup" in cam:
        lines += [f"{'Grad-CAM batched, img/s':<44}{cam['batched_images_per_s']:>14.1f}",
                  f"{'Grad-CAM one at a time, img/s':<44}{cam['single_images_per_s']:>14.1f}",
                  f"{'Grad-CAM speed-up':<44}{cam['speedup']:>14.2f}"]
    for row in result.get("shared_gpu", []):
        lines.append(f"{'GPU shared by ' + str(row['processes']) + ' trainings, total img/s':<44}"
                     f"{row['total_images_per_s']:>14.1f}")
    if result.get("time_to_accuracy"):
        tta = result["time_to_accuracy"]
        lines.append(f"{'time to ' + str(tta['target_val_acc']) + ' val acc (' + tta['preset'] + '), s':<44}"
                     f"{tta['training_seconds'] if tta['reached'] else float('nan'):>14.1f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine bench", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="raw image folder (Kaggle layout)")
    parser.add_argument("--prepared", type=Path, help="prepared folder (default: --data-dir prepared in a temp folder)")
    parser.add_argument("--preset", default=None, help="preset (default: cpu-quick at 64 px on CPU, gpu-full on GPU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=0, help="timed training steps per loop (default 12 CPU, 40 GPU)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="plain-loop workers")
    parser.add_argument("--cam-images", type=int, default=32)
    parser.add_argument("--shared-gpu", default="1,2,4", help="process counts for the shared-GPU measurement")
    parser.add_argument("--time-to-accuracy", type=float, default=0.0, metavar="VAL_ACC",
                        help="also train the preset until this validation accuracy (e.g. 0.995)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .config import parse_overrides

    args = build_parser().parse_args(argv)
    device = resolve_device("auto")
    preset = args.preset or ("gpu-full" if device.type == "cuda" else "cpu-quick")
    overrides: dict[str, Any] = {} if device.type == "cuda" else {"image_size": 64}
    overrides.update(parse_overrides(args.overrides))
    cfg = build_config(preset, overrides)
    steps = args.steps or (40 if device.type == "cuda" else 12)
    warmup = 3 if device.type == "cuda" else 2

    if args.worker:  # one training of the shared-GPU measurement
        result = engine_loop(args.prepared, cfg, device, steps, warmup)
        print(json.dumps({"train_images_per_s": result["train_images_per_s"]}))
        return 0

    if args.prepared is None and args.data_dir is None:
        raise FileNotFoundError("pass --data-dir (raw images) or --prepared (a prepared folder)")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if args.data_dir is not None:
            prepared = args.prepared or Path(tmp) / "prepared"
            report = prepare(args.data_dir, prepared)
            prepare_rate = report["files_found"] / (time.perf_counter() - start)
        else:
            prepared, prepare_rate = args.prepared, float("nan")
        load_cache(prepared, cfg.image_size)  # build it once; the timed load below reads it
        start = time.perf_counter()
        np.array(load_cache(prepared, cfg.image_size))
        cache_seconds = time.perf_counter() - start
        data_dir = args.data_dir or Path(runs.read_json(prepared / "data_report.json")["data_dir"])

        log.info("bench: plain torchvision loop")
        plain = plain_loop(data_dir, dataclasses.replace(cfg, compile="off"), device, steps, warmup, args.workers)
        log.info("bench: engine loop")
        eng = engine_loop(prepared, cfg, device, steps, warmup)
        model, data = eng.pop("model"), eng.pop("data")
        log.info("bench: Grad-CAM")
        cam = gradcam_rows(model, data, cfg, device, args.cam_images)
        train_images = len(data.split["train"])
        result: dict[str, Any] = {
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else platform.processor() or "cpu"),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "git_commit": runs.git_commit(),
            "preset": preset, "config": cfg.to_dict(), "steps": steps, "warmup_steps": warmup,
            "prepare_images_per_s": prepare_rate, "cache_load_seconds": cache_seconds,
            "plain": plain, "engine": eng,
            "speedup": eng["train_images_per_s"] / plain["train_images_per_s"],
            "plain_epoch_seconds": train_images / plain["train_images_per_s"],
            "engine_epoch_seconds": train_images / eng["train_images_per_s"],
            "gradcam": cam,
        }
        if device.type == "cuda":
            counts = tuple(int(n) for n in args.shared_gpu.split(",") if n)
            result["shared_gpu"] = shared_gpu(prepared, overrides, counts, steps)
        if args.time_to_accuracy:
            result["time_to_accuracy"] = time_to_accuracy(prepared, preset, args.time_to_accuracy, Path(tmp) / "tta")
    out = args.out / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    runs.write_json(out, result)
    print(format_table(result))
    print(out)
    return 0
