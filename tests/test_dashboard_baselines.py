"""The colour-only baselines and stain probes where the dashboard shows the network's accuracy.

Summaries come from the engine's own functions (engine.baselines.measure on generated smears,
engine.context.reliance and follows_donor); the pages render in Streamlit's AppTest on a small
fabricated outputs folder (tests/support/synthetic.py) with those files added, damaged or left out.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pytest

from dashboard import evidence, loaders, report
from dashboard.escape import html_text
from engine import context, runs
from engine.runs import CLASSES
from tests.support import synthetic
from tests.support.apptest import checked_app, unescaped, visible
from tests.support.evidence import shortcut_summary, stain_context

BACKGROUND = runs.BASELINE_WORDS["background_colour"]


# ----------------------------------------------------------------------------- pure functions


def test_baseline_lines_put_the_network_beside_the_colour_models_in_words():
    summary = shortcut_summary("tint")
    lines = evidence.baseline_lines(summary, "test")
    assert lines[0].startswith("The network: 100.0% [95% CI ")
    background = next(line for line in lines if line.startswith(BACKGROUND[0].upper() + BACKGROUND[1:]))
    accuracy = summary["baselines"]["background_colour"]["splits"]["test"]["accuracy"]
    assert f": {accuracy:.1%} [95% CI " in background
    assert len(lines) == 1 + len(runs.HEADLINE_BASELINES)  # the linear ones only in the table
    frame = evidence.baseline_frame(summary, "test")
    assert len(frame) == 1 + len(runs.BASELINE_WORDS) and frame["model"].iloc[0] == "the network"
    assert frame["how it was made"].str.contains("random forest").any()
    fig = evidence.baseline_bars(summary, "test")
    # Plotly reads labels as HTML: the words arrive escaped (the cells&#x27; colour), and show as written.
    assert [t.name for t in fig.data] == ["the network", *(html_text(runs.BASELINE_WORDS[k])
                                                           for k in runs.HEADLINE_BASELINES)]
    assert all(len(t.x) == len(CLASSES) + 1 and t.error_y.array is not None for t in fig.data)
    assert evidence.png_baselines(summary, "test").startswith(b"\x89PNG")


@pytest.mark.parametrize(("where", "words"), [("tint", "told apart by colour alone"),
                                              ("shape", "does not give the stage away")])
def test_baseline_sentence_says_whether_colour_alone_names_the_stage(where, words):
    sentence = evidence.baseline_sentence(shortcut_summary(where), "test")
    assert words in sentence, sentence


@pytest.mark.parametrize(("follow", "words"), [(True, "reads the stain"), (False, "does not decide")])
def test_context_sentence_names_the_stain_when_answers_follow_the_donor(follow, words):
    summary = stain_context(follow)
    sentence = evidence.context_sentence(summary)
    assert words in sentence and "With the leukocytes removed" in sentence, sentence
    assert ("100% of the predictions name the donor's stage" in sentence) == follow
    fig = evidence.donor_bars(summary)
    assert list(fig.data[0].x) == [*CLASSES, "all"] and fig.data[0].error_y.array is not None
    assert evidence.png_donor(summary).startswith(b"\x89PNG")
    bars = evidence.context_bars(summary)
    assert [t.name for t in bars.data] == list(runs.CONTEXT_VARIANTS.values())


def test_a_context_json_from_before_the_stain_probes_still_reads():
    true = np.repeat(np.arange(4), 10)
    old = context.reliance(true, {"original": true, "cells_removed": true, "background_removed": true}, CLASSES)
    assert evidence.stain_sentence(old) is None and evidence.donor_bars(old) is None
    assert evidence.png_donor(old) is None
    assert "stain" not in evidence.context_sentence(old)
    assert evidence.shape_problem("context", old) is None


@pytest.mark.parametrize("damage", [
    lambda b: b.update(baselines=[1, 2]),
    lambda b: b["baselines"]["background_colour"]["splits"]["test"]["per_stage"].pop("pro"),
    lambda b: b["baselines"]["cell_colour"]["splits"]["test"].update(accuracy="most"),
    lambda b: b["network"]["splits"]["val"]["per_stage"]["early"].update(ci95="wide"),
])
def test_shape_problem_refuses_malformed_baselines(damage):
    summary = shortcut_summary("tint")
    assert evidence.shape_problem("baselines", summary) is None
    damage(summary)
    assert evidence.shape_problem("baselines", summary) is not None


# ----------------------------------------------------------------------------- pages and deck


@pytest.fixture
def outputs(tmp_path: Path) -> dict[str, Path]:
    """A fabricated evaluated run with baselines.json and a context.json with the stain probes."""
    rng = np.random.default_rng(0)
    prepared = synthetic.make_prepared(tmp_path / "prepared", rng)
    run = tmp_path / "runs" / "colour"
    synthetic.write_run(run, rng, epochs=3, final_f1=0.9, lr=1e-3, data_dir=str(prepared))
    synthetic.write_evaluated_run(run, rng, skill=3.0)
    runs.write_json(run / runs.BASELINES, shortcut_summary("tint"))
    runs.write_json(run / runs.CONTEXT, stain_context(follow=True))
    return {"root": tmp_path, "run": run}


def test_run_and_evidence_pages_show_the_baselines_beside_the_network(outputs, monkeypatch):
    summary = json.loads((outputs["run"] / runs.BASELINES).read_text())
    accuracy = summary["baselines"]["background_colour"]["splits"]["test"]["accuracy"]
    expected = f"{BACKGROUND[0].upper()}{BACKGROUND[1:]}: {accuracy:.1%} [95% CI "
    run_page = checked_app(outputs["root"], monkeypatch, "run")
    shown = visible(run_page, "markdown", "caption")
    assert expected in shown and "The network: " in shown, shown
    assert "told apart by colour alone" in shown
    assert "reads the stain" in shown  # the stain probes' sentence, under cells or context
    assert not visible(run_page, "warning")
    page = checked_app(outputs["root"], monkeypatch, "evidence")
    shown = visible(page, "markdown", "caption")
    assert expected in shown and "Colour alone." in shown and "reads the stain" in shown, shown
    assert any(e.label == "How the baselines were made" for e in page.expander)


@pytest.mark.parametrize("content", ["{half a file", json.dumps({"baselines": {"x": {"splits": []}}}),
                                     json.dumps(["not", "an", "object"])])
def test_a_damaged_baselines_json_is_one_warning_naming_it(outputs, monkeypatch, content):
    (outputs["run"] / runs.BASELINES).write_text(content)
    for page in ("run", "evidence"):
        at = checked_app(outputs["root"], monkeypatch, page)
        naming = [e for e in (*at.warning, *at.caption) if runs.BASELINES in unescaped(e.value)]
        assert len(naming) == 1 and any(naming[0] is w for w in at.warning), (page, visible(at, "warning", "caption"))
        assert BACKGROUND not in visible(at, "markdown")
    deck = report.build(outputs["root"], report.Findings(run=str(outputs["run"])))
    assert any(runs.BASELINES in w for w in deck.warnings), deck.warnings


def test_an_old_run_without_baselines_or_stain_probes_still_displays(outputs, monkeypatch):
    (outputs["run"] / runs.BASELINES).unlink()
    true = np.repeat(np.arange(4), 10)
    old = context.reliance(true, {"original": true, "cells_removed": true, "background_removed": true}, CLASSES)
    runs.write_json(outputs["run"] / runs.CONTEXT, {**old, "split": "test"})
    for page in ("run", "evidence"):
        at = checked_app(outputs["root"], monkeypatch, page)
        assert f"No `{runs.BASELINES}` for this run" in visible(at, "warning"), page
        assert "With the leukocytes removed" in visible(at, "markdown"), page
    assert loaders.evidence(outputs["root"], outputs["run"])["context"] is not None
    deck = report.build(outputs["root"], report.Findings(run=str(outputs["run"])))
    assert any(f"{runs.BASELINES} not found" in w for w in deck.warnings)
    assert not any(title.startswith("Could colour alone") for title in deck.slides), deck.slides


def test_the_deck_shows_the_baselines_beside_the_accuracy_and_the_stain_probes(outputs):
    deck = report.build(outputs["root"], report.Findings(run=str(outputs["run"])))
    assert "Could colour alone name the stage? (test)" in deck.slides
    assert "Stain probes: does the answer follow the stain?" in deck.slides
    assert html.escape(f"Accuracy of {BACKGROUND}", quote=True) in deck.html
    assert "told apart by colour alone" in html.unescape(deck.html)
    import io

    from pptx import Presentation

    slides = Presentation(io.BytesIO(deck.pptx)).slides
    metrics = next(s for s in slides if any(sh.has_text_frame and sh.text_frame.text.startswith("Metrics")
                                            for sh in s.shapes))
    cells = [c.text for sh in metrics.shapes if sh.has_table for row in sh.table.rows for c in row.cells]
    accuracy = json.loads((outputs["run"] / runs.BASELINES).read_text())["baselines"]["background_colour"]
    assert any(c.startswith(f"Accuracy of {BACKGROUND}") for c in cells)
    assert f"{accuracy['splits']['test']['accuracy']:.3f}" in cells
    evidence_text = " ".join(sh.text_frame.text for s in slides for sh in s.shapes if sh.has_text_frame)
    assert "name the donor's stage" in evidence_text
