"""Review marks: dashboard/reviews.py directly, and the reviewed images in a deck.

The storage tests need no Streamlit and no outputs beyond a run folder; the deck test uses a
fabricated outputs folder (tests/support/synthetic.py), made once for this module.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from dashboard import report, reviews
from engine import runs
from tests.support import synthetic

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "<script>alert(1)</script>"


def sha(i: int) -> str:
    return f"{i:064x}"


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path]:
    """An outputs folder and an (empty) run folder inside it."""
    root = tmp_path / "outputs"
    folder = root / "runs" / "r1"
    folder.mkdir(parents=True)
    return root, folder


# ----------------------------------------------------------------------------- storage


def test_each_change_touches_only_its_own_part(run: tuple[Path, Path]) -> None:
    root, folder = run
    assert reviews.load(root, folder) == {}
    reviews.toggle(root, folder, sha(1), "artefact", True, path="Original/Pro/a.jpg")
    reviews.toggle(root, folder, sha(1), "suspected_label_error", True)
    reviews.set_note(root, folder, sha(1), "blurred\tedge\n")
    reviews.toggle(root, folder, sha(2), "good_example", True, path="Original/Pre/b.jpg")
    reviews.toggle(root, folder, sha(1), "artefact", False)
    marks = reviews.load(root, folder)
    assert marks[sha(1)]["labels"] == ["suspected_label_error"]
    assert marks[sha(1)]["note"] == "blurred edge"  # one line
    assert marks[sha(1)]["path"] == "Original/Pro/a.jpg"  # kept from the first change
    assert marks[sha(2)]["labels"] == ["good_example"]
    document = json.loads((folder / runs.REVIEWS).read_text())
    assert document["version"] == reviews.VERSION and set(document["marks"]) == {sha(1), sha(2)}
    # Turning on a label twice is one label; the last label and the note gone: the image is unmarked.
    reviews.toggle(root, folder, sha(2), "good_example", True)
    assert reviews.load(root, folder)[sha(2)]["labels"] == ["good_example"]
    reviews.toggle(root, folder, sha(2), "good_example", False)
    assert sha(2) not in reviews.load(root, folder)
    reviews.clear(root, folder, sha(1))
    assert reviews.load(root, folder) == {}
    assert sorted(p.name for p in folder.iterdir()) == [runs.REVIEWS_LOCK, runs.REVIEWS]  # no temporary file left


def test_filter_matches() -> None:
    mark = {"labels": ["artefact"], "note": ""}
    noted = {"labels": [], "note": "look again"}
    assert [reviews.matches(mark, w) for w in ("all", "any", "unmarked", "artefact", "good_example")] == \
        [True, True, False, True, False]
    assert [reviews.matches(None, w) for w in ("all", "any", "unmarked", "artefact")] == [True, False, True, False]
    assert reviews.matches(noted, "any") and not reviews.matches(noted, "unmarked")


_WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from dashboard import reviews
root, run, first, label, go = Path({root!r}), Path({run!r}), {first}, {label!r}, Path({go!r})
print("ready", flush=True)  # imported and about to wait for the go file
while not go.exists():
    time.sleep(0.005)
for i in range(first, first + 50):
    reviews.toggle(root, run, f"{{i:064x}}", "artefact", True, path=f"img-{{i}}.png")
    if i == first + 25:
        reviews.toggle(root, run, "f" * 64, label, True)  # one image, a different label from each process
"""


def test_two_processes_marking_at_once_lose_nothing(run: tuple[Path, Path], tmp_path: Path) -> None:
    root, folder = run
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER.format(repo=str(REPO), root=str(root), run=str(folder),
                                                                     first=first, label=label, go=str(go))],
                              stdout=subprocess.PIPE, text=True)
             for first, label in ((0, "suspected_label_error"), (1000, "good_example"))]
    # Both started and waiting (each says "ready"), so that their writes interleave.
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
    go.touch()
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    for p in procs:
        p.stdout.close()
    marks = reviews.load(root, folder)
    assert {s for s in marks if s != "f" * 64} == {sha(i) for i in (*range(50), *range(1000, 1050))}
    assert marks["f" * 64]["labels"] == ["suspected_label_error", "good_example"]


