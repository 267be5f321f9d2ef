"""One typed, frozen training config: a preset plus ``--set key=value`` overrides.

Presets are JSON files in ``engine/presets/`` (JSON, not YAML, so that the training
path runs on a machine that has nothing but PyTorch installed).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

from .errors import ConfigError  # defined with the other errors the CLI reports; imported from here too

PRESET_DIR = Path(__file__).parent / "presets"

MODEL_NAMES = ("densenet121", "densenet169", "densenet201", "densenet-tiny")
SCHEDULES = ("onecycle", "cosine")
DEVICES = ("auto", "cpu", "cuda")
SWITCHES = ("auto", "on", "off")
BACKGROUNDS = ("keep", "random", "black")  # engine.background.MODES, kept here so configs load without torch
# Which images a run trains, validates and tests on (engine.runs.effective_split): "image", the prepared
# manifest's split; "smear", whole smear groups held out: test = smear fold `fold`, val = the next fold.
SPLIT_MODES = ("image", "smear")
# What the network is shown of each image (engine.cells): the whole field resized, or a mosaic of its leukocytes
# at source resolution (needs data prepared with masks).
VIEWS = ("field", "cells")
CELLS_GRID = 2  # the cells view's mosaic: CELLS_GRID x CELLS_GRID windows
COMPILE_MODES = ("auto", "off", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
# These compile modes capture CUDA graphs of their own, so the engine's hand-captured step stays off.
GRAPHING_COMPILE_MODES = ("reduce-overhead", "max-autotune")




@dataclass(frozen=True)
class Config:
    # model
    model: str = "densenet121"
    weights: str = "none"  # "none", "imagenet" (from the local torch cache only) or a file path
    dropout: float = 0.0
    # data
    image_size: int = 224
    view: str = "field"  # VIEWS: the field, or the cells view (engine.cells)
    max_train_images: int = 0  # 0 = all; a stratified subset for quick experiments
    split: str = "image"  # SPLIT_MODES: the manifest's image split, or whole smear folds held out
    fold: int = 0  # split=smear: the smear fold tested on (the next one validates); 0..K-1 of the manifest's K
    # optimisation
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    lr_base_batch: int = 0  # >0: scale lr linearly by batch_size / lr_base_batch
    weight_decay: float = 0.05
    schedule: str = "onecycle"
    warmup_frac: float = 0.15
    label_smoothing: float = 0.1
    class_weighted: bool = False
    augment: float = 1.0  # 0 = none; 1 = flips, free rotation, scale and colour jitter
    # Leukocyte-mask background augmentation (engine.background): keep, random or black, on a
    # background_p share of training images; needs data prepared with masks.
    background: str = "keep"
    background_p: float = 0.8
    # Stain and colour augmentation (engine.stain), on the device after the background: HED stain
    # jitter of this strength (each stain scaled by 1 +/- s and shifted by +/- s OD, per image; 0 = off)
    # and greyscale on a greyscale_p share of training images (0 = off).
    stain_jitter: float = 0.0
    greyscale_p: float = 0.0
    # Stain mixing (engine.stain.stain_mix): a stain_mix share of training images recoloured to another
    # training image's Lab statistics, before the background is replaced (0 = off).
    stain_mix: float = 0.0
    early_stop_patience: int = 10  # epochs without a better val macro-F1; 0 = never stop early
    precise_bn_images: int = 0  # >0: recompute BatchNorm statistics on this many train images before validating
    # >0: validate, keep and evaluate an exponential moving average of the weights, updated after every step
    # with this decay (0.995: about the last 200 steps); 0 = off, the weights as trained
    ema_decay: float = 0.0
    min_epochs: int = 1
    # hardware
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # bf16 autocast; auto = on for CUDA and CPUs with native bf16 (engine.fastpath)
    channels_last: str = "auto"  # auto = on (CUDA and CPU: both are faster with NHWC)
    data_on_device: str = "auto"  # keep the decoded uint8 cache on the GPU when it fits
    fused_optimizer: str = "auto"  # fused AdamW kernel; auto = on for CUDA
    cuda_graphs: str = "auto"  # capture the training step once, replay it per batch; auto = on for CUDA
    # torch.compile of the model: auto (on a GPU when the training repays it, engine.fastpath), off, or a
    # mode (default: Inductor fuses BatchNorm, ReLU, cat)
    compile: str = "auto"
    eval_batch_size: int = 128
    num_threads: int = 0  # CPU threads for torch; 0 = torch's default

    def __post_init__(self) -> None:
        checks = [
            (self.model in MODEL_NAMES, f"model must be one of {MODEL_NAMES}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.device in DEVICES, f"device must be one of {DEVICES}"),
            (self.compile in COMPILE_MODES, f"compile must be one of {COMPILE_MODES}"),
            (self.image_size >= 32, "image_size must be at least 32"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 < self.warmup_frac < 1, "warmup_frac must be in (0, 1)"),
            (0 <= self.augment <= 2, "augment must be in [0, 2]"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1) (0 = off)"),
            (self.precise_bn_images >= 0, "precise_bn_images must be 0 (off) or a number of images"),
            (self.background in BACKGROUNDS, f"background must be one of {BACKGROUNDS}"),
            (0 <= self.background_p <= 1, "background_p must be in [0, 1]"),
            (0 <= self.stain_jitter < 1, "stain_jitter must be in [0, 1) (0 = off)"),
            (0 <= self.greyscale_p <= 1, "greyscale_p must be in [0, 1]"),
            (0 <= self.stain_mix <= 1, "stain_mix must be in [0, 1] (0 = off)"),
            (self.split in SPLIT_MODES, f"split must be one of {SPLIT_MODES}"),
            (self.view in VIEWS, f"view must be one of {VIEWS}"),
            (self.view == "field" or self.image_size % CELLS_GRID == 0,
             f"view=cells needs an image_size divisible by {CELLS_GRID} (a {CELLS_GRID} x {CELLS_GRID} mosaic)"),
            (self.fold >= 0, "fold must be 0 or more (a smear fold of the prepared manifest)"),
            # A fold that does nothing would make trials of a fold sweep silent copies of one another.
            (self.fold == 0 or self.split == "smear", "fold applies only with split=smear"),
        ]
        checks.append((not (self.cuda_graphs == "on" and self.compile in GRAPHING_COMPILE_MODES),
                       f"cuda_graphs=on and compile={self.compile} are exclusive (that mode captures its own graphs)"))
        for name in ("amp", "channels_last", "data_on_device", "fused_optimizer", "cuda_graphs"):
            checks.append((getattr(self, name) in SWITCHES, f"{name} must be one of {SWITCHES}"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def effective_lr(self) -> float:
        if self.lr_base_batch > 0:
            return self.lr * self.batch_size / self.lr_base_batch
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_types() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Turn a JSON value or a command-line string into the field's type, or fail clearly."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def _read_preset(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name_or_path!r}; available: {', '.join(list_presets())}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a JSON object")
    data.pop("description", None)
    return data


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def build_config(
    preset: str | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Resolve a config: dataclass defaults, then the preset, then the overrides."""
    values: dict[str, Any] = _read_preset(preset) if preset else {}
    values.update(overrides or {})
    types = _field_types()
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(
            f"unknown config key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(types))}"
        )
    return Config(**{k: _coerce(k, v, types[k]) for k, v in values.items()})


def config_from_dict(values: dict[str, Any]) -> Config:
    """Load a saved, fully resolved config (``config.json`` of a run)."""
    return build_config(None, values)
