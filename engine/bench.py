"""``python -m engine bench``: the engine's speed against the plain torchvision loop, side by side.

The yardstick is what a user writes without this project: ``ImageFolder``, PIL decoding every
epoch, a ``DataLoader`` with workers, fp32. Both loops train the same model at the same
resolution and batch size on the same images, in one process, one after the other. The command
(``engine/commands/bench.py``) writes the results to ``outputs/bench/<timestamp>.json``
(rewritten after every stage) and prints a table. Runs on
CPU (small defaults) and on a GPU as it is. Training needs only PyTorch, torchvision and NumPy;
``--data-dir`` preparation also scikit-learn (ImageHash optional), and the Grad-CAM rows
pytorch-grad-cam (skipped when it is missing). On a GPU it also measures each fast-path switch
in turn, trainings sharing the GPU, time to accuracy and, on request, a profile of one step.
With ``--onnx RUN`` it sets ONNX Runtime against PyTorch on the CPU for that run's exported model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import fastpath, runs
from .discover import class_root, find_class_dirs
from .inference import Data, predict_proba, switch, to_input, use_channels_last
from .manifest import read_manifest
from .models import create_model
from .progress import progress
from .runs import CLASSES
from .train import (
    GraphedTrainStep,
    compile_model,
    fit,
    make_optimizer,
    make_scheduler,
    make_train_step,
    seed_everything,
    train_one_epoch,
)

log = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_transforms(size: int, train: bool):
    """What a user would write for the engine's augmentation (flips, free rotation, +-10% scale,
    colour jitter of 0.2), so both loops do the same work per image."""
    from torchvision import transforms

    steps = [transforms.Resize(size), transforms.CenterCrop(size)]
    if train:
        steps += [transforms.RandomHorizontalFlip(), transforms.RandomAffine(180, scale=(0.9, 1.1)),
                  transforms.ColorJitter(0.2, 0.2, 0.2)]
    return transforms.Compose([*steps, transforms.ToTensor(),
                               transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


def plain_dataset(data_dir: Path, size: int, train: bool, keep: set[Path] | None = None):
    """torchvision ImageFolder over the class folders, optionally only the files in ``keep``."""
    from torchvision import datasets

    dataset = datasets.ImageFolder(class_root(find_class_dirs(data_dir)), transform=plain_transforms(size, train))
    if keep is None:
        return dataset
    return torch.utils.data.Subset(dataset, [i for i, (path, _) in enumerate(dataset.samples)
                                             if Path(path).resolve() in keep])


def plain_loader(dataset, cfg, device: torch.device, workers: int, train: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=train, num_workers=workers, drop_last=train,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


def plain_loop(data_dir: Path, cfg, device: torch.device, steps: int, warmup: int, workers: int) -> dict[str, float]:
    """The baseline: torchvision ImageFolder + PIL + DataLoader workers, fp32, NCHW."""
    loader = plain_loader(plain_dataset(data_dir, cfg.image_size, train=True), cfg, device, workers, train=True)
    if len(loader) == 0:
        raise ValueError(f"{len(loader.dataset)} images in {data_dir} are fewer than one batch of {cfg.batch_size}: "
                         "lower batch_size (--set batch_size=N)")
    torch.manual_seed(0)
    model = create_model(cfg, len(CLASSES)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.effective_lr, weight_decay=cfg.weight_decay)
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


def plain_accuracy(data_dir: Path, prepared: Path, cfg, device: torch.device, workers: int) -> dict[str, Any]:
    """The plain loop trained like the engine (same split, epochs, AdamW, schedule), then its val accuracy.

    The engine's speed only counts if it learns as well: this is the accuracy to compare with.
    """
    rows = read_manifest(prepared, cfg.split, cfg.fold)
    root = class_root(find_class_dirs(data_dir))
    files = {s: {(root / r["path"]).resolve() for r in rows if r["split"] == s} for s in ("train", "val")}
    train = plain_loader(plain_dataset(data_dir, cfg.image_size, True, files["train"]), cfg, device, workers, True)
    val = plain_loader(plain_dataset(data_dir, cfg.image_size, False, files["val"]), cfg, device, workers, False)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg, len(CLASSES)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.effective_lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg, cfg.epochs * len(train))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    seconds = 0.0
    for _ in progress(range(cfg.epochs), desc="plain loop, full training", unit="epoch"):
        model.train()
        start = time.perf_counter()
        for x, y in train:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        _sync(device)
        seconds += time.perf_counter() - start
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in val:
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
            total += len(y)
    return {"epochs": cfg.epochs, "training_seconds": seconds, "val_acc": correct / total, "val_images": total,
            "train_images_per_s": cfg.epochs * len(train) * cfg.batch_size / seconds}


def engine_loop(prepared: Path, cfg, device: torch.device, steps: int, warmup: int,
                profiler: Any = None) -> dict[str, Any]:
    """The engine's own train_one_epoch on the decoded cache, over the same number of images."""
    seed_everything(cfg.seed, device)  # as fit does: cuDNN autotuning on CUDA
    data = Data.load(prepared, cfg.image_size, device, switch(cfg.data_on_device, device), split=cfg.split,
                     fold=cfg.fold, view=cfg.view)
    fast = fastpath.resolve(cfg, device, (steps + warmup) * cfg.batch_size)
    cfg = dataclasses.replace(cfg, amp="on" if fast.amp else "off", compile=fast.compile)
    use_amp, channels_last = fast.amp, use_channels_last(cfg, device)
    model = create_model(cfg, len(CLASSES)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = make_scheduler(optimizer, cfg, 10 * (steps + warmup))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    step = make_train_step(compile_model(model, cfg), optimizer, criterion, device, cfg)
    # Warm-up covers cuDNN autotuning, compilation and the CUDA-graph capture.
    warmup = max(warmup, getattr(step, "warmup", 0) + 2)
    train_idx = data.split["train"]
    rng = np.random.default_rng(0)

    def run(n_steps: int) -> dict[str, float]:
        n = n_steps * cfg.batch_size
        idx = rng.choice(train_idx, size=n, replace=len(train_idx) < n)
        return train_one_epoch(step, data, idx, cfg, scheduler, device, gen, epoch=0, channels_last=channels_last)

    compile_start = time.perf_counter()
    run(warmup)
    warm_seconds = time.perf_counter() - compile_start
    with profiler or contextlib.nullcontext():
        result = run(steps)
    val = data.split["val"]
    _sync(device)
    start = time.perf_counter()
    predict_proba(model, data.images, val, device, batch_size=cfg.eval_batch_size, use_amp=use_amp,
                  channels_last=channels_last)
    _sync(device)
    eval_seconds = time.perf_counter() - start
    graphed = isinstance(step, GraphedTrainStep) and not step.failed
    return {"train_images_per_s": result["train_images_per_s"], "images": steps * cfg.batch_size,
            "seconds": result["train_seconds"], "warmup_seconds": warm_seconds,
            "eval_images_per_s": len(val) / eval_seconds, "amp_bf16": use_amp, "channels_last": channels_last,
            "data_on_device": data.images.device.type == "cuda", "compile": cfg.compile,
            "cuda_graphs": graphed, "fused_optimizer": bool(optimizer.defaults.get("fused")),
            "model": model, "data": data}


# What each fast-path switch adds, measured one on top of the other (GPU only). The last row
# compiles the model with Inductor (minutes of compilation, reported as warmup_seconds).
EAGER = {"compile": "off"}
LADDER: tuple[tuple[str, dict[str, str]], ...] = (
    ("decoded cache + device augmentation, fp32",
     {**EAGER, "amp": "off", "channels_last": "off", "fused_optimizer": "off", "cuda_graphs": "off"}),
    ("+ bf16 autocast, channels_last", {**EAGER, "fused_optimizer": "off", "cuda_graphs": "off"}),
    ("+ fused AdamW", {**EAGER, "cuda_graphs": "off"}),
    ("+ CUDA-graph training step", EAGER),
    ("+ torch.compile (Inductor, default mode)", {"compile": "default"}),
)


# Measured beside the default, to show whether another batch or layout would be faster (GPU only).
ALTERNATIVES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("default, batch 512", {"batch_size": 512}),
    ("default, batch 128", {"batch_size": 128}),
    ("default, batch 128, no CUDA graphs", {"batch_size": 128, "cuda_graphs": "off"}),
    ("default, NCHW instead of channels_last", {"channels_last": "off"}),
)

