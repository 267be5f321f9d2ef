"""MLflow tracking against a real ``mlflow server`` (SQLite store, local artefacts) on a free loopback port.

A tiny training, its evaluation and explanation, and a tiny two-trial sweep are copied in with ``--mlflow`` (and
MLFLOW_TRACKING_URI), then read back with MlflowClient: params, per-epoch metrics, scores with their intervals,
the nesting of trials under their sweep, and the artefacts. An unreachable server costs one warning, nothing else.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import runs, tracking
from tests.support.ray_tmp import ray_tmpdir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # real Ray clusters or servers: left out by make test-fast

REPO = Path(__file__).resolve().parents[1]
MLFLOW = Path(sys.executable).with_name("mlflow")
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server for this module's tests; its URL."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(url):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer at {url}: {(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started, nothing else
        try:
            server.wait(timeout=3)  # a throwaway server: no need to wait out its graceful shutdown
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture
def experiment(monkeypatch: pytest.MonkeyPatch) -> str:
    """An experiment of this test's own, and no tracking server left over from the environment."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(tracking.ENV_EXPERIMENT, name)
    monkeypatch.delenv(tracking.ENV_URI, raising=False)
    monkeypatch.setattr(tracking, "_FAILED", set())
    return name


def client(url: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url)


def runs_of(url: str, experiment: str) -> list:
    found = client(url).get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return client(url).search_runs([found.experiment_id], max_results=100)


def run_of(url: str, experiment: str, folder: Path):
    matching = [r for r in runs_of(url, experiment) if r.data.tags.get(tracking.FOLDER_TAG) == str(folder.resolve())]
    assert len(matching) == 1, f"{len(matching)} MLflow runs copy {folder}"
    return matching[0]


def artefacts(url: str, run_id: str, path: str = "") -> set[str]:
    """Every artefact file of a run, by its path inside the run."""
    found = set()
    for entry in client(url).list_artifacts(run_id, path or None):
        found |= artefacts(url, run_id, entry.path) if entry.is_dir else {entry.path}
    return found


def history(folder: Path) -> list[dict[str, str]]:
    with (folder / runs.HISTORY).open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_run_is_copied_by_train_evaluate_and_explain(prepared_tiny: Path, tmp_path: Path, mlflow_server: str,
                                                       experiment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.commands import evaluate, explain, train

    assert train.main(["--data", str(prepared_tiny), "--preset", "tiny", "--set", "epochs=2", "--out",
                       str(tmp_path / "runs"), "--name", "r", "--mlflow", mlflow_server]) == 0
    folder = tmp_path / "runs" / "r"
    trained = run_of(mlflow_server, experiment, folder)
    assert trained.info.status == "FINISHED" and trained.info.run_name == "r"
    assert trained.data.tags[tracking.KIND_TAG] == tracking.KIND_RUN
    assert trained.data.tags[tracking.STATUS_TAG] == runs.STATUS_COMPLETE
    config = runs.read_json(folder / runs.CONFIG)
    params = trained.data.params
    assert params["model"] == config["model"] == "densenet-tiny" and params["epochs"] == "2"
    assert params["preset"] == "tiny" and params["data_dir"] == config["data_dir"]
    assert params[runs.SPLIT_SHA256] == config[runs.SPLIT_SHA256]
    epochs = history(folder)
    for key in ("val_macro_f1", "train_loss", "lr"):
        logged = client(mlflow_server).get_metric_history(trained.info.run_id, key)
        assert [(m.step, m.value) for m in sorted(logged, key=lambda m: m.step)] == \
            [(int(row["epoch"]), pytest.approx(float(row[key]))) for row in epochs], key

    # A deck the dashboard wrote for this run (OUTPUTS/exports/<stamp>-<label>.pptx) goes along.
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "20250101-120000-runs-r.pptx").write_bytes(b"deck")
    (exports / "20250101-120000-runs-r2.pptx").write_bytes(b"another run's deck")
    # evaluate tracks through MLFLOW_TRACKING_URI alone; it finds the MLflow run train made.
    monkeypatch.setenv(tracking.ENV_URI, mlflow_server)
    assert evaluate.main([str(folder), "--bootstrap", "50"]) == 0
    evaluated = run_of(mlflow_server, experiment, folder)
    assert evaluated.info.run_id == trained.info.run_id
    metrics = runs.read_json(folder / runs.METRICS)
    test = metrics["splits"]["test"]
    logged = evaluated.data.metrics
    assert logged["test/accuracy"] == pytest.approx(test["accuracy"])
    assert [logged["test/accuracy_ci95_low"], logged["test/accuracy_ci95_high"]] == pytest.approx(test["accuracy_ci95"])
    assert [logged["test/macro_f1_ci95_low"], logged["test/macro_f1_ci95_high"]] == pytest.approx(test["macro_f1_ci95"])
    assert logged["val/macro_f1"] == pytest.approx(metrics["splits"]["val"]["macro_f1"])
    assert logged["test/pre/recall"] == pytest.approx(test["per_class"]["pre"]["recall"])
    context = runs.read_json(folder / runs.CONTEXT)
    assert logged["context/cells_removed/accuracy"] == pytest.approx(
        context["variants"]["cells_removed"]["all"]["accuracy"])
    assert logged["context/chance"] == pytest.approx(context["chance"])
    files = artefacts(mlflow_server, evaluated.info.run_id)
    assert {runs.METRICS, runs.CONTEXT, runs.MODEL_CARD, runs.CONFIG, "figures/confusion_matrix_test.png",
            "figures/confusion_matrix_val.png", "decks/20250101-120000-runs-r.pptx"} <= files
    assert "decks/20250101-120000-runs-r2.pptx" not in files
    local = Path(client(mlflow_server).download_artifacts(evaluated.info.run_id, "figures/confusion_matrix_test.png",
                                                          str(tmp_path)))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    monkeypatch.delenv(tracking.ENV_URI)
    assert explain.main([str(folder), "--limit", "8", "--no-faithfulness", "--no-sanity", "--multilayer", "0",
                         "--mlflow", mlflow_server]) == 0
    explained = run_of(mlflow_server, experiment, folder)
    assert f"{runs.CAMS}/{runs.LOCALISATION}" in artefacts(mlflow_server, explained.info.run_id)
    located = runs.read_json(folder / runs.CAMS / runs.LOCALISATION)["results"][0]
    key = f"localisation/{located['method']}/{located['layer']}/concentration"
    assert explained.data.metrics[key] == pytest.approx(located["all"]["map"]["concentration"]["mean"])
    # Copying again adds nothing: every epoch is there once.
    assert len(client(mlflow_server).get_metric_history(explained.info.run_id, "val_macro_f1")) == len(epochs)
    assert len(runs_of(mlflow_server, experiment)) == 1


