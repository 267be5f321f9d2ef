"""A run's model as ONNX, for tools outside this project: ``python -m engine export RUN``.

The graph takes the normalised image batch (float32, N x 3 x S x S, RGB; the batch axis is
dynamic) and gives three outputs, probabilities first:

    probabilities  softmax over the classes (engine.runs.CLASSES order), N x 4
    logits         the classifier's raw outputs, N x 4, for calibration or other tools
    features       the pooled DenseNet features the classifier reads, N x D, for the
                   out-of-distribution check (engine.ood) with the run's ood.npz

Normalisation stays outside the graph, as in PyTorch: ``to_onnx_input`` is the whole recipe
(decode RGB, resize the short side and centre-crop, /255, minus mean, over std), and it is written
into the model's ``metadata_props`` and the JSON sidecar beside the ``.onnx``. Before anything
is written, ONNX Runtime (CPU) and PyTorch classify a batch of the run's test images and the
export is refused (``ExportError``) when their probabilities differ by more than ``TOLERANCE``;
the difference measured is recorded in the sidecar. Grad-CAM maps need gradients and stay in
PyTorch. onnx and onnxruntime are imported only where they are needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__, runs
from .cache import load_cache
from .errors import DamagedFileError, DataError, EngineError
from .inference import MEAN, STD, damaged_checkpoint_advice, model_from_checkpoint, parse_checkpoint, to_input
from .manifest import read_manifest
from .runs import CLASSES

log = logging.getLogger(__name__)

OPSET = 17  # ONNX Runtime, OpenCV's DNN module and TensorRT all read opset 17
INPUT = "image"
OUTPUTS = ("probabilities", "logits", "features")
TOLERANCE = 1e-4  # largest |p_onnx - p_torch| an export may show on the verification images
VERIFY_IMAGES = 64
SIDECAR_VERSION = 1
EXPORTER = "torch.onnx.export, TorchScript exporter (dynamo=False)"
PROVIDERS = ["CPUExecutionProvider"]


class ExportError(EngineError):
    """An export that cannot be written (ONNX Runtime disagrees with PyTorch) or used (none was written,
    or it is of another checkpoint); the message says what to run."""


def remake(run_dir: Path) -> str:
    """The command that writes a run's export again, for messages."""
    return f"run `python -m engine export {run_dir}` to write it again"


# ----------------------------------------------------------------------------- paths


def default_path(run_dir: Path) -> Path:
    """Where the export of a run goes unless ``--out`` says otherwise: ``RUN/export/model.onnx``."""
    return Path(run_dir) / runs.EXPORT / runs.EXPORT_MODEL


def sidecar_path(model_path: Path) -> Path:
    """The JSON sidecar beside an ``.onnx`` file: same name, ``.json``."""
    return Path(model_path).with_suffix(".json")


# ----------------------------------------------------------------------------- the graph


