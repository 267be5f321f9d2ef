import json
import os

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from engine.commands.predict import main


def test_predict_answers_good_files_and_explains_bad_ones(trained_tiny_run, tmp_path, capsys):
    good = tmp_path / "cell.png"
    Image.new("RGB", (80, 60), (200, 100, 150)).save(good)
    gray = tmp_path / "gray.jpg"
    Image.new("L", (64, 64), 128).save(gray)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    missing = tmp_path / "missing.png"
    assert main([str(trained_tiny_run), str(good), str(bad), str(gray), str(missing)]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"] for line in lines] == [str(good), str(bad), str(gray), str(missing)]
    for line in (lines[0], lines[2]):
        assert set(line["probabilities"]) == {"benign", "early", "pre", "pro"}
        assert abs(sum(line["probabilities"].values()) - 1) < 1e-4
        assert line["pred"] in line["probabilities"]
    assert "corrupt" in lines[1]["error"] or "not an image" in lines[1]["error"]
    assert "No such file" in lines[3]["error"]


def test_predict_matches_evaluation(trained_tiny_run, capsys):
    import csv

    from engine.manifest import data_root

    with (trained_tiny_run / "predictions.csv").open() as handle:
        row = next(csv.DictReader(handle))
    config = json.loads((trained_tiny_run / "config.json").read_text())
    image = data_root(config["data_dir"]) / row["path"]
    assert main([str(trained_tiny_run), str(image)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["pred"] == row["pred"]
    # Both in full precision; on a GPU cuDNN's TF32 convolutions (and other batch shapes) leave ~1e-4 noise.
    tolerance = 2e-3 if torch.cuda.is_available() else 1e-4
    assert abs(line["probabilities"]["benign"] - float(row["prob_benign"])) < tolerance


def _bare_predictor(size: int = 32):
    """A Predictor without a model: enough to decode files (nothing here reaches the model)."""
    from types import SimpleNamespace

    from engine.predict import Predictor

    predictor = Predictor.__new__(Predictor)
    predictor.cfg = SimpleNamespace(image_size=size, view="field")
    return predictor


@pytest.mark.timeout(60)  # before the fix, reading the FIFO blocked for ever
def test_predict_refuses_hostile_files_with_reasons_and_never_blocks(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    frames = [Image.new("RGB", (16, 16), (i, 0, 0)) for i in range(2)]
    animated = tmp_path / "animated.png"
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    thin = tmp_path / "thin.png"
    Image.new("L", (1, 20_000)).save(thin)
    bright = tmp_path / "bright.tiff"
    Image.fromarray(np.full((8, 8), 300.0, np.float32)).save(bright)
    paths = [fifo, animated, thin, bright, tmp_path]
    errors = [r["error"] for r in _bare_predictor().predict_files(paths)]
    assert "not a regular file (a FIFO)" in errors[0]
    assert "animated PNG of 2 frames" in errors[1]
    assert "extreme aspect ratio 1x20000" in errors[2]
    assert "float pixels span [300, 300]" in errors[3]
    assert "not a regular file (a folder)" in errors[4]


def test_predict_and_the_dashboard_decode_like_prepare(tmp_path):
    from engine.decoding import load_image

    deep = tmp_path / "deep.tiff"
    Image.fromarray(np.full((40, 40), 257 * 90, np.uint16)).save(deep)  # 16-bit grey
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 3  # stored upside down
    pixels = np.zeros((40, 40, 3), np.uint8)
    pixels[:20] = 250  # white top half as stored: the bottom once turned upright
    Image.fromarray(pixels).save(turned, exif=exif)
    predictor = _bare_predictor()
    for path in (deep, turned):
        by_predict = predictor.preprocess(path)
        assert (by_predict == predictor.preprocess(path.read_bytes())).all()  # an upload, as the page reads it
        assert (by_predict == load_image(path, 32)).all()
    assert (predictor.preprocess(deep) == 90).all()  # not clipped to white
    upright = predictor.preprocess(turned).mean(axis=(1, 2))
    assert upright[:12].max() < 30 and upright[-12:].min() > 220


def test_analyse_is_scores_embed_and_explain_from_one_forward_pass(trained_tiny_run):
    import csv

    from engine.explain.figures import overlay
    from engine.explain.pipeline import DEFAULT_LAYERS, DEFAULT_METHODS
    from engine.manifest import data_root
    from engine.predict import Predictor
    from engine.runs import CLASSES

    predictor = Predictor(trained_tiny_run, "best", "cpu")
    config = json.loads((trained_tiny_run / "config.json").read_text())
    with (trained_tiny_run / "predictions.csv").open() as handle:
        image = predictor.preprocess(data_root(config["data_dir"]) / next(csv.DictReader(handle))["path"])
    passes = []
    counting = predictor.model.features.register_forward_hook(lambda *_: passes.append(1))
    try:
        found = predictor.analyse(image)
        assert len(passes) == 1
        other = (CLASSES.index(found.pred) + 1) % len(CLASSES)
        chosen = predictor.analyse(image, other, "gradcam", "norm5")
        assert len(passes) == 2
    finally:
        counting.remove()

    proba, distance = predictor.scores(image[None])
    assert list(found.probabilities) == list(CLASSES)
    np.testing.assert_array_equal(list(found.probabilities.values()), proba[0])
    assert found.pred == found.target == CLASSES[int(proba[0].argmax())]
    # The similar-cases vector: exactly the features a separate embedding pass gives.
    assert found.features.dtype == np.float32
    np.testing.assert_array_equal(found.features, predictor.embed(image[None])[0].numpy())
    assert (found.method, found.layer) == (DEFAULT_METHODS[0], DEFAULT_LAYERS[0])
    np.testing.assert_array_equal(found.map, predictor.explain(image, CLASSES.index(found.pred)))
    np.testing.assert_array_equal(found.overlay, overlay(image, found.map))
    assert found.ood_distance == float(distance[0])
    assert (found.ood_threshold, found.ood_quantile) == (predictor.ood.threshold, predictor.ood.quantile)
    assert found.out_of_distribution == bool(distance[0] > predictor.ood.threshold)

    assert (chosen.target, chosen.pred, chosen.method, chosen.layer) == (CLASSES[other], found.pred, "gradcam", "norm5")
    np.testing.assert_array_equal(chosen.map, predictor.explain(image, other, "gradcam", "norm5"))
    np.testing.assert_array_equal(chosen.features, found.features)
    with pytest.raises(ValueError, match="stage index"):
        predictor.analyse(image, len(CLASSES))

    predictor.ood = None  # a run never evaluated
    bare = predictor.analyse(image)
    assert (bare.ood_distance, bare.ood_threshold, bare.ood_quantile, bare.out_of_distribution) == (None,) * 4
    np.testing.assert_array_equal(bare.features, found.features)