def test_a_sweep_is_a_parent_run_with_its_trials_nested(prepared_tiny: Path, tmp_path: Path, mlflow_server: str,
                                                        experiment: str, ray_tmpdir: str) -> None:  # noqa: F811
    from tuning.cli import main

    space = tmp_path / "space.yaml"
    space.write_text("base_preset: tiny\nfixed: {epochs: 2, max_train_images: 64}\n"
                     "params:\n  lr: {grid: [0.002, 0.004]}\nscheduler: fifo\n")
    out = tmp_path / "sweeps"
    assert main(["sweep", "--space", str(space), "--data", str(prepared_tiny), "--out", str(out), "--name", "s",
                 "--num-samples", "1", "--no-explain", "--mlflow", mlflow_server]) == 0
    sweep = out / "s"
    found = runs_of(mlflow_server, experiment)
    parents = [r for r in found if r.data.tags.get(tracking.KIND_TAG) == tracking.KIND_SWEEP]
    assert len(parents) == 1 and len(found) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "s"
    assert parent.data.params["search"] == "random" and json.loads(parent.data.params["space.lr"]) == {
        "grid": [0.002, 0.004]}
    best = runs.read_json(sweep / "best.json")
    assert parent.data.tags["engine.best_trial"] == best["trial_id"]
    assert parent.data.metrics["best_test/accuracy"] == pytest.approx(best["test"]["accuracy"])
    assert {"summary.csv", "best.json", "sweep.json", "space.yaml"} <= artefacts(mlflow_server, parent.info.run_id)

    trials = {r.data.tags[tracking.FOLDER_TAG]: r for r in found if r.info.run_id != parent.info.run_id}
    for folder in sorted((sweep / "trials").iterdir()):
        trial = trials[str(folder.resolve())]
        assert trial.data.tags[tracking.PARENT_TAG] == parent.info.run_id
        assert trial.data.tags[tracking.KIND_TAG] == tracking.KIND_TRIAL and trial.info.run_name == folder.name
        assert trial.info.status == "FINISHED" and trial.data.tags["engine.trial_status"] == "complete"
        sampled = runs.read_json(folder / "trial.json")["params"]
        assert float(trial.data.params["lr"]) == sampled["lr"] and trial.data.params["epochs"] == "2"
        logged = client(mlflow_server).get_metric_history(trial.info.run_id, "val_macro_f1")
        assert sorted(m.step for m in logged) == [int(r["epoch"]) for r in history(folder)] == [1, 2]
        assert trial.data.metrics["val_acc_without_cells"] == pytest.approx(
            runs.read_json(folder / runs.VAL_CONTEXT)["scores"]["val_acc_without_cells"])
        if folder.name == best["trial_id"]:  # the finish step evaluated it: its scores and files are copied too
            assert trial.data.metrics["test/accuracy"] == pytest.approx(best["test"]["accuracy"])
            assert {runs.METRICS, "figures/confusion_matrix_test.png"} <= artefacts(mlflow_server, trial.info.run_id)


