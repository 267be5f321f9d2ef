"""Exclusive locks that die with their holder, and whether a recorded process still runs.

``try_lock(path)`` (refuse at once) and ``wait_lock(path)`` (queue up) take an ``fcntl.flock`` on
an open file; every lock of the project goes through them (a run's training, an explain's work
folder, the decoded cache, a sweep's driver, review marks). The kernel drops it when the holding
process ends, however it ends (``kill -9`` included), so a lock is never left stuck and there is
nothing to clean up: the file stays (unless ``remove``), and while it is held it names its holder
(pid, host, process start time, what for) for the message of whoever is refused.

What flock does and does not promise:

* It is held per open file, not per process: a second ``open()`` of the same file conflicts even
  in the holder's own process (so threads exclude each other too), while a child made by
  ``fork`` shares the holder's open file and keeps the lock alive as long as it lives.
* On one host it is exact. On shared network storage it depends on the file system: Linux NFS
  (v3 through the lock manager, v4 natively) turns flock into locks every client sees, and so do
  CephFS, GPFS and Lustre mounted with ``-o flock``; others keep flock local to each host or
  refuse it (``LockUnsupported``). Where it is local, it guards one host only: callers that care
  (the sweep driver) also record host, pid and a heartbeat and check those.

Standard library only: the dashboard and the engine may both import it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

# flock failing with one of these means: this file system has no (usable) flock.
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LockHeld(RuntimeError):
    """The lock is held by another open file; ``holder`` is its record ({} if unreadable)."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path = Path(path)
        self.holder = holder
        who = f"pid {holder.get('pid')} on host {holder.get('host')}" if holder else "another process"
        super().__init__(f"{path} is locked by {who}")


class LockUnsupported(OSError):
    """The file system refuses flock (some network file systems)."""


def this_host() -> str:
    return socket.gethostname()


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None (gone, or no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return text[text.rindex(")") + 2:].split()


def process_start_time(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot (field 22 of /proc/<pid>/stat); None without /proc.

    A pid and its start time name one process for good: pids are reused, start times are not.
    """
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def process_alive(pid: Any, started: str | None = None) -> bool:
    """Whether process ``pid`` of this host still runs (and, given ``started``, is still the same process)."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's process
    fields = _proc_stat(pid)
    if fields is None:  # it ended since os.kill, or there is no /proc to ask (then os.kill's word stands)
        return not Path("/proc").is_dir()
    if fields[0] in ("Z", "X"):  # ended, not yet reaped by its parent
        return False
    return started is None or len(fields) <= 19 or fields[19] == str(started)


def holder_record(**fields: Any) -> dict[str, Any]:
    """Who holds a lock: this process, plus the caller's fields."""
    pid = os.getpid()
    return {"pid": pid, "host": this_host(), "pid_started": process_start_time(pid),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}


def read_holder(path: Path | str) -> dict[str, Any]:
    """The record a lock's holder wrote into it ({} when none can be read)."""
    try:
        data = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _holder_soon(path: Path, wait_s: float = 0.5) -> dict[str, Any]:
    """The holder's record, waiting briefly for a holder that has just taken the lock to write it."""
    deadline = time.monotonic() + wait_s
    while not (holder := read_holder(path)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return holder


class Lock:
    """A held lock; ``release()`` (or leaving a ``with`` block, or the process ending) drops it."""

    def __init__(self, path: Path, handle: IO[str], remove: bool = False) -> None:
        self.path = path
        self._handle: IO[str] | None = handle
        self._remove = remove

    @property
    def held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        if self._handle is not None:
            if self._remove:  # before letting go: see _take for why the order matters
                self.path.unlink(missing_ok=True)
            self._handle.close()  # closing the file drops the flock
            self._handle = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _take(path: Path | str, blocking: bool, fields: dict[str, Any], *, create: bool = True,
          remove: bool = False) -> Lock:
    path = Path(path)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        # "a+": opening never truncates, so a waiting or refused process cannot erase the holder's record.
        handle = open(path, "a+" if create else "r+")  # noqa: SIM115 (the Lock owns the file: closing it releases)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            raise LockHeld(path, _holder_soon(path)) from None
        except OSError as exc:
            handle.close()
            if exc.errno in _UNSUPPORTED:
                if remove and create:
                    path.unlink(missing_ok=True)  # a file that cannot be locked must not pass for a holder's
                raise LockUnsupported(exc.errno, f"{path}: the file system does not support flock ({exc.strerror})") \
                    from None
            raise
        except BaseException:
            handle.close()
            raise
        if not remove or _still_named(handle, path):
            break
        # A holder that removes its file on release may have done so between our open and our flock: we
        # would hold a file nobody else can find. Only the file the name leads to counts.
        handle.close()
        if not create:
            raise FileNotFoundError(errno.ENOENT, "lock file removed by its holder", str(path))
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder_record(**fields)) + "\n")
        handle.flush()
    except OSError:
        pass  # the record only improves messages; the lock itself is held
    return Lock(path, handle, remove)


def _still_named(handle: IO[str], path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def try_lock(path: Path | str, *, create: bool = True, remove: bool = False, **fields: Any) -> Lock:
    """Take the lock at ``path`` now, or raise ``LockHeld`` naming its holder. ``fields`` go into the record.

    ``remove``: the file is removed on release, so that while it exists someone holds it or died holding it
    (run folders use that: a left-over lock file marks an interrupted training or explain). ``create=False``
    takes an existing lock file only (FileNotFoundError otherwise), to claim what a dead holder left.
    """
    return _take(path, False, fields, create=create, remove=remove)


def wait_lock(path: Path | str, **fields: Any) -> Lock:
    """Take the lock at ``path``, waiting for its holder to release it (or to die)."""
    return _take(path, True, fields)
