"""The model card on the Run page and in the deck, and the deck's story in order.

Runs are fabricated (tests/support/synthetic.py) with the evidence files the engine's own functions compute
(baselines, context with the stain probes, localisation); the Run page renders in Streamlit's AppTest.
"""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from dashboard import report, story
from engine import modelcard, runs
from tests.support import synthetic
from tests.support.apptest import checked_app, visible
from tests.support.evidence import localisation_summary, shortcut_summary, stain_context
from tuning import layout

CARD = runs.MODEL_CARD


def evaluated_run(run: Path, prepared: Path, rng: np.random.Generator, skill: float = 3.0, **config) -> Path:
    synthetic.write_run(run, rng, epochs=3, final_f1=0.9, lr=1e-3, data_dir=str(prepared))
    if config:
        saved = json.loads((run / runs.CONFIG).read_text())
        runs.write_json(run / runs.CONFIG, {**saved, **config})
    synthetic.write_evaluated_run(run, rng, skill=skill)
    return run


@pytest.fixture
def outputs(tmp_path: Path) -> dict[str, Path]:
    """One evaluated and explained run with every evidence file: baselines, context with the stain probes,
    localisation, faithfulness and sanity (fabricated maps)."""
    rng = np.random.default_rng(0)
    prepared = synthetic.make_prepared(tmp_path / "prepared", rng)
    run = evaluated_run(tmp_path / "runs" / "quick", prepared, rng)
    runs.write_json(run / runs.BASELINES, shortcut_summary("tint"))
    runs.write_json(run / runs.CONTEXT, stain_context(follow=True))
    synthetic.write_cams(run)
    runs.write_json(run / runs.CAMS / runs.LOCALISATION, localisation_summary())
    return {"root": tmp_path, "run": run, "prepared": prepared, "rng": rng}


