"""The feature space ``evaluate`` keeps (features.npz, embedding.csv) and the similar-cases search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine import features as feature_space
from engine import runs, similar
from engine.runs import CLASSES


def test_features_npz_round_trip_without_pickles(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"sha256": f"{i:064x}", "path": f"Original/Pro/ü-{i}.png"} for i in range(5)]
    part = feature_space.SplitFeatures.build(rng.normal(size=(5, 7)), rows, np.array([0, 1, 2, 3, 3]))
    path = tmp_path / runs.FEATURES
    feature_space.save(path, {"train": part, "test": part})
    with np.load(path, allow_pickle=False) as raw:  # plain arrays: nothing needs unpickling
        assert list(raw[runs.FEATURES_SPLITS]) == ["train", "test"]
        assert raw["features_train"].dtype == np.float16
    back = feature_space.load(path)
    assert list(back) == ["train", "test"]
    for key in runs.FEATURES_KEYS:
        np.testing.assert_array_equal(getattr(back["test"], key), getattr(part, key))
    assert back["test"].path[0] == "Original/Pro/ü-0.png"


def test_evaluate_keeps_every_splits_features(trained_tiny_run):
    stored = feature_space.load(trained_tiny_run / runs.FEATURES)
    assert set(stored) == {"train", "val", "test"}
    predictions = pd.read_csv(trained_tiny_run / runs.PREDICTIONS)
    for split in ("val", "test"):
        rows = predictions[predictions["split"] == split]
        assert list(stored[split].sha256) == list(rows["sha256"])
        assert [CLASSES[k] for k in stored[split].label] == list(rows["true"])
    widths = {part.features.shape[1] for part in stored.values()}
    assert len(widths) == 1 and all(part.features.dtype == np.float16 for part in stored.values())


def test_embedding_is_deterministic_for_a_seed():
    x = np.random.default_rng(1).normal(size=(60, 16)).astype(np.float16)
    a, b = feature_space.embed(x, seed=3), feature_space.embed(x, seed=3)
    assert a.shape == (60, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert feature_space.embed(x[:2], seed=3).shape == (2, 2)  # too few for t-SNE: still a map
    assert feature_space.embed(x[:0], seed=3).shape == (0, 2)


def test_embedding_csv_is_recomputable_from_features_npz(trained_tiny_run):
    table = pd.read_csv(trained_tiny_run / runs.EMBEDDING)
    assert tuple(table.columns) == runs.EMBEDDING_COLUMNS
    stored = feature_space.load(trained_tiny_run / runs.FEATURES)
    assert len(table) == sum(len(p.features) for p in stored.values())
    seed = runs.read_json(trained_tiny_run / runs.CONFIG)["seed"]
    xy = feature_space.embed(np.concatenate([stored[s].features for s in stored]), seed)
    np.testing.assert_allclose(table[["x", "y"]].to_numpy(), xy, atol=1e-4)
    # The map's predictions are predictions.csv's, and its flags those of the out-of-distribution check.
    predictions = pd.read_csv(trained_tiny_run / runs.PREDICTIONS)
    merged = predictions.merge(table, on=["split", "sha256"], suffixes=("", "_map"))
    assert len(merged) == len(predictions)
    assert (merged["pred"] == merged["pred_map"]).all()
    np.testing.assert_allclose(merged["confidence"], merged["confidence_map"], atol=1e-6)
    assert set(table["out_of_distribution"]) <= {0, 1}
    assert table["ood_distance"].notna().all()


def test_nearest_training_image_of_a_training_image_is_itself(trained_tiny_run):
    train = feature_space.load(trained_tiny_run / runs.FEATURES)["train"]
    i = 5
    found = similar.nearest(trained_tiny_run, train.features[i], k=3)
    assert [f["rank"] for f in found] == [1, 2, 3]
    assert found[0]["distance"] == 0.0
    # Exact duplicates share their features: whichever copy comes first, it has this image's bytes.
    assert found[0]["sha256"] == train.sha256[i]
    assert found[0]["stage"] == CLASSES[train.label[i]]
    assert found[0]["distance"] <= found[1]["distance"] <= found[2]["distance"]
    assert len(similar.nearest(trained_tiny_run, train.features[i], k=10_000)) == len(train.features)
    with pytest.raises(ValueError, match="feature vector"):
        similar.nearest(trained_tiny_run, np.zeros(3), k=1)


def test_stored_and_uploaded_vectors_agree(trained_tiny_run):
    from engine.manifest import data_root
    from engine.predict import Predictor

    test = feature_space.load(trained_tiny_run / runs.FEATURES)["test"]
    vector = similar.stored_vector(trained_tiny_run, str(test.sha256[0]))
    np.testing.assert_array_equal(vector, test.features[0].astype(np.float32))
    assert similar.stored_vector(trained_tiny_run, "0" * 64) is None
    prepared = Path(runs.read_json(trained_tiny_run / runs.CONFIG)["data_dir"])
    predictor = Predictor(trained_tiny_run, device="cpu")
    upload = predictor.analyse(predictor.preprocess(data_root(prepared) / test.path[0])).features
    np.testing.assert_allclose(upload, vector, rtol=1e-2, atol=1e-2)
    assert similar.nearest(trained_tiny_run, upload, k=1)[0]["stage"] in CLASSES


def test_cached_images_are_the_training_images_as_the_model_saw_them(trained_tiny_run):
    from engine.cache import load_cache

    config = runs.read_json(trained_tiny_run / runs.CONFIG)
    prepared, size = Path(config["data_dir"]), config["image_size"]
    train = feature_space.load(trained_tiny_run / runs.FEATURES)["train"]
    found = similar.nearest(trained_tiny_run, train.features[0], k=2)
    images = similar.cached_images(prepared, size, [f["sha256"] for f in found] + ["f" * 64])
    assert set(images) == {f["sha256"] for f in found}
    cache = np.asarray(load_cache(prepared, size))
    assert images[found[0]["sha256"]].shape == (size, size, 3)
    assert any(np.array_equal(images[found[0]["sha256"]], c) for c in cache)
    assert similar.cached_images(prepared, size + 1, [found[0]["sha256"]]) == {}  # no cache at that size
