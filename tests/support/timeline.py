"""Where a test run's time went, from the file ``TEST_TIMELINE=FILE make test`` writes (tests/conftest.py).

    python -m tests.support.timeline FILE [--top 30]

Prints each worker's busy time and the run's wall time, then the longest tests with the worker that ran
them and when they started (seconds from the run's first test), so a worker idle at the end or a long
test started late shows at once; then the tests that used the most CPU (the worker's own and that of the
processes it started and reaped during the test: on 2 cores a test's CPU is what slows every other test).
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path
from typing import NamedTuple


class Span(NamedTuple):
    worker: str
    test: str
    start: float  # seconds from the run's first test
    end: float
    cpu: float  # CPU seconds; 0 in files written without the CPU column


def read(path: Path) -> list[Span]:
    """One span per finished test."""
    starts: dict[tuple[str, str], tuple[float, float]] = {}
    spans = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        stamp, worker, event, nodeid = fields[0], fields[1], fields[2], fields[-1]
        cpu = float(fields[3]) if len(fields) == 5 else 0.0
        if event == "start":
            starts[worker, nodeid] = (float(stamp), cpu)
        elif (worker, nodeid) in starts:
            started, cpu_before = starts.pop((worker, nodeid))
            spans.append(Span(worker, nodeid, started, float(stamp), cpu - cpu_before))
    if any(s.worker != "main" for s in spans):  # under xdist the controller logs every worker's tests again
        spans = [span for span in spans if span.worker != "main"]
    first = min(s.start for s in spans)
    return [s._replace(start=s.start - first, end=s.end - first) for s in spans]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    spans = read(args.file)
    wall = max(s.end for s in spans)
    busy: dict[str, float] = collections.defaultdict(float)
    last: dict[str, float] = collections.defaultdict(float)
    for span in spans:
        busy[span.worker] += span.end - span.start
        last[span.worker] = max(last[span.worker], span.end)
    print(f"wall {wall:.0f} s from the first test to the last; CPU {sum(s.cpu for s in spans):.0f} s in tests")
    for worker in sorted(busy):
        print(f"  {worker}: in tests {busy[worker]:.0f} s, last test ended at {last[worker]:.0f} s")
    print(f"\nlongest {args.top} (seconds, CPU seconds, worker, started at):")
    for s in sorted(spans, key=lambda s: s.start - s.end)[: args.top]:
        print(f"  {s.end - s.start:6.1f} {s.cpu:6.1f}  {s.worker:>4}  @{s.start:5.0f}  {s.test}")
    if any(s.cpu for s in spans):
        print(f"\nmost CPU {args.top} (CPU seconds, seconds, worker):")
        for s in sorted(spans, key=lambda s: -s.cpu)[: args.top]:
            print(f"  {s.cpu:6.1f} {s.end - s.start:6.1f}  {s.worker:>4}  {s.test}")
        files: dict[str, float] = collections.defaultdict(float)
        for s in spans:
            files[s.test.split("::")[0]] += s.cpu
        print("\nCPU seconds per file:")
        for name, cpu in sorted(files.items(), key=lambda f: -f[1])[: args.top]:
            print(f"  {cpu:6.1f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
