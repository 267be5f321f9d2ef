"""Review marks on the pages: the gallery's Review popover, badges and Marked filter,
the Run page's cell view, two tabs marking at once, a mark surviving a restart, and the Present option.

On a fabricated outputs folder (tests/support/synthetic.py) made once for this module; every test
starts without review marks (the ``clean`` fixture removes them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from dashboard import reviews
from engine import runs
from tests.support import synthetic
from tests.support.apptest import app, no_exception, texts

RUN = "runs/baseline"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synthetic.make_outputs(tmp_path_factory.mktemp("review-pages"), n_trials=3)


@pytest.fixture
def outputs(made: dict[str, Path]) -> Iterator[dict[str, Path]]:
    yield made
    for name in (runs.REVIEWS, runs.REVIEWS_LOCK):
        for path in made["root"].rglob(name):
            path.unlink()
    for path in (made["root"] / "exports").glob("*"):
        path.unlink()


def gallery(root: Path, monkeypatch: pytest.MonkeyPatch):
    at = app(root, monkeypatch, "gallery")
    at.selectbox(key="gallery_run").set_value(RUN).run()
    no_exception(at)
    return at


def card_shas(at) -> list[str]:
    """The sha256 of the gallery's cards, in page order (from their Review widgets' keys)."""
    return [re.fullmatch(r"rv_g_([0-9a-f]{64})_labels", p.key).group(1) for p in at.button_group
            if p.key and p.key.startswith("rv_g_")]


def badges(at) -> list[str]:
    return [m.value for m in at.markdown if "-badge[" in m.value]


def test_a_mark_shows_as_a_badge_and_survives_a_restart(outputs: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = outputs["root"]
    at = gallery(root, monkeypatch)
    shas = card_shas(at)
    assert len(shas) >= 3 and badges(at) == []
    at.button_group(key=f"rv_g_{shas[0]}_labels").select("suspected_label_error").run()
    no_exception(at)
    at.text_input(key=f"rv_g_{shas[0]}_note").input("nucleus <b>looks</b> **pre**").run()
    no_exception(at)
    shown = badges(at)
    assert len(shown) == 1 and ":red-badge[suspected label error]" in shown[0]
    assert "&lt;b&gt;looks&lt;\\/b&gt; \\*\\*pre\\*\\*" in shown[0]  # the note escaped, not rendered
    marks = json.loads((root / RUN / runs.REVIEWS).read_text())["marks"]
    sha = shas[0]
    assert marks[sha]["labels"] == ["suspected_label_error"] and marks[sha]["note"] == "nucleus <b>looks</b> **pre**"
    assert marks[sha]["path"].endswith((".jpg", ".png", ".bmp"))

    # A new session (the server restarted, or a reload) reads the mark back from the run folder.
    again = gallery(root, monkeypatch)
    assert badges(again) == shown
    assert again.button_group(key=f"rv_g_{shas[0]}_labels").value == ["suspected_label_error"]
    assert again.text_input(key=f"rv_g_{shas[0]}_note").value == "nucleus <b>looks</b> **pre**"
    # Turning the label off and emptying the note unmarks the image.
    again.button_group(key=f"rv_g_{shas[0]}_labels").unselect("suspected_label_error").run()
    again.text_input(key=f"rv_g_{shas[0]}_note").input("").run()
    no_exception(again)
    assert badges(again) == [] and reviews.load(root, root / RUN) == {}


def test_the_marked_filter_shows_only_matching_images(outputs: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = outputs["root"]
    at = gallery(root, monkeypatch)
    shas = card_shas(at)
    at.button_group(key=f"rv_g_{shas[1]}_labels").select("artefact").run()
    at.button_group(key=f"rv_g_{shas[2]}_labels").select("good_example").run()
    no_exception(at)
    every = len(shas)
    for wanted, expected in (("artefact", [shas[1]]), ("good_example", [shas[2]]),
                             ("any", [s for s in shas if s in (shas[1], shas[2])]),
                             ("suspected_label_error", [])):
        at.selectbox(key="g_marked").set_value(wanted).run()
        no_exception(at)
        assert card_shas(at) == expected, wanted
        assert f"{len(expected)} image(s)" in texts(at), wanted
    at.selectbox(key="g_marked").set_value("unmarked").run()
    assert shas[1] not in card_shas(at) and shas[2] not in card_shas(at) and shas[0] in card_shas(at)
    at.selectbox(key="g_marked").set_value("all").run()
    assert len(card_shas(at)) == every


def test_two_tabs_marking_at_once_lose_nothing(outputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sessions opened before either marks: each sends only its own change, so both land."""
    root = outputs["root"]
    first, second = gallery(root, monkeypatch), gallery(root, monkeypatch)
    shas = card_shas(first)
    first.button_group(key=f"rv_g_{shas[0]}_labels").select("artefact").run()
    # The second tab still shows the image unmarked; it adds another label, and marks another image.
    assert second.button_group(key=f"rv_g_{shas[0]}_labels").value == []
    second.button_group(key=f"rv_g_{shas[0]}_labels").select("good_example").run()
    second.button_group(key=f"rv_g_{shas[1]}_labels").select("suspected_label_error").run()
    first.text_input(key=f"rv_g_{shas[1]}_note").input("check the stain").run()
    no_exception(first)
    no_exception(second)
    marks = reviews.load(root, root / RUN)
    assert marks[shas[0]]["labels"] == ["artefact", "good_example"]
    assert marks[shas[1]]["labels"] == ["suspected_label_error"]
    assert marks[shas[1]]["note"] == "check the stain"
    # Each tab shows the other's marks on its next run.
    first.run()
    assert first.button_group(key=f"rv_g_{shas[0]}_labels").value == ["artefact", "good_example"]


