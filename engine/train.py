"""Training: ``fit(cfg, prepared, run_dir)`` trains a DenseNet and fills a run folder.

Read it top to bottom: seeds, augmentation, model and optimiser, the training step (eager,
or captured once as a CUDA graph), then the epoch loop (train, validate, checkpoint, early
stop). The device, the decoded images and batched prediction come from ``inference``, which
everything that only runs a trained model imports instead of this module. Imports nothing
beyond PyTorch and NumPy, so it runs on a GPU machine's stock PyTorch; scikit-learn only for
``max_train_images`` subsets.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import background, fastpath, preflight, runs, stain
from .cache import cache_bytes_needed, load_mask_cache
from .config import GRAPHING_COMPILE_MODES, Config, ConfigError
from .errors import DamagedFileError, Interrupted, needs_space, resource_error, signal_name
from .inference import (
    Data,
    autocast,
    map_batches,
    norm_stats,
    predict_proba,
    read_checkpoint_file,
    resolve_device,
    switch,
    to_input,
    use_channels_last,
)
from .manifest import has_masks, read_manifest
from .models import create_model
from .progress import progress
from .runs import CACHE, CLASSES

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any], Path], None]


# ----------------------------------------------------------------------------- setup


def seed_everything(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Results stay deterministic; filling every new tensor with NaN (a check for reads of
        # uninitialised memory) took 15% of a DenseNet training step's CPU time (make bench --profile).
        torch.utils.deterministic.fill_uninitialized_memory = False
    else:
        torch.backends.cudnn.benchmark = True


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random state training draws from besides the augmentation generator, for ``last.pt``.

    Dropout draws its masks from torch's global generator (CUDA's on a GPU); NumPy's and Python's are
    kept too, so that any code the step calls resumes exactly. Tensors and plain values only, so the
    checkpoint stays loadable with ``weights_only=True``.
    """
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Put back what ``rng_state`` saved (CUDA's only when resuming on a GPU too)."""
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    np.random.set_state(("MT19937", saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                         saved["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def subsample(indices: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A stratified subset of ``n`` indices (all of them when n is 0 or too large)."""
    if n <= 0 or n >= len(indices):
        return indices
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(indices, train_size=n, stratify=labels[indices], random_state=seed)
    return np.sort(keep)


# ----------------------------------------------------------------------------- augmentation


def augment(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Random flips, rotation, scale and colour jitter, per image, on the batch's device.

    Blood cells have no up or down, so flips and free rotation are label-preserving;
    colour jitter covers differences in staining and illumination between smears.
    """
    if strength <= 0:
        return x
    n, device = x.shape[0], x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=gen, device=device) * (high - low) + low

    flip = torch.rand(n, generator=gen, device=device) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    angle = uniform(-math.pi, math.pi) * min(1.0, strength)
    scale = 1 + uniform(-0.1, 0.1) * strength
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                         torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # Colour jitter in normalised space: brightness shifts, contrast and saturation scale.
    brightness = uniform(-0.2, 0.2).mul_(strength).view(n, 1, 1, 1)
    contrast = (1 + uniform(-0.2, 0.2) * strength).view(n, 1, 1, 1)
    saturation = (1 + uniform(-0.2, 0.2) * strength).view(n, 1, 1, 1)
    gray = x.mean(1, keepdim=True)
    x = gray + (x - gray) * saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean + brightness


# ----------------------------------------------------------------------------- one training step


class TrainStep:
    """Forward, loss, backward and optimiser update for one batch; returns (loss, logits).

    The returned tensors are only valid until the next call (the graphed step reuses them).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                 device: torch.device, use_amp: bool, fixed_batch: bool = False) -> None:
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.device, self.use_amp = device, use_amp
        self.fixed_batch = fixed_batch  # True: every batch has the same size (a short last one is dropped)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.use_amp, cache=False):
            logits = self.model(x)
            loss = self.criterion(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()


class GraphedTrainStep(TrainStep):
    """The same step captured once as a CUDA graph, then replayed for every batch.

    DenseNet-121 is a long chain of small kernels: launched one by one from Python, the GPU
    waits on the CPU at small batches. A replay launches the whole step at once (on an H200:
    27% faster at batch 128, 4% at batch 256, where the GPU is already busy). The first ``warmup`` calls
    run eagerly on a side stream (cuDNN autotuning, optimiser state), as PyTorch's
    whole-network capture recipe asks; they are real training steps. Batches must all have
    the same size, and the learning rate lives in device tensors the scheduler's value is
    copied into before each replay. If capture fails the step stays eager, with a warning.
    """

    warmup = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fixed_batch = True
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.failed:
            return super().__call__(x, y)
        if self.graph is None and self.calls < self.warmup:
            self.calls += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = super().__call__(x, y)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        if self.graph is None:
            try:
                self._capture(x, y)
            except Exception as exc:  # any capture failure falls back to eager
                log.warning("CUDA graph capture failed (%s); training eagerly", exc)
                self.failed = True
                self.optimizer.zero_grad(set_to_none=True)
                return super().__call__(x, y)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        for lr, group in zip(self.lrs, self.optimizer.param_groups, strict=True):
            lr.fill_(group["lr"])
        self.graph.replay()
        return self.static_loss, self.static_logits

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.static_x, self.static_y = x.clone(), y.clone()
        groups = self.optimizer.param_groups
        # The graph reads the learning rate from these tensors; the groups keep plain floats
        # for the scheduler and the checkpoint.
        floats = [group["lr"] for group in groups]
        self.lrs = [torch.tensor(float(lr), device=self.device) for lr in floats]
        for group, lr in zip(groups, self.lrs, strict=True):
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.static_loss, self.static_logits = super().__call__(self.static_x, self.static_y)
        finally:
            for group, lr in zip(groups, floats, strict=True):
                group["lr"] = lr
        self.graph = graph


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                    device: torch.device, cfg: Config) -> TrainStep:
    """The eager step, or the CUDA-graph step where ``cfg.cuda_graphs`` resolves on.

    A compiled model gets fixed batches too: a short last batch would be compiled again.
    ``cfg`` is resolved (``fit`` asks ``engine.fastpath``): an unresolved ``compile=auto`` counts as off.
    """
    kind = GraphedTrainStep if use_cuda_graphs(cfg, device) else TrainStep
    return kind(model, optimizer, criterion, device, switch(cfg.amp, device), fixed_batch=compiles(cfg))


def compiles(cfg: Config) -> bool:
    return cfg.compile not in ("off", "auto")


def use_cuda_graphs(cfg: Config, device: torch.device) -> bool:
    return switch(cfg.cuda_graphs, device) and device.type == "cuda" and cfg.compile not in GRAPHING_COMPILE_MODES


def compile_model(model: nn.Module, cfg: Config) -> nn.Module:
    """The model to train with: itself, or its ``torch.compile`` in ``cfg.compile``'s mode.

    Inductor fuses DenseNet's BatchNorm, ReLU and concatenations, which dominate its GPU time.
    Static shapes: a training batch keeps its size (``make_train_step`` drops a short last
    batch), and validation runs the uncompiled model, so no shape is compiled twice.
    """
    if not compiles(cfg):
        return model
    return torch.compile(model, mode=None if cfg.compile == "default" else cfg.compile, dynamic=False)


def steps_per_epoch(n_images: int, batch_size: int, fixed_batch: bool) -> int:
    """Optimiser steps in one epoch: a short last batch is dropped when batches are fixed,
    and a last batch of one always (BatchNorm cannot train on a single image)."""
    full, rest = divmod(n_images, batch_size)
    return max(1, full + (not fixed_batch and rest >= 2))


# ----------------------------------------------------------------------------- loops


@dataclasses.dataclass
class CellMasks:
    """Leukocyte masks for background augmentation, indexed like ``Data.images``."""

    masks: torch.Tensor  # bool (N, H, W), grown by background.GROW_AT_224 (scaled), on the images' device
    present: torch.Tensor  # bool (N,): the image has a usable mask

    @classmethod
    def load(cls, prepared: Path, size: int, device: torch.device, rows: list[dict] | None = None,
             train: np.ndarray | None = None, view: str = "field") -> CellMasks:
        """The masks of ``prepared`` (``rows``: its manifest as read for the run); ConfigError when none of the
        ``train`` images (indices into the rows; all when None) has one."""
        present = has_masks(rows if rows is not None else read_manifest(prepared))
        if not present[train if train is not None else slice(None)].any():
            raise ConfigError(f"background augmentation needs leukocyte masks on the training images, and {prepared} "
                              "has none: prepare the data with its Segmented/ folder beside Original/ "
                              "(or --masks DIR)")
        masks = torch.from_numpy(np.array(load_mask_cache(prepared, size, view)))
        masks = background.grow(masks, max(1, round(background.GROW_AT_224 * size / 224)))
        return cls(masks.to(device), torch.from_numpy(present).to(device))


def train_one_epoch(
    step: TrainStep, data: Data, indices: np.ndarray, cfg: Config,
    scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device, gen: torch.Generator, *,
    epoch: int, channels_last: bool, cells: CellMasks | None = None, ema: AveragedModel | None = None,
) -> dict[str, float]:
    step.model.train()
    # The shuffle depends only on (seed, epoch), so a resumed run sees the same batches.
    shuffle = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    order = torch.from_numpy(indices)[torch.randperm(len(indices), generator=shuffle)]
    n_steps = steps_per_epoch(len(order), cfg.batch_size, step.fixed_batch)
    # Index tensors go to the device once per epoch, not once per batch (each copy would wait for the GPU).
    image_order, label_order = order.to(data.images.device), order.to(data.labels.device)
    stats = norm_stats(device)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    start = time.perf_counter()
    for i in progress(range(n_steps), desc=f"epoch {epoch}", unit="batch", leave=False):
        batch = slice(i * cfg.batch_size, (i + 1) * cfg.batch_size)
        x = to_input(data.images[image_order[batch]], device, channels_last, stats)
        # Stain mixing first, on the images as they are: a donor's statistics are a whole smear's, as the
        # stain_swapped probe's are; the background replaced next is then drawn in its usual colours.
        x = stain.stain_mix(x, cfg.stain_mix, gen, *stats)
        if cells is not None:
            picked = label_order[batch].to(cells.masks.device)
            x = background.replace_background(x, cells.masks[picked], cells.present[picked], cfg.background,
                                              cfg.background_p, gen, *stats)
        # Stain jitter on the true colours (before augment's colour jitter), greyscale last, so that a
        # grey image is exactly grey, like the greyscale probe's images.
        x = stain.hed_jitter(x, cfg.stain_jitter, gen, *stats)
        x = augment(x, cfg.augment, gen)
        x = stain.random_greyscale(x, cfg.greyscale_p, gen, *stats)
        y = data.labels[label_order[batch]]
        loss, logits = step(x, y)
        scheduler.step()
        if ema is not None:
            ema.update_parameters(step.model)
        total_loss += loss * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "train_loss": float(total_loss) / seen,
        "train_acc": float(correct) / seen,
        "train_seconds": seconds,
        "train_images_per_s": seen / seconds,
    }


def recalibrate_batchnorm(model: nn.Module, data: Data, indices: np.ndarray, cfg: Config, device: torch.device, *,
                          use_amp: bool, channels_last: bool) -> None:
    """Precise BatchNorm (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

    Running statistics are an exponential average over the last few dozen steps, so at a high
    learning rate they describe weights that no longer exist, and validation accuracy swings
    while training accuracy does not. This replaces them by the plain average over batches of
    ``cfg.precise_bn_images`` training images passed through the current weights, unaugmented
    as validation images are. The weights do not change.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    # Whole training-size batches (at least one): BatchNorm cannot take statistics over a batch of one.
    n = min(len(indices), cfg.precise_bn_images)
    n = max(n - n % cfg.batch_size, min(len(indices), cfg.batch_size))
    if not norms or n < 2:
        return
    chosen = np.random.default_rng(cfg.seed).permutation(indices)[:n]  # the same images every epoch
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()  # in place: a captured CUDA graph keeps writing to the same buffers
        m.momentum = None  # None: a cumulative average over the batches below
    model.train()
    try:
        map_batches(model, data.images, chosen, device, batch_size=cfg.batch_size, channels_last=channels_last,
                    use_amp=use_amp)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum


def validate(model: nn.Module, data: Data, cfg: Config, device: torch.device, *,
             use_amp: bool, channels_last: bool) -> dict[str, float]:
    indices = data.split["val"]
    proba = predict_proba(model, data.images, indices, device, batch_size=cfg.eval_batch_size,
                          use_amp=use_amp, channels_last=channels_last)
    return val_scores(data.labels.cpu().numpy()[indices], proba)


def val_scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Log loss, accuracy and macro-F1 of one validation pass.

    Written with NumPy so that training needs nothing beyond PyTorch on a bare GPU machine;
    tests check each against scikit-learn, which ``evaluate`` uses for the full report.
    """
    k = proba.shape[1]
    pred = proba.argmax(1)
    confusion = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion).astype(float)
    denominator = confusion.sum(0) + confusion.sum(1)  # 2 tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(k), where=denominator > 0)
    p_true = np.clip(proba[np.arange(len(y)), y] / proba.sum(1), np.finfo(proba.dtype).eps, 1)
    return {
        "val_loss": float(-np.log(p_true).mean()),
        "val_acc": float((pred == y).mean()),
        "val_macro_f1": float(f1.mean()),
    }


# ----------------------------------------------------------------------------- fit


def make_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    # No weight decay on biases and BatchNorm parameters, as in torchvision's references.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = switch(cfg.fused_optimizer, device) and device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.effective_lr, fused=fused or None,
                             capturable=use_cuda_graphs(cfg, device))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, total_steps: int):
    if cfg.schedule == "onecycle":
        # AdamW keeps fixed betas: one-cycle's momentum cycling is meant for SGD, and a captured
        # CUDA-graph step could not follow it.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.effective_lr, total_steps=total_steps, pct_start=cfg.warmup_frac,
            cycle_momentum=False,
        )
    warmup = max(1, int(total_steps * cfg.warmup_frac))
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup)),
    ], milestones=[warmup])


