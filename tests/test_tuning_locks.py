"""One driver per sweep folder, and telling a running sweep from a dead one (no Ray cluster).

The sweep's Ray part is replaced by a stand-in that blocks, so these tests exercise exactly the
folder claim, the lock and the heartbeat: two sweeps under one name, ``--resume`` and ``finish``
of a running sweep, a driver killed with SIGKILL, and the dashboard's Sweeps page.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import locks
from tests.support import synthetic
from tuning import layout, liveness
from tuning import sweep as sweep_module
from tuning.cli import main
from tuning.sweep import SweepError, SweepOptions

REPO = Path(__file__).resolve().parents[1]

# A sweep driver whose trials never end (run_trials blocks), with a fast heartbeat. It says "trials" on
# stdout when its trials start: sweep.json records it as the running driver by then.
DRIVER = r"""
import sys, time
from pathlib import Path
from tuning import liveness, sweep
liveness.HEARTBEAT_EVERY_S = 0.5
sweep.warm_cache = lambda *a, **k: None
sweep.init_ray = lambda *a, **k: None
sweep.run_trials = lambda *a, **k: (print("trials", flush=True), time.sleep(600))
sweep.run_sweep(sweep.SweepOptions(space="tiny", data=Path(sys.argv[1]), out=Path(sys.argv[2]), name="s",
                                   explain=False))
"""


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The next line ``proc`` writes on its stdout pipe, stripped; "" when it ends or says nothing in time."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""


def next_heartbeat(sweep_json: Path, after: str, timeout: float) -> dict[str, Any]:
    """sweep.json once its driver has written a heartbeat other than ``after`` (or as it is at ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        info = json.loads(sweep_json.read_text())
        if info["heartbeat_at"] != after or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def iso(seconds_ago: float = 0) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).isoformat(timespec="seconds")


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """run_sweep without Ray: run_trials blocks until ``release`` is set and records its folder in ``started``."""
    state: dict[str, Any] = {"release": threading.Event(), "started": []}

    def run_trials(opts: Any, space: Any, info: Any, sweep_dir: Path, *args: Any, **kwargs: Any) -> None:
        state["started"].append(sweep_dir)
        state["release"].wait(60)

    monkeypatch.setattr(sweep_module, "init_ray", lambda *a, **k: None)
    monkeypatch.setattr(sweep_module, "warm_cache", lambda *a, **k: None)
    monkeypatch.setattr(sweep_module, "settle_interrupted", lambda *a, **k: None)
    monkeypatch.setattr(sweep_module, "run_trials", run_trials)
    yield state
    state["release"].set()


# ----------------------------------------------------------------------------- the liveness rule


def test_liveness_rule() -> None:
    host, now = socket.gethostname(), time.time()
    alive = {"status": layout.SWEEP_RUNNING, "host": host, "pid": os.getpid(),
             "pid_started": locks.process_start_time(os.getpid()), "heartbeat_at": iso(), "heartbeat_every_s": 10}
    assert liveness.is_running(alive, now=now)
    assert liveness.shown_status(alive) == layout.SWEEP_RUNNING
    assert not liveness.is_running({**alive, "status": layout.SWEEP_COMPLETE}, now=now)
    assert liveness.shown_status({**alive, "status": layout.SWEEP_INTERRUPTED}) == layout.SWEEP_INTERRUPTED
    dead = {**alive, "pid": dead_pid(), "pid_started": None}
    assert not liveness.is_running(dead, now=now)
    assert liveness.shown_status(dead) == liveness.STOPPED == "stopped (driver not running)"
    # The pid was reused by another process: its start time gives it away.
    assert not liveness.is_running({**alive, "pid_started": "1"}, now=now)
    assert not liveness.is_running({**alive, "heartbeat_at": iso(61)}, now=now)  # six beats missed
    assert liveness.is_running({**alive, "heartbeat_at": iso(50)}, now=now)
    # Another host's pid cannot be checked: a fresh heartbeat is all there is.
    elsewhere = {**alive, "host": "another-host", "pid": dead_pid()}
    assert liveness.is_running(elsewhere, now=now)
    assert not liveness.is_running({**elsewhere, "heartbeat_at": iso(120)}, now=now)
    # Written before heartbeats existed, or garbled: not known to run.
    legacy = {"status": layout.SWEEP_RUNNING, "started_at": "2026-01-01T00:00:00"}
    assert not liveness.is_running(legacy, now=now)
    assert not liveness.is_running({**alive, "heartbeat_at": "yesterday"}, now=now)
    # A damaged sweep.json cannot keep a dead sweep running: a heartbeat from the future (beyond clock skew)
    # or a period of days count for nothing more than the readers' cap.
    assert liveness.is_running({**elsewhere, "heartbeat_at": iso(-30)}, now=now)  # clocks seconds apart
    assert not liveness.is_running({**elsewhere, "heartbeat_at": iso(-86400)}, now=now)
    lazy = {**elsewhere, "heartbeat_every_s": 86400}
    assert liveness.is_running({**lazy, "heartbeat_at": iso(300)}, now=now)  # within six capped periods
    assert not liveness.is_running({**lazy, "heartbeat_at": iso(3600)}, now=now)


