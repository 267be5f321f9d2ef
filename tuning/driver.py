"""One driver per sweep folder: the folder's lock, and sweep.json kept current with a heartbeat.

``claim(sweep_dir, ...)`` takes ``sweep.lock`` before anything is written into the folder, so of
two drivers started under one name (the same ``--name``, or the default name in the same second)
exactly one runs, and ``--resume`` or ``finish`` of a sweep whose driver still runs is refused.
The lock is an flock (engine/locks.py): the kernel drops it when the driver ends, however it
ends, so a killed sweep can be resumed at once. Because flock may be local to one host on shared
storage, ``claim`` also refuses while sweep.json shows a live driver (tuning/liveness.py).

``SweepRecord`` is the driver's only writer of sweep.json: the main thread's updates and the
heartbeat thread's go through one lock, so neither overwrites the other's fields.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine import locks, runs
from engine.errors import EngineError

from . import layout, liveness

log = logging.getLogger(__name__)


class SweepError(EngineError, RuntimeError):
    """A sweep that cannot start or resume as asked."""


def _read_info(sweep_dir: Path) -> dict[str, Any]:
    try:
        info = runs.read_json(sweep_dir / layout.SWEEP_JSON)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _running_message(sweep_dir: Path, who: str, *, resume: bool, default_name: bool) -> str:
    message = f"sweep {sweep_dir.name!r} in {sweep_dir.parent} is running ({who})"
    if resume:
        return f"{message}: --resume continues a sweep only once its driver has stopped"
    if default_name:
        message += "; two sweeps started in the same second get the same default name"
    return f"{message}; choose another --name"


def claim(sweep_dir: Path, *, resume: bool, default_name: bool = False,
          purpose: str = "sweep driver") -> locks.Lock | None:
    """Make this process the driver of ``sweep_dir`` (created if needed), or raise SweepError.

    A new sweep (``resume`` False) also needs a folder without sweep.json; a resumed one needs
    a driver that is no longer alive. The returned lock (None where the file system has no
    locks) must be held until the driver is done.
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = locks.try_lock(sweep_dir / layout.SWEEP_LOCK, purpose=purpose)
    except locks.LockHeld as held:
        info = _read_info(sweep_dir)
        who = (liveness.describe_driver(info) if info.get("pid") == held.holder.get("pid")
               else f"pid {held.holder.get('pid', '?')} on host {held.holder.get('host', '?')}")
        raise SweepError(_running_message(sweep_dir, who, resume=resume, default_name=default_name)) from None
    except locks.LockUnsupported:
        log.warning("%s: the file system does not support locks; only the heartbeat in %s tells whether "
                    "another driver runs", sweep_dir, layout.SWEEP_JSON)
        lock = None
    try:
        info = _read_info(sweep_dir)
        # The lock may be local to each host on shared storage: a driver elsewhere shows in its heartbeat.
        if liveness.is_running(info):
            raise SweepError(_running_message(sweep_dir, liveness.describe_driver(info), resume=resume,
                                              default_name=default_name)
                             + f" (if it was killed on another host, its heartbeat goes stale within "
                               f"{liveness.stale_after(info):.0f} s)")
        if not resume and (sweep_dir / layout.SWEEP_JSON).exists():
            raise SweepError(f"{sweep_dir} already holds a sweep; use --resume to continue it or another --name")
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


@contextmanager
def exclusive(sweep_dir: Path) -> Iterator[None]:
    """Hold an existing sweep folder for a step outside a driver (``python -m tuning finish``)."""
    if not Path(sweep_dir).is_dir():
        raise SweepError(f"{sweep_dir}: no such sweep folder")
    lock = claim(sweep_dir, resume=True, purpose="finish")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


class SweepRecord:
    """sweep.json while its driver runs: ``update(**fields)`` from the driver, a heartbeat from a thread."""

    def __init__(self, sweep_dir: Path, info: dict[str, Any]) -> None:
        self.path = Path(sweep_dir) / layout.SWEEP_JSON
        self.info = dict(info)
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        self.info["heartbeat_at"] = liveness.stamp()
        runs.write_json(self.path, self.info)

    def update(self, **fields: Any) -> None:
        with self._write_lock:
            self.info.update(fields)
            self._write()

    def start(self) -> None:
        """Record this process as the driver and beat every liveness.HEARTBEAT_EVERY_S seconds."""
        self.update(**liveness.driver_fields())
        every = float(self.info["heartbeat_every_s"])
        self._thread = threading.Thread(target=self._beat, args=(every,), name="sweep-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                with self._write_lock:
                    self._write()
            except OSError:  # a full disk or a network hiccup: the next beat tries again
                log.warning("could not write the heartbeat to %s", self.path, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
