"""Damaged and hostile run folders: text from files is escaped on every page and
in both exports; discovery reads only small regular files inside the outputs folder; blank or
malformed fields of cams/index.csv become a warning, never an error.

Each test damages a private copy of the session's real tiny outputs folder (tests/support/fixture.py);
the shared folder itself is never touched. New dashboard names are imported inside the tests, so
that each test fails on its own against code without them.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from dashboard import loaders, paths, report
from engine import runs
from tuning import layout

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboard" / "app.py")
IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(1)</script>"
MATHTEXT = r"$\frac{x$"  # matplotlib would parse it as a (malformed) formula


@pytest.fixture
def outputs(dashboard_outputs: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """A copy of the session's outputs folder that a test may damage (Ray's own files left out)."""
    source = dashboard_outputs["root"]
    root = tmp_path / "outputs"
    shutil.copytree(source, root, symlinks=True, ignore=shutil.ignore_patterns(layout.RAY_STORAGE, "exports"))
    return {key: root / path.relative_to(source) for key, path in dashboard_outputs.items()}


def app(root: Path, monkeypatch: pytest.MonkeyPatch, page: str, timeout: float = 90):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ALL_OUTPUTS", str(root))
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    at.switch_page(f"views/{page}.py").run()
    return at


def no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def rendered(at) -> list[str]:
    """Every text a page hands to Streamlit's Markdown renderer, image captions included."""
    kinds = ("markdown", "caption", "title", "header", "subheader", "warning", "info", "success", "error")
    parts = [str(e.value) for kind in kinds for e in getattr(at, kind)]
    return parts + [c for image in at.image for c in image.captions]


