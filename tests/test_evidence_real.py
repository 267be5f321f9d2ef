"""The evidence files of a run on real images, recomputed independently from what they are made of.

``localisation.csv`` is recomputed from the stored maps (``cams/<method>/<layer>/pred/*.npy``) and
masks (``cams/masks/*.png``) with plain NumPy; ``context.json`` from the model, the cached test
images and masks, with the cells inpainted and the background flattened here, not by the engine.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi

from engine.cli import main
from engine.runs import CLASSES

pytestmark = [pytest.mark.slow, pytest.mark.numerics]


@pytest.fixture(scope="module")
def real_run(real_subset_prepared: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny DenseNet on 40 real images per class (with their Segmented/ copies), evaluated and explained."""
    out = tmp_path_factory.mktemp("evidence-real")
    prepared, _ = real_subset_prepared
    assert main(["train", "--data", str(prepared), "--preset", "tiny", "--set", "epochs=3",
                 "--set", "image_size=96", "--out", str(out / "runs"), "--name", "real"]) == 0
    run = out / "runs" / "real"
    assert main(["evaluate", str(run), "--bootstrap", "100"]) == 0
    assert main(["explain", str(run), "--methods", "gradcam", "layercam", "--layers", "denseblock2", "norm5",
                 "--faithfulness-images", "4", "--sanity-images", "2", "--multilayer", "0"]) == 0
    return run


def test_localisation_csv_recomputes_from_the_stored_maps_and_masks(real_run: Path):
    cams = real_run / "cams"
    summary = json.loads((cams / "localisation.json").read_text())
    tolerance = summary["pointing_tolerance_px"]
    with (cams / "localisation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["method"], r["layer"]) for r in rows} == {(m, la) for m in ("gradcam", "layercam")
                                                         for la in ("denseblock2", "norm5")}
    for row in rows:
        stored = np.load(cams / row["method"] / row["layer"] / "pred" / f"{row['sha256'][:16]}.npy")
        cam = np.clip(stored.astype(np.float64), 0, None)
        mask = np.asarray(Image.open(cams / row["mask"])) >= 128
        if cam.sum() == 0:
            continue
        share = (cam * mask).sum() / cam.sum()
        # The scores were computed from the maps as stored: they recompute to the CSV's six decimals.
        assert float(row["mass_in"]) == pytest.approx(share, abs=6e-7)
        assert float(row["concentration"]) == pytest.approx(share / mask.mean(), abs=6e-7)
        grown = ndi.maximum_filter(mask, size=2 * tolerance + 1)
        assert float(row["pointing"]) == float(grown.flat[int(np.argmax(cam))]), row["sha256"]
    for result in summary["results"]:
        mine = [float(r["concentration"]) for r in rows if (r["method"], r["layer"]) == (result["method"],
                                                                                        result["layer"])]
        assert result["all"]["map"]["concentration"]["mean"] == pytest.approx(np.nanmean(mine), rel=1e-5)


def test_context_json_recomputes_from_the_model_images_and_masks(real_run: Path):
    from engine.cache import load_cache, load_mask_cache
    from engine.inference import load_checkpoint
    from engine.manifest import read_manifest

    context = json.loads((real_run / "context.json").read_text())
    prepared = Path(json.loads((real_run / "config.json").read_text())["data_dir"])
    cfg, model = load_checkpoint(real_run, "best", "cpu")
    model.eval()
    rows = read_manifest(prepared)
    test = [i for i, r in enumerate(rows) if r["split"] == "test" and r["mask"]]
    images = np.asarray(load_cache(prepared, cfg.image_size))[test]
    masks = np.asarray(load_mask_cache(prepared, cfg.image_size))[test]
    true = np.array([CLASSES.index(rows[i]["class"]) for i in test])
    grow = max(1, round(6 * cfg.image_size / 224))
    grown = np.stack([ndi.binary_dilation(m, np.ones((2 * grow + 1,) * 2, bool)) for m in masks])
    no_cells = np.stack([cv2.inpaint(im, g.astype(np.uint8), 3, cv2.INPAINT_TELEA) for im, g in zip(images, grown,
                                                                                                strict=True)])
    no_background = images.copy()
    for k, g in enumerate(grown):
        no_background[k][~g] = np.median(images[k][~g], axis=0).astype(np.uint8)

    def accuracy(batch: np.ndarray) -> float:
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
            1, 3, 1, 1)
        with torch.no_grad():
            return float((model(x).argmax(1).numpy() == true).mean())

    assert context["images"] == len(test)
    for variant, batch in (("original", images), ("cells_removed", no_cells), ("background_removed", no_background)):
        assert context["variants"][variant]["all"]["accuracy"] == pytest.approx(accuracy(batch), abs=1e-9), variant