def downloads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, str | None]]:
    """What the pages hand to st.download_button: (data, file name), as Streamlit stores it for the browser."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    seen: list[tuple[bytes, str | None]] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):
        seen.append((path_or_data, filename))
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    return seen


# ----------------------------------------------------------------------------- the Run page


def test_the_run_page_offers_the_card_the_engine_wrote(outputs, monkeypatch):
    written = modelcard.write(outputs["run"]).read_bytes()
    seen = downloads(monkeypatch)
    at = checked_app(outputs["root"], monkeypatch, "run")
    buttons = [b for b in at.get("download_button") if b.label == "Model card"]
    assert len(buttons) == 1
    cards = [data for data, name in seen if name and name.endswith(CARD)]
    assert cards == [written], [name for _, name in seen]
    assert f"The run's `{CARD}`, written from its files by the engine." in visible(at, "caption")
    # The card itself, rendered on the page: its limitations, in the page's words.
    shown = visible(at, "markdown")
    assert "Known limitations" in shown and "colour gives the stage away" in shown


def test_a_run_without_a_card_gets_the_same_card_rendered_from_its_files(outputs, monkeypatch):
    assert not (outputs["run"] / CARD).exists()
    seen = downloads(monkeypatch)
    at = checked_app(outputs["root"], monkeypatch, "run")
    cards = [data for data, name in seen if name and name.endswith(CARD)]
    assert cards == [modelcard.render(outputs["run"]).encode()]
    assert "python -m engine card" in visible(at, "caption") and not (outputs["run"] / CARD).exists()


def test_a_card_older_than_the_files_is_offered_and_said_to_differ(outputs, monkeypatch):
    written = modelcard.write(outputs["run"]).read_bytes()
    metrics = json.loads((outputs["run"] / runs.METRICS).read_text())
    metrics["splits"]["test"]["accuracy"] = 0.123
    runs.write_json(outputs["run"] / runs.METRICS, metrics)
    seen = downloads(monkeypatch)
    at = checked_app(outputs["root"], monkeypatch, "run")
    assert [data for data, name in seen if name and name.endswith(CARD)] == [written]
    assert "differs from what its files say now" in visible(at, "caption")
    assert "12.3%" in visible(at, "markdown")  # the card shown is the current one


# ----------------------------------------------------------------------------- the deck


def titles_of(pptx: bytes) -> list[str]:
    from pptx import Presentation

    return [s.shapes[0].text_frame.text for s in Presentation(io.BytesIO(pptx)).slides]


def in_order(titles: list[str], expected: list[str]) -> list[int]:
    positions = [next((i for i, t in enumerate(titles) if t.startswith(e)), -1) for e in expected]
    assert -1 not in positions, (expected[positions.index(-1)], titles)
    assert positions == sorted(positions), list(zip(expected, positions, strict=True))
    return positions


def test_the_deck_tells_the_story_in_order_in_both_documents(outputs):
    deck = report.build(outputs["root"], report.Findings(run=str(outputs["run"]), stages=["early", "pro"],
                                                         per_stage=1))
    accuracy = json.loads((outputs["run"] / runs.METRICS).read_text())["splits"]["test"]["accuracy"]
    story_titles = [f"Test accuracy {accuracy:.1%}, image split", report.SMEAR_TITLE,
                    "Could colour alone name the stage?", report.CONTEXT_TITLE, report.STAIN_TITLE,
                    report.LOCALISATION_TITLE, "Grad-CAM: early", "Grad-CAM: pro", "Faithfulness",
                    "Which model? No rule applied", report.CARD_TITLE]
    titles = titles_of(deck.pptx)
    assert titles == deck.slides and titles[0] == "ALL stage classifier: findings"
    story_at = in_order(titles, story_titles)
    appendix_at = in_order(titles, ["Appendix", "Metrics (test, 95% intervals)", "Per stage", "Confusion matrix",
                                    "Evidence: early", "Evidence: pro"])
    assert story_at[-1] < appendix_at[0]
    sections = deck.html.split("Appendix: the model card")[0]
    headings = [html.unescape(h) for h in re.findall(r"<h2>(.*?)</h2>", sections)]
    in_order(headings, [*story_titles, "Appendix: metrics", "Appendix: confusion matrix", "Appendix: evidence, early"])
    # The research-software notice on every slide of both documents.
    from pptx import Presentation

    for slide in Presentation(io.BytesIO(deck.pptx)).slides:
        assert any(sh.has_text_frame and sh.text_frame.text == report.NOTICE for sh in slide.shapes)
    assert deck.html.count(html.escape(report.NOTICE, quote=True)) >= deck.html.count("<section")


def test_the_deck_carries_the_cards_key_lines_and_the_whole_card(outputs):
    deck = report.build(outputs["root"], report.Findings(run=str(outputs["run"]), stages=["benign"], per_stage=1))
    found, _ = modelcard.read(outputs["run"])
    lines = story.card_lines(found)
    accuracy = json.loads((outputs["run"] / runs.METRICS).read_text())["splits"]["test"]["accuracy"]
    assert lines[0].startswith(f"Test accuracy {100 * accuracy:.1f}% (95% CI ")
    assert any(line.startswith("A model that sees only the background colour") for line in lines)
    assert any(line.startswith("Maps (good at norm5)") for line in lines)
    from pptx import Presentation

    slide = next(s for s in Presentation(io.BytesIO(deck.pptx)).slides
                 if s.shapes[0].text_frame.text == report.CARD_TITLE)
    text = "\n".join(sh.text_frame.text for sh in slide.shapes if sh.has_text_frame)
    for line in lines:
        assert line in text, line
        assert html.escape(line, quote=True) in deck.html, line
    card = deck.html.split("Appendix: the model card")[1]
    assert "<h2>Known limitations</h2>" in card and html.escape(modelcard.GENERAL_LIMITATION, quote=True) in card
    assert "<h2>Where the maps point</h2>" in card and "<strong>good at norm5</strong>" in card


def test_the_cards_appendix_escapes_text_from_the_files(outputs):
    config = json.loads((outputs["run"] / runs.CONFIG).read_text())
    runs.write_json(outputs["run"] / runs.CONFIG, {**config, "preset": "<script>alert(1)</script>**x**|y"})
    deck = report.build(outputs["root"], report.Findings(run=str(outputs["run"]), stages=["benign"], per_stage=1))
    card = deck.html.split("Appendix: the model card")[1]
    assert "<script>alert" not in deck.html and "<strong>x</strong>" not in card
    assert "preset &lt;script&gt;alert(1)&lt;/script&gt;**x**|y" in card


def sweep(root: Path, prepared: Path, rng: np.random.Generator, trials: dict[str, dict], best: dict | None = None):
    """A sweep folder whose trials are evaluated runs (``{"skill": ..., "evaluated": False, **config}``)."""
    folder = root / "sweeps" / "cv"
    runs.write_json(folder / layout.SWEEP_JSON, {"name": "cv", "status": layout.SWEEP_COMPLETE})
    for trial_id, spec in trials.items():
        spec = dict(spec)
        skill, evaluated = spec.pop("skill", 3.0), spec.pop("evaluated", True)
        run = folder / layout.TRIALS / trial_id
        if evaluated:
            evaluated_run(run, prepared, rng, skill=skill, **spec)
        else:
            synthetic.write_run(run, rng, epochs=3, final_f1=0.9, lr=1e-3, data_dir=str(prepared))
            runs.write_json(run / runs.CONFIG, {**json.loads((run / runs.CONFIG).read_text()), **spec})
    if best is not None:
        runs.write_json(folder / layout.BEST, best)
    return folder


def test_unseen_smears_not_measured_say_so_with_the_command(outputs):
    results = story.smear_results(outputs["root"].resolve(), outputs["run"].resolve(),
                                  json.loads((outputs["run"] / runs.CONFIG).read_text()))
    lines, command = story.smear_lines(results, 0.97)
    assert results["folds"] == [] and lines[0] == "Not measured for this model."
    assert command == f"python -m tuning sweep --space cpu-smear-cv --data {outputs['prepared']}"
    deck = report.build(outputs["root"], report.Findings(run=str(outputs["run"]), stages=["benign"], per_stage=1))
    assert html.escape(command, quote=True) in deck.html


def test_unseen_smears_come_from_the_runs_sibling_trials_with_a_smear_split(outputs):
    root, rng = outputs["root"], outputs["rng"]
    folder = sweep(root, outputs["prepared"], rng, {
        "image": {}, "fold0": {"split": "smear", "fold": 0, "skill": 0.5},
        "fold1": {"split": "smear", "fold": 1, "skill": 1.0},
        "fold2": {"split": "smear", "fold": 2, "evaluated": False}})
    trials = folder / layout.TRIALS
    results = story.smear_results(root.resolve(), (trials / "image").resolve(),
                                  json.loads((trials / "image" / runs.CONFIG).read_text()))
    assert [f["fold"] for f in results["folds"]] == [0, 1] and results["unevaluated"] == 1
    scores = [json.loads((trials / f"fold{k}" / runs.METRICS).read_text())["splits"]["test"]["accuracy"]
              for k in (0, 1)]
    lines, command = story.smear_lines(results, 0.99)
    assert command is None
    assert lines[0].startswith(f"Fold 0: {scores[0]:.1%} (95% CI ") and lines[1].startswith(f"Fold 1: {scores[1]:.1%}")
    assert f"Mean over 2 folds: {sum(scores) / 2:.1%}" in lines and "On the image split: 99.0%" in lines
    deck = report.build(root, report.Findings(run=str(trials / "image"), stages=["benign"], per_stage=1))
    assert html.escape(lines[0], quote=True) in deck.html
    # A smear-split run counts itself, marked as this run.
    own = story.smear_results(root.resolve(), (trials / "fold1").resolve(),
                              json.loads((trials / "fold1" / runs.CONFIG).read_text()))
    assert [(f["fold"], f["this"]) for f in own["folds"]] == [(0, False), (1, True)]


def test_without_a_recorded_recommendation_the_most_accurate_comparable_run_is_named_as_no_recommendation(outputs):
    root, rng = outputs["root"], outputs["rng"]
    folder = sweep(root, outputs["prepared"], rng, {"weak": {"skill": 0.3}, "strong": {"skill": 6.0},
                                                    "smear": {"split": "smear", "fold": 0, "skill": 9.0}},
                   best={"trial_id": "weak", "run_dir": "trials/weak"})
    trials = folder / layout.TRIALS
    scores = {t: json.loads((trials / t / runs.METRICS).read_text())["splits"]["test"]["accuracy"]
              for t in ("weak", "strong")}
    assert scores["strong"] > scores["weak"]
    result = story.choice(root.resolve(), (trials / "weak").resolve(),
                          json.loads((trials / "weak" / runs.CONFIG).read_text()))
    assert result["recommended"] is None and result["candidates"] == 2  # the smear-split trial tests on other images
    lines, note = story.choice_lines(result, "test")
    assert lines[0] == "No recommendation rule was applied."
    assert lines[1] == "Most accurate on the same test images: sweeps/cv/trials/strong"
    assert lines[2].startswith(f"Test accuracy {scores['strong']:.1%}") and "not a recommendation" in note
    deck = report.build(root, report.Findings(run=str(trials / "weak"), stages=["benign"], per_stage=1))
    assert "Which model? No rule applied" in deck.slides


def recommendation(chosen: str, top: str, probes: dict[str, tuple[float, float, float]]) -> dict:
    """recommended.json as the sweep's finish step writes it, the rule applied by tuning.recommend itself to
    ``probes``: trial -> (validation macro-F1, accuracy without leukocytes, chance)."""
    from tuning import recommend as rule

    entries = {t: {"trial_id": t, "score": f1, "without_cells": without, "chance": chance}
               for t, (f1, without, chance) in probes.items()}
    applied = rule.recommend(list(entries.values()))
    assert (applied["trial_id"], applied["most_accurate"]) == (chosen, top)

    def entry(t: str) -> dict:
        return {"trial_id": t, "run_dir": f"{layout.TRIALS}/{t}", "params": {}, "test": {},
                "scores": {"best_val_macro_f1": probes[t][0], "val_acc_without_cells": probes[t][1],
                           "val_chance": probes[t][2]}}

    return {**entry(chosen), "rule": rule.RULE, "margin": rule.MARGIN, "rule_met": applied["rule_met"],
            "verdict": applied["verdict"], "same_as_most_accurate": chosen == top,
            "reason": rule.explain(entries[chosen], entries[top], applied["verdict"]), "most_accurate": entry(top)}


def test_a_recommendation_recorded_by_the_sweep_is_the_slides_message(outputs):
    root, rng = outputs["root"], outputs["rng"]
    folder = sweep(root, outputs["prepared"], rng, {"weak": {"skill": 0.3}, "strong": {"skill": 6.0}},
                   best={"trial_id": "strong", "run_dir": "trials/strong"})
    recorded = recommendation("weak", "strong", {"weak": (0.6, 0.3, 0.28), "strong": (0.97, 0.8, 0.28)})
    runs.write_json(folder / layout.RECOMMENDED, recorded)
    trials = folder / layout.TRIALS
    deck = report.build(root, report.Findings(run=str(trials / "strong"), stages=["benign"], per_stage=1))
    assert "Recommended model" in deck.slides and "Which model? No rule applied" not in deck.slides
    accuracy = {t: json.loads((trials / t / runs.METRICS).read_text())["splits"]["test"]["accuracy"]
                for t in ("weak", "strong")}
    lines, note = story.choice_lines(story.choice(root.resolve(), (trials / "strong").resolve(), {}), "test")
    assert lines[0] == "Recommended: sweeps/cv/trials/weak"
    assert lines[1].startswith(f"Test accuracy {accuracy['weak']:.1%}")
    assert lines[2] == "Validation images without leukocytes 30.0% right (chance 28.0%)"
    assert lines[3] == (f"Most accurate: sweeps/cv/trials/strong, test {accuracy['strong']:.1%}, without leukocytes "
                        "80.0% right (chance 28.0%)")
    assert note == recorded["reason"] and html.escape(note, quote=True) in deck.html


def test_a_recorded_recommendation_that_no_trial_meets_is_flagged(outputs):
    root, rng = outputs["root"], outputs["rng"]
    folder = sweep(root, outputs["prepared"], rng, {"weak": {"skill": 0.3}, "strong": {"skill": 6.0}})
    runs.write_json(folder / layout.RECOMMENDED, recommendation("strong", "strong", {"weak": (0.6, 0.7, 0.28),
                                                                                      "strong": (0.97, 0.8, 0.28)}))
    result = story.choice(root.resolve(), (folder / layout.TRIALS / "weak").resolve(), {})
    assert story.choice_title(result) == "Which model? No trial reads the cells"
    lines, _ = story.choice_lines(result, "test")
    assert lines[0] == "Shown (the most accurate): sweeps/cv/trials/strong" and not lines[-1].startswith("Most")
