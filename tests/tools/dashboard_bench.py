"""Page render times on a synthetic outputs folder with a 200-trial sweep (not a test: a benchmark).

The synthetic folder comes from the test scaffolding (tests/support/synthetic.py), so run it from
the repository root, as ``make dashboard-bench`` does.

    python -m tests.tools.dashboard_bench [--trials 200] [--repeats 3] [--outputs DIR]

Each page is rendered once (cold: files read, caches filled) and then ``--repeats`` times
(warm, as on every rerun after the first load) through Streamlit's AppTest; the table shows
the cold time and the median and worst warm times. The target is at most 1.5 s warm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from dashboard.pages import PAGES

TARGET_S = 1.5
APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


def bench(outputs: Path, repeats: int = 3) -> list[dict]:
    from streamlit.testing.v1 import AppTest

    os.environ["ALL_OUTPUTS"] = str(outputs)
    at = AppTest.from_file(str(APP), default_timeout=300)
    at.run()
    rows = []
    for entry in PAGES:
        page = entry.slug
        at.switch_page(entry.file)
        start = time.perf_counter()
        at.run()
        cold = time.perf_counter() - start
        warm = []
        for _ in range(repeats):
            start = time.perf_counter()
            at.run()
            warm.append(time.perf_counter() - start)
        errors = [e.value for e in at.exception]
        rows.append({"page": page, "cold_s": cold, "warm_median_s": statistics.median(warm), "warm_max_s": max(warm),
                     "ok": max(warm) <= TARGET_S and not errors, "errors": errors})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.dashboard_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--outputs", type=Path, help="an existing outputs folder (default: a new synthetic one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dashboard-bench-") as tmp:
        outputs = args.outputs
        if outputs is None:
            from tests.support.synthetic import make_outputs

            start = time.perf_counter()
            outputs = Path(tmp)
            make_outputs(outputs, n_trials=args.trials)
            print(f"synthetic outputs with {args.trials} trials in {time.perf_counter() - start:.1f} s: {outputs}")
        rows = bench(outputs, args.repeats)
    print(f"\n{'page':<10} {'cold s':>8} {'warm median s':>14} {'warm max s':>11}  ≤ {TARGET_S} s")
    for r in rows:
        print(f"{r['page']:<10} {r['cold_s']:>8.2f} {r['warm_median_s']:>14.2f} {r['warm_max_s']:>11.2f}  "
              f"{'yes' if r['ok'] else 'NO'}{'  ' + '; '.join(r['errors']) if r['errors'] else ''}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
