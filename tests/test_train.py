import csv
import json
import os

import numpy as np
import pytest
import torch

from engine import fastpath, inference, runs, train
from engine.commands import train as train_command
from engine.config import build_config
from engine.models import WeightsError, create_model
from engine.train import augment, fit

pytestmark = pytest.mark.numerics


def _weights(run_dir, which="last"):
    return torch.load(run_dir / "checkpoints" / f"{which}.pt", map_location="cpu", weights_only=True)["model"]


def test_run_folder_holds_the_contract(trained_tiny_run):
    for name in ("config.json", "env.json", "history.csv", "metrics.json", "predictions.csv", "COMPLETE"):
        assert (trained_tiny_run / name).is_file(), name
    config = json.loads((trained_tiny_run / "config.json").read_text())
    assert config["model"] == "densenet-tiny" and config["epochs"] == 4 and config["preset"] == "tiny"
    env = json.loads((trained_tiny_run / "env.json").read_text())
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"  # device=auto
    assert env["device"].split(":")[0] == expected_device and env["seed"] == 0 and env["torch"] == torch.__version__
    with (trained_tiny_run / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4]
    assert tuple(history[0]) == runs.HISTORY_COLUMNS
    for which in ("best", "last"):
        state = torch.load(trained_tiny_run / "checkpoints" / f"{which}.pt", weights_only=True)
        assert "model" in state and state["config"]["model"] == "densenet-tiny"
    complete = json.loads((trained_tiny_run / "COMPLETE").read_text())
    best = max(float(r["val_macro_f1"]) for r in history)
    assert complete["best_val_macro_f1"] == pytest.approx(best)


def test_tiny_model_learns_the_generated_signal(trained_tiny_run):
    metrics = json.loads((trained_tiny_run / "metrics.json").read_text())
    assert metrics["splits"]["test"]["accuracy"] > 0.5  # chance is 0.25


def test_training_is_deterministic_on_cpu(prepared_tiny, tmp_path):
    cfg = build_config("tiny", {"epochs": 2})
    a = fit(cfg, prepared_tiny, tmp_path / "a")
    b = fit(cfg, prepared_tiny, tmp_path / "b")
    assert (a / "history.csv").read_text().split("\n")[1].split(",")[:7] == \
        (b / "history.csv").read_text().split("\n")[1].split(",")[:7]
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("overrides", [{}, {"dropout": 0.5, "ema_decay": 0.9}],
                         ids=["plain", "dropout-and-weight-average"])
