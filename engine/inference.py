"""Running a trained model: the device, the decoded images, batches in, outputs out, and checkpoints.

Everything that reads a run's model goes through here (evaluate, predict, ood, explain,
bench and the dashboard), and so does training's own validation. Training itself lives in
``train.py``, which only training code imports. Like training, this needs nothing beyond
PyTorch, torchvision and NumPy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import runs
from .cache import load_cache
from .config import Config, ConfigError, config_from_dict
from .errors import DamagedFileError
from .manifest import read_manifest
from .models import load_trained_model
from .progress import progress
from .runs import CLASSES

# ImageNet's statistics: the backbones were pretrained on images normalised by them.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible")
    return torch.device(name)


def switch(value: str, device: torch.device, on_cpu: bool = False) -> bool:
    """Resolve an auto/on/off switch: auto means on for CUDA, and on CPU too where ``on_cpu``."""
    return value == "on" or (value == "auto" and (device.type == "cuda" or on_cpu))


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    # On CPU too: oneDNN's NHWC convolutions trained DenseNet-121 25-30% faster on a 2-core CPU (make bench).
    return switch(cfg.channels_last, device, on_cpu=True)


def autocast(device: torch.device, enabled: bool, cache: bool = True) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    # CUDA graph capture needs the weight-cast cache off; a training step uses each weight once anyway.
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)


# ----------------------------------------------------------------------------- images


@dataclasses.dataclass
class Data:
    """The decoded images of one manifest, with labels and split indices."""

    images: torch.Tensor  # uint8 NHWC, on the device when it fits
    labels: torch.Tensor  # int64, same device
    rows: list[dict[str, Any]]
    split: dict[str, np.ndarray]  # split name -> indices into images

    @classmethod
    def load(cls, prepared: Path, size: int, device: torch.device, on_device: bool, *, split: str = "image",
             fold: int = 0, view: str = "field") -> Data:
        """The prepared images at ``size`` px in ``view`` (engine.cells), split as a run with ``split`` and ``fold``
        (its Config's) is: ``engine.manifest.read_manifest`` applies the one split rule."""
        rows = read_manifest(prepared, split, fold)
        array = np.array(load_cache(prepared, size, view))  # one copy out of the memory map
        images = torch.from_numpy(array)
        labels = torch.tensor([CLASSES.index(r["class"]) for r in rows])
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            fits = on_device and images.numel() < free * 0.5
            images = images.to(device) if fits else images.pin_memory()
        split = {s: np.array([i for i, r in enumerate(rows) if r["split"] == s], dtype=np.int64)
                 for s in ("train", "val", "test")}
        return cls(images, labels.to(device), rows, split)


def norm_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as (1, 3, 1, 1) tensors on ``device``, for ``to_input``."""
    return (torch.tensor(MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(STD, device=device).view(1, 3, 1, 1))


def to_input(batch: torch.Tensor, device: torch.device, channels_last: bool,
             stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW on ``device``.

    Loops pass ``stats`` made once by ``norm_stats``: building them here copies from host
    memory, which waits for the GPU to finish all queued work, every batch.
    """
    mean, std = stats or norm_stats(device)
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


# ----------------------------------------------------------------------------- batches


@torch.no_grad()
def map_batches(
    fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, indices: np.ndarray, device: torch.device, *,
    batch_size: int, channels_last: bool, use_amp: bool = False, desc: str | None = None,
) -> np.ndarray:
    """``fn`` over the normalised ``images[indices]`` in batches; its outputs stacked as float64 rows."""
    stats = norm_stats(device)
    index = torch.from_numpy(np.asarray(indices))
    chunks = [index[i:i + batch_size] for i in range(0, len(index), batch_size)]
    out = []
    for chunk in progress(chunks, desc=desc, unit="batch", leave=False, disable=desc is None):
        x = to_input(images[chunk.to(images.device)], device, channels_last, stats)
        with autocast(device, use_amp):
            out.append(fn(x).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def predict_proba(
    model: nn.Module, images: torch.Tensor, indices: np.ndarray, device: torch.device, *,
    batch_size: int, use_amp: bool, channels_last: bool, desc: str | None = None,
) -> np.ndarray:
    """Softmax probabilities (float64, N x classes) for ``images[indices]``."""
    model.eval()
    logits = map_batches(model, images, indices, device, batch_size=batch_size, channels_last=channels_last,
                         use_amp=use_amp, desc=desc)
    return torch.softmax(torch.from_numpy(logits.reshape(-1, len(CLASSES))), 1).numpy()


# ----------------------------------------------------------------------------- checkpoints


CHECKPOINT_KEYS = ("model", "epoch", "config")  # what every checkpoint of ours holds (runs.py)


def damaged_checkpoint_advice(which: str) -> str:
    """What is still safe when a run's ``which`` checkpoint is damaged, and how to go on."""
    other = "last" if which == "best" else "best"
    return (f"nothing was changed; the run's other files are untouched: use --checkpoint {other} if "
            f"checkpoints/{other}.pt is intact, or train the run again")


def parse_checkpoint(data: bytes, path: Path, next_step: str = "") -> dict[str, Any]:
    """A checkpoint's bytes as its dict, loaded with ``weights_only=True``; DamagedFileError naming ``path``
    when they are not one of our checkpoints (truncated, overwritten, another kind of file)."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged zip or pickle makes torch raise nearly anything (RuntimeError, EOFError ...)
        raise DamagedFileError(path, runs.CHECKPOINT_DAMAGED, next_step) from exc
    if not isinstance(state, dict) or any(key not in state for key in CHECKPOINT_KEYS):
        raise DamagedFileError(path, f"{runs.CHECKPOINT_DAMAGED} (it lacks {', '.join(CHECKPOINT_KEYS)})",
                               next_step)
    return state


def read_checkpoint_file(path: Path, next_step: str = "") -> dict[str, Any]:
    """A checkpoint file, verified (its sha256 sidecar where it has one, else by loading it)."""
    path = Path(path)
    return parse_checkpoint(runs.verified_bytes(path, next_step), path, next_step)


def read_checkpoint(run_dir: Path, which: str = "best") -> dict[str, Any]:
    """A run's saved checkpoint (``model`` weights, ``config``, ``epoch``, ...) on the CPU, read with
    ``weights_only=True`` and verified: DamagedFileError names a damaged one."""
    run_dir = Path(run_dir)
    path = run_dir / runs.CHECKPOINTS / f"{which}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a trained run folder?")
    return read_checkpoint_file(path, damaged_checkpoint_advice(which))


def model_from_checkpoint(state: dict[str, Any], device: str | torch.device = "cpu") -> tuple[Config, nn.Module]:
    """The config and trained model of a checkpoint read by ``read_checkpoint``."""
    cfg = config_from_dict(state["config"])
    return cfg, load_trained_model(cfg, state["model"], len(CLASSES)).to(device)


def load_checkpoint(run_dir: Path, which: str = "best", device: str | torch.device = "cpu") -> tuple[Config, nn.Module]:
    """The config and trained model of a run, loaded with ``weights_only=True``."""
    return model_from_checkpoint(read_checkpoint(run_dir, which), device)
