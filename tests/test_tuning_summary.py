"""Trial statuses and the choice of the best trial, on stand-in trials (no Ray cluster)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from engine import runs
from tuning.finish import FinishError, format_table, pick_best
from tuning.summary import trial_status


def fake_trial(status: str, **last_result: object) -> SimpleNamespace:
    return SimpleNamespace(trial_id="t_00000", status=status, last_result=last_result)


@pytest.mark.parametrize("status, result, ended, expected", [
    ("TERMINATED", {"run_complete": True, "done": True}, False, "complete"),
    ("RUNNING", {"run_complete": True}, True, "complete"),  # on_trial_complete sees RUNNING
    ("RUNNING", {"epoch": 2, "done": True}, True, "stopped"),  # ASHA: Ray sets done on STOP
    ("TERMINATED", {"epoch": 2, "done": True}, False, "stopped"),
    ("RUNNING", {"epoch": 2}, True, "pending"),  # stopped by an interrupt: resumable
    ("RUNNING", {"epoch": 2}, False, "running"),
    ("PENDING", {}, True, "pending"),
    ("PAUSED", {}, False, "pending"),
    ("ERROR", {"epoch": 1}, False, "error"),
])
def test_trial_status(tmp_path: Path, status: str, result: dict, ended: bool, expected: str) -> None:
    assert trial_status(fake_trial(status, **result), str(tmp_path), ended=ended) == expected


def test_complete_marker_counts_as_complete(tmp_path: Path) -> None:
    runs.mark_complete(tmp_path / "trials" / "t_00000", status="complete")
    assert trial_status(fake_trial("TERMINATED", epoch=3, done=True), str(tmp_path)) == "complete"


def test_pick_best_prefers_complete_trials_with_checkpoints(tmp_path: Path) -> None:
    def row(trial_id: str, status: str, f1: str) -> dict[str, str]:
        return {"trial_id": trial_id, "status": status, "best_val_macro_f1": f1, "run_dir": f"trials/{trial_id}",
                "val_acc": f1, "epochs": "2", "seconds": "5", "param_lr": "0.0031622776"}

    rows = [row("a", "complete", "0.80"), row("b", "stopped", "0.95"), row("c", "complete", "0.90"),
            row("d", "error", ""), row("e", "complete", "0.99")]
    for trial_id in "abc":  # e has no checkpoint: it cannot be evaluated
        (tmp_path / "trials" / trial_id / "checkpoints").mkdir(parents=True)
        (tmp_path / "trials" / trial_id / "checkpoints" / "best.pt").write_bytes(b"")
    assert pick_best(tmp_path, rows)["trial_id"] == "c"
    assert pick_best(tmp_path, [r for r in rows if r["trial_id"] in "bd"])["trial_id"] == "b"
    with pytest.raises(FinishError):
        pick_best(tmp_path, [rows[3]])
    table = format_table(rows, "c").splitlines()
    assert table[0].split()[:3] == ["rank", "trial_id", "status"]
    assert table[1].split()[:2] == ["1", "e"] and table[3].split()[:2] == ["3*", "c"]
    assert "0.003162" in table[1] and table[-1].split()[1] == "d"


def test_finish_explains_by_calling_the_explainer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run that cannot be explained costs the explanations, not the sweep's result (and no SystemExit)."""
    from tuning.finish import explain_best

    (tmp_path / runs.CONFIG).write_text("{}")  # no checkpoint, no data: explain_run raises
    assert explain_best(tmp_path) is False
    assert "explanations of" in caplog.text and not (tmp_path / runs.CAMS).exists()
