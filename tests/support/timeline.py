"""Where a test run's time went, from the file ``TEST_TIMELINE=FILE make test`` writes (tests/conftest.py).

    python -m tests.support.timeline FILE [--top 30]

Prints each worker's busy time and the run's wall time, then the longest tests with the worker that ran
them and when they started (seconds from the run's first test), so a worker idle at the end or a long
test started late shows at once.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path


def read(path: Path) -> list[tuple[str, str, float, float]]:
    """(worker, test, start, end) per finished test, times in seconds from the first start."""
    starts: dict[tuple[str, str], float] = {}
    spans = []
    for line in path.read_text(encoding="utf-8").splitlines():
        stamp, worker, event, nodeid = line.split("\t", 3)
        if event == "start":
            starts[worker, nodeid] = float(stamp)
        elif (worker, nodeid) in starts:
            spans.append((worker, nodeid, starts.pop((worker, nodeid)), float(stamp)))
    if any(w != "main" for w, *_ in spans):  # under xdist the controller logs every worker's tests again
        spans = [span for span in spans if span[0] != "main"]
    first = min(s for _, _, s, _ in spans)
    return [(w, n, s - first, e - first) for w, n, s, e in spans]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    spans = read(args.file)
    wall = max(e for *_, e in spans)
    busy: dict[str, float] = collections.defaultdict(float)
    last: dict[str, float] = collections.defaultdict(float)
    for worker, _, start, end in spans:
        busy[worker] += end - start
        last[worker] = max(last[worker], end)
    print(f"wall {wall:.0f} s from the first test to the last")
    for worker in sorted(busy):
        print(f"  {worker}: in tests {busy[worker]:.0f} s, last test ended at {last[worker]:.0f} s")
    print(f"\nlongest {args.top} (seconds, worker, started at):")
    for worker, nodeid, start, end in sorted(spans, key=lambda s: s[2] - s[3])[: args.top]:
        print(f"  {end - start:6.1f}  {worker:>4}  @{start:5.0f}  {nodeid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
