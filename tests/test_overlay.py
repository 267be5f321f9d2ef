"""Overlays drawn from stored maps with a user's style (dashboard/overlay.py)."""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import pytest
from PIL import Image

from dashboard import overlay as ov
from dashboard import ui
from engine.explain.figures import overlay as engine_overlay


def drawn_png(root, image_path, map_path, style: ov.OverlayStyle) -> bytes:
    """The PNG the pages show for a stored image and map in ``style`` (dashboard.ui)."""
    return ui._drawn_png(str(root), str(image_path), str(map_path), None, dataclasses.astuple(style), ())


def _image(size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(40, 200, size=(size, size, 3), dtype=np.uint8)


def _map(size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (1 - np.hypot(yy - size / 2, xx - size / 2) / size).clip(0, 1).astype(np.float32)


def _store(tmp_path, image: np.ndarray, cam: np.ndarray) -> tuple:
    Image.fromarray(image).save(tmp_path / "image.png")
    np.save(tmp_path / "map.npy", cam.astype(np.float16))
    return tmp_path / "image.png", tmp_path / "map.npy"


def test_default_style_is_the_stored_overlay() -> None:
    image, cam = _image(), _map()
    assert ov.OverlayStyle().is_stored
    assert not ov.OverlayStyle(opacity=0.3).is_stored
    np.testing.assert_array_equal(ov.render(image, cam, ov.OverlayStyle()), engine_overlay(image, cam))


def test_threshold_leaves_low_map_values_uncoloured() -> None:
    image, cam = _image(), _map()
    drawn = ov.render(image, cam, ov.OverlayStyle(threshold=0.7))
    below = cam < 0.7
    assert below.any() and (~below).any()
    np.testing.assert_array_equal(drawn[below], image[below])
    assert np.abs(drawn[~below].astype(int) - image[~below].astype(int)).mean() > 10


def test_opacity_and_colormap_change_the_drawing() -> None:
    image, cam = _image(), _map()
    faint = ov.render(image, cam, ov.OverlayStyle(opacity=0.1)).astype(int)
    strong = ov.render(image, cam, ov.OverlayStyle(opacity=0.9)).astype(int)
    assert np.abs(faint - image).mean() < np.abs(strong - image).mean()
    other = ov.render(image, cam, ov.OverlayStyle(colormap="viridis"))
    assert not np.array_equal(other, ov.render(image, cam, ov.OverlayStyle()))


def test_overlay_off_shows_the_image(tmp_path) -> None:
    image, cam = _image(), _map()
    image_path, map_path = _store(tmp_path, image, cam)
    png = drawn_png(tmp_path, image_path, map_path, ov.OverlayStyle(show=False))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), image)


def test_drawn_png_from_stored_files(tmp_path) -> None:
    image, cam = _image(), _map()
    image_path, map_path = _store(tmp_path, image, cam)
    png = drawn_png(tmp_path, image_path, map_path, ov.OverlayStyle(threshold=0.5, colormap="inferno"))
    drawn = np.asarray(Image.open(io.BytesIO(png)))
    expected = ov.render(image, cam.astype(np.float16).astype(np.float32), ov.OverlayStyle(threshold=0.5,
                                                                                            colormap="inferno"))
    np.testing.assert_array_equal(drawn, expected)


def test_bad_styles_are_refused() -> None:
    with pytest.raises(ValueError, match="colour map"):
        ov.OverlayStyle(colormap="rainbow; rm -rf")
    with pytest.raises(ValueError, match="opacity"):
        ov.OverlayStyle(opacity=1.5)


def test_bad_maps_are_refused_with_the_file_named(tmp_path) -> None:
    image, cam = _image(), _map()
    image_path, _ = _store(tmp_path, image, cam)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ov.OverlayError, match=r"objects\.npy"):
        ov.read_map(tmp_path, tmp_path / "objects.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2), np.float16))
    with pytest.raises(ov.OverlayError, match=r"cube\.npy: not a 2-D float map"):
        ov.read_map(tmp_path, tmp_path / "cube.npy")
    np.save(tmp_path / "small.npy", np.zeros((8, 8), np.float16))
    with pytest.raises(ov.OverlayError, match="differ in size"):
        drawn_png(tmp_path, image_path, tmp_path / "small.npy", ov.OverlayStyle(opacity=0.7))
    (tmp_path / "noise.png").write_bytes(b"not a png")
    with pytest.raises(ov.OverlayError, match=r"noise\.png"):
        ov.read_image(tmp_path, tmp_path / "noise.png")


def test_files_outside_the_outputs_or_not_regular_are_not_read(tmp_path) -> None:
    root = tmp_path / "outputs"
    root.mkdir()
    image_path, map_path = _store(tmp_path, _image(), _map())
    with pytest.raises(ov.OverlayError, match="outside the outputs folder"):
        ov.read_map(root, map_path)
    with pytest.raises(ov.OverlayError, match="outside the outputs folder"):
        ov.read_image(root, image_path)
    os.mkfifo(root / "map.npy")
    with pytest.raises(ov.OverlayError, match=r"map\.npy: is not a regular file \(a FIFO\)"):
        ov.read_map(root, root / "map.npy")
    (root / "huge.npy").write_bytes(b"\0" * (ov.MAX_MAP_BYTES + 1))
    with pytest.raises(ov.OverlayError, match=r"huge\.npy: is larger than"):
        ov.read_map(root, root / "huge.npy")
