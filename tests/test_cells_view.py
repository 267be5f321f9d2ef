"""The cells view (engine.cells): each image as a mosaic of its largest leukocytes at source resolution, the
mask tiled the same way, and a model trained, evaluated, explained and asked to predict on that view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import cells
from engine.cache import load_cache, load_mask_cache
from engine.config import ConfigError, build_config
from engine.manifest import data_root, read_manifest


def disc(mask: np.ndarray, centre: tuple[int, int], radius: int) -> None:
    rows, cols = np.ogrid[:mask.shape[0], :mask.shape[1]]
    mask[(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2] = True


def planted(size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """A grey field with a large red cell and a smaller blue one: the image and its mask."""
    image = np.full((size, size, 3), 200, dtype=np.uint8)
    big, small = np.zeros((size, size), bool), np.zeros((size, size), bool)
    disc(big, (60, 150), 16)
    disc(small, (170, 40), 9)
    image[big] = (220, 30, 30)
    image[small] = (30, 30, 220)
    return image, big | small


def test_windows_are_centred_on_the_largest_cells_first_and_repeat_them() -> None:
    image, mask = planted()
    assert cells.centres(mask) == [(60, 150), (170, 40), (60, 150), (170, 40)]
    view, view_mask = cells.mosaic(image, mask, 96)
    assert view.shape == (96, 96, 3) and view.dtype == np.uint8 and view_mask.shape == (96, 96)
    # At 224 px a 48-px window lands on a 48-px tile: the source pixels, the red cell in the middle of tile 0.
    # Tiles fill the mosaic row by row: red, blue, then red and blue again.
    assert tuple(view[24, 24]) == (220, 30, 30) and tuple(view[24, 24 + 48]) == (30, 30, 220)
    assert np.array_equal(view[:48, :48], image[36:84, 126:174])
    assert np.array_equal(view[:48], view[48:])  # fewer cells than tiles: the order repeats
    # The mask is tiled with the same windows: masked pixels are the cells' colours, the rest the field's.
    reds_or_blues = (view[..., 1] == 30)
    assert np.array_equal(view_mask, reds_or_blues)


def test_a_window_at_the_border_moves_inside_and_an_empty_mask_tiles_the_field() -> None:
    image = np.arange(224 * 224 * 3, dtype=np.uint32).reshape(224, 224, 3).astype(np.uint8)
    assert cells.window(image, (2, 220), 48).shape == (48, 48, 3)
    assert np.array_equal(cells.window(image, (2, 220), 48), image[:48, -48:])
    spots = cells.centres(np.zeros((224, 224), bool))
    assert spots == [(56, 56), (56, 168), (168, 56), (168, 168)]
    view, view_mask = cells.mosaic(image, np.zeros((224, 224), bool), 64)
    assert view.shape == (64, 64, 3) and not view_mask.any()


def test_the_window_scales_with_the_image_and_bad_shapes_are_refused() -> None:
    image, mask = planted(448)
    assert cells.window_side(448, 448) == 96 and cells.window_side(224, 300) == 48
    view, view_mask = cells.mosaic(image, mask, 96)
    assert tuple(view[24, 24]) == (220, 30, 30) and view_mask[24, 24]
    with pytest.raises(ValueError, match="divisible by 2"):
        cells.mosaic(image, mask, 95)
    with pytest.raises(ValueError, match="the mask is 224x224, the image 448x448"):
        cells.mosaic(image, mask[:224, :224], 96)


def test_the_view_is_a_checked_config_key() -> None:
    assert build_config("tiny", {"view": "cells"}).view == "cells"
    with pytest.raises(ConfigError, match="view must be one of"):
        build_config("tiny", {"view": "crops"})
    with pytest.raises(ConfigError, match="divisible by 2"):
        build_config("tiny", {"view": "cells", "image_size": 65})


def test_the_cells_cache_holds_each_images_mosaic(prepared_tiny: Path) -> None:
    rows = read_manifest(prepared_tiny)
    images, masks = load_cache(prepared_tiny, 64, "cells"), load_mask_cache(prepared_tiny, 64, "cells")
    assert images.shape == (len(rows), 64, 64, 3) and masks.shape == (len(rows), 64, 64)
    assert sorted(p.name.split(".")[0] for p in (prepared_tiny / "cache").glob("cells-64px*.npy")) == \
        ["cells-64px", "cells-64px-masks"]
    k = next(i for i, r in enumerate(rows) if r["mask"])
    source = np.asarray(Image.open(data_root(prepared_tiny) / rows[k]["path"]).convert("RGB"))
    mask = np.asarray(Image.open(prepared_tiny / rows[k]["mask"]).convert("L")) >= 128
    view, view_mask = cells.mosaic(source, mask, 64)
    assert np.array_equal(images[k], view) and np.array_equal(masks[k], view_mask)
    assert masks[k].any()  # the tiles sit on the leukocytes


def test_a_cells_view_model_trains_evaluates_explains_and_predicts(prepared_tiny: Path, tmp_path: Path) -> None:
    from engine.evaluate import evaluate
    from engine.explain.pipeline import explain_run
    from engine.predict import Predictor, cells_view
    from engine.train import fit

    run = tmp_path / "cells"
    fit(build_config("tiny", {"view": "cells", "epochs": 2, "background": "random"}), prepared_tiny, run,
        preset="tiny")
    assert json.loads((run / "config.json").read_text())["view"] == "cells"
    metrics = evaluate(run, n_bootstrap=50)
    assert 0 <= metrics["splits"]["test"]["accuracy"] <= 1
    # The test images scored again as uploads are seen: each mask derived from the stain (engine.predict).
    upload_view = metrics["upload_view"]
    assert upload_view["n"] == len([r for r in read_manifest(prepared_tiny) if r["split"] == "test"])
    assert 0 <= upload_view["identical_views"] <= 1
    context = json.loads((run / "context.json").read_text())
    assert context["images"] > 0 and "cells_removed" in json.dumps(context)
    card = (run / "MODEL_CARD.md").read_text()
    assert "the cells view" in card and "Seen as an upload is" in card
    explain_run(run, limit=8, faithfulness=False, sanity=False, multilayer_images=0)
    index = (run / "cams" / "index.csv").read_text().splitlines()
    assert len(index) > 1
    # The map's input image is the mosaic the model saw, not the field.
    rows = read_manifest(prepared_tiny)
    first = index[1].split(",")
    header = index[0].split(",")
    shown = np.asarray(Image.open(run / "cams" / first[header.index("image")]).convert("RGB"))
    assert shown.shape == (64, 64, 3)
    assert any(np.array_equal(shown, v) for v in np.asarray(load_cache(prepared_tiny, 64, "cells")))

    upload = data_root(prepared_tiny) / rows[0]["path"]
    predictor = Predictor(run)
    seen = predictor.preprocess(upload)
    assert seen.shape == (64, 64, 3) and np.array_equal(seen, cells_view(upload, 64))
    (result,) = predictor.predict_files([upload])
    assert result["pred"] in ("benign", "early", "pre", "pro")
    # evaluate's upload view is what predict answers for the same files: evaluate runs the network in channels-last
    # memory order, predict in the default one, so on another CPU a near-tied image may fall the other way.
    test = [r for r in rows if r["split"] == "test"]
    answers = predictor.predict_files([data_root(prepared_tiny) / r["path"] for r in test])
    right = [a["pred"] == r["class"] for a, r in zip(answers, test, strict=True)]
    assert upload_view["accuracy"] == pytest.approx(np.mean(right), abs=1.01 / len(test))
    (bad,) = predictor.predict_files([Path(__file__)])
    assert "error" in bad


def test_a_cells_view_needs_masks(tmp_path: Path) -> None:
    from engine.prepare import prepare
    from engine.train import fit
    from tests.support.images import write_image_folder

    write_image_folder(tmp_path / "raw", per_class=6, seed=2)
    prepare(tmp_path / "raw", tmp_path / "prepared", seed=0, derive_masks=False)
    with pytest.raises(ConfigError, match="view=cells cuts each image around its leukocyte masks"):
        fit(build_config("tiny", {"view": "cells", "epochs": 1}), tmp_path / "prepared", tmp_path / "run",
            preset="tiny")
    assert not (tmp_path / "run" / "checkpoints").exists()