def test_threads_marking_one_image_and_many_at_once_lose_nothing(run: tuple[Path, Path]) -> None:
    root, folder = run
    start = threading.Barrier(11)
    errors: list[BaseException] = []

    def work(fn) -> None:
        start.wait()
        try:
            fn()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    jobs = [lambda k=k: [reviews.toggle(root, folder, sha(k * 100 + i), "good_example", True) for i in range(10)]
            for k in range(7)]
    jobs += [lambda label=label: reviews.toggle(root, folder, "e" * 64, label, True) for label in reviews.LABELS]
    jobs.append(lambda: reviews.set_note(root, folder, "e" * 64, "three labels and a note"))
    threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    marks = reviews.load(root, folder)
    assert len(marks) == 71
    assert marks["e" * 64]["labels"] == list(reviews.LABELS)
    assert marks["e" * 64]["note"] == "three labels and a note"


@pytest.mark.parametrize(("content", "problem"), [
    ("{half", "not valid JSON"),
    ('{"version": 2, "marks": {}}', "version 2"),
    ('{"version": 1, "marks": []}', "'marks' is not an object"),
    ('{"version": 1, "marks": {"abc": {"labels": []}}}', "not a sha256"),
    ('{"version": 1, "marks": {"%s": {"labels": ["typo"]}}}' % ("a" * 64), "labels must be"),
    ('{"version": 1, "marks": {"%s": {"note": 7}}}' % ("a" * 64), "the note must be text"),
])
def test_a_malformed_file_is_reported_and_never_overwritten(run: tuple[Path, Path], content: str,
                                                            problem: str) -> None:
    root, folder = run
    (folder / runs.REVIEWS).write_text(content)
    with pytest.raises(reviews.ReviewError, match=problem) as caught:
        reviews.load(root, folder)
    assert "runs/r1/reviews.json" in str(caught.value) and "left as it is" in str(caught.value)
    for change in (lambda: reviews.toggle(root, folder, sha(1), "artefact", True),
                   lambda: reviews.set_note(root, folder, sha(1), "x"),
                   lambda: reviews.clear(root, folder, sha(1))):
        with pytest.raises(reviews.ReviewError, match=problem):
            change()
    assert (folder / runs.REVIEWS).read_text() == content


def test_paths_outside_the_outputs_folder_are_refused(run: tuple[Path, Path], tmp_path: Path) -> None:
    root, folder = run
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for bad in ("../elsewhere", str(outside), "runs/../../elsewhere"):
        with pytest.raises(reviews.ReviewError, match="outside the outputs folder"):
            reviews.toggle(root, bad, sha(1), "artefact", True)
        with pytest.raises(reviews.ReviewError, match="outside the outputs folder"):
            reviews.load(root, bad)
    assert list(outside.iterdir()) == []
    (root / "runs" / "away").symlink_to(outside)  # a run folder that is a link out of the outputs
    with pytest.raises(reviews.ReviewError, match="outside the outputs folder"):
        reviews.toggle(root, root / "runs" / "away", sha(1), "artefact", True)
    assert list(outside.iterdir()) == []
    # reviews.json (or its lock) as a link: neither read nor written through, wherever it leads.
    target = outside / "victim.json"
    target.write_text('{"version": 1, "marks": {}}')
    (folder / runs.REVIEWS).symlink_to(target)
    with pytest.raises(reviews.ReviewError, match="symbolic link"):
        reviews.toggle(root, folder, sha(1), "artefact", True)
    with pytest.raises(reviews.ReviewError, match="symbolic link"):
        reviews.load(root, folder)
    (folder / runs.REVIEWS).unlink()
    (folder / runs.REVIEWS_LOCK).unlink(missing_ok=True)
    (folder / runs.REVIEWS_LOCK).symlink_to(target)
    with pytest.raises(reviews.ReviewError, match="symbolic link"):
        reviews.toggle(root, folder, sha(1), "artefact", True)
    assert target.read_text() == '{"version": 1, "marks": {}}'
    assert not (folder / runs.REVIEWS).exists()


