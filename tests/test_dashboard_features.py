"""The Feature map page, similar cases on Gallery and Predict, and their figure and loader functions.

On the real tiny outputs of tests/support/fixture.py (read only: nothing here writes into them).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dashboard import figures, loaders
from dashboard.escape import md
from engine import runs
from tests.support.apptest import app, no_exception, texts


def points(n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"split": ["train", "test"] * (n // 2), "sha256": [f"{i:064x}" for i in range(n)],
                         "path": [f"Original/Pro/<i>x{i}.png" for i in range(n)],
                         "true": ["benign", "pro", "pre"] * (n // 3), "pred": ["benign", "pro", "early"] * (n // 3),
                         "confidence": rng.random(n), "ood_distance": rng.random(n),
                         "out_of_distribution": [0.0, 1.0] * (n // 2), "x": rng.normal(size=n),
                         "y": rng.normal(size=n)})


def test_feature_map_colours_every_point_once_and_escapes_labels() -> None:
    located = pd.DataFrame({"sha256": [f"{i:064x}" for i in range(4)], "concentration": [0.5, 1.5, 2.0, 3.0],
                            "pointing": [1, 0, 1, 1]})
    frame = figures.feature_map_frame(points(), located)
    for colour in figures.FEATURE_MAP_COLOURS:
        fig = figures.feature_map(frame, colour)
        keys = [k for trace in fig.data for k in trace.customdata]
        assert sorted(keys) == sorted(frame["sha256"]), colour  # each point once, keyed by sha256
        assert all(trace.type == "scatter" for trace in fig.data)  # Streamlit selects on scatter traces
    assert [t.name for t in figures.feature_map(frame, "true").data] == ["benign", "pre", "pro"]
    assert [t.name for t in figures.feature_map(frame, "correct").data] == ["correct", "misclassified"]
    assert [t.name for t in figures.feature_map(frame, "pointing").data] == ["off the leukocytes", "on a leukocyte",
                                                                             "no score"]
    text = " ".join(t for trace in figures.feature_map(frame, "true").data for t in trace.text)
    assert "<i>" not in text and "&lt;i&gt;x0.png" in text


def test_selected_keys_reads_box_and_lasso_selections() -> None:
    event = {"selection": {"points": [{"customdata": "a", "x": 1}, {"customdata": ["b"]}, {"customdata": "a"},
                                      {"x": 2}, "junk"], "box": [{}], "lasso": []}}
    assert figures.selected_keys(event) == ["a", "b"]
    assert figures.selected_keys(None) == [] and figures.selected_keys({"selection": {}}) == []


def test_loaders_read_the_map_and_find_similar_cases(dashboard_outputs: dict[str, Path]) -> None:
    root, run = dashboard_outputs["root"], dashboard_outputs["best"]
    frame = loaders.embedding(root, run)
    assert set(frame["split"]) == {"train", "val", "test"}
    test = frame[frame["split"] == "test"].iloc[0]
    found = loaders.similar_cases(root, run, sha256=test["sha256"], k=5)
    assert len(found) == 5 and [f["rank"] for f in found] == [1, 2, 3, 4, 5]
    assert all(f["stage"] in runs.CLASSES for f in found)
    assert [f["distance"] for f in found] == sorted(f["distance"] for f in found)
    train = frame[frame["split"] == "train"].iloc[0]
    itself = loaders.similar_cases(root, run, sha256=train["sha256"], k=1)[0]
    assert itself["distance"] == 0.0
    assert loaders.similar_cases(root, run, sha256="0" * 64) == []
    pictures = loaders.training_images(root, run, [f["sha256"] for f in found])
    assert set(pictures) == {f["sha256"] for f in found}
    assert all(p.dtype == np.uint8 and p.ndim == 3 for p in pictures.values())


def test_loaders_refuse_a_damaged_feature_file(dashboard_outputs: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "out"
    run = root / "runs" / "r"
    run.mkdir(parents=True)
    (run / runs.FEATURES).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(loaders.LoadError):
        loaders.similar_cases(root, run, sha256="0" * 64)
    with pytest.raises(loaders.MissingFile):
        loaders.embedding(root, run)
    assert loaders.training_images(root, run, ["0" * 64]) == {}


def test_feature_map_page_renders_and_shows_a_selection(dashboard_outputs: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root, run = dashboard_outputs["root"], dashboard_outputs["best"]
    at = app(root, monkeypatch, "features")
    no_exception(at)
    at.selectbox(key="fm_run").set_value(run.relative_to(root).as_posix()).run()
    no_exception(at)
    assert "Feature map" in texts(at) and "Nothing selected yet." in texts(at)
    assert len(at.get("plotly_chart")) == 1
    for colour in ("correct", "confidence", "out_of_distribution", "concentration", "pointing"):
        at.selectbox(key="fm_colour").set_value(colour).run()
        no_exception(at)
    # A box or lasso selection arrives as sha256 keys; AppTest cannot draw one, so it sets the same keys.
    frame = pd.read_csv(run / runs.EMBEDDING)
    test = frame[frame["split"] == "test"]
    chosen = list(test["sha256"].drop_duplicates()[:5])
    at.session_state["fm_picked"] = chosen
    at.run()
    no_exception(at)
    assert f"Selected: {len(chosen)} image(s)" in texts(at)
    shown = [m.value for m in at.markdown if "fm-image" in m.value]
    assert len(shown) == len(chosen)
    names = {p.rsplit("/", 1)[-1] for p in test[test["sha256"].isin(chosen)]["path"]}
    assert all(any(md(name) in s for s in shown) for name in names)
    # Training images have no Grad-CAM maps: they are shown from the prepared folder's cache.
    train = list(frame[frame["split"] == "train"]["sha256"].drop_duplicates()[:2])
    at.multiselect(key="fm_splits").set_value(["train", "test"])
    at.session_state["fm_picked"] = train
    at.run()
    no_exception(at)
    assert "Selected: 2 image(s)" in texts(at)
    assert len(at.get("image")) >= 2


def test_gallery_and_predict_show_similar_training_images(dashboard_outputs: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root, run = dashboard_outputs["root"], dashboard_outputs["best"]
    at = app(root, monkeypatch, "gallery")
    at.selectbox(key="gallery_run").set_value(run.relative_to(root).as_posix()).run()
    no_exception(at)
    assert "Similar training images" in texts(at)
    assert "distance" in texts(at)

    at = app(root, monkeypatch, "predict")
    at.selectbox(key="predict_run").set_value(run.relative_to(root).as_posix()).run()
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(100, 200, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    at.file_uploader[0].set_value(("cell.png", buffer.getvalue(), "image/png")).run()
    no_exception(at)
    assert "Similar training images" in texts(at) and "distance" in texts(at)


def test_feature_map_page_keeps_hostile_text_inert(dashboard_outputs: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    root = tmp_path / "out"
    run = root / "runs" / "hostile"
    shutil.copytree(dashboard_outputs["best"], run, ignore=shutil.ignore_patterns("checkpoints"))
    frame = pd.read_csv(run / runs.EMBEDDING)
    test = frame.index[frame["split"] == "test"]
    frame.loc[test[:3], "path"] = "Original/Pro/<img src=x onerror=alert(1)>[link](http://x).png"
    frame.loc[test[3], "true"] = "<b>benign</b>"  # not a stage: the row is skipped, and the page says so
    frame.to_csv(run / runs.EMBEDDING, index=False)
    at = app(root, monkeypatch, "features")
    no_exception(at)
    at.session_state["fm_picked"] = list(frame.loc[test[:4], "sha256"])
    at.run()
    no_exception(at)
    assert "1 of" in texts(at) and "rows skipped" in texts(at)
    shown = [m.value for m in at.markdown if "fm-image" in m.value]
    assert len(shown) == 3
    # No tag forms (the path sits escaped in a title attribute, as on the Run page), and no link: the file name
    # after the last "/" is Markdown-escaped.
    assert all("<img" not in s and "&lt;img" in s and "x\\)\\.png</span>" in s for s in shown), shown
