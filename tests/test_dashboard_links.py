"""Links that reopen a view: each page keeps its run, split, selected cell, stage, method,
layer, filters and overlay style in the URL's query parameters, and a new session opened on those
parameters shows the same view. Values that name nothing on the page are ignored, never an error.

On a fabricated outputs folder (tests/support/synthetic.py); the real-browser check of a copied link is
in tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import synthetic
from tests.support.apptest import APP, no_exception

RUN = "runs/baseline"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synthetic.make_outputs(tmp_path_factory.mktemp("link-pages"), n_trials=3)


def open_page(root: Path, monkeypatch: pytest.MonkeyPatch, page: str, params: dict | None = None):
    """A new session on ``page`` (as a pasted link opens it), with ``params`` as the URL's query."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ALL_OUTPUTS", str(root))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page(f"views/{page}.py")
    at.query_params = dict(params or {})
    at.run()
    no_exception(at)
    return at


def widget_values(at, keys: list[str]) -> dict:
    found = {}
    for kind in ("selectbox", "radio", "slider", "number_input", "toggle", "checkbox", "multiselect"):
        for w in getattr(at, kind):
            if w.key in keys:
                found[w.key] = w.value
    return found


GALLERY = {"g_method": None, "g_layer": None, "g_which": "misclassified", "g_conf": (0.2, 0.9), "g_limit": 18,
           "g_stage": "pre", "g_overlay_cmap": "magma", "g_overlay_opacity": 0.7, "g_overlay_show": True}


def test_a_gallery_link_reopens_the_same_view(made: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(made["root"], monkeypatch, "gallery")
    at.selectbox(key="gallery_run").set_value(RUN).run()
    methods, layers = at.selectbox(key="g_method").options, at.selectbox(key="g_layer").options
    assert len(methods) > 1  # the synthetic runs have one layer: the method shows a non-default choice
    wanted = {**GALLERY, "g_method": methods[-1], "g_layer": layers[-1]}
    for key, value in wanted.items():
        widget = next(w for kind in ("selectbox", "radio", "slider", "number_input", "toggle")
                      for w in getattr(at, kind) if w.key == key)
        widget.set_value(value)
    at.run()
    no_exception(at)
    assert widget_values(at, list(wanted)) == wanted
    link = dict(at.query_params)
    assert link["gallery_run"] == RUN and link["g_stage"] == "pre" and link["g_conf"] == "0.2,0.9"

    again = open_page(made["root"], monkeypatch, "gallery", link)
    assert widget_values(again, list(wanted)) == wanted
    assert again.selectbox(key="gallery_run").value == RUN
    assert [s.value for s in again.subheader if s.value.startswith("pre:")], "the stage chosen in the link"


def test_a_run_link_reopens_the_selected_cell(made: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(made["root"], monkeypatch, "run")
    at.selectbox(key="run").set_value(RUN).run()
    at.selectbox(key="cell_true").set_value("early")
    at.selectbox(key="cell_pred").set_value("pro")
    at.radio(key="cm_mode").set_value("row-normalised")
    at.selectbox(key="cell_overlay_cmap").set_value("turbo").run()
    no_exception(at)
    link = dict(at.query_params)
    assert (link["run"], link["cell_true"], link["cell_pred"]) == (RUN, "early", "pro")

    again = open_page(made["root"], monkeypatch, "run", link)
    keys = ["run", "run_split", "cm_mode", "cell_true", "cell_pred", "cell_method", "cell_layer", "cell_overlay_cmap"]
    assert widget_values(again, keys) == widget_values(at, keys)
    assert any("true **early** → predicted **pro**" in m.value for m in again.markdown)


def test_a_compare_link_keeps_the_clicked_cell(made: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(made["root"], monkeypatch, "compare", {"cmp_cell": "B,pre,early"})
    assert at.session_state["cmp_cell"] == ("B", "pre", "early")
    assert any("Cell of run B" in m.value for m in at.markdown)
    assert at.query_params["cmp_cell"] == "B,pre,early"
    at.button(key="cmp_clear_cell").click().run()
    no_exception(at)
    assert at.query_params["cmp_cell"] == ",," and not any("Cell of run B" in m.value for m in at.markdown)


@pytest.mark.parametrize("page, params", [
    ("gallery", {"gallery_run": "../../etc", "g_stage": "<script>", "g_conf": "5,9", "g_limit": "many",
                 "g_overlay_opacity": "-1", "g_overlay_cmap": "rainbow", "g_overlay_show": "maybe"}),
    ("run", {"run": "runs/none", "cell_true": "pro", "cell_pred": "nothing", "run_split": "train"}),
    ("compare", {"cmp_cell": "C,pre,pro", "cmp_split": "x"}),
    ("features", {"fm_splits": ["test", "secret"], "fm_colour": "x"}),
])
def test_links_naming_nothing_fall_back_to_the_defaults(made: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                        page: str, params: dict) -> None:
    at = open_page(made["root"], monkeypatch, page, params)
    plain = open_page(made["root"], monkeypatch, page)
    keys = [k for k in params if k != "cell_true"]
    assert widget_values(at, keys) == widget_values(plain, keys)
    for key in keys:
        assert at.query_params.get(key) != params[key] or key not in plain.query_params, key


# ----------------------------------------------------------------------------- a run tied to its split


def test_run_page_warns_when_the_prepared_split_changed(made: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """The engine refuses to evaluate or explain such a run; the dashboard, which shows old results, says why
    they are no longer held out."""
    import json
    import shutil

    import pandas as pd

    from dashboard import loaders
    from engine import runs

    root, run = made["root"], made["root"] / RUN
    prepared = root / "prepared-split"
    shutil.copytree(made["prepared"], prepared)
    config_path = run / runs.CONFIG
    saved = config_path.read_text()
    config = json.loads(saved)
    try:
        record = runs.manifest_record(prepared)  # what the run trained on
        config_path.write_text(json.dumps({**config, "data_dir": str(prepared), **record}))
        assert loaders.split_problem(root, run) is None
        at = open_page(root, monkeypatch, "run", {"run": RUN})
        assert not [w for w in at.warning if "another split" in w.value]

        manifest = pd.read_csv(prepared / "manifest.csv")
        moved = manifest.index[manifest["split"] == "test"][0]
        manifest.loc[moved, "split"] = "train"  # prepared again: a test image is now a training image
        manifest.to_csv(prepared / "manifest.csv", index=False)
        for page, key in (("run", "run"), ("gallery", "gallery_run")):
            at = open_page(root, monkeypatch, page, {key: RUN})
            shown = [re.sub(r"\\(.)", r"\1", w.value) for w in at.warning if "another split" in w.value]
            assert shown and "prepared-split/manifest.csv has changed" in shown[0], [w.value for w in at.warning]

        # Prepared data outside the outputs folder is not read: nothing can be said, and nothing is claimed.
        outside = tmp_path / "prepared"
        shutil.copytree(prepared, outside)
        config_path.write_text(json.dumps({**config, "data_dir": str(outside), **record}))
        assert runs.manifest_problem(run) is not None  # the engine, which may read it, sees the change
        assert loaders.split_problem(root, run) is None
    finally:
        config_path.write_text(saved)
        shutil.rmtree(prepared, ignore_errors=True)
