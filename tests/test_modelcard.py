"""The model card (engine.modelcard): its pure pieces from summaries the engine's own functions compute, the
limitations the numbers trigger (and only those), missing and damaged files, and the card that evaluate and
explain write and ``python -m engine card`` regenerates."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import context, modelcard, runs
from engine.metrics import classification_metrics, proportion_ci
from engine.runs import CLASSES
from tests.support.evidence import localisation_summary, shortcut_summary

REPO = Path(__file__).resolve().parents[1]


def metrics_of(seed: int = 0, n: int = 120, skill: float = 2.0) -> dict:
    """metrics.json's content for fabricated probabilities, computed by engine.metrics."""
    rng = np.random.default_rng(seed)
    out = {"classes": list(CLASSES), "checkpoint": "best", "checkpoint_epoch": 3, "splits": {}}
    for split in ("val", "test"):
        y = np.arange(n) % len(CLASSES)
        logits = rng.normal(0, 1, (n, len(CLASSES)))
        logits[np.arange(n), y] += skill
        proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        out["splits"][split] = classification_metrics(y, proba, CLASSES, n_bootstrap=100)
    return out


def probes(cells_kept: int, *, swapped_follow: bool = False, grey_kept: int = 40) -> dict:
    """context.json's content: 40 test images classified right as they are; ``cells_kept`` of them still right
    without the cells, ``grey_kept`` in greyscale; with another stage's stain the answers follow the donor or not."""
    true = np.repeat(np.arange(4), 10)
    donor = (true + 1) % 4

    def keep(k: int) -> np.ndarray:
        pred = true.copy()
        pred[k:] = (pred[k:] + 1) % 4
        return pred

    swapped = donor if swapped_follow else true
    summary = context.reliance(true, {"original": true, "cells_removed": keep(cells_kept), "background_removed": true,
                                      "stain_swapped": swapped, "greyscale": keep(grey_kept)}, CLASSES)
    summary["stain_swapped"] = {"follows_donor": context.follows_donor(swapped, donor, true, CLASSES), "seed": 0}
    return {**summary, "split": "test"}


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


# ----------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize(("k", "n"), [(0, 10), (7, 10), (10, 10), (143, 145), (1, 488)])
def test_wilson_interval_is_the_engines(k, n):
    assert modelcard.wilson(k, n) == pytest.approx(proportion_ci(k, n), abs=1e-9)


