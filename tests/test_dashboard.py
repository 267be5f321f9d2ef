"""The dashboard: loaders, figures, path safety, deck export, and every page through AppTest on a
real tiny sweep (built once per session by tests/support/fixture.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dashboard import figures, loaders, pages, paths, report
from tests.support import synthetic
from tests.support.apptest import app, no_exception, texts
from tuning import layout

REPO = Path(__file__).resolve().parents[1]
PAGES = pages.SLUGS


@pytest.fixture(scope="session")
def outputs(dashboard_outputs: dict[str, Path]) -> dict[str, Path]:
    return dashboard_outputs


# ----------------------------------------------------------------------------- paths


def test_inside_rejects_escapes(tmp_path: Path) -> None:
    root = tmp_path / "out"
    (root / "runs").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("x")
    (root / "link").symlink_to(tmp_path / "secret.txt")
    assert paths.inside(root, "runs") == (root / "runs").resolve()
    for bad in ("../secret.txt", str(tmp_path / "secret.txt"), "runs/../../secret.txt", "link", "/etc/passwd",
                "runs/\x00x"):
        with pytest.raises(paths.OutsideOutputs):
            paths.inside(root, bad)


def test_loaders_reject_paths_from_files(tmp_path: Path) -> None:
    root = tmp_path / "out"
    run = root / "runs" / "r"
    (run / "cams").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    assert loaders.cam_path(root, run, "../../../../secret.png") is None
    assert loaders.cam_path(root, run, str(tmp_path / "secret.png")) is None
    assert loaders.stage_file(root, run, "../../..", "secret.png") is None
    with pytest.raises(loaders.LoadError, match="outside"):
        loaders.read_json(root, "../secret.png")
    frame = pd.DataFrame([{"trial_id": "t", "status": "complete", "run_dir": "../../../.."}])
    sweep = root / "sweeps" / "s"
    sweep.mkdir(parents=True)
    frame.to_csv(sweep / "summary.csv", index=False)
    assert loaders.trials(root, sweep)["run_path"].tolist() == [""]


def test_outputs_dir_from_argv_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALL_OUTPUTS", str(tmp_path / "env"))
    assert paths.outputs_dir([]) == (tmp_path / "env").resolve()
    assert paths.outputs_dir(["--outputs", str(tmp_path / "arg")]) == (tmp_path / "arg").resolve()
    monkeypatch.delenv("ALL_OUTPUTS")
    assert paths.outputs_dir(["-x"]) == Path("outputs").resolve()


# ----------------------------------------------------------------------------- loaders


def test_reads_refresh_when_files_change(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text('{"v": 1}')
    assert loaders.read_json(tmp_path, target) == {"v": 1}
    target.write_text('{"v": 22}')
    assert loaders.read_json(tmp_path, target) == {"v": 22}
    target.write_text("{broken")
    with pytest.raises(loaders.LoadError, match="not valid JSON"):
        loaders.read_json(tmp_path, target)
    with pytest.raises(loaders.LoadError, match="not found"):
        loaders.read_json(tmp_path, tmp_path / "missing.json")


def test_scan_finds_everything_and_flags_bad_runs(outputs: dict[str, Path]) -> None:
    found = loaders.scan(outputs["root"])
    assert [p["label"] for p in found["prepared"]] == ["prepared"]
    assert [s.label for s in found["sweeps"]] == ["sweeps/fixture"]
    by_label = {r.label: r for r in found["runs"]}
    best = by_label[outputs["best"].relative_to(outputs["root"]).as_posix()]
    assert best.evaluated and best.explained and best.has_checkpoint and best.status == "complete"
    assert best.sweep == "sweeps/fixture"
    assert by_label["runs/broken"].status == "corrupt"
    assert by_label["runs/partial"].status == "interrupted"
    parts = loaders.load_run(outputs["root"], outputs["partial"])
    assert parts["metrics"] is None and any("metrics.json" in p for p in parts["problems"])


def test_trials_of_the_fixture_sweep(outputs: dict[str, Path]) -> None:
    frame = loaders.trials(outputs["root"], outputs["sweep"])
    assert len(frame) >= 2 and set(frame["status"]) <= set(layout.TRIAL_STATUSES)
    assert all(Path(p).is_dir() for p in frame["run_path"])
    assert loaders.param_columns(frame)
    best = loaders.best_trial(outputs["root"], outputs["sweep"])
    assert best["trial_id"] in set(frame["trial_id"])


def test_cams_index_follows_the_contract(outputs: dict[str, Path]) -> None:
    index = loaders.cams_index(outputs["root"], outputs["best"])
    assert set(index["target"]) <= {"pred", "true"}
    row = index.iloc[0]
    for column in ("image", "overlay"):
        assert loaders.cam_path(outputs["root"], outputs["best"], row[column]) is not None


# ----------------------------------------------------------------------------- figures


def test_confusion_matrix_has_one_clickable_point_per_cell() -> None:
    cm = [[5, 1, 0, 0], [2, 6, 0, 1], [0, 0, 7, 0], [0, 3, 0, 4]]
    fig = figures.confusion_matrix(cm, mode="normalized")
    heat = [t for t in fig.data if t.type == "heatmap"]
    scatter = [t for t in fig.data if t.type == "scatter"]
    assert len(heat) == 1 and len(scatter) == 1
    points = scatter[0]
    assert len(points.x) == 16 and len(points.customdata) == 16
    for x, y, custom in zip(points.x, points.y, points.customdata, strict=True):
        true, pred, count = custom
        assert (y, x) == (true, pred)
        assert count == cm[figures.CLASSES.index(true)][figures.CLASSES.index(pred)]
    assert "rgba(0,0,0,0)" in points.marker.color  # invisible: the heatmap shows through
    assert fig.layout.clickmode == "event+select"
    assert np.isclose(heat[0].z[1][0], 2 / 9)


def test_roc_reliability_and_curves() -> None:
    rng = np.random.default_rng(0)
    n = 40
    proba = rng.dirichlet(np.ones(4), n)
    pred = pd.DataFrame({"true": [figures.CLASSES[i % 4] for i in range(n)],
                         **{f"prob_{c}": proba[:, k] for k, c in enumerate(figures.CLASSES)}})
    roc = figures.roc_curves(pred)
    assert len(roc.data) == 5 and all("AUC" in t.name for t in roc.data[1:])
    calibration = {"ece": 0.1, "brier": 0.2, "bins": [{"lo": 0.2, "hi": 0.4, "count": 3, "confidence": 0.3,
                                                       "accuracy": 0.5}, {"lo": 0.4, "hi": 0.6, "count": 0,
                                                                          "confidence": None, "accuracy": None}]}
    rel = figures.reliability(calibration)
    assert list(rel.data[1].y) == [0.5] and "ECE 0.100" in rel.layout.title.text
    hist = pd.DataFrame({"epoch": [1, 2], "val_macro_f1": [0.3, 0.5], "val_loss": [1.0, 0.8], "train_loss": [1, 0.7]})
    curves = figures.learning_curves({"a": hist, "b": hist}, best="b")
    assert curves.data[1].name.startswith("★") and curves.data[1].line.width > curves.data[0].line.width
    assert len(figures.history_panels(hist).data) == 3


def test_parallel_coordinates_handles_categorical_log_and_missing() -> None:
    frame = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "param_lr": [1e-4, 1e-3, 1e-2, 1e-3],
                          "param_model": ["x", "y", "x", "y"], "best_val_macro_f1": [0.5, 0.7, 0.6, None]})
    fig = figures.parallel_coordinates(frame, ["param_lr", "param_model"], best="b")
    dims = fig.data[0].dimensions
    assert [d.label for d in dims] == ["log10 lr", "model", "val macro-F1"]
    assert len(dims[0].values) == 3 and list(dims[1].ticktext) == ["x", "y"]
    assert "best b" in fig.layout.title.text


def test_faithfulness_frame_accepts_interval_forms() -> None:
    summary = {"metrics": ["road"], "methods": {
        "gradcam": {"layer": "norm5", "overall": {"road": {"mean": 0.3, "ci95": [0.2, 0.5], "n": 9}},
                    "per_stage": {"pre": {"road": {"mean": 0.4, "ci95": 0.1, "n": 3}}}}},
        "ranking": {"pre": ["gradcam"]}}
    frame = figures.faithfulness_frame(summary)
    overall = frame[frame["stage"] == "all"].iloc[0]
    assert np.isclose(overall["minus"], 0.1) and np.isclose(overall["plus"], 0.2)
    assert frame[frame["stage"] == "pre"].iloc[0]["rank"] == 1
    assert len(figures.faithfulness_bars(summary).data) == 1


def test_config_summary_names_the_view_colour_augmentation_and_split_only_where_set() -> None:
    from dashboard import ui

    plain = {"model": "densenet-tiny", "preset": "tiny", "image_size": 64, "epochs": 2, "lr": 0.00333,
             "batch_size": 16, "view": "field", "background": "keep", "background_p": 0.8, "stain_jitter": 0.0,
             "greyscale_p": 0.0, "stain_mix": 0.0, "ema_decay": 0.0, "split": "image", "fold": 0}
    # Text from the run folder is Markdown-escaped, as the page shows it.
    assert ui.config_summary(plain) == ("model: densenet\\-tiny · preset: tiny · image_size: 64 · epochs: 2 · "
                                        "lr: 0.00333 · batch_size: 16")
    cells = {**plain, "view": "cells", "background": "random", "stain_mix": 0.8, "ema_decay": 0.995, "split": "smear",
             "fold": 2}
    assert ui.config_summary(cells).endswith("batch_size: 16 · view: cells · background: random on 0.8 · "
                                             "stain_mix: 0.8 · ema_decay: 0.995 · split: smear fold 2")
    assert "<b>" not in ui.config_summary({"model": "<b>x</b>"})  # text from the run folder stays inert


def test_matplotlib_confusion_matrix_png() -> None:
    png = figures.png_confusion_matrix([[3, 1, 0, 0], [0, 4, 0, 0], [0, 0, 5, 0], [1, 0, 0, 2]], normalized=True)
    assert Image.open(io.BytesIO(png)).size[0] > 500


# ----------------------------------------------------------------------------- deck


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def external_links(document: str) -> list[str]:
    parser = _Links()
    parser.feed(document)
    return [u for u in parser.urls if u.startswith(("http:", "https:", "//"))]


def test_deck_pptx_and_offline_html(outputs: dict[str, Path]) -> None:
    from pptx import Presentation

    findings = report.Findings(run=str(outputs["best"]), stages=["benign", "pre"], per_stage=2, title="Group meeting")
    deck = report.build(outputs["root"], findings)
    prs = Presentation(io.BytesIO(deck.pptx))
    titles = [s.shapes[0].text_frame.text for s in prs.slides]
    assert titles == deck.slides
    assert titles[0] == "Group meeting"
    assert any(t.startswith("Metrics") for t in titles) and "Confusion matrix (test)" in titles
    assert [t.split(" (")[0] for t in titles if t.startswith("Grad-CAM")] == ["Grad-CAM: benign", "Grad-CAM: pre"]
    pictures = [sh for s in prs.slides for sh in s.shapes if sh.shape_type == 13]
    assert len(pictures) >= 3
    assert external_links(deck.html) == []
    assert "data:image/png;base64," in deck.html and "Plotly.newPlot" in deck.html
    assert '<script src="http' not in deck.html


def test_deck_carries_the_evidence_and_the_notice_on_every_slide(outputs: dict[str, Path]) -> None:
    """The fixture's data has leukocyte masks: the reopened PPTX holds the evidence the run folder holds."""
    from pptx import Presentation

    findings = report.Findings(run=str(outputs["best"]), stages=["early", "pro"], per_stage=1)
    deck = report.build(outputs["root"], findings)
    prs = Presentation(io.BytesIO(deck.pptx))
    titles = [s.shapes[0].text_frame.text for s in prs.slides]
    assert [t for t in titles if t.startswith("Evidence:")] == ["Evidence: early", "Evidence: pro"]
    assert "Cells or context: accuracy without the leukocytes" in titles
    assert any(t.startswith("Do the maps point at the leukocytes?") for t in titles)
    for slide in prs.slides:
        assert any(sh.has_text_frame and sh.text_frame.text == report.NOTICE for sh in slide.shapes)
    table = next(sh.table for s, t in zip(prs.slides, titles, strict=True) if t == "Evidence: early"
                 for sh in s.shapes if sh.has_table)
    labels = [table.cell(r, 0).text for r in range(len(table.rows))]
    assert any(label.startswith("Concentration on leukocytes") for label in labels)
    assert any(label.startswith("Accuracy leukocytes removed") for label in labels)
    assert report.NOTICE in deck.html and "Cells or context" in deck.html


