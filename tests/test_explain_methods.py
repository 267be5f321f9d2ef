"""CAM methods on a tiny DenseNet: shapes, ranges, layers, errors, batching, the norm5 trap."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from engine.config import build_config
from engine.explain.methods import (
    CHEAP_METHODS,
    METHOD_NAMES,
    cam_throughput,
    compute_maps,
    get_method,
    open_cam,
)
from engine.models import create_model, get_layer


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(build_config("tiny")).eval()


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", CHEAP_METHODS)
def test_each_cheap_method_gives_maps_of_the_input_size_in_unit_range(tiny_model, inputs, method):
    maps = compute_maps(tiny_model, inputs, method, "norm5", [0, 1, 2, 3], batch_size=2)
    assert maps.shape == (4, 64, 64)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert maps.reshape(4, -1).max(1).max() > 0.99  # scaled per image to a maximum of 1


def test_the_layer_choice_changes_the_map(tiny_model, inputs):
    deep = compute_maps(tiny_model, inputs, "gradcam", "norm5", [1] * 4)
    shallow = compute_maps(tiny_model, inputs, "gradcam", "denseblock2", [1] * 4)
    assert np.abs(deep - shallow).mean() > 0.05


def test_the_target_class_changes_the_map(tiny_model, inputs):
    a = compute_maps(tiny_model, inputs, "gradcam", "norm5", [0] * 4)
    b = compute_maps(tiny_model, inputs, "gradcam", "norm5", [3] * 4)
    assert not np.allclose(a, b, atol=1e-3)


def test_unknown_method_or_layer_is_a_clear_error(tiny_model, inputs):
    with pytest.raises(ValueError, match=r"unknown CAM method 'gradcamm'.*gradcam, gradcam\+\+"):
        compute_maps(tiny_model, inputs, "gradcamm", "norm5")
    with pytest.raises(ValueError, match=r"unknown layer 'denseblock9'.*norm5"):
        compute_maps(tiny_model, inputs, "gradcam", "denseblock9")


def test_batches_give_the_same_maps_as_one_image_at_a_time(tiny_model, inputs):
    for method in ("gradcam", "eigencam"):
        batched = compute_maps(tiny_model, inputs, method, "denseblock3", [2, 1, 0, 3], batch_size=4)
        single = compute_maps(tiny_model, inputs, method, "denseblock3", [2, 1, 0, 3], batch_size=1)
        np.testing.assert_allclose(batched, single, atol=1e-4)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "layercam"])
def test_cutting_the_graph_at_the_target_layer_keeps_the_library_maps(tiny_model, inputs, method):
    """compute_maps stops the backward pass at the target layer; the maps must not change."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ours = compute_maps(tiny_model, inputs, method, "denseblock3", [1] * 4)
    with get_method(method).cam_class(tiny_model, [get_layer(tiny_model, "denseblock3")]) as cam:
        library = cam(inputs, [ClassifierOutputTarget(1)] * 4)
    np.testing.assert_allclose(ours, library, atol=1e-5)
    assert all(p.requires_grad for p in tiny_model.parameters())  # weights unfrozen again
    assert not tiny_model.features.denseblock3._forward_hooks  # hooks released


def test_norm5_activation_seen_by_the_cam_is_the_true_pre_relu_output(tiny_model, inputs):
    """The trap: torchvision's in-place ReLU after norm5 overwrote the CAM's saved activation on CPU."""
    with torch.no_grad():
        true_norm5 = tiny_model.features(inputs)
    assert (true_norm5 < 0).any()
    with open_cam(tiny_model, "gradcam", "norm5") as cam:
        cam(input_tensor=inputs, targets=None)
        stored = cam.activations_and_grads.activations[0]
    torch.testing.assert_close(stored, true_norm5)


def test_stock_torchvision_densenet_shows_the_trap_the_model_avoids(tiny_model, inputs):
    """Documents why DenseNetClassifier exists: with torchvision's forward the stored norm5 is ReLU'd."""
    from pytorch_grad_cam import GradCAM
    from torchvision.models import DenseNet

    stock = DenseNet(growth_rate=8, block_config=(1, 2, 2, 1), num_init_features=16, bn_size=2, num_classes=4)
    stock.load_state_dict(tiny_model.state_dict())
    stock.eval()
    with torch.no_grad():
        true_norm5 = stock.features(inputs)
    with GradCAM(stock, [stock.features.norm5]) as cam:
        cam(inputs, None)
        stored = cam.activations_and_grads.activations[0]
    assert (stored >= 0).all() and not torch.allclose(stored, true_norm5)


def test_expensive_methods_are_registered_and_warn(tiny_model, caplog):
    assert METHOD_NAMES[-2:] == ("ablationcam", "scorecam")
    for name in ("ablationcam", "scorecam"):
        assert get_method(name).expensive
        with caplog.at_level(logging.WARNING), open_cam(tiny_model, name, "norm5"):
            pass
        assert "one forward pass per channel" in caplog.text
    assert not any(get_method(m).expensive for m in CHEAP_METHODS)


def test_cam_throughput_reports_images_per_second(tiny_model):
    images = torch.randint(0, 256, (8, 64, 64, 3), dtype=torch.uint8)
    rate = cam_throughput(tiny_model, images, "gradcam", "norm5", 8, "cpu")
    assert isinstance(rate, float) and rate > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_maps_on_gpu_match_the_maps_on_cpu(tiny_model, inputs):
    """Same weights and images: fp32 maps agree across devices (cuDNN's TF32 convolutions aside).

    `make bench` on a GPU reports the same comparison for DenseNet-121 at 224 px.
    """
    import copy

    on_cpu = compute_maps(tiny_model, inputs, "gradcam", "norm5", [0, 1, 2, 3])
    on_gpu = compute_maps(copy.deepcopy(tiny_model).cuda(), inputs.cuda(), "gradcam", "norm5", [0, 1, 2, 3])
    np.testing.assert_allclose(on_gpu, on_cpu, atol=5e-3)