def test_metrics_section_shows_each_split_with_its_intervals_and_each_stage():
    metrics = metrics_of()
    text = "\n".join(modelcard.metrics_section(metrics))
    for split in ("val", "test"):
        m = metrics["splits"][split]
        low, high = m["accuracy_ci95"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {split} | {m['n']} |"))
        assert f"{pct(m['accuracy'])} (95% CI {pct(low)[:-1]}-{pct(high)}" in row, row
        assert f"{m['macro_f1']:.3f} (95% CI {m['macro_f1_ci95'][0]:.3f}-{m['macro_f1_ci95'][1]:.3f})" in row
        assert pct(m["balanced_accuracy"]) in row
        assert f"Per stage, {split}:" in text
    stage = metrics["splits"]["test"]["per_class"]["pre"]
    low, high = proportion_ci(round(stage["recall"] * stage["support"]), stage["support"])
    assert f"{pct(stage['recall'])} (95% CI {pct(low)[:-1]}-{pct(high)})" in text


def test_the_colour_baseline_next_to_the_network_and_its_limitation_when_it_comes_close():
    tint = shortcut_summary("tint")  # the stage lies in the background tint: the colour names it
    text = "\n".join(modelcard.baselines_section(tint))
    test = tint["baselines"]["background_colour"]["splits"]["test"]
    network = tint["network"]["splits"]["test"]
    assert f"| A model that sees only the background colour | {test['n']} | {pct(test['accuracy'])}" in text
    assert f"| The network | {network['n']} | {pct(network['accuracy'])}" in text
    limitation = modelcard.baseline_limitation(tint)
    assert limitation is not None and limitation.startswith("A model that sees only the ")
    assert f"network's {pct(network['accuracy'])}" in limitation
    # The stage only in the cells' shape: no colour model comes near the network, and no limitation says so.
    shape = shortcut_summary("shape")
    assert modelcard.baseline_limitation(shape) is None
    assert not any("colour" in line for line in modelcard.limitations(None, None, shape, None, None)[1:])


def test_a_strong_colour_model_far_below_the_network_is_still_named():
    summary = json.loads(json.dumps(shortcut_summary("tint")))
    block = summary["baselines"]["background_colour"]["splits"]["test"]
    block.update(accuracy=0.8, ci95=[0.7, 0.88])
    summary["baselines"]["cell_colour"]["splits"]["test"].update(accuracy=0.5, ci95=[0.4, 0.6])
    summary["chance"]["test"] = 0.25
    line = modelcard.baseline_limitation(summary)
    assert line is not None and "80.0%" in line and "much of the stage can be read from the colour" in line
    summary["chance"]["test"] = 0.5  # the lower bound, 70%, is no longer 25 points above chance
    assert modelcard.baseline_limitation(summary) is None


@pytest.mark.parametrize(("kept", "words"), [(40, "much of its accuracy"), (20, "part of its accuracy"), (12, None)])
def test_accuracy_without_the_leukocytes_is_a_limitation_only_above_chance(kept, words):
    summary = probes(kept)
    lines = modelcard.context_limitations(summary)
    found = [line for line in lines if line.startswith("With the leukocytes removed")]
    if words is None:  # 12 of 40 (30%) is chance here (always one stage: 25%) plus less than 10 points
        assert not found, lines
    else:
        assert len(found) == 1 and words in found[0] and pct(kept / 40) in found[0], found
    table = "\n".join(modelcard.context_section(summary))
    assert f"| all | 40 | {pct(1.0)}" in table and pct(kept / 40) in table


def test_a_stain_swap_that_the_answers_follow_and_a_greyscale_collapse_are_limitations():
    follows = modelcard.context_limitations(probes(10, swapped_follow=True, grey_kept=10))
    assert any(line.startswith("With the stain of an image of another stage, accuracy collapses from 100.0% to "
                               "0.0%, and 100.0% of its answers name the donor's stage") for line in follows), follows
    assert any(line.startswith("In greyscale, accuracy falls from 100.0% to 25.0%") for line in follows), follows
    ignores = modelcard.context_limitations(probes(10, swapped_follow=False, grey_kept=40))
    assert not any("stain" in line or "greyscale" in line.lower() for line in ignores), ignores
    section = "\n".join(modelcard.context_section(probes(10, swapped_follow=True)))
    assert "answer = the stain donor's stage" in section and "| all | 40 |" in section


def test_localisation_verdicts_per_stage_and_the_best_one():
    summary = localisation_summary()  # "good" maps on the cells, "blob" a centred Gaussian
    text = "\n".join(modelcard.localisation_section(summary))
    good = next(line for line in text.splitlines() if line.startswith("| good at norm5 |"))
    assert good.count(runs.LOCALISATION_VERDICTS["points"]) == len(CLASSES) + 1, good
    assert "Best: **good at norm5**" in text
    assert modelcard.localisation_limitations(summary) == []
    blob_only = {**summary, "results": summary["results"][1:], "ranking": summary["ranking"][1:]}
    lines = modelcard.localisation_limitations(blob_only)
    assert len(lines) == 1 and lines[0].startswith("No method and layer's maps clearly point at the leukocytes")


def test_faithfulness_and_sanity_with_their_limitations():
    faith = {"rank_by": "road_combined", "ranking": {"all": ["a", "b"]},
             "methods": {"a": {"layer": "norm5", "overall": {"road_combined": {"mean": 0.2, "ci95": [0.1, 0.3]}}},
                         "b": {"layer": "norm5", "overall": {"road_combined": {"mean": 0.02, "ci95": [-0.03, 0.06]}}}}}
    sanity = {"a": {"layer": "norm5", "passed": True, "steps": [{"spearman": 0.05}]},
              "b": {"layer": "norm5", "passed": False, "steps": [{"spearman": 0.9}]}}
    text = "\n".join(modelcard.faithfulness_section(faith, sanity))
    assert "| a | norm5 | 0.200 (95% CI 0.100-0.300) |" in text and "| b | norm5 | **failed** | 0.90 |" in text
    lines = modelcard.explanation_limitations(faith, sanity)
    assert any(line.startswith("The sanity check failed for b") for line in lines)
    assert any(line.startswith("The faithfulness interval of b includes 0") for line in lines)
    assert modelcard.explanation_limitations(faith, {"a": sanity["a"]}) == [lines[1]]


def test_colour_augmentation_is_named_and_the_probes_it_saw_are_not_called_held_out():
    plain = {"model": "densenet121", "stain_jitter": 0.0, "greyscale_p": 0.0, "stain_mix": 0.0}
    assert "| colour augmentation | none |" in "\n".join(modelcard.model_section(plain, None, None, None))
    assert "not a held-out test" not in "\n".join(modelcard.context_section(probes(10), plain))
    mixed = {**plain, "stain_jitter": 0.1, "stain_mix": 0.8}
    row = "\n".join(modelcard.model_section(mixed, None, None, None))
    assert "| colour augmentation | HED stain jitter 0.1; 80.0% of the images recoloured to another training " \
           "image's colour statistics (stain mixing) |" in row
    said = "\n".join(modelcard.context_section(probes(10), mixed))
    assert 'trained on images changed as in "stain of another stage" (' in said and "not a held-out test" in said
    both = "\n".join(modelcard.context_section(probes(10), {**mixed, "greyscale_p": 0.1}))
    assert 'changed as in "stain of another stage" and "in greyscale" (' in both


@pytest.mark.parametrize(("config", "words"), [({}, "image split"), ({"split": "smear", "fold": 3},
                                                                     "smear-group split, fold 3")])
def test_the_split_is_named_with_what_it_measures(config, words):
    text = "\n".join(modelcard.data_section(config, {"train_images": 700}, metrics_of()))
    assert f"**Split: {words}.**" in text
    first = modelcard.limitations(config, None, None, None, None)[0]
    if config:
        assert "one held-out smear fold (3)" in first and "not a patient split" in text
    else:
        assert "same smears as the training images" in first and "cpu-smear-cv" in text
    assert "| train | 700 |" in text and "| test | 120 | 30 | 30 | 30 | 30 |" in text


def test_wide_test_intervals_are_a_limitation_only_when_wide():
    narrow = metrics_of(n=2000, skill=4.0)
    assert modelcard.interval_limitation(narrow) is None
    wide = metrics_of(n=40, skill=1.0)
    low, high = wide["splits"]["test"]["accuracy_ci95"]
    assert high - low > modelcard.WIDE_INTERVAL
    assert modelcard.interval_limitation(wide).startswith("Few test images (40)")


# ----------------------------------------------------------------------------- the whole card, from files


def test_missing_files_leave_each_section_saying_what_to_run(tmp_path):
    run = tmp_path / "bare"
    runs.write_json(run / runs.CONFIG, {"model": "densenet-tiny", "image_size": 64, "preset": "tiny"})
    card = modelcard.render(run)
    for key in ("metrics", "baselines", "context", "localisation", "faithfulness"):
        assert modelcard.MISSING[key] in card, key
    assert "## Known limitations" in card and modelcard.GENERAL_LIMITATION in card
    assert f"Whether the maps point at the leukocytes was not measured: run `{modelcard.EXPLAIN}`." in card
    assert "no `COMPLETE`" in card
    assert modelcard.compose({}, {}, "nothing").startswith("# Model card: nothing\n")


def test_unreadable_or_misshapen_files_are_named_and_the_rest_of_the_card_stands(tmp_path):
    run = tmp_path / "damaged"
    runs.write_json(run / runs.CONFIG, {"model": "densenet-tiny", "image_size": 64})
    (run / runs.METRICS).write_text('{"splits": {"test": {"accuracy": 0.5')  # half a file
    runs.write_json(run / runs.BASELINES, {"baselines": [1, 2]})
    runs.write_json(run / runs.CONTEXT, probes(40))
    card = modelcard.render(run)
    assert "`metrics.json could not be read (JSONDecodeError" in card
    assert "`baselines.json` has an unexpected shape" in card
    assert "## What the model reads" in card and "| all | 40 | 100.0%" in card
    assert "What a colour-only model scores could not be read" not in card  # shape, not reading, for baselines


def test_text_from_the_files_cannot_form_markdown(tmp_path):
    run = tmp_path / "hostile"
    runs.write_json(run / runs.CONFIG, {"model": "<img src=x onerror=alert(1)>|[link](http://evil.example)**",
                                        "data_dir": "/data/`x`\ud800", "image_size": 64, "preset": "a\x07\ud800b"})
    card = modelcard.write(run).read_text()  # UTF-8 cannot hold a lone surrogate: it is left out, as control characters
    assert card == modelcard.render(run) and "preset ab" in card
    assert "<" not in card.replace("<br>", "")  # < > & are written as entities
    for raw in ("[link", "|[", "(http"):  # each only ever after a backslash
        assert not re.search(r"(?<!\\)" + re.escape(raw), card), raw
    assert "](http" not in card and "http://" not in card
    assert r"&lt;img src\=x onerror\=alert\(1\)&gt;\|\[link\]\(http\:\/\/evil\.example\)\*\*" in card
    assert "Prepared data: `/data/'x'`" in card


def test_the_card_module_needs_neither_torch_nor_numpy():
    code = "import sys, engine.modelcard; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout


def test_evaluate_writes_the_card_and_the_command_regenerates_it_byte_for_byte(trained_tiny_run, tmp_path, capsys):
    from engine import cli

    card = trained_tiny_run / runs.MODEL_CARD
    assert card.is_file(), "evaluate wrote no model card"
    text = card.read_text()
    assert text == modelcard.render(trained_tiny_run)
    metrics = json.loads((trained_tiny_run / runs.METRICS).read_text())["splits"]["test"]
    assert f"| test | {metrics['n']} | {pct(metrics['accuracy'])}" in text
    assert "**Split: image split.**" in text and modelcard.NOTICE in text
    copy = tmp_path / trained_tiny_run.name  # the card names the run by its folder, wherever it lies
    shutil.copytree(trained_tiny_run, copy, ignore=shutil.ignore_patterns(runs.CHECKPOINTS, "*.npz"))
    (copy / runs.MODEL_CARD).unlink()
    assert cli.main(["card", str(copy)]) == 0
    assert capsys.readouterr().out.strip().endswith(runs.MODEL_CARD)
    assert (copy / runs.MODEL_CARD).read_bytes() == card.read_bytes()
    assert cli.main(["card", "--print", str(copy)]) == 0
    assert capsys.readouterr().out == text
    assert cli.main(["card", str(tmp_path / "no-run")]) == 2


def test_explain_writes_the_card_again_with_the_maps(trained_tiny_run, tmp_path):
    from engine.explain.pipeline import explain_run

    run = tmp_path / "explained"
    shutil.copytree(trained_tiny_run, run, ignore=shutil.ignore_patterns(runs.CAMS))
    before = (run / runs.MODEL_CARD).read_text()
    assert modelcard.MISSING["localisation"] in before
    explain_run(run, methods=("gradcam",), layers=("denseblock2",), limit=16, faithfulness=False, sanity=False,
                stages=False, multilayer_images=0)
    after = (run / runs.MODEL_CARD).read_text()
    assert after == modelcard.render(run) and after != before
    localisation = json.loads((run / runs.CAMS / runs.LOCALISATION).read_text())
    best = localisation["ranking"][0]
    assert f"Best: **{best['method']} at {best['layer']}**, {runs.LOCALISATION_VERDICTS[best['verdict']]}" in after
    assert modelcard.MISSING["localisation"] not in after


def test_a_moving_average_of_the_weights_is_named_in_the_training_row():
    plain = {"model": "densenet121", "preset": "cpu-cells-long", "epochs": 30, "ema_decay": 0.0}
    assert "moving average" not in "\n".join(modelcard.model_section(plain, None, None, None))
    averaged = "\n".join(modelcard.model_section({**plain, "ema_decay": 0.995}, None, None, None))
    training = next(line for line in averaged.splitlines() if line.startswith("| training |"))
    assert "moving average over training (decay 0.995)" in training