def test_resume_continues_an_interrupted_run_exactly(prepared_tiny, tmp_path, overrides):
    """Dropout draws its masks from torch's global generator (CUDA's on a GPU), not from the
    augmentation generator: a resumed run must restore that state too, or epoch 3 differs. With a
    weight average, last.pt's "model" is the average: resuming must train on from the trained weights
    beside it and go on averaging from the same count, or epoch 3 differs."""
    cfg = build_config("tiny", {"epochs": 3, **overrides})
    straight = fit(cfg, prepared_tiny, tmp_path / "straight")

    class Interrupt(Exception):
        pass

    def stop_after_two(row, run_dir):
        if row["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(cfg, prepared_tiny, tmp_path / "resumed", on_epoch=stop_after_two)
    assert not runs.is_complete(tmp_path / "resumed")
    assert train_command.main(["--resume", str(tmp_path / "resumed")]) == 0
    assert runs.is_complete(tmp_path / "resumed")
    history = (tmp_path / "resumed" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]
    wa, wb = _weights(straight), _weights(tmp_path / "resumed")
    assert all(torch.allclose(wa[k].float(), wb[k].float()) for k in wa)
    if "ema_decay" in overrides:
        ta, tb = (torch.load(r / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["trained_model"]
                  for r in (straight, tmp_path / "resumed"))
        assert all(torch.allclose(ta[k].float(), tb[k].float()) for k in ta)
    # Epoch 3's training loss and validation scores, as trained straight through.
    expected = [float(v) for v in (straight / "history.csv").read_text().splitlines()[3].split(",")[1:6]]
    assert [float(v) for v in history[3].split(",")[1:6]] == pytest.approx(expected, rel=1e-5)


def test_cli_rejects_unknown_keys_and_existing_runs(prepared_tiny, tmp_path, capsys):
    from engine.cli import main

    assert main(["train", "--data", str(prepared_tiny), "--preset", "tiny", "--set", "epochz=2",
                 "--out", str(tmp_path)]) == 2
    assert "unknown config key(s): epochz" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    assert main(["train", "--data", str(prepared_tiny), "--preset", "tiny", "--out", str(tmp_path),
                 "--name", "taken"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_missing_imagenet_weights_fail_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="not in the torch cache"):
        create_model(build_config(None, {"model": "densenet121", "weights": "imagenet"}))
    with pytest.raises(WeightsError, match="not found"):
        create_model(build_config(None, {"weights": str(tmp_path / "nope.pt")}))


def test_local_weights_file_is_loaded(trained_tiny_run, tmp_path):
    path = trained_tiny_run / "checkpoints" / "best.pt"
    model = create_model(build_config("tiny", {"weights": str(path)}))
    saved = torch.load(path, weights_only=True)["model"]
    assert torch.equal(model.state_dict()["classifier.weight"], saved["classifier.weight"])
    # With dropout the head sits behind it ("classifier.1.*"), in the new model and in a saved one.
    behind = create_model(build_config("tiny", {"weights": str(path), "dropout": 0.2}))
    assert torch.equal(behind.state_dict()["classifier.1.weight"], saved["classifier.weight"])
    torch.save({"model": behind.state_dict()}, tmp_path / "dropout.pt")
    again = create_model(build_config("tiny", {"weights": str(tmp_path / "dropout.pt")}))
    assert torch.equal(again.state_dict()["classifier.bias"], saved["classifier.bias"])


def test_augment_is_seeded_and_shape_preserving():
    x = torch.randn(4, 3, 32, 32)
    a = augment(x, 1.0, torch.Generator().manual_seed(0))
    b = augment(x, 1.0, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(augment(x, 0.0, torch.Generator()), x)


def test_class_weights_upweight_the_rare_class_as_scikit_learn_does():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0] * 10 + [1] * 40 + [2] * 40 + [3] * 30)
    weights = train.class_weights(labels)
    assert weights[0] > weights[3] > weights[1] == pytest.approx(weights[2])
    expected = compute_class_weight("balanced", classes=np.arange(4), y=labels)
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)


def test_val_scores_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 200)
    proba = rng.dirichlet(np.ones(4), 200)
    proba[y == 2] = [0.7, 0.1, 0.1, 0.1]  # class 2 is never predicted: its F1 is 0, not skipped
    scores = train.val_scores(y, proba)
    pred = proba.argmax(1)
    assert scores["val_acc"] == pytest.approx(accuracy_score(y, pred))
    assert scores["val_macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=range(4),
                                                            zero_division=0))
    assert scores["val_loss"] == pytest.approx(log_loss(y, proba, labels=range(4)))


def test_fixed_batches_drop_the_short_last_batch():
    assert train.steps_per_epoch(10, 4, fixed_batch=False) == 3
    assert train.steps_per_epoch(9, 4, fixed_batch=False) == 2  # a last batch of one is dropped
    assert train.steps_per_epoch(10, 4, fixed_batch=True) == 2
    assert train.steps_per_epoch(3, 4, fixed_batch=True) == 1


def test_cpu_training_never_uses_cuda_graphs(tmp_path):
    cfg = build_config("tiny", {"cuda_graphs": "on"})
    step = train.make_train_step(torch.nn.Linear(2, 2), torch.optim.SGD([torch.zeros(1)], lr=0.1),
                                 torch.nn.CrossEntropyLoss(), torch.device("cpu"), cfg)
    assert type(step) is train.TrainStep and not step.fixed_batch


def test_a_compiled_model_trains_on_full_batches_only():
    """A short last batch would compile the model a second time (minutes on a GPU)."""
    cfg = build_config("tiny", {"compile": "default"})
    step = train.make_train_step(torch.nn.Linear(2, 2), torch.optim.SGD([torch.zeros(1)], lr=0.1),
                                 torch.nn.CrossEntropyLoss(), torch.device("cpu"), cfg)
    assert step.fixed_batch


@pytest.mark.skipif(not os.environ.get("CUDA_VISIBLE_DEVICES") and not torch.cuda.is_available(),
                    reason="needs a CUDA GPU")
def test_gpu_training_uses_bf16_and_channels_last(prepared_tiny, tmp_path):
    run = fit(build_config("tiny", {"epochs": 1}), prepared_tiny, tmp_path / "gpu")
    env = json.loads((run / "env.json").read_text())
    assert env["amp_bf16"] and env["channels_last"] and env["device"].startswith("cuda")


