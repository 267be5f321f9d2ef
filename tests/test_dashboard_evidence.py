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


def test_engine_evidence_puts_several_runs_side_by_side_with_their_mean_and_spread(tmp_path):
    from engine import runs
    from engine.evidence import report

    # Three smear folds of one setting, 34, 20 and 10 of 40 images still named without their leukocytes.
    folders = []
    for fold, kept in enumerate((34, 20, 10)):
        run = tmp_path / f"cells-smear{fold}"
        runs.write_json(run / runs.CONFIG, {"split": "smear", "fold": fold})
        runs.write_json(run / runs.CONTEXT, context_summary(kept))
        folders.append(run)
    # A run without config.json still gets its row, its split unknown.
    runs.write_json(tmp_path / "old" / runs.CONTEXT, context_summary(40))
    text = report([*folders, tmp_path / "old"])
    rows = [line for line in text.splitlines() if line.startswith("| cells-smear") or line.startswith("| old")]
    assert rows[0].startswith("| cells-smear0 | smear fold 0 | 100.0% | 85.0% | 100.0% |"), rows
    assert rows[2].startswith("| cells-smear2 | smear fold 2 | 100.0% | 25.0% |"), rows
    assert rows[3].startswith("| old | n/a | 100.0% | 100.0% |"), rows
    kept = np.array([34, 20, 10, 40]) / 40
    mean_row = next(line for line in text.splitlines() if line.startswith("| mean ± SD (range) over 4 runs"))
    assert f"{kept.mean():.1%} ± {kept.std(ddof=1):.1%} (25.0%-100.0%)" in mean_row, mean_row
    assert "100.0% ± 0.0% (100.0%-100.0%)" in mean_row
    # One run alone gets no such table.
    assert "over the runs" not in report(folders[:1])
