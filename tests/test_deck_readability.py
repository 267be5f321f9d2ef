"""A meeting deck is read on a projector or a colleague's machine: nothing in it may depend on an emoji font,
and text inside a chart's bars too small to read from the back of a room is left out."""

from __future__ import annotations

import re
from pathlib import Path

import plotly.graph_objects as go

from dashboard import evidence, report, report_html

# The pictographs that a machine without an emoji font shows as empty boxes (the pages may use them).
EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u26FF\u2705\u274C\u2754]")


def test_the_deck_uses_no_emoji(dashboard_outputs: dict[str, Path]) -> None:
    deck = report.build(dashboard_outputs["root"], report.Findings(run=str(dashboard_outputs["best"])))
    assert "): verdict" in deck.html  # the evidence tables, where the localisation verdicts stand
    assert EMOJI.findall(deck.html) == []
    assert evidence.verdict_line("points", icon=False) == "points at the leukocytes"
    assert EMOJI.search(evidence.verdict_line("points"))  # the pages keep their icon


def test_deck_figures_hide_bar_text_too_small_to_read_and_keep_no_title_under_the_legend() -> None:
    fig = go.Figure(go.Bar(x=["a", "b"], y=[0.5, 0.9], text=["50%", "90%"]), layout={"title": {"text": "x"}})
    report_html._plot(fig, {})
    assert fig.layout.uniformtext.minsize >= 14 and fig.layout.uniformtext.mode == "hide"
    assert not fig.layout.title.text and fig.layout.font.size >= 18