SKIPPABLE = ("ladder", "alternatives", "gradcam")


def ladder(prepared: Path, cfg, device: torch.device, steps: int, warmup: int,
           variants: tuple[tuple[str, dict[str, Any]], ...] = LADDER) -> list[dict[str, Any]]:
    rows = []
    for name, overrides in variants:
        log.info("bench: engine loop, %s", name)
        try:
            result = engine_loop(prepared, dataclasses.replace(cfg, **overrides), device, steps, warmup)
        except Exception as exc:  # one failing switch (say, a compiler error) must not cost the other rows
            log.exception("bench variant %r failed", name)
            rows.append({"variant": name, "error": f"{type(exc).__name__}: {exc}", **overrides})
            continue
        finally:
            torch.cuda.empty_cache()
        result.pop("model"), result.pop("data")
        rows.append({"variant": name, **result})
    return rows


def profile_step(prepared: Path, cfg, device: torch.device, out: Path) -> dict[str, Any]:
    """Where an eager training step spends its device time (GPU time on CUDA, CPU time on a CPU):
    the top operators, also as a text table.

    Eager, not graphed, so each kernel shows under the operator that launched it.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    cfg = dataclasses.replace(cfg, cuda_graphs="off")
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU])
    engine_loop(prepared, cfg, device, steps=3, warmup=3, profiler=prof)
    events = prof.key_averages()

    def device_time(event: Any) -> float:
        if not cuda:
            return event.self_cpu_time_total
        return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)

    # Operators only: the table also lists each kernel under its own name, which would count twice.
    ops = [e for e in events if e.key.startswith("aten::")]
    total = sum(device_time(e) for e in ops) or 1.0
    top = sorted(ops, key=device_time, reverse=True)[:15]
    out.write_text(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=30))
    return {"table": str(out), "device_ms_per_step": total / 3 / 1000,
            "top": [{"op": e.key, "share": device_time(e) / total, "calls_per_step": e.count / 3} for e in top]}


def gradcam_rows(model: nn.Module, data: Data, cfg, device: torch.device, n_images: int) -> dict[str, Any]:
    """Grad-CAM images/s batched against one at a time; on a GPU also the CPU/GPU map difference."""
    try:
        from .explain.methods import cam_throughput, compute_maps
    except ImportError as exc:
        return {"skipped": f"Grad-CAM unavailable: {exc}"}
    test = data.split["test"]
    n_images = n_images or len(test)
    images = data.images[torch.from_numpy(test[:n_images]).to(data.images.device)]
    batch = 64 if device.type == "cuda" else 32
    batched = cam_throughput(model, images, "gradcam", "norm5", batch_size=min(batch, n_images), device=device)
    single = cam_throughput(model, images[: max(2, n_images // 4)], "gradcam", "norm5", batch_size=1, device=device)
    rows: dict[str, Any] = {"images": n_images, "batch_size": min(batch, n_images), "batched_images_per_s": batched,
                            "single_images_per_s": single, "speedup": batched / single}
    if device.type == "cuda":
        # Same weights, same images, fp32 on both: the maps should agree to rounding.
        x = to_input(images[:8], device, channels_last=False)
        on_gpu = compute_maps(model.float().to(device).eval(), x, "gradcam", "norm5")
        on_cpu = compute_maps(copy.deepcopy(model).float().cpu().eval(), x.cpu(), "gradcam", "norm5")
        rows["cpu_gpu_max_abs_diff"] = float(np.abs(on_gpu - on_cpu).max())
        rows["cpu_gpu_mean_abs_diff"] = float(np.abs(on_gpu - on_cpu).mean())
    return rows


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


def time_to_accuracy(prepared: Path, cfg, preset: str, target: float, out: Path) -> dict[str, Any]:
    """Train ``cfg`` in full; the seconds of training until validation accuracy first reached ``target``.

    The run goes on to its last epoch, so its final validation accuracy can be set against
    the plain loop's after the same epochs.
    """
    reached: dict[str, Any] = {"seconds": 0.0, "epoch": None, "wall_seconds": None}
    history: list[dict[str, Any]] = []
    start = time.perf_counter()

    def on_epoch(row: dict[str, Any], run_dir: Path) -> None:
        reached["seconds"] += row["epoch_seconds"] if reached["epoch"] is None else 0.0
        history.append({k: row[k] for k in ("epoch", "epoch_seconds", "val_acc", "val_macro_f1")})
        if reached["epoch"] is None and row["val_acc"] >= target:
            reached["epoch"], reached["wall_seconds"] = row["epoch"], time.perf_counter() - start

    run_dir = fit(cfg, prepared, out / runs.new_run_id("tta-"), preset=preset, on_epoch=on_epoch)
    env = runs.read_json(run_dir / runs.ENV)
    return {"preset": preset, "target_val_acc": target, "reached": reached["epoch"] is not None,
            "training_seconds": reached["seconds"] if reached["epoch"] else float("nan"),
            "wall_seconds_with_validation": reached["wall_seconds"], "epoch": reached["epoch"],
            "epochs_run": len(history), "final_val_acc": history[-1]["val_acc"] if history else float("nan"),
            "total_training_seconds": sum(h["epoch_seconds"] for h in history),
            "cuda_graphs": env.get("cuda_graphs"), "history": history}


def cpu_name() -> str:
    """The CPU's model name as Linux reports it (platform.processor() is often empty there)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _interleaved_ms(fns: dict[str, Any], images: np.ndarray, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds of ``repeats`` calls of each ``fn(images)``, after ``warmup`` untimed calls of each.

    The calls take turns (a, b, a, b ...), so that other work on a shared machine slows both sides alike
    instead of whichever happened to be measured while it ran.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn(images)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(images)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def onnx_rows(run_dir: Path, repeats: int = 30, batches: int = 10, batch_size: int = 32) -> dict[str, Any]:
    """ONNX Runtime (CPU) against PyTorch (CPU, fp32, as ``predict`` runs it) on a run's exported model:
    latency of one image and throughput of batches of ``batch_size``.

    Both sides start from uint8 NHWC images and include the normalisation, so each row is what
    classifying decoded images costs (decoding the files is the same for both and left out). The
    pixels are random: a convolutional network does the same work whatever they show.
    """
    from .export import load_export, onnx_scores, torch_scores
    from .inference import load_checkpoint

    export = load_export(run_dir, None)
    sidecar = export.sidecar
    cfg, model = load_checkpoint(run_dir, sidecar["checkpoint"], "cpu")
    model.eval()
    size = export.image_size
    images = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    sides = {"pytorch": lambda x: torch_scores(model, x),
             "onnxruntime": lambda x: onnx_scores(export.session, x, sidecar["preprocessing"])}
    rows: dict[str, Any] = {"run": str(run_dir), "checkpoint": sidecar["checkpoint"], "model": cfg.model,
                            "image_size": size, "batch_size": batch_size, "repeats": repeats,
                            "torch_threads": torch.get_num_threads(), "onnxruntime_threads": "default (one per core)"}
    load_before = os.getloadavg()[0]  # other work on the machine slows both sides: say how much there was
    single = _interleaved_ms(sides, images[:1], repeats, warmup=3)
    batched = _interleaved_ms(sides, images, batches, warmup=1)
    rows["load_average_1min"] = [load_before, os.getloadavg()[0]]
    for name in sides:
        rows[name] = {"latency_ms_median": float(np.median(single[name])),
                      "latency_ms_p90": float(np.percentile(single[name], 90)),
                      "images_per_s": batch_size * batches / (sum(batched[name]) / 1000),
                      "batch_ms_median": float(np.median(batched[name]))}
    rows["latency_speedup"] = rows["pytorch"]["latency_ms_median"] / rows["onnxruntime"]["latency_ms_median"]
    rows["throughput_speedup"] = rows["onnxruntime"]["images_per_s"] / rows["pytorch"]["images_per_s"]
    return rows