def make_ema(model: nn.Module, cfg: Config) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics, or None when
    ``cfg.ema_decay`` is 0.

    Late in a from-scratch training, validation accuracy still swings by several points from one epoch
    to the next while the training loss does not: each epoch's weights are one noisy sample. The average
    over the last few hundred steps (Polyak averaging, as timm's ModelEma) is steadier; when it is on, it is
    the model that is validated, kept as best.pt and evaluated.
    """
    if not cfg.ema_decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """scikit-learn's "balanced" weights, n / (classes * count), without importing it."""
    counts = np.bincount(labels, minlength=len(CLASSES))
    if (counts == 0).any():
        raise ConfigError("class_weighted needs every class in the training images")
    return torch.tensor(len(labels) / (len(CLASSES) * counts), dtype=torch.float32)


def fit(
    cfg: Config, prepared: Path, run_dir: Path, *, preset: str | None = None, resume: bool = False,
    on_epoch: EpochCallback | None = None,
) -> Path:
    """Train ``cfg`` on the prepared data into ``run_dir``; return the run folder.

    ``on_epoch(row, run_dir)`` is called after each epoch's checkpoint is written (tuning
    reports to Ray Tune from there). The run folder is locked (``runs.TRAIN_LOCK``) for the
    whole training: while another process trains it, this raises ``runs.RunBusyError`` before
    touching anything. A resumed run must still find the split it was trained on.

    The run folder must be writable and its disk must hold the checkpoints (and the decoded cache, when it
    is not built yet) before the first epoch (engine.preflight). A full disk or a permission refused later
    is an ``engine.errors.ResourceError``, and SIGINT or SIGTERM (under ``engine.errors.interruptible``) an
    ``Interrupted``, each saying which checkpoint is intact and how to resume.
    """
    run_dir = Path(run_dir)
    doing = f"training {run_dir}"
    preflight.require_writable(run_dir, doing)
    with runs.training_lock(run_dir):
        try:
            return _fit(cfg, Path(prepared).resolve(), run_dir, preset=preset, resume=resume, on_epoch=on_epoch)
        except Interrupted as exc:
            raise Interrupted(exc.signum, f"{doing} was stopped by {signal_name(exc.signum)}; "
                              f"{how_to_go_on(run_dir)}") from None
        except OSError as exc:
            raise resource_error(exc, doing, how_to_go_on(run_dir, exc)) from exc


def saved_epoch(run_dir: Path) -> int | None:
    """The epoch ``checkpoints/last.pt`` holds, verified; None when there is none or it cannot be read."""
    try:
        return int(read_checkpoint_file(Path(run_dir) / runs.CHECKPOINTS / runs.LAST_CHECKPOINT)["epoch"])
    except (OSError, DamagedFileError, ValueError, TypeError):
        return None


def how_to_go_on(run_dir: Path, exc: OSError | None = None) -> str:
    """What a stopped training kept and the command that goes on from there, for its one-line message."""
    fix = ""
    if exc is not None and needs_space(exc):
        fix = "free space and "
    elif exc is not None and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable and "
    resume = f"run `python -m engine train --resume {run_dir}`"
    epoch = saved_epoch(run_dir)
    if epoch is not None:
        return f"the last checkpoint, epoch {epoch}, is intact: {fix}{resume}"
    if (Path(run_dir) / runs.CONFIG).is_file():
        return f"no epoch had finished, so there is no checkpoint: {fix}{resume} to start it again"
    return f"nothing was written to the run folder: {fix}run the same command again"


CHECKPOINT_FACTOR = 8  # a run's checkpoints on disk, at their peak, in multiples of its weights' bytes


def checkpoint_bytes(model: nn.Module, ema: bool = False) -> int:
    """The estimate of docs/robustness.md#before-long-work for a run's checkpoints: 8 x the weights' bytes
    (best.pt once, last.pt with AdamW's two moments three times, and a temporary copy of each while the
    previous one is replaced); 10 x with ``ema`` (last.pt holds the trained weights beside the average)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return (CHECKPOINT_FACTOR + 2 * ema) * weights


def _require_view_masks(prepared: Path, cfg: Config) -> None:
    """The cells view is cut around the leukocyte masks: data prepared without any cannot give it."""
    if cfg.view == "cells" and not has_masks(read_manifest(prepared)).any():
        raise ConfigError(f"view=cells cuts each image around its leukocyte masks, and {prepared} has none: prepare "
                          "the data with its Segmented/ folder beside Original/ (or --masks DIR)")


def _check_cache_space(prepared: Path, cfg: Config, doing: str) -> None:
    """Room for the decoded cache (and masks) in ``prepared/cache`` when they still have to be built."""
    need = cache_bytes_needed(prepared, cfg.image_size, view=cfg.view)
    if cfg.background != "keep":
        need += cache_bytes_needed(prepared, cfg.image_size, masks=True, view=cfg.view)
    if need:
        preflight.require_space(prepared / CACHE, need, doing, f"the decoded images at {cfg.image_size} px, "
                                f"{preflight.size_words(need)}")


def _fit(cfg: Config, prepared: Path, run_dir: Path, *, preset: str | None, resume: bool,
         on_epoch: EpochCallback | None) -> Path:
    data_record: dict[str, str] = {}  # the prepared manifest's fingerprint, for config.json
    if resume:
        runs.require_same_split(run_dir)  # more epochs on another split would mix two training sets
    else:
        # Taken before the images are read: a manifest replaced meanwhile makes the run refuse later, not pass.
        try:
            data_record = runs.manifest_record(prepared, cfg.split, cfg.fold)
        except FileNotFoundError:
            read_manifest(prepared)  # raises the DataError that says to run `prepare` first
            raise
    device = resolve_device(cfg.device)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed, device)
    channels_last = use_channels_last(cfg, device)

    doing = f"training {run_dir}"
    _check_cache_space(prepared, cfg, doing)
    _require_view_masks(prepared, cfg)
    data = Data.load(prepared, cfg.image_size, device, switch(cfg.data_on_device, device), split=cfg.split,
                     fold=cfg.fold, view=cfg.view)
    labels_np = data.labels.cpu().numpy()
    train_idx = subsample(data.split["train"], labels_np, cfg.max_train_images, cfg.seed)
    # A resumed run keeps its first decision: compiling changes the steps per epoch (fixed batches).
    env_file = run_dir / runs.ENV
    fast = (fastpath.FastPath.from_env(runs.read_json(env_file)) if resume and env_file.is_file() else None) \
        or fastpath.resolve(cfg, device, cfg.epochs * len(train_idx))
    log.info("bf16 autocast %s (%s); compile %s (%s)", "on" if fast.amp else "off", fast.amp_reason,
             fast.compile, fast.compile_reason)
    use_amp = fast.amp
    step_cfg = dataclasses.replace(cfg, amp="on" if fast.amp else "off", compile=fast.compile)
    cells = CellMasks.load(prepared, cfg.image_size, data.labels.device, data.rows, data.split["train"],
                           view=cfg.view) if cfg.background != "keep" else None

    model = create_model(cfg, len(CLASSES)).to(device)
    need = checkpoint_bytes(model, ema=bool(cfg.ema_decay))
    preflight.require_space(run_dir, need, doing, f"the checkpoints, {preflight.size_words(need)}")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg, device)
    ema = make_ema(model, cfg)
    # The model validated, kept as best.pt and evaluated: the average when there is one.
    evaluated = model if ema is None else ema.module
    weight = class_weights(labels_np[train_idx]).to(device) if cfg.class_weighted else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    step = make_train_step(compile_model(model, step_cfg), optimizer, criterion, device, step_cfg)
    total_steps = cfg.epochs * steps_per_epoch(len(train_idx), cfg.batch_size, step.fixed_batch)
    scheduler = make_scheduler(optimizer, cfg, total_steps)

    history: list[dict[str, Any]] = []
    start_epoch, best_f1, best_epoch = 1, -1.0, 0
    ckpt_dir = run_dir / runs.CHECKPOINTS
    if resume:
        # On the CPU: the generator state must be a CPU tensor; the rest is copied to the device.
        state = read_checkpoint_file(ckpt_dir / runs.LAST_CHECKPOINT, (
            f"nothing was changed, but the run cannot go on from it: {runs.BEST_CHECKPOINT} still serves "
            f"`python -m engine evaluate {run_dir}` if it is intact; train a new run to train further"))
        if ema is None:
            model.load_state_dict(state["model"])
        else:
            model.load_state_dict(state["trained_model"])
            ema.module.load_state_dict(state["model"])
            ema.n_averaged.fill_(state["ema_updates"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        if "rng" in state:
            restore_rng(state["rng"], device)
        else:  # a checkpoint from before the RNG states were saved
            log.warning("%s holds no RNG state: with dropout, the resumed epochs differ from an uninterrupted run",
                        ckpt_dir / runs.LAST_CHECKPOINT)
        # history.csv is written before last.pt, so it may hold one epoch more: drop it.
        history = [row for row in read_history(run_dir) if int(row["epoch"]) <= state["epoch"]]
        start_epoch, best_f1, best_epoch = state["epoch"] + 1, state["best_val_macro_f1"], state["best_epoch"]
        log.info("resuming %s at epoch %d", run_dir, start_epoch)
    else:
        runs.write_json(run_dir / runs.CONFIG, {**cfg.to_dict(), "data_dir": str(prepared), "preset": preset,
                                                **data_record})
        env = runs.environment(str(device), cfg.seed)
        env.update({**fast.to_env(), "channels_last": channels_last,
                    "cuda_graphs": isinstance(step, GraphedTrainStep),
                    "data_on_device": data.images.device.type == "cuda",
                    "train_images": len(train_idx), "val_images": len(data.split["val"])})
        runs.write_json(run_dir / runs.ENV, env)

    status = runs.STATUS_COMPLETE
    for epoch in range(start_epoch, cfg.epochs + 1):
        row: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        row.update(train_one_epoch(step, data, train_idx, cfg, scheduler, device, gen,
                                   epoch=epoch, channels_last=channels_last, cells=cells, ema=ema))
        if epoch == start_epoch and fast.compile == "default":
            fastpath.note_compiled(cfg, device, use_amp, row["train_seconds"])
        if cfg.precise_bn_images:
            recalibrate_batchnorm(evaluated, data, train_idx, cfg, device, use_amp=use_amp,
                                  channels_last=channels_last)
        # The uncompiled model (same weights): compiling an eval-mode graph would cost minutes for seconds of work.
        row.update(validate(evaluated, data, cfg, device, use_amp=use_amp, channels_last=channels_last))
        row["epoch_seconds"] = row.pop("train_seconds")
        history.append({k: row[k] for k in runs.HISTORY_COLUMNS})
        runs.write_csv(run_dir / runs.HISTORY, runs.HISTORY_COLUMNS, history)

        improved = row["val_macro_f1"] > best_f1
        if improved:
            best_f1, best_epoch = row["val_macro_f1"], epoch
        weights = cpu_state(evaluated)
        summary = {"epoch": epoch, "val_macro_f1": row["val_macro_f1"], "config": cfg.to_dict()}
        if improved:
            runs.atomic_torch_save({"model": weights, **summary}, ckpt_dir / runs.BEST_CHECKPOINT)
        # "model" is what this epoch evaluates, in both files; with an average, last.pt also keeps the
        # trained weights and the number of averaged steps, which resuming needs.
        averaged = {} if ema is None else {"trained_model": cpu_state(model), "ema_updates": int(ema.n_averaged)}
        runs.atomic_torch_save({
            "model": weights, **summary, **averaged,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "generator": gen.get_state(), "rng": rng_state(device),
            "best_val_macro_f1": best_f1, "best_epoch": best_epoch,
        }, ckpt_dir / runs.LAST_CHECKPOINT)
        log.info("epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  val_macro_f1 %.4f  %.0f img/s",
                 epoch, cfg.epochs, row["train_loss"], row["train_acc"], row["val_loss"],
                 row["val_acc"], row["val_macro_f1"], row["train_images_per_s"])
        if on_epoch is not None:
            on_epoch(dict(row), run_dir)
        if (cfg.early_stop_patience and epoch - best_epoch >= cfg.early_stop_patience
                and epoch >= cfg.min_epochs and epoch < cfg.epochs):
            log.info("early stop: no better val macro-F1 for %d epochs", cfg.early_stop_patience)
            status = runs.STATUS_EARLY_STOPPED
            break
    runs.mark_complete(run_dir, status=status, epochs=len(history), best_epoch=best_epoch,
                       best_val_macro_f1=best_f1)
    return run_dir


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """history.csv's rows; DamagedFileError naming it when they are not numbers under its columns."""
    path = Path(run_dir) / runs.HISTORY
    with path.open(newline="") as handle:
        try:
            return [{k: float(v) if k != "epoch" else int(v) for k, v in row.items()}
                    for row in csv.DictReader(handle)]
        except (ValueError, TypeError, csv.Error) as exc:
            raise DamagedFileError(path, f"damaged: not the table of epochs it should be ({exc})",
                                   runs.remake_hint(path)) from None