def test_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with locks.try_lock(path, purpose="test") as held:
        assert held.path == path
        with pytest.raises(locks.LockHeld) as info:
            locks.try_lock(path)
        assert info.value.holder["pid"] == os.getpid() and info.value.holder["purpose"] == "test"
    locks.try_lock(path).release()  # released: free again

    hold = ("import sys, time; from engine import locks; "
            "held = locks.try_lock(sys.argv[1]); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(locks.LockHeld):
            locks.try_lock(path)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.kill()
    locks.try_lock(path).release()  # a killed holder leaves nothing stuck


def test_a_removing_lock_marks_only_live_or_dead_holders(tmp_path: Path) -> None:
    """remove=True (run folders' .train.lock and explain's work locks): gone after a clean release, left
    behind by a killed holder, and claimable from it with create=False."""
    path = tmp_path / "run.lock"
    with locks.try_lock(path, remove=True):
        assert path.exists()
        with pytest.raises(locks.LockHeld):
            locks.try_lock(path, create=False, remove=True)
    assert not path.exists()
    with pytest.raises(FileNotFoundError):
        locks.try_lock(path, create=False)

    hold = ("import sys, time; from engine import locks; "
            "held = locks.try_lock(sys.argv[1], remove=True); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.kill()
    assert path.exists()  # what a killed holder leaves: the sign of an interrupted job
    with locks.try_lock(path, create=False, remove=True):
        pass
    assert not path.exists()


def test_a_lock_file_removed_under_a_waiter_is_not_taken(tmp_path: Path, monkeypatch) -> None:
    """Between a taker's open and its flock the holder may release and remove the file: the taker must
    not hold that orphan (nobody else could see it) but the file the name leads to now."""
    path = tmp_path / "run.lock"
    real_flock, calls = locks.fcntl.flock, []

    def flock_after_removal(fd: int, op: int) -> None:
        calls.append(fd)
        if len(calls) == 1:  # the holder finishes: removes the file we opened
            path.unlink()
            path.write_text("")  # and the next taker creates a new one
        real_flock(fd, op)

    path.write_text("")
    monkeypatch.setattr(locks.fcntl, "flock", flock_after_removal)
    with locks.try_lock(path, remove=True) as held:
        assert len(calls) == 2  # the first attempt locked the orphan, noticed, and tried again
        assert os.path.samestat(os.fstat(held._handle.fileno()), os.stat(path))


# ----------------------------------------------------------------------------- one driver per sweep


@pytest.mark.parametrize("name", ["same", None])
def test_two_sweeps_started_together_under_one_name_one_is_refused(
        prepared_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_ray: dict[str, Any],
        name: str | None) -> None:
    if name is None:  # the default name SPACE-YYYYmmdd-HHMMSS: two sweeps started in one second share it
        real_strftime = time.strftime
        monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-120000" if fmt == "%Y%m%d-%H%M%S"
                            else real_strftime(fmt, *a))
    # Both drivers look for the folder before either has written anything into it.
    barrier = threading.Barrier(2)
    real_resolve = sweep_module.resolve_folder

    def resolve_together(*args: Any, **kwargs: Any) -> Path:
        folder = real_resolve(*args, **kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=10)
        return folder

    monkeypatch.setattr(sweep_module, "resolve_folder", resolve_together)
    outcomes: list[Any] = []

    def start() -> None:
        try:
            outcomes.append(sweep_module.run_sweep(SweepOptions(space="tiny", data=prepared_tiny, out=tmp_path,
                                                                name=name, explain=False)))
        except SweepError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(no_ray["started"]) + len(outcomes) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    no_ray["release"].set()
    for thread in threads:
        thread.join(60)
    refused = [o for o in outcomes if isinstance(o, SweepError)]
    assert len(no_ray["started"]) == 1 and len(refused) == 1, outcomes
    message = str(refused[0])
    assert "running" in message and str(os.getpid()) in message and "--name" in message
    folder = no_ray["started"][0]
    assert json.loads((folder / layout.SWEEP_JSON).read_text())["status"] == layout.SWEEP_INTERRUPTED


def test_resume_or_finish_of_a_running_sweep_is_refused_and_of_a_killed_one_works(
        prepared_tiny: Path, tmp_path: Path, no_ray: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    no_ray["release"].set()  # a resume that is not refused runs its (stand-in) trials at once
    sweep = tmp_path / "s"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(prepared_tiny), str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert read_line(driver, 60) == "trials", "the driver ended, or its trials did not start"
        info = json.loads((sweep / layout.SWEEP_JSON).read_text())
        assert (info["status"], info["host"], info["pid"]) == (layout.SWEEP_RUNNING, socket.gethostname(), driver.pid)
        later = next_heartbeat(sweep / layout.SWEEP_JSON, info["heartbeat_at"], 30)
        assert later["heartbeat_at"] != info["heartbeat_at"], "no heartbeat"
        assert liveness.is_running(later)

        with pytest.raises(SweepError, match=rf"is running .*pid {driver.pid}"):
            sweep_module.run_sweep(SweepOptions(space="tiny", name="s", out=tmp_path, resume=True))
        with pytest.raises(SweepError, match="running"):
            sweep_module.run_sweep(SweepOptions(space="tiny", data=prepared_tiny, name="s", out=tmp_path))
        assert main(["finish", str(sweep)]) == 2
        assert "running" in capsys.readouterr().err
        assert not no_ray["started"]

        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
    finally:
        driver.kill()
        driver.stdout.close()
    info = json.loads((sweep / layout.SWEEP_JSON).read_text())
    assert info["status"] == layout.SWEEP_RUNNING  # what a killed driver leaves behind
    assert not liveness.is_running(info) and liveness.shown_status(info) == liveness.STOPPED

    result = sweep_module.run_sweep(SweepOptions(space="tiny", name="s", out=tmp_path, resume=True))
    assert no_ray["started"] == [sweep] and result.status == layout.SWEEP_INTERRUPTED
    info = json.loads((sweep / layout.SWEEP_JSON).read_text())
    assert info["pid"] == os.getpid() and info["status"] == layout.SWEEP_INTERRUPTED


# ----------------------------------------------------------------------------- the Sweeps page


def sweeps_page(root: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ALL_OUTPUTS", str(root))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/sweeps.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_sweeps_page_tells_a_dead_driver_from_a_live_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "sweeps" / "x"
    synthetic.make_sweep(folder, 4, np.random.default_rng(0), str(tmp_path), status=layout.SWEEP_RUNNING)
    info = json.loads((folder / layout.SWEEP_JSON).read_text())
    driver = {"host": socket.gethostname(), "heartbeat_at": iso(), "heartbeat_every_s": 10}

    (folder / layout.SWEEP_JSON).write_text(json.dumps({**info, **driver, "pid": dead_pid()}))
    at = sweeps_page(tmp_path, monkeypatch)
    shown = " ".join(str(m.value) for m in at.metric) + " ".join(c.value for c in at.caption)
    assert "stopped (driver not running)" in shown and "--resume" in shown
    assert "refreshes every" not in shown

    (folder / layout.SWEEP_JSON).write_text(json.dumps({**info, **driver, "pid": os.getpid(),
                                                        "pid_started": locks.process_start_time(os.getpid())}))
    at = sweeps_page(tmp_path, monkeypatch)
    shown = " ".join(str(m.value) for m in at.metric) + " ".join(c.value for c in at.caption)
    assert "refreshes every" in shown and liveness.STOPPED not in shown