def test_deck_save_writes_into_exports_only(tmp_path: Path) -> None:
    deck = report.Deck(pptx=b"p", html="<html></html>", slides=[], warnings=[])
    written = report.save(tmp_path, deck, "../../evil name")
    assert all(p.parent == (tmp_path / "exports").resolve() for p in written.values())
    assert written["pptx"].name.endswith("-evil-name.pptx")


# ----------------------------------------------------------------------------- hygiene


def test_no_torch_or_ray_outside_predict() -> None:
    code = ("import sys; import dashboard.loaders, dashboard.figures, dashboard.report, dashboard.ui, "
            "dashboard.paths, dashboard.__main__; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    for path in (REPO / "dashboard").rglob("*.py"):
        source = path.read_text()
        assert "import ray" not in source and "from ray" not in source, path
        assert "import torch" not in source, path  # the Predict page reaches torch through engine.predict


def test_launcher_binds_localhost_by_default() -> None:
    from dashboard import __main__ as launcher

    cmd = launcher.command(Path("/x"), "127.0.0.1", 8600)
    joined = " ".join(cmd)
    assert "--server.address 127.0.0.1" in joined and "--server.port 8600" in joined
    assert "--server.headless true" in joined and "--browser.gatherUsageStats false" in joined
    assert cmd[-2:] == ["--outputs", "/x"]
    args = launcher.build_parser().parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 8501)


