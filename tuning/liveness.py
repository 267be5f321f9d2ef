"""Is a sweep's driver alive? The one rule for the dashboard and ``--resume``.

While it runs, the driver records in sweep.json who it is (``host``, ``pid``, ``pid_started``) and
rewrites ``heartbeat_at`` every ``heartbeat_every_s`` seconds (tuning/driver.py). A killed driver
cannot write "interrupted", so sweep.json keeps saying "running"; readers therefore believe
"running" only while

* the heartbeat is fresh: younger than STALE_BEATS heartbeat periods (a minute by default), and
* read on the driver's own host: its pid is alive and is still the same process (start time).

On its own host a killed driver is seen dead at once; from another host (a dashboard on a
laptop, ``--resume`` on another node) once its heartbeat is a minute old. Clocks of different
hosts are assumed to agree within seconds (NTP).

Standard library and engine.locks only: the dashboard imports it without Ray.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from engine import locks

from .layout import SWEEP_RUNNING

HEARTBEAT_EVERY_S = 10.0  # the driver's heartbeat period (recorded in sweep.json; readers use the recorded one)
STALE_BEATS = 6  # heartbeats missed before a driver counts as gone
# A recorded period above this is not a driver's (tuning/driver.py writes HEARTBEAT_EVERY_S): readers cap it,
# so that a damaged or hand-edited sweep.json cannot keep a dead sweep "running" for days.
MAX_HEARTBEAT_EVERY_S = 60.0
STOPPED = "stopped (driver not running)"  # what readers show for a "running" sweep whose driver is gone


def stamp(now: float | None = None) -> str:
    """A heartbeat time: ISO 8601 in UTC, so hosts in other time zones compare it right."""
    return datetime.fromtimestamp(time.time() if now is None else now, UTC).isoformat(timespec="milliseconds")


def driver_fields(every_s: float | None = None) -> dict[str, Any]:
    """sweep.json's driver fields for this process, with a fresh heartbeat."""
    pid = os.getpid()
    return {"host": locks.this_host(), "pid": pid, "pid_started": locks.process_start_time(pid),
            "heartbeat_at": stamp(), "heartbeat_every_s": HEARTBEAT_EVERY_S if every_s is None else every_s}


def heartbeat_age(info: Mapping[str, Any], now: float | None = None) -> float | None:
    """Seconds since the driver's last heartbeat; None when sweep.json has none (or a garbled one)."""
    try:
        beat = datetime.fromisoformat(str(info["heartbeat_at"]))
    except (KeyError, TypeError, ValueError):
        return None
    if beat.tzinfo is None:
        return None
    return (time.time() if now is None else now) - beat.timestamp()


def stale_after(info: Mapping[str, Any]) -> float:
    """Seconds without a heartbeat after which the driver counts as gone."""
    try:
        every = float(info.get("heartbeat_every_s") or HEARTBEAT_EVERY_S)
    except (TypeError, ValueError):
        every = HEARTBEAT_EVERY_S
    return STALE_BEATS * min(max(every, 0.1), MAX_HEARTBEAT_EVERY_S)


def driver_alive(info: Mapping[str, Any], now: float | None = None) -> bool:
    """Whether the driver recorded in ``info`` (sweep.json) still runs, by the rule above."""
    age, stale = heartbeat_age(info, now), stale_after(info)
    # A heartbeat from further in the future than clocks disagree is no evidence of life either.
    if age is None or not -stale <= age <= stale:
        return False
    if info.get("host") == locks.this_host():
        return locks.process_alive(info.get("pid"), info.get("pid_started"))
    return True  # another host's pid cannot be checked from here: the fresh heartbeat is the evidence


def is_running(info: Mapping[str, Any], now: float | None = None) -> bool:
    """sweep.json says running and its driver is alive."""
    return info.get("status") == SWEEP_RUNNING and driver_alive(info, now)


def shown_status(info: Mapping[str, Any], now: float | None = None) -> str:
    """The status to show: the recorded one, except STOPPED for a "running" sweep whose driver is gone."""
    status = str(info.get("status", "unknown"))
    return STOPPED if status == SWEEP_RUNNING and not driver_alive(info, now) else status


def describe_driver(info: Mapping[str, Any], now: float | None = None) -> str:
    """'pid 123 on host gpu-1, last heartbeat 4 s ago', for messages."""
    age = heartbeat_age(info, now)
    beat = f"last heartbeat {max(age, 0):.0f} s ago" if age is not None else "no heartbeat recorded"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, {beat}"