def test_a_folder_is_copied_after_the_fact(trained_tiny_run: Path, mlflow_server: str, experiment: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert tracking.main([str(trained_tiny_run), "--mlflow", mlflow_server]) == 0
    copied = run_of(mlflow_server, experiment, trained_tiny_run)
    assert capsys.readouterr().out.split() == [str(trained_tiny_run), copied.info.run_id]
    assert copied.info.status == "FINISHED" and copied.data.params["model"] == "densenet-tiny"
    assert copied.data.metrics["test/accuracy"] == pytest.approx(
        runs.read_json(trained_tiny_run / runs.METRICS)["splits"]["test"]["accuracy"])
    epochs = [int(r["epoch"]) for r in history(trained_tiny_run)]
    assert tracking.main([str(trained_tiny_run)]) == 2  # no server given, none in the environment
    assert tracking.main([str(trained_tiny_run), "--mlflow", mlflow_server]) == 0  # again: nothing logged twice
    logged = client(mlflow_server).get_metric_history(copied.info.run_id, "val_loss")
    assert sorted(m.step for m in logged) == epochs
    assert len(runs_of(mlflow_server, experiment)) == 1


def test_an_unreachable_server_warns_once_and_training_goes_on(prepared_tiny: Path, tmp_path: Path,
                                                               experiment: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from engine.commands import train

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    assert train.main(["--data", str(prepared_tiny), "--preset", "tiny", "--set", "epochs=2", "--out",
                       str(tmp_path), "--name", "r", "--mlflow", uri]) == 0
    assert time.monotonic() - started < 120
    folder = tmp_path / "r"
    assert runs.complete_status(folder) == runs.STATUS_COMPLETE and len(history(folder)) == 2
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "MLflow" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert uri in message and "connection refused" in message and "python -m engine.tracking" in message


def test_no_mlflow_is_imported_without_tracking() -> None:
    code = ("import sys; import engine.commands.train, engine.commands.evaluate, engine.commands.explain, "
            "engine.tracking, tuning.sweep, tuning.trainable, tuning.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'ray', 'matplotlib'}))")
    env = {k: v for k, v in os.environ.items() if k != tracking.ENV_URI}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]", out.stderr


def test_metric_names_from_the_run_folder_files() -> None:
    metrics = {"splits": {"test": {"n": 60, "accuracy": 0.5, "accuracy_ci95": [0.4, 0.6], "macro_f1": 0.45,
                                   "macro_f1_ci95": [0.35, None], "roc_auc_ovr_macro": None,
                                   "calibration": {"ece": 0.1}, "per_class": {"pre": {"recall": 0.7, "f1": 0.6}}}}}
    assert tracking.evaluation_metrics(metrics) == {
        "test/n": 60.0, "test/accuracy": 0.5, "test/accuracy_ci95_low": 0.4, "test/accuracy_ci95_high": 0.6,
        "test/macro_f1": 0.45, "test/macro_f1_ci95_low": 0.35, "test/ece": 0.1, "test/pre/recall": 0.7,
        "test/pre/f1": 0.6}
    context = {"chance": 0.3, "variants": {"cells_removed": {"all": {"accuracy": 0.35, "ci95": [0.3, 0.4], "n": 9}}},
               "stain_swapped": {"follows_donor": {"all": {"share": 0.2}}}}
    assert tracking.context_metrics(context) == {
        "context/cells_removed/accuracy": 0.35, "context/cells_removed/accuracy_ci95_low": 0.3,
        "context/cells_removed/accuracy_ci95_high": 0.4, "context/chance": 0.3,
        "context/stain_swapped/follows_donor": 0.2}
    rows = [{"epoch": "1", "train_loss": "0.5", "val_acc": "", "lr": "nan"}, {"epoch": "x", "train_loss": "1"}]
    assert list(tracking.history_metrics(rows)) == [("train_loss", 0.5, 1)]
    assert tracking.config_params({"lr": 0.003, "methods": ["a", "b"], "fold": None}) == {
        "lr": "0.003", "methods": '["a", "b"]', "fold": "None"}


def test_decks_are_found_by_the_dashboards_names(tmp_path: Path) -> None:
    run = tmp_path / "outputs" / "sweeps" / "s" / "trials" / "t1"
    run.mkdir(parents=True)
    exports = tmp_path / "outputs" / "exports"
    exports.mkdir()
    for name in ("20250101-120000-sweeps-s-trials-t1.pptx", "20250102-120000-sweeps-s-trials-t1.pptx",
                 "20250102-120000-sweeps-s-trials-t1.html", "20250103-120000-sweeps-s-trials-t10.pptx"):
        (exports / name).write_bytes(b"x")
    assert [p.name for p in tracking.find_decks(run)] == ["20250102-120000-sweeps-s-trials-t1.pptx",
                                                          "20250102-120000-sweeps-s-trials-t1.html"]
    assert tracking.find_decks(tmp_path / "elsewhere") == []
