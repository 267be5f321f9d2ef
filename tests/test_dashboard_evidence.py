"""The Evidence page's tables and figures, from summaries the engine's own functions compute
(the page itself renders in test_dashboard's AppTest of every page, on real runs)."""

from __future__ import annotations

import numpy as np
import pytest

from dashboard import evidence
from engine import context
from engine.runs import CLASSES
from tests.support.evidence import localisation_summary


def context_summary(cells_removed_correct: int) -> dict:
    true = np.repeat(np.arange(4), 10)
    removed = true.copy()
    removed[cells_removed_correct:] = (removed[cells_removed_correct:] + 1) % 4
    return context.reliance(true, {"original": true, "cells_removed": removed, "background_removed": true}, CLASSES)


def test_ranking_and_stage_tables_put_the_pointing_method_first():
    summary = localisation_summary()
    ranking = evidence.ranking_frame(summary)
    assert list(ranking["method"]) == ["good", "blob"]
    assert ranking["verdict"][0].endswith("points at the leukocytes")
    assert "not clearly better than" in ranking["verdict"][1]
    table = evidence.stage_verdicts(evidence.find_result(summary, "good", "norm5"))
    assert list(table["stage"]) == [*CLASSES, "all"]
    assert (table["images"][:4] == 10).all()


def test_localisation_bars_show_maps_against_both_baselines_with_intervals():
    result = evidence.find_result(localisation_summary(), "good", "norm5")
    fig = evidence.localisation_bars(result, "concentration")
    assert [t.name for t in fig.data] == list(evidence.SOURCES.values())
    assert all(len(t.x) == 4 for t in fig.data)
    assert fig.data[0].error_y.array is not None
    assert evidence.png_localisation(result).startswith(b"\x89PNG")


@pytest.mark.parametrize(("kept", "word"), [(34, "context"), (10, "needs the cells")])
def test_context_sentence_and_figure_say_how_much_survives(kept, word):
    summary = context_summary(kept)
    sentence = evidence.context_sentence(summary)
    assert f"{kept / 40:.0%}" in sentence and word in sentence
    fig = evidence.context_bars(summary)
    # A context.json from before the stain probes: its three variants, in order, and no others.
    assert [t.name for t in fig.data] == [evidence.VARIANTS[v] for v in summary["variants"]]
    assert evidence.png_context(summary).startswith(b"\x89PNG")


def test_verdict_table_joins_localisation_faithfulness_and_sanity():
    summary = localisation_summary()
    faith = {"ranking": {"all": ["blob", "good"]}, "methods": {"good": {"layer": "norm5"}, "blob": {"layer": "norm5"}}}
    sanity = {"good": {"layer": "norm5", "passed": True, "steps": [{"spearman": 0.1}]}}
    table = evidence.verdict_table(summary, faith, sanity).set_index("method")
    assert table.loc["good", "faithfulness rank"] == 2 and table.loc["blob", "faithfulness rank"] == 1
    assert table.loc["good", "sanity check"] == "passed" and table.loc["blob", "sanity check"] == "not run"
    assert evidence.sanity_frame(sanity)["verdict"].tolist() == ["✅ passed"]


def test_outline_draws_the_mask_border_only_and_scales_a_smaller_mask():
    image = np.full((112, 112, 3), 200, np.uint8)
    mask = np.zeros((56, 56), bool)
    mask[10:30, 10:30] = True
    drawn = evidence.outline(image, mask)
    green = (drawn == (0, 255, 0)).all(axis=2)
    assert green[20, 20:22].sum() == 2  # the left border of the (upscaled) square, around x = 20
    assert not green[40, 40]  # the inside stays as it was
    assert green.sum() < 0.1 * green.size


def test_engine_evidence_command_prints_the_run_folders_tables(tmp_path):
    from engine import runs
    from engine.commands.evidence import main

    run = tmp_path / "run-a"
    runs.write_json(run / runs.CONTEXT, context_summary(34))
    runs.write_json(run / runs.CAMS / runs.LOCALISATION, localisation_summary())
    from engine.evidence import report

    text = report([run], [("good", "norm5")])
    assert "| run-a | all | 40 | 100.0%" in text and "| 85.0% (" in text  # 34 of 40 kept without cells
    assert "| run-a | good | norm5 |" in text and "points at the leukocytes" in text
    assert "| run-a | good at norm5 | early |" in text and "| run-a | blob at norm5 |" not in text
    assert main([str(run)]) == 0