def _train_seven_steps(device: torch.device, graphs: str, compile_mode: str) -> tuple[list[float], list[torch.Tensor]]:
    """Seven fp32 steps of the tiny model from one seed on fixed batches: (losses, final weights)."""
    cfg = build_config("tiny", {"amp": "off", "cuda_graphs": graphs, "compile": compile_mode, "batch_size": 8})
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(7, 8, 3, 64, 64, device=device, generator=gen)
    y = torch.randint(0, 4, (7, 8), device=device, generator=gen)
    torch.manual_seed(0)
    model = create_model(cfg, 4).to(device)
    optimizer = train.make_optimizer(model, cfg, device)
    scheduler = train.make_scheduler(optimizer, cfg, 7)
    step = train.make_train_step(train.compile_model(model, cfg), optimizer, torch.nn.CrossEntropyLoss(), device, cfg)
    assert isinstance(step, train.GraphedTrainStep) == (graphs == "on")
    model.train()
    losses = []
    for i in range(7):
        loss, _ = step(x[i], y[i])
        losses.append(float(loss))
        scheduler.step()
    assert not getattr(step, "failed", False), "graph capture fell back to eager"
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_step_trains_like_the_eager_step():
    """Same start, same batches: the replayed graph must update the weights as eager steps do."""
    device = torch.device("cuda")
    eager_losses, eager_params = _train_seven_steps(device, "off", "off")
    graph_losses, graph_params = _train_seven_steps(device, "on", "off")
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-3, atol=1e-4)
    for a, b in zip(eager_params, graph_params, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_model_in_a_cuda_graph_trains_like_the_eager_step():
    """Inductor's kernels captured in the engine's graph: the same training up to reduction order."""
    device = torch.device("cuda")
    eager_losses, eager_params = _train_seven_steps(device, "off", "off")
    losses, params = _train_seven_steps(device, "on", "default")
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-2)
    # Adam divides by the gradient's size, so reordered sums can move a near-zero weight by
    # up to lr per step: compare the weights as a whole rather than one by one.
    diff = torch.cat([(a - b).flatten() for a, b in zip(eager_params, params, strict=True)]).norm()
    moved = torch.cat([a.flatten() for a in eager_params]).norm()
    assert float(diff / moved) < 1e-2


@pytest.mark.skipif(fastpath.onednn_isa_cap() in ("AVX512_CORE", "AVX512_CORE_VNNI"),
                    reason="Inductor-compiled CPU training aborts inside oneDNN (PyTorch 2.14.1) when "
                    "ONEDNN_MAX_CPU_ISA caps this AVX512-BF16 CPU at AVX-512 without bf16; it passes uncapped "
                    "and under AVX2 (docs/testing.md)")
def test_compiled_training_writes_an_ordinary_run(prepared_tiny, tmp_path):
    """compile=default trains through Inductor (C++ on a CPU) as the eager model does, validates
    eagerly and saves plain weight names."""
    runs_ = {mode: fit(build_config("tiny", {"epochs": 1, "compile": mode}), prepared_tiny, tmp_path / mode)
             for mode in ("off", "default")}
    state = torch.load(runs_["default"] / "checkpoints" / "best.pt", weights_only=True)
    assert state["config"]["compile"] == "default"
    assert set(state["model"]) == set(_weights(runs_["off"], "best"))  # no "_orig_mod." prefixes
    eager, compiled = (train.read_history(runs_[mode])[0] for mode in ("off", "default"))
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=0.02)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=0.05)
    inference.load_checkpoint(runs_["default"])  # loads into an uncompiled model