class ExportedModel(nn.Module):
    """The run's classifier with the graph's three outputs (``OUTPUTS``), from one pass through the network."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.model.embed(x)
        logits = self.model.classifier(features)
        return torch.softmax(logits, 1), logits, features


def to_onnx_bytes(model: nn.Module, image_size: int) -> bytes:
    """``model`` (in eval mode, on the CPU) as ONNX bytes with a dynamic batch axis.

    The TorchScript exporter: the dynamo one needs onnxscript, which this project does not install,
    and both give the same graph for a DenseNet. Its deprecation warning is logged once, not printed.
    """
    import io

    wrapper = ExportedModel(model).eval()
    dummy = torch.zeros(2, 3, image_size, image_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        torch.onnx.export(wrapper, (dummy,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                          output_names=list(OUTPUTS), dynamic_axes={name: {0: "batch"} for name in (INPUT, *OUTPUTS)},
                          do_constant_folding=True)
    for warning in caught:
        log.debug("torch.onnx.export: %s", warning.message)
    return buffer.getvalue()


def with_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    """The ONNX model ``data`` with ``metadata`` as its ``metadata_props`` (string keys and values), checked."""
    import onnx

    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "engine (acute lymphoblastic leukemia stages)"
    proto.producer_version = __version__
    proto.doc_string = ("DenseNet classifier of acute lymphoblastic leukemia stages; research use only. "
                        "Input: float32 N x 3 x S x S, RGB, x/255 normalised by mean and std (see metadata).")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


# ----------------------------------------------------------------------------- preprocessing, as others do it


def preprocessing(image_size: int, view: str = "field") -> dict[str, Any]:
    """The preprocessing the graph expects, in words and numbers (the sidecar's ``preprocessing``)."""
    from .cells import GRID, TILE_AT_224

    resize = f"short side to {image_size} px (bicubic), then the centre {image_size} x {image_size} crop"
    if view == "cells":
        resize = (f"the cells view (engine.cells): a {GRID} x {GRID} mosaic of windows of {TILE_AT_224} px per 224 px "
                  "of the short side, centred on the largest leukocytes of the mask (derived from the stain: "
                  f"engine.masks.derive), each resized to {image_size // GRID} px (bicubic)")
    return {
        "decode": "RGB, 8 bits per channel, turned upright by its EXIF orientation",
        "resize": resize,
        "view": view,
        "image_size": image_size,
        "channel_order": "RGB",
        "layout": "NCHW",
        "dtype": "float32",
        "value_range": [0.0, 1.0],
        "scale": "pixel / 255",
        "mean": list(MEAN),
        "std": list(STD),
        "formula": "(pixel / 255 - mean[c]) / std[c]",
    }


def to_onnx_input(images: np.ndarray, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> np.ndarray:
    """uint8 N x H x W x 3 RGB images -> the graph's float32 N x 3 x H x W input, in NumPy alone.

    The same float32 steps as ``engine.inference.to_input`` (divide, subtract, divide), so PyTorch
    and ONNX Runtime are fed the same numbers.
    """
    x = np.asarray(images).astype(np.float32) / np.float32(255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------------- running it


def session(data: bytes | str, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session of a model (bytes or a path); ``threads`` 0: ONNX Runtime's default."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers mean nothing to a user
    options.intra_op_num_threads = threads
    return ort.InferenceSession(data, options, providers=PROVIDERS)


def onnx_scores(sess: Any, images: np.ndarray, prep: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and pooled features of uint8 NHWC images from an ONNX Runtime session."""
    x = to_onnx_input(images, tuple(prep["mean"]), tuple(prep["std"]))
    proba, features = sess.run(["probabilities", "features"], {INPUT: x})
    return proba, features


@torch.no_grad()
def torch_scores(model: nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (float64, as ``engine.predict.Predictor`` gives them) and pooled features, in PyTorch."""
    x = to_input(torch.from_numpy(np.array(images)), torch.device("cpu"), channels_last=False)
    features = model.embed(x)
    proba = torch.softmax(model.classifier(features).double(), 1)
    return proba.numpy(), features.numpy()


# ----------------------------------------------------------------------------- verification


def verification_images(run_dir: Path, image_size: int, n: int, split: str = "image",
                        fold: int = 0, view: str = "field") -> tuple[np.ndarray, dict[str, Any]]:
    """Up to ``n`` of the run's test images (uint8 NHWC, from the prepared data's decoded cache) and where
    they came from. Where the prepared data cannot be read (a run folder copied without it), seeded random
    pixels instead, with a warning: the agreement is still measured, on images unlike the data."""
    saved = runs.read_json(Path(run_dir) / runs.CONFIG)
    prepared = Path(saved.get("data_dir") or "")
    try:
        rows = read_manifest(prepared, split, fold)
        for wanted in ("test", "val", "train"):
            index = np.array([i for i, r in enumerate(rows) if r["split"] == wanted][:n], dtype=np.int64)
            if len(index):
                images = np.asarray(load_cache(prepared, image_size, view)[index])
                return images, {"source": f"{wanted} split of the prepared data", "prepared": str(prepared),
                                "split": wanted}
    except (OSError, DataError, DamagedFileError, KeyError) as exc:
        log.warning("the prepared data of %s cannot be read (%s): verifying the export on random pixels instead",
                    run_dir, exc)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    return images, {"source": "random pixels (the run's prepared data could not be read)", "prepared": None,
                    "split": None}


def verify(model: nn.Module, sess: Any, images: np.ndarray, prep: dict[str, Any]) -> dict[str, Any]:
    """PyTorch and ONNX Runtime on the same images, as one batch and the first image alone (the batch axis
    is dynamic, so both sizes must work): the largest differences and how often the classes agree."""
    torch_p, torch_f = torch_scores(model, images)
    onnx_p, onnx_f = onnx_scores(sess, images, prep)
    single_p, _ = onnx_scores(sess, images[:1], prep)
    diff = max(float(np.abs(onnx_p - torch_p).max()), float(np.abs(single_p - torch_p[:1]).max()))
    return {"images": len(images), "batch_sizes": [len(images), 1], "max_abs_diff": diff,
            "tolerance": TOLERANCE, "same_class": int((onnx_p.argmax(1) == torch_p.argmax(1)).sum()),
            "features_max_abs_diff": float(np.abs(onnx_f - torch_f).max()), "provider": PROVIDERS[0]}


# ----------------------------------------------------------------------------- the sidecar


def headline_metrics(run_dir: Path, checkpoint: str, epoch: int) -> dict[str, Any] | None:
    """Test accuracy and macro-F1 with their intervals from ``metrics.json``, when it scored this very
    checkpoint (same name and epoch); None otherwise (not evaluated, or evaluated on another checkpoint)."""
    path = Path(run_dir) / runs.METRICS
    if not path.is_file():
        return None
    metrics = runs.read_json(path)
    if metrics.get("checkpoint", "best") != checkpoint or metrics.get("checkpoint_epoch", epoch) != epoch:
        log.warning("%s scored another checkpoint than %s (epoch %s): its metrics are left out of the export",
                    path, checkpoint, epoch)
        return None
    keys = ("n", "accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95")
    return {split: {k: block.get(k) for k in keys} for split, block in metrics.get("splits", {}).items()
            if split == "test" and isinstance(block, dict)} or None


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"engine": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def metadata(sidecar: dict[str, Any]) -> dict[str, str]:
    """What goes into the model's own ``metadata_props``: enough to feed it without the sidecar."""
    import json

    prep = sidecar["preprocessing"]
    return {"classes": json.dumps(sidecar["classes"]), "outputs": json.dumps(list(OUTPUTS)),
            "image_size": str(prep["image_size"]), "channel_order": prep["channel_order"],
            "layout": prep["layout"], "value_range": json.dumps(prep["value_range"]), "scale": prep["scale"],
            "mean": json.dumps(prep["mean"]), "std": json.dumps(prep["std"]), "normalisation": prep["formula"],
            "resize": prep["resize"], "checkpoint": sidecar["checkpoint"],
            "checkpoint_sha256": sidecar["checkpoint_sha256"], "run": sidecar["run"],
            "engine_version": __version__, "opset": str(OPSET)}


# ----------------------------------------------------------------------------- the command's work


def export_run(run_dir: Path, checkpoint: str = "best", out: Path | None = None,
               verify_images: int = VERIFY_IMAGES) -> dict[str, Any]:
    """Write the run's ``checkpoint`` as ONNX (``out``, default ``RUN/export/model.onnx``) and its JSON sidecar
    beside it; return the sidecar. Nothing is written unless ONNX Runtime matches PyTorch to ``TOLERANCE``."""
    run_dir = Path(run_dir)
    path = run_dir / runs.CHECKPOINTS / f"{checkpoint}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a trained run folder?")
    data = runs.verified_bytes(path, damaged_checkpoint_advice(checkpoint))
    state = parse_checkpoint(data, path, damaged_checkpoint_advice(checkpoint))
    cfg, model = model_from_checkpoint(state, "cpu")
    model.eval()
    start = time.perf_counter()
    sidecar: dict[str, Any] = {
        "version": SIDECAR_VERSION, "format": "onnx", "run": run_dir.resolve().name, "checkpoint": checkpoint,
        "checkpoint_epoch": int(state["epoch"]), "checkpoint_sha256": hashlib.sha256(data).hexdigest(),
        "model": cfg.model, "classes": list(CLASSES),
        "input": {"name": INPUT, "shape": ["batch", 3, cfg.image_size, cfg.image_size], "dtype": "float32"},
        "outputs": {"probabilities": "softmax over the classes, N x 4, in the order of classes",
                    "logits": "the classifier's raw outputs, N x 4",
                    "features": "pooled DenseNet features the classifier reads, N x D (for ood.npz)"},
        "preprocessing": preprocessing(cfg.image_size, cfg.view),
        "metrics": headline_metrics(run_dir, checkpoint, int(state["epoch"])),
        "opset": OPSET, "exporter": EXPORTER, "versions": versions(), "git_commit": runs.git_commit(),
    }
    del state, data
    onnx_bytes = with_metadata(to_onnx_bytes(model, cfg.image_size), metadata(sidecar))
    images, source = verification_images(run_dir, cfg.image_size, verify_images, cfg.split, cfg.fold, cfg.view)
    check = {**verify(model, session(onnx_bytes), images, sidecar["preprocessing"]), **source}
    if not check["max_abs_diff"] <= TOLERANCE:  # also refuses NaN
        raise ExportError(f"ONNX Runtime and PyTorch disagree on {check['images']} images ({source['source']}): "
                          f"largest probability difference {check['max_abs_diff']:.2e} > {TOLERANCE:.0e}; "
                          "nothing was written")
    out = Path(out) if out is not None else default_path(run_dir)
    sidecar.update({"file": out.name, "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
                    "onnx_bytes": len(onnx_bytes), "verification": check,
                    "seconds": round(time.perf_counter() - start, 2),
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    # The model first, its sidecar last: a reader that finds a sidecar finds the model it describes, and a
    # model whose sidecar is older no longer matches its onnx_sha256, so it is reported, not used.
    runs.atomic_write_bytes(out, onnx_bytes)
    runs.write_json(sidecar_path(out), sidecar)
    log.info("exported %s: %s (%.1f MB); ONNX Runtime matches PyTorch to %.1e on %d images", checkpoint, out,
             len(onnx_bytes) / 1e6, check["max_abs_diff"], check["images"])
    return sidecar


# ----------------------------------------------------------------------------- reading an export back


@dataclasses.dataclass
class Export:
    """A run's export, read back and verified: the ONNX Runtime session and its sidecar."""

    path: Path
    sidecar: dict[str, Any]
    session: Any

    @property
    def image_size(self) -> int:
        return int(self.sidecar["preprocessing"]["image_size"])

    @property
    def view(self) -> str:
        return str(self.sidecar["preprocessing"].get("view", "field"))  # exports before the cells view: the field

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and pooled features of uint8 NHWC images."""
        return onnx_scores(self.session, images, self.sidecar["preprocessing"])


SIDECAR_KEYS = ("classes", "checkpoint", "checkpoint_sha256", "onnx_sha256", "preprocessing")


def read_sidecar(path: Path, run_dir: Path) -> dict[str, Any]:
    """An export's sidecar; DamagedFileError naming it when it is not one (its classes included)."""
    try:
        sidecar = runs.read_json(path)
    except DamagedFileError as exc:  # with the command that writes this file again, not the generic advice
        raise DamagedFileError(path, exc.what, remake(run_dir)) from None
    if not isinstance(sidecar, dict) or any(key not in sidecar for key in SIDECAR_KEYS):
        raise DamagedFileError(path, f"damaged: not an export's sidecar (it lacks {', '.join(SIDECAR_KEYS)})",
                               remake(run_dir))
    if list(sidecar["classes"]) != list(CLASSES):
        raise DamagedFileError(path, f"its classes {sidecar['classes']} are not {list(CLASSES)}", remake(run_dir))
    return sidecar


def load_export(run_dir: Path, checkpoint: str | None = "best") -> Export:
    """The run's export (``RUN/export/model.onnx``), verified: ExportError when there is none or it is of
    another (``checkpoint``; None: whichever it holds) or an older checkpoint than the run's; DamagedFileError
    naming a damaged file."""
    run_dir = Path(run_dir)
    path = default_path(run_dir)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        missing = path if not path.is_file() else side
        raise ExportError(f"{run_dir} has no ONNX export ({missing} is missing): run "
                          f"`python -m engine export {run_dir}` first")
    sidecar = read_sidecar(side, run_dir)
    if checkpoint is not None and sidecar["checkpoint"] != checkpoint:
        raise ExportError(f"{path} holds the {sidecar['checkpoint']} checkpoint, not {checkpoint}: pass "
                          f"--checkpoint {sidecar['checkpoint']}, or run "
                          f"`python -m engine export {run_dir} --checkpoint {checkpoint}`")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sidecar["onnx_sha256"]:
        raise DamagedFileError(path, f"the ONNX model is damaged: its bytes do not match {side.name}",
                               remake(run_dir))
    current = run_dir / runs.CHECKPOINTS / f"{sidecar['checkpoint']}.pt"
    if current.is_file() and hashlib.sha256(current.read_bytes()).hexdigest() != sidecar["checkpoint_sha256"]:
        raise ExportError(f"{path} was exported from an older {current.name} (the run was trained on since): "
                          f"run `python -m engine export {run_dir}` again")
    try:
        sess = session(data)
    except Exception as exc:  # onnxruntime raises its own exception types for a model it cannot read
        raise DamagedFileError(path, f"the ONNX model is damaged: ONNX Runtime cannot load it ({exc})",
                               remake(run_dir)) from exc
    return Export(path, sidecar, sess)