def test_the_cell_view_marks_images_too(outputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root = outputs["root"]
    at = app(root, monkeypatch, "run")
    at.selectbox(key="run").set_value(RUN).run()
    at.selectbox(key="cell_true").set_value("benign")
    at.selectbox(key="cell_pred").set_value("benign").run()
    no_exception(at)
    keys = [p.key for p in at.button_group if p.key and p.key.startswith("rv_c_")]
    assert keys and len(keys) == len([m for m in at.markdown if "cell-image" in m.value])
    at.button_group(key=keys[0]).select("good_example").run()
    no_exception(at)
    assert [b for b in badges(at) if "good example" in b]
    marks = reviews.load(root, root / RUN)
    assert [m["labels"] for m in marks.values()] == [["good_example"]]
    # The gallery reads the same file: the image is found by its mark there.
    gal = gallery(root, monkeypatch)
    gal.radio(key="g_stage").set_value("benign")
    gal.selectbox(key="g_marked").set_value("good_example").run()
    assert card_shas(gal) == [next(iter(marks))]


def test_a_malformed_reviews_file_is_reported_and_left_alone(outputs: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = outputs["root"]
    (root / RUN / runs.REVIEWS).write_text('{"version": 1, "marks": {"x": 1}}')
    at = gallery(root, monkeypatch)
    assert any("reviews\\.json is malformed" in w.value for w in at.warning)  # escaped Markdown
    assert card_shas(at) == []  # no Review control: nothing can overwrite the file
    assert (root / RUN / runs.REVIEWS).read_text() == '{"version": 1, "marks": {"x": 1}}'


def test_present_adds_the_reviewed_images(outputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from pptx import Presentation

    root = outputs["root"]
    sha = pd.read_csv(root / RUN / runs.CAMS / runs.CAMS_INDEX)["sha256"].iloc[0]
    reviews.toggle(root, root / RUN, sha, "artefact", True, path="Original/Pro/x.jpg")
    reviews.set_note(root, root / RUN, sha, "<i>smudge</i>")
    at = app(root, monkeypatch, "present")
    at.selectbox(key="present_run").set_value(RUN).run()
    at.multiselect(key="present_stages").set_value(["pro"]).run()
    at.toggle(key="present_reviewed").set_value(True).run()
    at.button(key="present_build").click().run()
    no_exception(at)
    assert "Reviewed images" in texts(at)
    exports = root / "exports"
    titles = [s.shapes[0].text_frame.text for s in Presentation(sorted(exports.glob("*.pptx"))[-1]).slides]
    assert "Reviewed images" in titles
    html = sorted(exports.glob("*.html"))[-1].read_text()
    assert "&lt;i&gt;smudge&lt;/i&gt;" in html and "<i>smudge" not in html