def test_precise_batchnorm_replaces_running_statistics_by_those_of_the_current_weights():
    cfg = build_config("tiny", {"batch_size": 8, "precise_bn_images": 20, "channels_last": "off"})
    device = torch.device("cpu")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (20, 64, 64, 3), dtype=torch.uint8)
    data = inference.Data(images, torch.zeros(20, dtype=torch.long), rows=[], split={})
    model = create_model(cfg, 4)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k}
    norm0 = model.features.norm0
    norm0.running_mean.fill_(5.0)  # stale statistics from "earlier weights"

    train.recalibrate_batchnorm(model, data, np.arange(20), cfg, device, use_amp=False, channels_last=False)

    # 20 images asked for: two whole batches of 8, the same permutation as the function's.
    chosen = np.random.default_rng(cfg.seed).permutation(np.arange(20))[:16]
    with torch.no_grad():
        conv0 = model.features.conv0(inference.to_input(images[torch.from_numpy(chosen)], device, False))
    torch.testing.assert_close(norm0.running_mean, conv0.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert norm0.momentum == 0.1 and int(norm0.num_batches_tracked) == 2
    for key, value in model.state_dict().items():
        if key in weights:
            assert torch.equal(value, weights[key]), f"{key} changed"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_precise_batchnorm_and_a_captured_graph_share_the_running_statistics():
    """After recalibration the replayed graph must go on updating the recalibrated buffers, not stale copies."""
    device = torch.device("cuda")
    cfg = build_config("tiny", {"amp": "off", "channels_last": "off", "cuda_graphs": "on", "batch_size": 8,
                                "precise_bn_images": 16})
    torch.manual_seed(0)
    model = create_model(cfg, 4).to(device).train()
    optimizer = train.make_optimizer(model, cfg, device)
    step = train.make_train_step(model, optimizer, torch.nn.CrossEntropyLoss(), device, cfg)
    x, y = torch.randn(8, 3, 64, 64, device=device), torch.randint(0, 4, (8,), device=device)
    for _ in range(step.warmup + 2):  # warm-up, capture, one replay
        step(x, y)
    images = torch.randint(0, 256, (16, 64, 64, 3), dtype=torch.uint8, device=device)
    data = inference.Data(images, torch.zeros(16, dtype=torch.long, device=device), rows=[], split={})
    train.recalibrate_batchnorm(model, data, np.arange(16), cfg, device, use_amp=False, channels_last=False)
    norm0 = model.features.norm0
    recalibrated = norm0.running_mean.clone()
    model.train()
    with torch.no_grad():
        batch_mean = model.features.conv0(x).mean((0, 2, 3))  # conv0's weights before this step's update
    step(x, y)
    torch.cuda.synchronize()
    torch.testing.assert_close(norm0.running_mean, 0.9 * recalibrated + 0.1 * batch_mean, rtol=1e-3, atol=1e-4)


def test_the_weight_average_follows_every_step_and_is_the_model_validated_and_kept(prepared_tiny, tmp_path):
    """With ema_decay, each optimiser step moves the average by (1 - decay) towards the new weights (the
    first step copies them), and that average, not the trained weights, is validated and saved as best.pt."""
    decay = 0.8
    cfg = build_config("tiny", {"epochs": 1, "ema_decay": decay, "channels_last": "off", "augment": 0.0})
    device = torch.device("cpu")
    data = inference.Data.load(prepared_tiny, cfg.image_size, device, False)
    torch.manual_seed(0)
    model = create_model(cfg, 4)
    optimizer = train.make_optimizer(model, cfg, device)
    ema = train.make_ema(model, cfg)
    step = train.make_train_step(model, optimizer, torch.nn.CrossEntropyLoss(), device, cfg)
    snapshots = []

    class Recording(train.TrainStep):  # the weights after each step, as the average should see them
        def __call__(self, x, y):
            out = super().__call__(x, y)
            snapshots.append(torch.nn.utils.parameters_to_vector(self.model.parameters()).detach().clone())
            return out

    recording = Recording(model, optimizer, step.criterion, device, False)
    scheduler = train.make_scheduler(optimizer, cfg, 100)
    train.train_one_epoch(recording, data, data.split["train"], cfg, scheduler, device, torch.Generator(),
                          epoch=1, channels_last=False, ema=ema)
    expected = snapshots[0]
    for weights in snapshots[1:]:
        expected = decay * expected + (1 - decay) * weights
    assert len(snapshots) > 3
    averaged = torch.nn.utils.parameters_to_vector(ema.module.parameters())
    torch.testing.assert_close(averaged, expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(averaged, snapshots[-1])  # the average is not the last weights

    run = fit(build_config("tiny", {"epochs": 1, "ema_decay": decay, "amp": "off", "channels_last": "off"}),
              prepared_tiny, tmp_path / "ema")
    best = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert not all(torch.equal(last["model"][k], last["trained_model"][k]) for k in last["model"])
    kept = create_model(cfg, 4)
    kept.load_state_dict(best["model"])
    row = train.read_history(run)[best["epoch"] - 1]
    scores = train.validate(kept, data, cfg, device, use_amp=False, channels_last=False)
    assert scores["val_loss"] == pytest.approx(row["val_loss"], rel=1e-4)
    assert scores["val_macro_f1"] == pytest.approx(best["val_macro_f1"])