def visible(at, kind: str = "warning") -> str:
    """What the page shows in its ``kind`` elements: Markdown backslash escapes and entities resolved."""
    return " ".join(html.unescape(re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", str(e.value))) for e in getattr(at, kind))


def label(outputs: dict[str, Path], key: str) -> str:
    return outputs[key].relative_to(outputs["root"]).as_posix()


def rewrite_csv(path: Path, change: Callable[[pd.DataFrame], None]) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    change(frame)
    frame.to_csv(path, index=False)
    return frame


def rewrite_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # ensure_ascii: a lone surrogate survives as "\ud800"


def hostile_image(run: Path) -> pd.Series:
    """Give the run's most confident explained image a hostile name and predicted label in cams/index.csv."""
    index = pd.read_csv(run / runs.CAMS / runs.CAMS_INDEX, dtype=str, keep_default_na=False)
    top = index.loc[index["confidence"].astype(float).idxmax()]

    def change(frame: pd.DataFrame) -> None:
        rows = frame["sha256"] == top["sha256"]
        frame.loc[rows, "path"] = f"Original/{top['true']}/{IMG}.jpg"
        frame.loc[rows, "pred"] = SCRIPT + MATHTEXT
        frame.loc[rows & (frame["target"] == "pred"), "target_class"] = SCRIPT
        frame.loc[rows, "correct"] = "0"

    rewrite_csv(run / runs.CAMS / runs.CAMS_INDEX, change)
    return top


def hostile_run(run: Path) -> tuple[pd.DataFrame, pd.Series]:
    """predictions.csv paths with an <img> tag, a <script> class and count in metrics.json, a <script> image.

    Returns the new predictions and the index row of the image made hostile.
    """
    def paths_(frame: pd.DataFrame) -> None:
        frame["path"] = [f"Original/{t}/{IMG}{i}.jpg" for i, t in enumerate(frame["true"])]

    def metrics_(data: dict) -> None:
        data["classes"][-1] = SCRIPT
        data["splits"]["test"]["n"] = SCRIPT

    predictions = rewrite_csv(run / runs.PREDICTIONS, paths_)
    rewrite_json(run / runs.METRICS, metrics_)
    return predictions, hostile_image(run)


# ----------------------------------------------------------------------------- escaping


def test_escape_helpers_leave_no_markup() -> None:
    from dashboard import escape

    for text in (IMG, SCRIPT, "![x](http://example.invalid/x.png)", "[click](javascript:alert(1))", "a\n# b",
                 ":red[x] $x$ **b** `c` | d"):
        safe = escape.md(text)
        assert "<" not in safe and "\n" not in safe
        # Every Markdown punctuation mark is backslash-escaped, so no link, image, emphasis or directive forms.
        assert all(safe[i - 1] == "\\" for i, c in enumerate(safe) if c in "[]()!*`|:$#" and i > 0), safe
    assert escape.html_text(SCRIPT + "'\"") == "&lt;script&gt;alert(1)&lt;/script&gt;&#x27;&quot;"
    assert escape.code("a`b") == "``a`b``" and escape.code("`x") == "`` `x ``"
    assert escape.plain("a\x00b\x07c\ud800d\ne") == "abcd\ne"
    assert escape.mpl(MATHTEXT) == r"\$\frac{x\$"


def test_pages_escape_text_from_run_folders(outputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    predictions, top = hostile_run(outputs["best"])

    def check(at, escaped: str) -> None:
        no_exception(at)
        texts = rendered(at)
        raw = [t for t in texts if IMG in t or "<script" in t]
        assert not raw, raw
        assert any(escaped in t for t in texts), escaped

    at = app(outputs["root"], monkeypatch, "run")
    at.selectbox(key="run").set_value(label(outputs, "best")).run()
    test = predictions[predictions["split"] == "test"]
    true, pred = test.groupby(["true", "pred"]).size().idxmax()
    at.selectbox(key="cell_true").set_value(true)
    at.selectbox(key="cell_pred").set_value(pred).run()
    check(at, "&lt;img")  # the images' captions and titles
    at.selectbox(key="cell_true").set_value(SCRIPT).run()
    check(at, "true **&lt;script&gt;")  # the class read from metrics.json

    at = app(outputs["root"], monkeypatch, "gallery")
    at.selectbox(key="gallery_run").set_value(label(outputs, "best")).run()
    at.radio(key="g_stage").set_value(top["true"]).run()
    check(at, "&lt;script&gt;alert")

    at = app(outputs["root"], monkeypatch, "compare")
    at.selectbox(key="cmp_a").set_value(label(outputs, "best"))
    at.selectbox(key="cmp_b").set_value(label(outputs, "other")).run()
    check(at, "A: &lt;script&gt;")


def test_exports_escape_text_from_run_folders(outputs: dict[str, Path]) -> None:
    from pptx import Presentation

    hostile_run(outputs["best"])
    rewrite_json(outputs["best"] / runs.CONFIG, lambda c: c.update(model=f"{IMG}dense\ud800net"))
    deck = report.build(outputs["root"], report.Findings(run=str(outputs["best"])))
    assert IMG not in deck.html and "<script>alert" not in deck.html
    assert f"(n = {'&lt;script&gt;alert(1)&lt;/script&gt;'})" in deck.html
    assert "model &lt;img src=x onerror=alert(1)&gt;densenet" in deck.html
    saved = report.save(outputs["root"], deck, "hostile")  # UTF-8: the lone surrogate is gone
    text = " ".join(shape.text_frame.text for slide in Presentation(saved["pptx"]).slides
                    for shape in slide.shapes if shape.has_text_frame)
    assert f"Model: {IMG}densenet" in text  # PPTX is not HTML: the text stays as it was, minus what XML refuses


# ----------------------------------------------------------------------------- discovery limits

# Discovery runs in a child process with a memory cap and a time limit, so that code which blocks on a
# FIFO or reads /dev/zero fails this test instead of hanging or exhausting the machine.
SCAN = """
import json, sys
from dashboard import loaders
found = loaders.scan(sys.argv[1])
print(json.dumps({"runs": {r.label: [r.status, r.problem, r.evaluated, r.explained] for r in found["runs"]},
                  "sweeps": {s.label: [s.status, s.problem] for s in found["sweeps"]}}))
"""


def _cap_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))


def damage_discovery(root: Path, best: Path, outside: Path) -> dict[str, str]:
    """Run and sweep folders whose discovery files are not small regular files inside ``root``.

    Returns {label: a phrase the warning must hold}.
    """
    made = {}

    def run(name: str, phrase: str) -> Path:
        folder = root / "runs" / name
        folder.mkdir(parents=True)
        made[f"runs/{name}"] = phrase
        return folder

    os.mkfifo(run("fifo-config", "a FIFO") / runs.CONFIG)
    (run("zero-config", "outside") / runs.CONFIG).symlink_to("/dev/zero")
    (run("loop-config", "cannot be resolved") / runs.CONFIG).symlink_to(runs.CONFIG)
    outside.write_text('{"model": "densenet-tiny"}')
    (run("outside-config", "outside") / runs.CONFIG).symlink_to(outside)
    for name in ("fifo-trial", "fifo-complete"):
        (run(name, "a FIFO") / runs.CONFIG).write_text('{"model": "densenet-tiny"}')
    os.mkfifo(root / "runs" / "fifo-trial" / layout.TRIAL_JSON)
    # An evaluated and explained run whose COMPLETE is a FIFO: listed as corrupt, offered to no other page.
    shutil.rmtree(root / "runs" / "fifo-complete")
    shutil.copytree(best, root / "runs" / "fifo-complete")
    (root / "runs" / "fifo-complete" / runs.COMPLETE).unlink()
    os.mkfifo(root / "runs" / "fifo-complete" / runs.COMPLETE)
    huge = root / "sweeps" / "huge"
    huge.mkdir(parents=True)
    (huge / layout.SWEEP_JSON).write_text(json.dumps({"name": "huge", "status": "complete", "pad": "x" * 10**7}))
    made["sweeps/huge"] = "limit"
    return made


@contextlib.contextmanager
def fifos_unblocked(root: Path) -> Iterator[None]:
    """On the way out, give any reader still blocked on a FIFO under ``root`` an end of file."""
    try:
        yield
    finally:
        for fifo in (p for p in root.rglob("*") if p.is_fifo()):
            with contextlib.suppress(OSError):  # ENXIO: no reader waiting, nothing to unblock
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_discovery_skips_fifos_devices_links_and_huge_files(outputs: dict[str, Path], tmp_path: Path) -> None:
    damaged = damage_discovery(outputs["root"], outputs["best"], tmp_path / "elsewhere.json")
    done = subprocess.run([sys.executable, "-c", SCAN, str(outputs["root"])], cwd=REPO, capture_output=True,
                          text=True, timeout=180, preexec_fn=_cap_memory)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    listed = {**found["runs"], **found["sweeps"]}
    for name, phrase in damaged.items():
        status, problem, *flags = listed[name]
        assert status == loaders.RUN_CORRUPT and phrase in problem, (name, listed[name])
        assert not any(flags), name  # not offered as evaluated or explained
    assert found["runs"][label(outputs, "best")][:3] == [loaders.RUN_COMPLETE, None, True]
    assert found["runs"]["runs/broken"][0] == loaders.RUN_CORRUPT


def test_read_bytes_reads_only_small_regular_files_inside(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    (root / "ok.json").write_text("{}")
    os.mkfifo(root / "fifo.json")
    (root / "zero.json").symlink_to("/dev/zero")
    (root / "loop.json").symlink_to("loop.json")
    (root / "big.json").write_bytes(b" " * 2048)
    assert paths.read_bytes(root, "ok.json") == b"{}"
    with pytest.raises(paths.RefusedFile, match="a FIFO"):
        paths.read_bytes(root, "fifo.json")
    with pytest.raises(paths.RefusedFile, match="a folder"):
        paths.read_bytes(root, ".")
    for outside in ("zero.json", "loop.json"):
        with pytest.raises(paths.OutsideOutputs):
            paths.read_bytes(root, outside)
    with pytest.raises(paths.RefusedFile, match="limit"):
        paths.read_bytes(root, "big.json", limit=1024)
    with pytest.raises(loaders.LoadError, match="a FIFO"):
        loaders.read_json(root, "fifo.json")


def test_damaged_runs_are_warned_and_skipped_on_the_pages(outputs: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    damage_discovery(outputs["root"], outputs["best"], tmp_path / "elsewhere.json")
    for target in ("zero-config", "loop-config"):  # covered in a child process above; a page test runs in this one
        shutil.rmtree(outputs["root"] / "runs" / target)
    with fifos_unblocked(outputs["root"]):
        at = app(outputs["root"], monkeypatch, "run", timeout=60)
        for name in ("runs/fifo-config", "runs/fifo-complete", "runs/fifo-trial", "runs/outside-config"):
            at.selectbox(key="run").set_value(name).run()
            no_exception(at)
            assert "corrupt" in visible(at), name
        for page, key in (("gallery", "gallery_run"), ("compare", "cmp_a"), ("present", "present_run"),
                          ("predict", "predict_run")):
            at.switch_page(f"views/{page}.py").run()
            no_exception(at)
            assert "runs/fifo-complete" not in at.selectbox(key=key).options, page
        at.switch_page("views/sweeps.py").run()
        at.selectbox(key="sweep").set_value("sweeps/huge").run()
        no_exception(at)
        assert "limit" in visible(at)


# ----------------------------------------------------------------------------- malformed index fields


def damage_index(run: Path, rows: dict[int, tuple[str, str]]) -> None:
    def change(frame: pd.DataFrame) -> None:
        for row, (column, value) in rows.items():
            frame.loc[row, column] = value

    rewrite_csv(run / runs.CAMS / runs.CAMS_INDEX, change)


MALFORMED = {0: ("target", ""), 1: ("confidence", "high"), 2: ("image", ""), 3: ("overlay", " "),
             4: ("correct", ""), 5: ("method", ""), 6: ("confidence", "nan"), 7: ("path", "")}


def test_cams_index_skips_rows_with_blank_or_malformed_fields(outputs: dict[str, Path]) -> None:
    total = len(pd.read_csv(outputs["best"] / runs.CAMS / runs.CAMS_INDEX))
    damage_index(outputs["best"], MALFORMED)
    problems: list[str] = []
    index = loaders.cams_index(outputs["root"], outputs["best"], problems)
    assert len(index) == total - len(MALFORMED)
    assert index["confidence"].dtype.kind == "f" and set(index["correct"]) <= {0, 1}
    assert len(problems) == 1 and f"{len(MALFORMED)} of {total} rows skipped" in problems[0]
    for column in ("target", "confidence", "image", "overlay", "correct", "method", "path"):
        assert column in problems[0], column
    damage_index(outputs["other"], {i: ("confidence", "") for i in range(total)})
    with pytest.raises(loaders.LoadError, match="no usable row"):
        loaders.cams_index(outputs["root"], outputs["other"])


def test_gallery_and_present_warn_for_malformed_index_fields(outputs: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    damage_index(outputs["best"], MALFORMED)
    total = len(pd.read_csv(outputs["other"] / runs.CAMS / runs.CAMS_INDEX))
    damage_index(outputs["other"], {i: ("confidence", "") for i in range(total)})
    for page, key in (("gallery", "gallery_run"), ("present", "present_run"), ("run", "run")):
        at = app(outputs["root"], monkeypatch, page)
        for run, phrase in (("best", "rows skipped"), ("other", "no usable row")):
            at.selectbox(key=key).set_value(label(outputs, run)).run()
            no_exception(at)
            warnings = visible(at)
            assert "index.csv" in warnings and phrase in warnings, (page, run, warnings)
        if page == "present":
            at.selectbox(key=key).set_value(label(outputs, "best")).run()
            at.button(key="present_build").click().run()
            no_exception(at)
            assert "Deck written" in visible(at, "success")


# ----------------------------------------------------------------------------- evidence files


MALFORMED_EVIDENCE = {
    runs.CONTEXT: {"split": "test", "variants": "all of them", "how": ["not", "a", "mapping"], "chance": "1/4"},
    f"{runs.CAMS}/{runs.LOCALISATION}": {"ranking": [{"method": "gradcam"}, 7], "results": {"x": None},
                                         "baselines": 3},
    f"{runs.CAMS}/{runs.SANITY}": {"gradcam": "passed"},
    f"{runs.CAMS}/{runs.FAITHFULNESS_SUMMARY}": {"methods": [1, 2], "rank_by": {}},
    runs.BASELINES: {"baselines": {"background_colour": {"splits": {"test": {"accuracy": "high", "per_stage": 4}}}},
                     "chance": {"test": "?"}},
}


@pytest.mark.parametrize("name", list(MALFORMED_EVIDENCE))
def test_malformed_evidence_files_are_warnings_on_every_page(name: str, outputs: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """context.json, localisation.json, sanity.json, faithfulness_summary.json and baselines.json that are JSON
    objects of the wrong shape: each page that shows them says what could not be shown, and the rest of the
    page stays."""
    (outputs["best"] / name).parent.mkdir(exist_ok=True)
    (outputs["best"] / name).write_text(json.dumps(MALFORMED_EVIDENCE[name]))
    for page, key in (("evidence", "evidence_run"), ("run", "run"), ("gallery", "gallery_run"),
                      ("present", "present_run")):
        at = app(outputs["root"], monkeypatch, page)
        at.selectbox(key=key).set_value(label(outputs, "best")).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        if page == "evidence":
            # baselines.json's problem is the warning where the baselines would be; the others are captions.
            kind = "warning" if name == runs.BASELINES else "caption"
            assert f"{Path(name).name} cannot be shown" in visible(at, kind), visible(at, kind)
        if page == "run" and name == runs.BASELINES:
            assert f"{name} cannot be shown" in visible(at, "warning"), visible(at, "warning")
        if page == "present":
            at.button(key="present_build").click().run()
            assert not at.exception, (page, "deck", [e.value for e in at.exception])