def test_bad_input_is_refused_and_notes_are_cleaned(run: tuple[Path, Path]) -> None:
    root, folder = run
    for bad in ("F" * 64, "a" * 63, "../" + "a" * 61, 7):
        with pytest.raises(reviews.ReviewError, match="not a sha256"):
            reviews.toggle(root, folder, bad, "artefact", True)
    with pytest.raises(reviews.ReviewError, match="not a review label"):
        reviews.toggle(root, folder, sha(1), "<b>great</b>", True)
    with pytest.raises(reviews.ReviewError, match="at most 500 characters"):
        reviews.set_note(root, folder, sha(1), "x" * 501)
    assert not (folder / runs.REVIEWS).exists()
    reviews.set_note(root, folder, sha(1), f"a\x00b\x1b[31m\u0085c {SCRIPT}", path="p\x07.png")
    mark = reviews.load(root, folder)[sha(1)]
    assert mark["note"] == f"ab[31mc {SCRIPT}"  # control characters gone; markup kept as text, escaped when shown
    assert mark["path"] == "p.png"


def test_a_large_or_odd_reviews_file_is_not_read(run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    root, folder = run
    os.mkfifo(folder / runs.REVIEWS)  # opening a FIFO would block the page
    with pytest.raises(reviews.ReviewError, match="not a regular file"):
        reviews.load(root, folder)
    (folder / runs.REVIEWS).unlink()
    (folder / runs.REVIEWS).write_text(json.dumps({"version": 1, "marks": {}, "pad": "x" * 2000}))
    monkeypatch.setattr(reviews, "MAX_BYTES", 1000)
    with pytest.raises(reviews.ReviewError, match="larger than"):
        reviews.load(root, folder)


# ----------------------------------------------------------------------------- decks


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synthetic.make_outputs(tmp_path_factory.mktemp("reviews-outputs"), n_trials=3)


def test_the_deck_lists_reviewed_images_with_escaped_notes(outputs: dict[str, Path]) -> None:
    from pptx import Presentation

    root, folder = outputs["root"], outputs["other"]
    index = pd.read_csv(folder / runs.CAMS / runs.CAMS_INDEX)
    first, second = index["sha256"].unique()[:2]
    try:
        reviews.toggle(root, folder, first, "suspected_label_error", True, path="Original/Pro/x.jpg")
        reviews.set_note(root, folder, first, f"{SCRIPT} **looks pre**")
        reviews.toggle(root, folder, second, "good_example", True, path="Original/Pre/y.jpg")
        findings = report.Findings(run=str(folder), stages=["benign"], per_stage=1, evidence=False,
                                   faithfulness=False, reviewed=True)
        deck = report.build(root, findings)
        without = report.build(root, report.Findings(**{**findings.__dict__, "reviewed": False}))
    finally:
        (folder / runs.REVIEWS).unlink(missing_ok=True)
    assert "Reviewed images" in deck.slides and "Reviewed images" not in without.slides
    assert "Reviewed images" in deck.html and "Reviewed images" not in without.html
    assert SCRIPT not in deck.html and "&lt;script&gt;alert(1)&lt;/script&gt; **looks pre**" in deck.html
    # Suspected label errors come first; both images carry their input and map.
    assert deck.html.index("x.jpg") < deck.html.index("y.jpg")
    section = deck.html[deck.html.index("<h2>Reviewed images"):]
    assert section.count("data:image/png;base64,") == 4
    prs = Presentation(io.BytesIO(deck.pptx))
    slide = next(s for s in prs.slides if s.shapes[0].text_frame.text == "Reviewed images")
    words = "\n".join(sh.text_frame.text for sh in slide.shapes if sh.has_text_frame)
    assert f"Note: {SCRIPT} **looks pre**" in words and "Marked: suspected label error" in words
    assert "Marked: good example" in words
    assert sum(1 for sh in slide.shapes if sh.shape_type == 13) == 4  # pictures


def test_a_malformed_reviews_file_becomes_a_deck_warning(outputs: dict[str, Path]) -> None:
    root, folder = outputs["root"], outputs["other"]
    (folder / runs.REVIEWS).write_text("[]")
    try:
        deck = report.build(root, report.Findings(run=str(folder), stages=["benign"], per_stage=1, evidence=False,
                                                  faithfulness=False, reviewed=True))
        assert (folder / runs.REVIEWS).read_text() == "[]"
    finally:
        (folder / runs.REVIEWS).unlink()
    assert "Reviewed images" not in deck.slides
    assert any("no reviewed images" in w and "reviews.json is malformed" in w for w in deck.warnings)
