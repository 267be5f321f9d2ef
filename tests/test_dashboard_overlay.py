"""Overlay controls on the pages: the maps drawn from the stored arrays with the chosen
opacity, colour map and threshold, or not at all; the default style shows the stored overlays untouched.

On a fabricated outputs folder (tests/support/synthetic.py). ``overlay.render`` is wrapped to record what
the pages ask it to draw, so a page that ignored the controls (or redrew the default) would fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st

from dashboard import overlay
from tests.support import synthetic
from tests.support.apptest import app, no_exception

RUN = "runs/baseline"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synthetic.make_outputs(tmp_path_factory.mktemp("overlay-pages"), n_trials=3)


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[overlay.OverlayStyle]:
    """The styles overlay.render was called with (one entry per map drawn), from an empty cache."""
    st.cache_data.clear()
    calls: list[overlay.OverlayStyle] = []
    real = overlay.render

    def spy(image, cam, style):
        calls.append(style)
        out = real(image, cam, style)
        assert out.shape == image.shape
        return out

    monkeypatch.setattr(overlay, "render", spy)
    return calls


def map_captions(at) -> list[str]:
    return [c for image in at.image for c in image.captions if c.startswith("map for")]


def test_gallery_draws_maps_in_the_chosen_style(made: dict[str, Path], drawn: list, monkeypatch) -> None:
    at = app(made["root"], monkeypatch, "gallery")
    at.selectbox(key="gallery_run").set_value(RUN).run()
    no_exception(at)
    maps = map_captions(at)
    assert maps and drawn == []  # the default style: the stored overlays, nothing redrawn

    at.slider(key="g_overlay_opacity").set_value(0.8)
    at.selectbox(key="g_overlay_cmap").set_value("viridis")
    at.slider(key="g_overlay_threshold").set_value(0.3).run()
    no_exception(at)
    assert map_captions(at) == maps
    assert len(drawn) == len(maps)
    assert set(drawn) == {overlay.OverlayStyle(opacity=0.8, colormap="viridis", threshold=0.3)}

    drawn.clear()
    at.toggle(key="g_overlay_show").set_value(False).run()
    no_exception(at)
    assert map_captions(at) == maps and drawn == []  # the inputs alone, under the same captions


def test_cell_view_has_the_same_controls(made: dict[str, Path], drawn: list, monkeypatch) -> None:
    at = app(made["root"], monkeypatch, "run")
    at.selectbox(key="run").set_value(RUN).run()
    no_exception(at)
    maps = map_captions(at)
    assert maps and drawn == []
    at.selectbox(key="cell_overlay_cmap").set_value("inferno").run()
    no_exception(at)
    assert len(drawn) == len(maps) and {s.colormap for s in drawn} == {"inferno"}


def test_damaged_maps_are_a_caption_not_an_error(made: dict[str, Path], drawn: list, monkeypatch) -> None:
    import pandas as pd

    from engine import runs

    cams = made["root"] / RUN / runs.CAMS
    maps = [cams / rel for rel in pd.read_csv(cams / runs.CAMS_INDEX)["map"].unique()]
    saved = {path: path.read_bytes() for path in maps}
    try:
        for damage, said in ((b"not an array", "map not drawn"), (None, "missing map files")):
            for path in maps:
                if damage is None:
                    path.unlink()
                else:
                    path.write_bytes(damage)
            st.cache_data.clear()
            at = app(made["root"], monkeypatch, "run")
            at.selectbox(key="run").set_value(RUN).run()
            at.slider(key="cell_overlay_threshold").set_value(0.5).run()
            no_exception(at)
            captions = [c.value for c in at.caption]
            assert any(said in c for c in captions), captions
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
