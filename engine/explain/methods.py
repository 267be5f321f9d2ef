"""The CAM methods by name, and batched map computation over pytorch-grad-cam.

Each method is one ``Method`` entry in the table ``METHODS``: its CLI name, title, the pytorch-grad-cam
class, whether it costs one forward pass per channel, and how its class is built where that differs.
``compute_maps`` runs any of them over a batch of images for given target classes; ``cam_throughput``
times it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..inference import to_input
from ..models import CAM_LAYERS, get_layer
from ..progress import progress

log = logging.getLogger(__name__)


def _plain(cam_class: type, model: nn.Module, layers: list[nn.Module], batch_size: int) -> Any:
    return cam_class(model, layers)


def _fresh_ablation_layer(cam_class: type, model: nn.Module, layers: list[nn.Module], batch_size: int) -> Any:
    from pytorch_grad_cam import AblationLayer

    # A new AblationLayer each time: the library's default argument is one shared instance that keeps the
    # state of the last ablation.
    return cam_class(model, layers, ablation_layer=AblationLayer(), batch_size=batch_size)


def _batched(cam_class: type, model: nn.Module, layers: list[nn.Module], batch_size: int) -> Any:
    cam = cam_class(model, layers)
    cam.batch_size = batch_size  # masked copies scored per forward pass
    return cam


@dataclasses.dataclass(frozen=True)
class Method:
    """One CAM method: how to build it, and what it costs."""

    name: str  # the CLI name, and the folder its maps are written to (cams/<name>/...)
    title: str  # as figures and pages show it
    cam_class: type | str  # the pytorch-grad-cam class, or its name in pytorch_grad_cam (resolved on use)
    expensive: bool = False  # one forward pass per channel of the target layer
    uses_gradients: bool = True  # as the class passes to BaseCAM.__init__
    construct: Callable[[type, nn.Module, list[nn.Module], int], Any] = _plain  # (class, model, layers, batch)

    def build(self, model: nn.Module, layers: list[nn.Module], batch_size: int) -> Any:
        """A fresh pytorch-grad-cam object with its hooks registered on ``layers``."""
        return self.construct(_resolved(self.cam_class), model, layers, batch_size)


def _resolved(cam_class: type | str) -> type:
    if isinstance(cam_class, str):
        import pytorch_grad_cam

        return getattr(pytorch_grad_cam, cam_class)
    return cam_class


# The methods ``explain`` offers, in the order the CLI lists them. A new method is one entry here (with a
# ``construct`` function when its class needs more than (model, layers)); the names, the cheap methods and
# the CLI's choices follow from this table.
METHODS = (
    Method("gradcam", "Grad-CAM", "GradCAM"),
    Method("gradcam++", "Grad-CAM++", "GradCAMPlusPlus"),
    Method("xgradcam", "XGrad-CAM", "XGradCAM"),
    Method("hirescam", "HiResCAM", "HiResCAM"),
    Method("layercam", "LayerCAM", "LayerCAM"),
    Method("eigencam", "Eigen-CAM", "EigenCAM", uses_gradients=False),
    Method("eigengradcam", "Eigen-Grad-CAM", "EigenGradCAM"),
    Method("ablationcam", "Ablation-CAM", "AblationCAM", expensive=True, uses_gradients=False,
           construct=_fresh_ablation_layer),
    Method("scorecam", "Score-CAM", "ScoreCAM", expensive=True, uses_gradients=False, construct=_batched),
)
METHOD_NAMES = tuple(m.name for m in METHODS)
CHEAP_METHODS = tuple(m.name for m in METHODS if not m.expensive)


def get_method(method: str | Method) -> Method:
    """A registered method by CLI name (a ``Method`` passes through, for custom methods)."""
    if isinstance(method, Method):
        found = method
    else:
        found = next((m for m in METHODS if m.name == method), None)
        if found is None:
            raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHOD_NAMES)}")
    return dataclasses.replace(found, cam_class=_resolved(found.cam_class))


def check_layer(name: str) -> str:
    if name not in CAM_LAYERS:
        raise ValueError(f"unknown layer {name!r}; choose one of {', '.join(CAM_LAYERS)}")
    return name


def _cut_graph_at(output: torch.Tensor) -> torch.Tensor:
    # Forward hook: the target layer's output becomes a leaf that requires grad, so the
    # backward pass stops there instead of running down to the first convolution.
    return output.detach().requires_grad_(True)


@contextlib.contextmanager
def open_cam(model: nn.Module, method: str | Method, layer: str | Sequence[str],
             batch_size: int = 32) -> Iterator[Any]:
    """A CAM object on ``model``'s named layer(s); hooks and frozen weights undone on exit.

    The weights are frozen meanwhile (no weight gradients are needed), and for gradient
    methods the graph is cut at the target layer: the maps are the same, the backward pass
    is a fraction of a training step. Hooks are released in ``finally`` rather than by the
    CAM's own ``__exit__``, which swallows IndexError.
    """
    spec = get_method(method)
    names = [layer] if isinstance(layer, str) else list(layer)
    modules = [get_layer(model, check_layer(n)) for n in names]
    if spec.expensive:
        log.warning("%s runs one forward pass per channel of %s (minutes per image on a CPU at 224 px)",
                    spec.title, "/".join(names))
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    # A cut is only safe with one target layer: cutting at the lower of two would
    # detach the upper one from the gradient of the lower.
    cut = [m.register_forward_hook(lambda _m, _i, out: _cut_graph_at(out))
           for m in modules] if spec.uses_gradients and len(modules) == 1 else []
    cam = spec.build(model, modules, batch_size)  # registered after the cut: sees the leaf
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()
        for handle in cut:
            handle.remove()
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def class_targets(classes: Sequence[int]) -> list[Any]:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(int(c)) for c in classes]


def compute_maps(
    model: nn.Module, inputs: torch.Tensor, method: str | Method, layer: str | Sequence[str],
    target_classes: Sequence[int] | np.ndarray | None = None, *, batch_size: int = 32,
    desc: str | None = None,
) -> np.ndarray:
    """Maps (N, H, W) float32 in [0, 1] for normalised NCHW ``inputs``, one per image.

    ``target_classes`` is the class each map explains (None: the predicted class). Images
    go through in batches: the model is in eval mode, so a batch gives the same maps as
    one image at a time, only faster.
    """
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be N x C x H x W, got shape {tuple(inputs.shape)}")
    n = inputs.shape[0]
    if target_classes is not None and len(target_classes) != n:
        raise ValueError(f"{len(target_classes)} target classes for {n} images")
    device = next(model.parameters()).device
    out = np.empty((n, *inputs.shape[-2:]), dtype=np.float32)
    starts = range(0, n, batch_size)
    with open_cam(model, method, layer, batch_size) as cam, torch.enable_grad():
        for start in progress(starts, desc=desc, unit="batch", leave=False, disable=desc is None):
            x = inputs[start:start + batch_size].to(device)
            targets = None if target_classes is None else class_targets(target_classes[start:start + batch_size])
            out[start:start + len(x)] = cam(input_tensor=x, targets=targets)
    return out


def cam_throughput(model: nn.Module, images: torch.Tensor, method: str, layer: str, batch_size: int,
                   device: str | torch.device) -> float:
    """Images per second of ``compute_maps`` (predicted-class targets) at ``batch_size``.

    ``images`` is uint8 NHWC (as in ``Data.images``) or an already normalised float NCHW
    batch. One batch of each size the timed pass uses is run first, untimed, so one-off
    setup does not count (with cuDNN autotuning on, each new batch shape is tuned on first use).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    x = to_input(images, device, channels_last=False) if images.dtype == torch.uint8 else images.to(device)
    for size in {min(batch_size, len(x)), len(x) % batch_size} - {0}:
        compute_maps(model, x[:size], method, layer, batch_size=batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    compute_maps(model, x, method, layer, batch_size=batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(x) / (time.perf_counter() - start)