# ----------------------------------------------------------------------------- pages (AppTest)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(outputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, page: str) -> None:
    at = app(outputs["root"], monkeypatch, page)
    no_exception(at)
    content = texts(at)
    expected = {"data": ["Sample images per stage", "Data report"], "sweeps": ["Best trial", "Trials ("],
                "run": ["Confusion matrix", "Per stage", "95% CI", "Cells or context"],
                "gallery": ["Stage mean map", "Faithfulness"],
                "evidence": ["Verdicts", "Do the maps point at the leukocytes?",
                             "With the leukocytes removed the model still classifies"],
                "features": ["Feature map"], "compare": ["The same images"], "predict": ["Predict"],
                "present": ["Present"]}[page]
    for text in expected:
        assert text in content, (page, text)
    if page == "run":
        assert len(at.get("plotly_chart")) >= 3
    if page == "sweeps":
        assert len(at.dataframe) >= 1
    if page == "predict":
        assert len(at.get("file_uploader")) == 1


def test_run_page_cell_shows_exactly_its_images(outputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    at = app(outputs["root"], monkeypatch, "run")
    label = outputs["best"].relative_to(outputs["root"]).as_posix()
    at.selectbox(key="run").set_value(label).run()
    pred = pd.read_csv(outputs["best"] / "predictions.csv")
    test = pred[pred["split"] == "test"]
    for true, guess in (("benign", "benign"), ("pre", "early")):
        at.selectbox(key="cell_true").set_value(true)
        at.selectbox(key="cell_pred").set_value(guess).run()
        no_exception(at)
        n = int(((test["true"] == true) & (test["pred"] == guess)).sum())
        assert f"true **{true}** → predicted **{guess}**" in texts(at)
        assert f"{n} images" in texts(at)
        shown = [m.value for m in at.markdown if "cell-image" in m.value]
        assert len(shown) == min(n, 24)
    flagged = json.loads((outputs["best"] / "metrics.json").read_text())["ood"]["flagged_fraction"]["test"]
    assert f"Out-of-distribution check (`ood.npz`): {flagged:.1%} of the test images" in texts(at)


def test_run_page_warns_for_corrupt_and_partial_runs(outputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    at = app(outputs["root"], monkeypatch, "run")
    for label, phrase in (("runs/broken", "corrupt"), ("runs/partial", "not evaluated")):
        at.selectbox(key="run").set_value(label).run()
        no_exception(at)
        assert phrase in " ".join(w.value for w in at.warning), label


def test_predict_page_classifies_and_refuses_bad_files(outputs: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    at = app(outputs["root"], monkeypatch, "predict")
    image = Image.fromarray(synthetic.cell_image("pre", np.random.default_rng(0), 96))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    at.file_uploader[0].set_value(("cell.png", buffer.getvalue(), "image/png")).run()
    no_exception(at)
    assert "Predicted stage" in texts(at)
    assert len(at.get("plotly_chart")) == 1
    # An image of the training distribution passes the out-of-distribution check; noise does not.
    report = json.loads((outputs["prepared"] / "data_report.json").read_text())
    root = Path(next(iter(report["class_dirs"].values()))).parent
    test_image = next(line.split(",")[0] for line in (outputs["prepared"] / "manifest.csv").read_text().splitlines()
                      if line.split(",")[4:5] == ["test"])
    at.file_uploader[0].set_value(("smear.png", (root / test_image).read_bytes(), "image/png")).run()
    no_exception(at)
    assert "Like the training images" in texts(at) and "Unlike the training images" not in texts(at)
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(noise, format="PNG")
    at.file_uploader[0].set_value(("noise.png", noise.getvalue(), "image/png")).run()
    no_exception(at)
    assert "Unlike the training images" in texts(at) and "Predicted stage" in texts(at)
    at.file_uploader[0].set_value(("notes.png", b"this is not an image", "image/png")).run()
    no_exception(at)
    assert "cannot be used" in texts(at) and "not an image" in texts(at)
    huge = io.BytesIO()
    Image.new("L", (9000, 6000)).save(huge, format="PNG")  # 54 MP: over the decoder's limit
    at.file_uploader[0].set_value(("huge.png", huge.getvalue(), "image/png")).run()
    no_exception(at)
    assert "decompression bomb" in texts(at)
    at.file_uploader[0].set_value(("big.png", bytes(26 * 2**20), "image/png")).run()
    no_exception(at)
    assert "file too large" in texts(at) and "the limit is 25 MB" in texts(at)


def test_present_page_exports_a_deck(outputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from pptx import Presentation

    at = app(outputs["root"], monkeypatch, "present")
    label = outputs["best"].relative_to(outputs["root"]).as_posix()
    at.selectbox(key="present_run").set_value(label).run()
    at.multiselect(key="present_stages").set_value(["early", "pro"]).run()
    at.button(key="present_build").click().run()
    no_exception(at)
    assert "Deck written" in texts(at)
    exports = outputs["root"] / "exports"
    pptx = sorted(exports.glob("*.pptx"))[-1]
    titles = [s.shapes[0].text_frame.text for s in Presentation(pptx).slides]
    assert [t.split(" (")[0] for t in titles if t.startswith("Grad-CAM")] == ["Grad-CAM: early", "Grad-CAM: pro"]
    html = sorted(exports.glob("*.html"))[-1].read_text()
    assert external_links(html) == []
    assert {p.parent for p in exports.iterdir()} == {exports}


def test_empty_outputs_folder_explains_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for page in PAGES:
        at = app(tmp_path, monkeypatch, page)
        no_exception(at)
        assert "make prepare" in texts(at), page


def test_sweeps_page_shows_running_and_errored_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synthetic.make_sweep(tmp_path / "sweeps" / "live", 12, np.random.default_rng(0), str(tmp_path), status="running")
    (tmp_path / "sweeps" / "live" / "trials" / "trial_0003" / "history.csv").write_text("garbage\n\x00")
    at = app(tmp_path, monkeypatch, "sweeps")
    no_exception(at)
    content = texts(at)
    assert "refreshes every" in content and "errored trial" in " ".join(e.label for e in at.expander)
    table = at.dataframe[0].value
    assert {"▶ running", "✗ error", "… pending"} <= set(table["state"])


def test_bench_outputs_render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = synthetic.make_outputs(tmp_path, n_trials=20)
    assert json.loads((made["sweep"] / "sweep.json").read_text())["num_samples"] == 20
    for page in PAGES:
        no_exception(app(tmp_path, monkeypatch, page))
