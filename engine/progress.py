"""Progress bars: tqdm where it is installed, a plain pass-through on a bare GPU machine; ``parallel_map``, a
worker pool that reports through one."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], **kwargs: Any) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr; silent when tqdm is missing or disabled."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the training path must run on stock PyTorch alone
        yield from iterable
        return
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 1.0)
    yield from tqdm(iterable, **kwargs)


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _worker_signals() -> None:
    # Ctrl+C reaches every process of the terminal's group: the parent alone decides what to do with it
    # (engine.errors.interruptible), and a SIGTERM sent to a worker ends it as usual.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def parallel_map(fn: Any, jobs: list[Any], desc: str) -> Iterator[Any]:
    """``fn`` over ``jobs`` in worker processes, in order, with a progress bar.

    When the parent is interrupted (a signal, an error) the jobs not started yet are cancelled, so a
    stop waits for the chunks under way only, not for the whole folder.
    """
    with ProcessPoolExecutor(_workers(), initializer=_worker_signals) as pool:
        try:
            yield from progress(pool.map(fn, jobs, chunksize=32), total=len(jobs), desc=desc, unit="img")
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
