"""A bounded load run: several real browser sessions click through every page and predict, at once,
against one dashboard server on 127.0.0.1.

    python -m tests.tools.dashboard_load --outputs outputs --image a.jpg --image b.jpg --sessions 4 --seconds 120

Each session opens every page in turn, uploads its image on Predict (with several ``--image``, the
sessions take them in turn) and reads the answer: the predicted stage and a digest of the map's
pixels. The run reports page views, predictions, errors (an exception on a page, an answer that
differs from the one a single session got alone for that image) and the server's resident memory
over time, and writes them as JSON. Needs Chromium and the ``playwright`` package (``make setup`` installs the package).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dashboard import pages

log = logging.getLogger(__name__)

# URL path of each page (the data page is the default one) and the title it shows.
PAGES = {("" if p == pages.DEFAULT else p.slug): p.title for p in pages.PAGES}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"]
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(outputs: Path, log_file: Path) -> Iterator[tuple[str, int]]:
    """A dashboard server on a free port of 127.0.0.1: yields its URL and process id."""
    port = free_port()
    with log_file.open("w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "dashboard", "--outputs", str(outputs), "--host",
                                    "127.0.0.1", "--port", str(port)], cwd=REPO, stdout=handle,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the dashboard did not start:\n{log_file.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for process {pid}")


# Running, or about to run (a rerun requested), or still showing the running indicator, or a chart not drawn yet
# (Streamlit loads Plotly's code on first use, so a chart may be drawn a while after the script run ended).
_BUSY = """() => {
    const app = document.querySelector("[data-testid='stApp']");
    const state = app ? app.getAttribute("data-test-script-state") : "initial";
    const undrawn = [...document.querySelectorAll("[data-testid='stPlotlyChart']")]
        .some(chart => chart.querySelector(".main-svg") === null);
    return state !== "notRunning" || undrawn || document.querySelector("[data-testid='stStatusWidget']") !== null;
}"""
QUIET_POLLS = 10  # of 100 ms: a second without a script run


def settle(page: Any, timeout_ms: int = 120_000) -> None:
    """Wait until Streamlit finished the script run: a title is shown and no run is going on or about to start.

    Streamlit marks its root with ``data-test-script-state`` ("running", "notRunning", ...). A click's rerun
    request reaches the server a moment after the click, so "not running" must hold for a quiet second,
    polled every 100 ms; a run seen in that second starts the count again. Every Plotly chart must be drawn.
    """
    page.wait_for_selector("h1", timeout=timeout_ms)
    deadline, quiet = time.time() + timeout_ms / 1000, 0
    while quiet < QUIET_POLLS:
        if time.time() > deadline:
            raise TimeoutError(f"{page.url} still running after {timeout_ms / 1000:.0f} s")
        quiet = 0 if page.evaluate(_BUSY) else quiet + 1
        page.wait_for_timeout(100)


def page_problem(page: Any) -> str | None:
    if page.locator("[data-testid='stException']").count():
        return page.locator("[data-testid='stException']").first.inner_text()[:500]
    return None


def predict(page: Any, url: str, image: Path, timeout_ms: int = 180_000) -> str:
    """Open Predict, upload ``image`` and return the answer: the line "Predicted stage: ..." and a digest of
    the Grad-CAM map's pixels as served (a map mixed with another session's would differ)."""
    page.goto(f"{url}/predict")
    settle(page)
    page.locator("input[type='file']").first.set_input_files(str(image))
    answer = page.get_by_text("Predicted stage:").first
    answer.wait_for(timeout=timeout_ms)
    settle(page)
    src = page.locator("[data-testid='stImage'] img").nth(1).get_attribute("src") or ""
    served = page.request.get(src if src.startswith("http") else f"{url}{src}").body()
    return f"{answer.inner_text().strip()} · map {hashlib.sha256(served).hexdigest()[:12]}"


class Session(threading.Thread):
    """One browser (its own Playwright instance: its API is not shared between threads)."""

    def __init__(self, number: int, url: str, chromium: str, image: Path, until: float, expected: str) -> None:
        # Sessions predict different images where several are given: mixed-up answers then show.
        super().__init__(name=f"session-{number}", daemon=True)
        self.url, self.chromium, self.image, self.until, self.expected = url, chromium, image, until, expected
        self.views = self.predictions = self.cycles = 0
        self.errors: list[str] = []

    def run(self) -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=self.chromium, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                # At least one whole round of every page, however slow the machine: a session that never
                # reached Predict would prove nothing about concurrent answers.
                while time.time() < self.until or not self.cycles:
                    for path, title in PAGES.items():
                        if time.time() >= self.until and self.cycles:
                            break
                        if path == "predict":
                            answer = predict(page, self.url, self.image)
                            self.predictions += 1
                            if answer != self.expected:
                                self.errors.append(f"predict: {answer!r}, alone: {self.expected!r}")
                        else:
                            page.goto(f"{self.url}/{path}")
                            settle(page)
                        self.views += 1
                        problem = page_problem(page)
                        if problem or title not in page.locator("h1").first.inner_text():
                            self.errors.append(f"{path or 'data'}: {problem or 'title missing'}")
                    else:
                        self.cycles += 1
                browser.close()
        except Exception as exc:  # a session that dies is an error of the run, reported, not a hang
            self.errors.append(f"{type(exc).__name__}: {exc}")


def run_load(url: str, pid: int, chromium: str, images: Path | list[Path], sessions: int,
             seconds: float) -> dict[str, Any]:
    """Drive ``sessions`` browsers for ``seconds`` against the server at ``url`` (process ``pid``); session i
    predicts ``images[i % len(images)]``."""
    from playwright.sync_api import sync_playwright

    images = [images] if isinstance(images, Path) else list(images)
    with sync_playwright() as p:  # the answer one session gets alone, which every session must get too
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        alone = [predict(browser.new_page(), url, image) for image in images]
        browser.close()
    log.info("alone: %s", alone)
    samples: list[tuple[float, float]] = []
    start = time.time()
    workers = [Session(i, url, chromium, images[i % len(images)], start + seconds, alone[i % len(images)])
               for i in range(sessions)]
    for worker in workers:
        worker.start()
    while any(w.is_alive() for w in workers):
        samples.append((round(time.time() - start, 1), round(rss_mb(pid), 1)))
        time.sleep(2)
    for worker in workers:
        worker.join()
    elapsed = time.time() - start
    return {"sessions": sessions, "seconds": round(elapsed, 1), "answer_alone": alone,
            "page_views": sum(w.views for w in workers), "predictions": sum(w.predictions for w in workers),
            "rounds": sum(w.cycles for w in workers),
            "errors": [e for w in workers for e in w.errors], "rss_mb": samples}


def memory_growth(samples: list[tuple[float, float]]) -> float:
    """Growth of the server's peak memory from the middle third of the run to the last, in MB.

    The first third holds the model loads and caches filling up; memory that keeps growing after
    that is a leak.
    """
    values = [rss for _, rss in samples]
    third = max(1, len(values) // 3)
    return max(values[-third:]) - max(values[third:2 * third] or values[:third])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.dashboard_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    parser.add_argument("--image", type=Path, required=True, action="append",
                        help="an image to predict; give several and the sessions take them in turn")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--out", type=Path, default=None, help="JSON result (default: OUTPUTS/bench/load-<time>.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    out = args.out or args.outputs / "bench" / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with serve(args.outputs, out.with_suffix(".server.log")) as (url, pid):
        result = run_load(url, pid, args.chromium, args.image, args.sessions, args.seconds)
    result["memory_growth_mb"] = round(memory_growth(result["rss_mb"]), 1)
    out.write_text(json.dumps(result, indent=2))
    print(f"{result['sessions']} sessions, {result['seconds']} s: {result['page_views']} page views, "
          f"{result['predictions']} predictions, {len(result['errors'])} errors; server memory "
          f"{result['rss_mb'][0][1]:.0f} -> {max(r for _, r in result['rss_mb']):.0f} MB peak, "
          f"{result['memory_growth_mb']:+.0f} MB from the middle to the last third\n{out}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
