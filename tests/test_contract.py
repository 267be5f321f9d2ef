"""The folder contracts (engine.runs, tuning.layout): what the engine writes is what the dashboard reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from dashboard import loaders
from engine import runs
from engine.config import build_config
from engine.train import fit, read_history
from tests.support import synthetic
from tuning import layout

REPO = Path(__file__).resolve().parents[1]


def status_of(root: Path, run: Path) -> loaders.RunInfo:
    """The run as the dashboard's discovery reports it."""
    by_path = {Path(r.path): r for r in loaders.scan(root)["runs"]}
    return by_path[run.resolve()]


def test_a_run_stopped_early_shows_as_stopped_early(prepared_tiny: Path, tmp_path: Path) -> None:
    # A learning rate too small to change the weights: val macro-F1 stops improving at once, and
    # patience 1 ends the run long before its 10 epochs.
    cfg = build_config("tiny", {"epochs": 10, "early_stop_patience": 1, "lr": 1e-9})
    run = tmp_path / "runs" / "patience"
    fit(cfg, prepared_tiny, run, preset="tiny")
    assert len(read_history(run)) < cfg.epochs
    assert runs.complete_status(run) == runs.STATUS_EARLY_STOPPED

    info = status_of(tmp_path, run)
    assert info.status == loaders.RUN_STOPPED
    assert info.display.endswith("(stopped early)")


def test_a_run_that_trained_every_epoch_shows_as_complete(trained_tiny_run: Path) -> None:
    assert runs.complete_status(trained_tiny_run) == runs.STATUS_COMPLETE
    info = status_of(trained_tiny_run.parent, trained_tiny_run)
    assert (info.status, info.evaluated, info.has_checkpoint) == (loaders.RUN_COMPLETE, True, True)
    assert info.display == info.label


def test_complete_status_of_markers(tmp_path: Path) -> None:
    assert runs.complete_status(tmp_path) is None
    runs.mark_complete(tmp_path, status=runs.STATUS_EARLY_STOPPED)
    assert runs.complete_status(tmp_path) == runs.STATUS_EARLY_STOPPED
    (tmp_path / runs.COMPLETE).write_text("{half")  # the marker exists: training ended
    assert runs.complete_status(tmp_path) == runs.STATUS_COMPLETE


def test_synthetic_outputs_use_the_contract(tmp_path: Path) -> None:
    """The benchmark's fabricated sweep reads back as tuning would have written it."""
    made = synthetic.make_outputs(tmp_path, n_trials=20)
    found = loaders.scan(tmp_path)
    trials = loaders.trials(tmp_path, made["sweep"])
    assert set(trials["status"]) == set(layout.TRIAL_STATUSES)
    by_id = {r.label.rsplit("/", 1)[-1]: r for r in found["runs"] if r.sweep}
    for trial_id, state in zip(trials["trial_id"], trials["status"], strict=True):
        folder = made["sweep"] / layout.TRIALS / trial_id
        # As in a real sweep: COMPLETE only where training ended, never for a trial ASHA cut.
        assert runs.is_complete(folder) == (state == layout.TRIAL_COMPLETE)
        if state in (layout.TRIAL_COMPLETE, layout.TRIAL_STOPPED):
            early = runs.complete_status(folder) == runs.STATUS_EARLY_STOPPED
            expected = loaders.RUN_STOPPED if state == layout.TRIAL_STOPPED or early else loaders.RUN_COMPLETE
            assert by_id[trial_id].status == expected
    assert any(runs.complete_status(p.parent) == runs.STATUS_EARLY_STOPPED
               for p in made["sweep"].glob(f"{layout.TRIALS}/*/{runs.COMPLETE}"))
    assert list(loaders.cams_index(tmp_path, made["best"]).columns) == list(runs.INDEX_COLUMNS)
    assert list(loaders.predictions(tmp_path, made["best"]).columns) == list(runs.PREDICTION_COLUMNS)
    assert list(loaders.history(tmp_path, made["best"]).columns) == list(runs.HISTORY_COLUMNS)
    assert synthetic.cell_image("pre", np.random.default_rng(0)).shape == (64, 64, 3)


def test_contract_modules_need_neither_torch_nor_ray() -> None:
    code = ("import sys, engine.runs, tuning.layout, dashboard.loaders; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