def format_onnx(rows: dict[str, Any], line: Any) -> list[str]:
    """The table's lines for ``onnx_rows``."""
    batch = rows["batch_size"]
    return [
        f"ONNX Runtime against PyTorch on the CPU: {rows['model']} {rows['image_size']} px ({rows['checkpoint']})",
        line("PyTorch, 1 image, median latency, ms", rows["pytorch"]["latency_ms_median"], ".2f"),
        line("ONNX Runtime, 1 image, median latency, ms", rows["onnxruntime"]["latency_ms_median"], ".2f"),
        line(f"PyTorch, batch {batch}, img/s", rows["pytorch"]["images_per_s"]),
        line(f"ONNX Runtime, batch {batch}, img/s", rows["onnxruntime"]["images_per_s"]),
        line("latency speed-up (PyTorch / ONNX Runtime)", rows["latency_speedup"], ".2f"),
        line("throughput speed-up (ONNX Runtime / PyTorch)", rows["throughput_speedup"], ".2f"),
    ]


def format_table(result: dict[str, Any]) -> str:
    def line(name: str, value: float, fmt: str = ".1f") -> str:
        return f"{name:<52}{value:>14{fmt}}"

    if "plain" not in result:  # only the ONNX rows were asked for (bench --onnx RUN)
        return "\n".join([f"bench on {result['device_name']} ({result['device']})",
                          *format_onnx(result["onnx"], line)])
    plain, eng = result["plain"], result["engine"]
    lines = [
        f"bench on {result['device_name']} ({result['device']}), {result['config']['model']} "
        f"{result['config']['image_size']} px, batch {result['config']['batch_size']}",
        f"{'measure':<52}{'value':>14}",
        line("data prep: hash + decode (parallel), img/s", result["prepare_images_per_s"]),
        line("decoded cache load, s", result["cache_load_seconds"], ".3f"),
        line("plain loop train, img/s", plain["train_images_per_s"]),
    ]
    for row in result.get("ladder", []) + result.get("alternatives", []):
        if "error" in row:
            lines.append(f"{'engine: ' + row['variant']:<52}{'failed':>14}")
            continue
        lines.append(line(f"engine: {row['variant']}, img/s", row["train_images_per_s"]))
        if row["compile"] != "off":
            lines.append(line("  its compilation and warm-up, s", row["warmup_seconds"]))
    lines.append(line(f"engine train{' (compiled)' if eng['compile'] != 'off' else ''}, img/s",
                      eng["train_images_per_s"]))
    if eng["compile"] != "off":
        lines.append(line("  its compilation and warm-up, s", eng["warmup_seconds"]))
    lines.append(line("speed-up (engine / plain)", result["speedup"], ".2f"))
    fastest = result.get("fastest")
    if fastest and fastest["variant"] != "default":
        lines += [f"fastest engine variant: {fastest['variant']}",
                  line("  its speed-up over the plain loop", fastest["speedup"], ".2f")]
    lines += [
        line("plain epoch estimate, s", result["plain_epoch_seconds"]),
        line("engine epoch estimate, s", result["engine_epoch_seconds"]),
        line("engine evaluation, img/s", eng["eval_images_per_s"]),
    ]
    cam = result.get("gradcam", {})
    if "speedup" in cam:
        lines += [line(f"Grad-CAM batched ({cam['batch_size']}), img/s", cam["batched_images_per_s"]),
                  line("Grad-CAM one at a time, img/s", cam["single_images_per_s"]),
                  line("Grad-CAM speed-up", cam["speedup"], ".2f")]
    if "cpu_gpu_max_abs_diff" in cam:
        lines.append(line("Grad-CAM CPU vs GPU, max abs difference", cam["cpu_gpu_max_abs_diff"], ".2e"))
    for row in result.get("shared_gpu", []):
        lines.append(line(f"GPU shared by {row['processes']} trainings, total img/s", row["total_images_per_s"]))
    if result.get("time_to_accuracy"):
        tta = result["time_to_accuracy"]
        lines += [line(f"time to {tta['target_val_acc']} val acc ({tta['preset']}), s", tta["training_seconds"]),
                  line(f"engine val acc after {tta['epochs_run']} epochs", tta["final_val_acc"], ".4f")]
    if result.get("plain_accuracy"):
        acc = result["plain_accuracy"]
        lines += [line(f"plain loop val acc after {acc['epochs']} epochs", acc["val_acc"], ".4f"),
                  line("plain loop full training, s", acc["training_seconds"])]
    if result.get("onnx"):
        lines += format_onnx(result["onnx"], line)
    return "\n".join(lines)
