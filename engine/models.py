"""DenseNet classifiers with a 4-class head: ``create_model(cfg)``."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import DenseNet

from .config import Config
from .errors import WeightsError  # defined with the other errors the CLI reports; imported from here too

log = logging.getLogger(__name__)

# torchvision's architectures; "densenet-tiny" keeps the same layer names for tests.
ARCHITECTURES: dict[str, dict] = {
    "densenet121": dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64),
    "densenet169": dict(growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64),
    "densenet201": dict(growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64),
    "densenet-tiny": dict(growth_rate=8, block_config=(1, 2, 2, 1), num_init_features=16, bn_size=2),
}
IMAGENET_WEIGHTS = {
    "densenet121": "DenseNet121_Weights",
    "densenet169": "DenseNet169_Weights",
    "densenet201": "DenseNet201_Weights",
}
CAM_LAYERS = ("denseblock1", "denseblock2", "denseblock3", "denseblock4", "norm5")




class DenseNetClassifier(DenseNet):
    """torchvision's DenseNet with an out-of-place ReLU after ``features``.

    torchvision applies ``F.relu(features, inplace=True)`` to the output of ``norm5``.
    A forward hook that keeps that output (as Grad-CAM does) then sees it overwritten on
    CPU, where the tensor is shared, but not on CUDA with channels_last copies: CPU and GPU
    maps differ. Computing the ReLU out of place makes the stored activation the true one
    everywhere; the weights and the outputs are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features the classifier reads (N x channels), for the out-of-distribution check."""
        out = F.relu(self.features(x))
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return torch.flatten(out, 1)


def weight_bytes(name: str, num_classes: int = 4) -> int:
    """Bytes of an architecture's weights and buffers in float32, without allocating them (the meta device):
    what disk checks estimate checkpoints from (engine.preflight)."""
    with torch.device("meta"):
        model = DenseNetClassifier(**ARCHITECTURES[name], num_classes=num_classes)
    return sum(t.numel() * 4 for t in model.state_dict().values())


def _load_imagenet_state(name: str) -> dict[str, torch.Tensor]:
    """Load torchvision's ImageNet weights from the local cache only; never download."""
    from torchvision import models

    weights = getattr(models, IMAGENET_WEIGHTS[name]).IMAGENET1K_V1
    filename = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        raise WeightsError(
            f"ImageNet weights for {name} are not in the torch cache ({cached}). This machine "
            f"cannot download them: copy {filename} there, pass weights=/path/to/file, or use "
            "weights=none to train from scratch."
        )
    state = torch.load(cached, map_location="cpu", weights_only=True)
    # Old torchvision checkpoints name layers "denselayer1.norm.1"; current code says "norm1".
    return {k.replace(".norm.", ".norm").replace(".relu.", ".relu").replace(".conv.", ".conv"): v
            for k, v in state.items()}


def create_model(cfg: Config, num_classes: int = 4) -> nn.Module:
    """Build the configured DenseNet and load its starting weights."""
    arch = dict(ARCHITECTURES[cfg.model])
    model = DenseNetClassifier(num_classes=1000, drop_rate=0.0, **arch)
    if cfg.weights == "imagenet":
        if cfg.model not in IMAGENET_WEIGHTS:
            raise WeightsError(f"there are no ImageNet weights for {cfg.model}")
        model.load_state_dict(_load_imagenet_state(cfg.model))
    elif cfg.weights not in ("none", ""):
        path = Path(cfg.weights)
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
        # A 4-class checkpoint of ours carries its head ("classifier.weight", or "classifier.1.weight"
        # behind dropout); a 1000-class one does not fit it.
        head = {k.rsplit(".", 1)[1]: v for k, v in state.items() if k.startswith("classifier.")}
        body = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        missing, unexpected = model.load_state_dict(body, strict=False)
        if unexpected or [k for k in missing if not k.startswith("classifier.")]:
            raise WeightsError(f"{path}: does not fit {cfg.model} (unexpected {unexpected[:3]})")
        if "weight" in head and head["weight"].shape[0] == num_classes:
            model.classifier = nn.Linear(model.classifier.in_features, num_classes)
            model.classifier.load_state_dict(head)
    if model.classifier.out_features != num_classes:
        model.classifier = nn.Linear(model.classifier.in_features, num_classes)
    if cfg.dropout > 0:
        model.classifier = nn.Sequential(nn.Dropout(cfg.dropout), model.classifier)
    return model


def load_trained_model(cfg: Config, state: dict[str, torch.Tensor], num_classes: int = 4) -> nn.Module:
    """A model with the weights of one of our checkpoints, in eval mode."""
    model = create_model(dataclasses.replace(cfg, weights="none"), num_classes)
    model.load_state_dict(state)
    return model.eval()


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """A target layer by its short name: ``denseblock1`` ... ``denseblock4`` or ``norm5``."""
    if name not in CAM_LAYERS:
        raise ValueError(f"unknown layer {name!r}; choose one of {', '.join(CAM_LAYERS)}")
    return getattr(model.features, name)
