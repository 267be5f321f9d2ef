"""``python -m engine export``: the ONNX model, its sidecar, ONNX Runtime against PyTorch, predict's ONNX backend."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine import runs
from engine.cli import main
from engine.errors import EXIT_DAMAGED, EXIT_INPUT
from tests.support.images import make_image


def copy_run(run: Path, into: Path) -> Path:
    """A copy of a run folder, so that a test can export into it (or damage it) without touching the shared one."""
    return Path(shutil.copytree(run, into / run.name))


@pytest.fixture(scope="module")
def exported(trained_tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny trained run, exported once with the defaults."""
    run = copy_run(trained_tiny_run, tmp_path_factory.mktemp("exported"))
    assert main(["export", str(run)]) == 0
    return run


def generated_images(n: int, size: int, seed: int = 5) -> np.ndarray:
    """uint8 NHWC generated cells of every stage, as the model sees images."""
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(make_image(i % 4, rng, size)) for i in range(n)])


def stderr_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a command line printed on stderr for its error (log records go elsewhere)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_export_writes_the_model_and_a_sidecar_with_what_others_need(exported: Path) -> None:
    import onnx

    from engine.inference import MEAN, STD

    model_path = exported / runs.EXPORT / runs.EXPORT_MODEL
    sidecar = json.loads((exported / runs.EXPORT / runs.EXPORT_SIDECAR).read_text())
    config = json.loads((exported / runs.CONFIG).read_text())
    metrics = json.loads((exported / runs.METRICS).read_text())["splits"]["test"]
    checkpoint = exported / runs.CHECKPOINTS / runs.BEST_CHECKPOINT

    assert sidecar["classes"] == list(runs.CLASSES) and sidecar["checkpoint"] == "best"
    prep = sidecar["preprocessing"]
    assert prep["image_size"] == config["image_size"] and prep["mean"] == list(MEAN) and prep["std"] == list(STD)
    assert prep["channel_order"] == "RGB" and prep["layout"] == "NCHW" and prep["value_range"] == [0.0, 1.0]
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert sidecar["checkpoint_sha256"] == digest == runs.recorded_digests(checkpoint)[-1]
    assert sidecar["onnx_sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert sidecar["metrics"]["test"] == {k: metrics[k] for k in ("n", "accuracy", "accuracy_ci95", "macro_f1",
                                                                  "macro_f1_ci95")}
    assert {"engine", "torch", "onnx", "onnxruntime"} <= sidecar["versions"].keys() and sidecar["opset"] == 17
    check = sidecar["verification"]
    assert check["split"] == "test" and check["images"] == min(64, metrics["n"])
    assert 0 <= check["max_abs_diff"] <= 1e-4 and check["same_class"] == check["images"]

    proto = onnx.load(model_path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == list(runs.CLASSES) and int(meta["image_size"]) == prep["image_size"]
    assert json.loads(meta["mean"]) == list(MEAN) and json.loads(meta["std"]) == list(STD)
    assert meta["checkpoint_sha256"] == digest and int(meta["opset"]) == proto.opset_import[0].version
    batch, channels, height, width = proto.graph.input[0].type.tensor_type.shape.dim
    assert batch.dim_param == "batch"
    assert (channels.dim_value, height.dim_value, width.dim_value) == (3, prep["image_size"], prep["image_size"])
    assert [o.name for o in proto.graph.output] == ["probabilities", "logits", "features"]


def test_onnx_runtime_matches_pytorch_on_generated_images(exported: Path) -> None:
    import onnxruntime as ort

    from engine.export import to_onnx_input
    from engine.predict import Predictor

    sidecar = json.loads((exported / runs.EXPORT / runs.EXPORT_SIDECAR).read_text())
    images = generated_images(12, sidecar["preprocessing"]["image_size"])
    session = ort.InferenceSession(str(exported / runs.EXPORT / runs.EXPORT_MODEL), providers=["CPUExecutionProvider"])
    torch_p, _ = Predictor(exported, "best", "cpu").scores(images)
    for batch in (images, images[:1], images[:5]):  # the batch axis is dynamic
        onnx_p = session.run(["probabilities"], {"image": to_onnx_input(batch)})[0]
        assert np.abs(onnx_p - torch_p[:len(batch)]).max() <= 1e-4
    logits = session.run(["logits"], {"image": to_onnx_input(images)})[0]
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.abs(softmax - torch_p).max() <= 1e-4


def test_predict_with_the_onnx_backend_answers_like_pytorch(exported: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    paths = []
    for i, image in enumerate(generated_images(6, 90)):  # another size: decoded and resized like any file
        paths.append(tmp_path / f"cell-{i}.png")
        Image.fromarray(image).save(paths[-1])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    lines = {}
    for backend in ("torch", "onnx"):
        capsys.readouterr()
        assert main(["predict", str(exported), *map(str, paths), str(broken), "--backend", backend]) == 1
        lines[backend] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for torch_line, onnx_line in zip(lines["torch"], lines["onnx"], strict=True):
        assert torch_line.keys() == onnx_line.keys()
        if "error" in torch_line:
            assert onnx_line == torch_line
            continue
        assert onnx_line["pred"] == torch_line["pred"] and "out_of_distribution" in onnx_line
        for stage, p in torch_line["probabilities"].items():
            assert abs(onnx_line["probabilities"][stage] - p) <= 1e-4
        assert abs(onnx_line["ood_distance"] - torch_line["ood_distance"]) <= 1e-2 * max(1, torch_line["ood_distance"])


def test_predict_with_the_onnx_backend_and_no_export_says_what_to_run(trained_tiny_run: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "cell.png"
    make_image(0, np.random.default_rng(0), 64).save(image)
    assert main(["predict", str(trained_tiny_run), str(image), "--backend", "onnx"]) == EXIT_INPUT
    line = stderr_line(capsys)
    assert "has no ONNX export" in line and f"python -m engine export {trained_tiny_run}" in line
    assert capsys.readouterr().out == ""


def test_a_damaged_export_is_named(exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(exported, tmp_path)
    image = tmp_path / "cell.png"
    make_image(1, np.random.default_rng(0), 64).save(image)
    model = run / runs.EXPORT / runs.EXPORT_MODEL
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--backend", "onnx"]) == EXIT_DAMAGED
    line = stderr_line(capsys)
    assert f"{model}: the ONNX model is damaged" in line and "python -m engine export" in line
    sidecar = run / runs.EXPORT / runs.EXPORT_SIDECAR
    sidecar.write_text(sidecar.read_text()[:40])
    assert main(["predict", str(run), str(image), "--backend", "onnx"]) == EXIT_DAMAGED
    line = stderr_line(capsys)
    assert f"{sidecar}: damaged: not valid JSON" in line and "python -m engine export" in line


def test_an_export_of_an_older_checkpoint_is_refused(exported: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(exported, tmp_path)
    best, last = (run / runs.CHECKPOINTS / name for name in (runs.BEST_CHECKPOINT, runs.LAST_CHECKPOINT))
    # As if training had gone on and saved another best checkpoint after the export.
    shutil.copy(last, best)
    runs.checksum_file(best).write_text(runs.checksum_file(last).read_text())
    image = tmp_path / "cell.png"
    make_image(2, np.random.default_rng(0), 64).save(image)
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--backend", "onnx"]) == EXIT_INPUT
    assert "was exported from an older best.pt" in stderr_line(capsys)


def test_export_elsewhere_of_the_last_checkpoint(trained_tiny_run: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models" / "tiny-last.onnx"
    assert main(["export", str(trained_tiny_run), "--checkpoint", "last", "--out", str(out),
                 "--verify-images", "8"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(out)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["checkpoint"] == "last" and sidecar["file"] == out.name
    assert sidecar["verification"]["images"] == 8
    assert sidecar["metrics"] is None  # metrics.json scored the best checkpoint, not this one
    assert not (trained_tiny_run / runs.EXPORT).exists()


def test_an_export_onnx_runtime_disagrees_with_is_refused_and_nothing_written(
        trained_tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import engine.export

    monkeypatch.setattr(engine.export, "TOLERANCE", -1.0)  # no difference, not even 0, is within it
    out = tmp_path / "model.onnx"
    assert main(["export", str(trained_tiny_run), "--out", str(out), "--verify-images", "4"]) == EXIT_INPUT
    line = stderr_line(capsys)
    assert "ONNX Runtime and PyTorch disagree on 4 images (test split" in line and "nothing was written" in line
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_bench_times_onnx_runtime_against_pytorch(exported: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from engine.commands.bench import main as bench

    assert bench(["--onnx", str(exported), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    report = json.loads(Path(out[-1]).read_text())["onnx"]
    for side in ("pytorch", "onnxruntime"):
        assert report[side]["latency_ms_median"] > 0 and report[side]["images_per_s"] > 0
    assert report["batch_size"] == 32 and report["model"] == "densenet-tiny"
    assert any(line.startswith("ONNX Runtime, batch 32, img/s") for line in out)


@pytest.mark.slow
@pytest.mark.numerics
def test_onnx_runtime_matches_pytorch_on_real_test_images(real_subset_prepared: tuple[Path, dict],
                                                          tmp_path: Path) -> None:
    """A tiny DenseNet trained one epoch on 40 real images per class (seconds), exported and checked on the real
    test images; skipped where the real data set is absent."""
    from engine.cache import load_cache
    from engine.export import load_export
    from engine.manifest import read_manifest
    from engine.predict import Predictor

    prepared, _ = real_subset_prepared
    assert main(["train", "--data", str(prepared), "--preset", "tiny", "--set", "epochs=1",
                 "--out", str(tmp_path), "--name", "real"]) == 0
    run = tmp_path / "real"
    assert main(["export", str(run)]) == 0
    sidecar = json.loads((run / runs.EXPORT / runs.EXPORT_SIDECAR).read_text())
    test = [i for i, r in enumerate(read_manifest(prepared)) if r["split"] == "test"][:64]
    assert sidecar["verification"]["images"] == len(test) > 0 and sidecar["verification"]["split"] == "test"
    images = np.asarray(load_cache(prepared, sidecar["preprocessing"]["image_size"])[np.array(test)])
    onnx_p, _ = load_export(run).scores(images)
    torch_p, _ = Predictor(run, "best", "cpu").scores(images)
    assert np.abs(onnx_p - torch_p).max() <= 1e-4
    assert (onnx_p.argmax(1) == torch_p.argmax(1)).all()
