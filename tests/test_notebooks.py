"""The example notebooks of docs/notebooks, executed top to bottom by a real Jupyter kernel.

Each runs on the tiny test outputs (a sweep with evaluated and explained trials, built once per test
run) and, where they exist, on the real demo outputs of `make demo` (outputs/sweeps/demo). A cell that
raises fails the test. The notebooks are stored without outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "docs" / "notebooks"
EXPLORE = NOTEBOOKS / "explore-a-run.ipynb"
COMPARE = NOTEBOOKS / "compare-sweep-trials.ipynb"
DEMO_SWEEP = REPO / "outputs" / "sweeps" / "demo"
KERNEL = "all-engine-tests"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A kernelspec for this very Python (the project's venv), installed in a folder of its own and found through
    JUPYTER_PATH, so that no user-wide kernel of another Python runs the notebooks."""
    prefix = tmp_path_factory.mktemp("jupyter")
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", KERNEL],
                   check=True, capture_output=True)
    share = prefix / "share" / "jupyter"
    spec = json.loads((share / "kernels" / KERNEL / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    saved = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(share), saved]))
    yield KERNEL
    if saved is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = saved


def execute(path: Path, kernel: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run the notebook as a user would (from docs/notebooks/), with ``env`` pointing it at its input."""
    for key in ("ALL_RUN", "ALL_SWEEP", "ALL_STAGE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, kernel_name=kernel, timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # CellExecutionError (the cell and its traceback) when a cell raises
    return notebook


def outputs_of(notebook: nbformat.NotebookNode) -> tuple[list[str], int]:
    """The text the cells printed or displayed, and how many figures they drew."""
    texts, figures = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                texts.append(output["text"])
            data = output.get("data", {})
            texts.append(data.get("text/plain", ""))
            figures += "image/png" in data
    return texts, figures


@pytest.mark.parametrize("path", [EXPLORE, COMPARE], ids=lambda p: p.stem)
def test_notebooks_are_stored_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert notebook.metadata["kernelspec"]["name"] == "python3"


def test_explore_a_run_on_an_explained_trial(dashboard_outputs: dict[str, Path], kernel: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    best = dashboard_outputs["best"]
    notebook = execute(EXPLORE, kernel, {"ALL_RUN": str(best), "ALL_STAGE": "early"}, monkeypatch)
    texts, figures = outputs_of(notebook)
    assert any(str(best) in t for t in texts)
    assert any("leukocytes removed" in t for t in texts)  # the context probes' table
    assert figures >= 4  # confusion matrix, the stage's maps, the probes, the model on one image


def test_explore_a_run_finds_the_best_trial_of_a_sweep(dashboard_outputs: dict[str, Path], kernel: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = dashboard_outputs["sweep"]
    notebook = execute(EXPLORE, kernel, {"ALL_SWEEP": str(sweep)}, monkeypatch)
    best = json.loads((sweep / "best.json").read_text())
    assert any(str(sweep / best["run_dir"]) in t for t in outputs_of(notebook)[0])


def test_compare_sweep_trials_on_the_tiny_sweep(dashboard_outputs: dict[str, Path], kernel: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = dashboard_outputs["sweep"]
    notebook = execute(COMPARE, kernel, {"ALL_SWEEP": str(sweep)}, monkeypatch)
    texts, figures = outputs_of(notebook)
    best = json.loads((sweep / "best.json").read_text())
    assert any(f"best trial {best['trial_id']}" in t for t in texts)
    assert figures >= 2  # macro-F1 against the parameters, the learning curves


@pytest.mark.slow
@pytest.mark.parametrize("path", [EXPLORE, COMPARE], ids=lambda p: p.stem)
def test_notebooks_on_the_demo_outputs(path: Path, kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (DEMO_SWEEP / "best.json").is_file():
        pytest.skip(f"no finished demo sweep at {DEMO_SWEEP} (make demo DATA_DIR=... writes it)")
    execute(path, kernel, {"ALL_SWEEP": str(DEMO_SWEEP)}, monkeypatch)
