"""The decoded cache: a prepared folder's images (and leukocyte masks) decoded once per training resolution.

``load_cache(prepared, size)`` returns the decoded uint8 images in the manifest's order, built once with all
cores and kept as ``cache/<size>px.<key>.npy`` (``load_mask_cache``: ``cache/<size>px-masks.<key>.npy``),
where the key is the manifest's hash (engine.manifest.manifest_rows), so a changed manifest rebuilds it.
With ``view="cells"`` they hold each image's cells view instead (engine.cells: a mosaic of its leukocytes
at source resolution), as ``cache/cells-<size>px.<key>.npy`` and ``cache/cells-<size>px-masks.<key>.npy``.
``built_images`` reads a built cache without ever building one (readers such as the dashboard, engine.similar).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import cells, locks
from .decoding import load_image, open_rgb, resize_square
from .discover import shown
from .errors import DataError
from .manifest import data_root, manifest_rows
from .progress import parallel_map
from .runs import CACHE, CACHE_KEY_CHARS, atomic_write_bytes

log = logging.getLogger(__name__)


def _decode_for_cache(args: tuple[str, int]) -> np.ndarray:
    path, size = args
    try:
        return load_image(Path(path), size)
    except ValueError as exc:  # changed since prepare checked it
        raise DataError(f"{shown(path)}: {exc} (run `python -m engine prepare` again)") from None


def _open(path: str) -> Image.Image:
    """A prepared image or mask file, decoded upright as RGB; DataError naming it where it changed since prepare."""
    try:
        return open_rgb(Path(path))
    except ValueError as exc:
        raise DataError(f"{shown(path)}: {exc} (run `python -m engine prepare` again)") from None


def _decode_mask(args: tuple[str, int]) -> np.ndarray:
    path, size = args
    if not path:
        return np.zeros((size, size), dtype=bool)
    image = _open(path).convert("L")
    # Bilinear, then half-way: the mask shrinks and grows like the image's edges do.
    return resize_square(image, size, Image.Resampling.BILINEAR) >= 128


def _source_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    """A stored mask at its image's own resolution (all False where there is none)."""
    if not path:
        return np.zeros(shape, dtype=bool)
    mask = np.asarray(_open(path).convert("L")) >= 128
    if mask.shape != shape:
        raise DataError(f"{shown(path)}: {mask.shape[1]}x{mask.shape[0]}, its image {shape[1]}x{shape[0]} "
                        "(run `python -m engine prepare` again)")
    return mask


def _cells_view(args: tuple[str, str, int]) -> tuple[np.ndarray, np.ndarray]:
    path, mask_path, size = args
    image = np.asarray(_open(path))
    return cells.mosaic(image, _source_mask(mask_path, image.shape[:2]), size)


def _decode_cells(args: tuple[str, str, int]) -> np.ndarray:
    return _cells_view(args)[0]


def _decode_cells_mask(args: tuple[str, str, int]) -> np.ndarray:
    return _cells_view(args)[1]


def cache_name(size: int, view: str = "field", masks: bool = False) -> str:
    """The cache's name: ``96px``, ``96px-masks``, ``cells-96px``, ``cells-96px-masks``."""
    if view not in cells.VIEWS:
        raise ValueError(f"unknown view {view!r}; choose from {', '.join(cells.VIEWS)}")
    return f"{'' if view == 'field' else view + '-'}{size}px{'-masks' if masks else ''}"


def cache_file(folder: Path, name: str, key: str) -> Path:
    """``folder/<name>.<key>.npy``: the cache ``name`` (e.g. ``224px``) of the manifest whose hash is ``key``."""
    return folder / f"{name}.{key[:CACHE_KEY_CHARS]}.npy"


def _cache_hit(path: Path, n: int, shape: tuple[int, ...], dtype: type) -> np.ndarray | None:
    """The cached array at ``path`` as a memory map, or None when absent or not what this manifest needs."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:  # every write is atomic, so this is damage: it is derived, so rebuilt
        log.warning("%s is damaged (%s): decoding the images again to replace it", path, exc)
        return None
    if array.shape == (n, *shape) and array.dtype == np.dtype(dtype):
        return array
    # The manifest's hash is in the name, so another shape is damage too (or a file of another engine version).
    log.warning("%s is damaged (holds %s %s, not %s %s): decoding the images again to replace it", path,
                array.dtype, array.shape, np.dtype(dtype), (n, *shape))
    return None


def _remove_stale(folder: Path, name: str, keep: Path) -> None:
    """Delete the caches of other manifests (and the old ``<name>.npy`` + ``<name>.key`` pairs).

    A process still reading one keeps its memory map: unlinking a file does not take it away.
    """
    stale = [p for p in folder.glob(f"{name}.*.npy") if p != keep]
    stale += [folder / f"{name}.npy", folder / f"{name}.key"]
    for path in stale:
        path.unlink(missing_ok=True)


def _cached(prepared: Path, name: str, key: str, decode: Any, jobs: list[tuple[str, int]],
            shape: tuple[int, ...], dtype: type, desc: str) -> np.ndarray:
    """``cache/<name>.<key>.npy``: the decoded ``jobs``, for the manifest whose hash is ``key``.

    The key is part of the file's name, so images and key are published together by one atomic
    rename: a reader finds its own manifest's images or nothing, whatever other writers do and
    wherever one of them is killed. Builders queue on ``cache/<name>.lock`` so that concurrent
    trainings decode once; the lock dies with its holder (engine.locks).
    """
    folder = prepared / CACHE
    path = cache_file(folder, name, key)
    hit = _cache_hit(path, len(jobs), shape, dtype)
    if hit is not None:
        return hit
    try:
        build_lock = locks.wait_lock(folder / f"{name}.lock", purpose=f"building {desc}")
    except locks.LockUnsupported:
        log.warning("%s: no file locks on this file system; concurrent builds of %s may decode twice", folder, desc)
        build_lock = None
    try:
        hit = _cache_hit(path, len(jobs), shape, dtype)  # built by another process while this one waited
        if hit is not None:
            return hit
        array = np.empty((len(jobs), *shape), dtype=dtype)
        for i, item in enumerate(parallel_map(decode, jobs, desc)):
            array[i] = item
        buffer = io.BytesIO()
        np.save(buffer, array)
        atomic_write_bytes(path, buffer.getvalue())
        _remove_stale(folder, name, keep=path)
        return array
    finally:
        if build_lock is not None:
            build_lock.release()


def cache_bytes_needed(prepared: Path, size: int, masks: bool = False, view: str = "field") -> int:
    """Bytes the decoded cache at ``size`` px (or its masks) will take in ``prepared/cache``: 0 when it is built.

    The estimate of docs/robustness.md#before-long-work: images x size x size x 3 bytes (x 1 for masks).
    """
    key, rows = manifest_rows(Path(prepared))
    name = cache_name(size, view, masks)
    shape = (size, size) if masks else (size, size, 3)
    if _cache_hit(cache_file(Path(prepared) / CACHE, name, key), len(rows), shape, bool if masks else np.uint8) \
            is not None:
        return 0
    return len(rows) * size * size * (1 if masks else 3)


def _cells_jobs(prepared: Path, rows: list[dict[str, Any]], size: int) -> list[tuple[str, str, int]]:
    root = data_root(prepared)
    return [(str(root / r["path"]), str(prepared / r["mask"]) if r["mask"] else "", size) for r in rows]


def load_cache(prepared: Path, size: int, view: str = "field") -> np.ndarray:
    """The decoded images of the manifest, in its order, as uint8 (N, size, size, 3): the field, or with
    ``view="cells"`` each image's cells view (engine.cells).

    Built once per resolution and view with all cores and stored as ``cache/<name>.<key>.npy``, where
    the key is the manifest's hash, so a changed manifest rebuilds it.
    """
    prepared = Path(prepared)
    key, rows = manifest_rows(prepared)
    name = cache_name(size, view)
    if view == "cells":
        return _cached(prepared, name, key, _decode_cells, _cells_jobs(prepared, rows, size), (size, size, 3),
                       np.uint8, f"cache {name}")
    root = data_root(prepared)
    jobs = [(str(root / r["path"]), size) for r in rows]
    return _cached(prepared, name, key, _decode_for_cache, jobs, (size, size, 3), np.uint8, f"cache {name}")


def load_mask_cache(prepared: Path, size: int, view: str = "field") -> np.ndarray:
    """The leukocyte masks of the manifest, in its order, as bool (N, size, size), cropped (or, for the cells view,
    tiled) like the images.

    All False for an image without a usable mask (``has_masks`` tells which those are).
    """
    prepared = Path(prepared)
    key, rows = manifest_rows(prepared)
    name = cache_name(size, view, masks=True)
    if view == "cells":
        return _cached(prepared, name, key, _decode_cells_mask, _cells_jobs(prepared, rows, size), (size, size),
                       bool, name)
    jobs = [(str(prepared / r["mask"]) if r["mask"] else "", size) for r in rows]
    return _cached(prepared, name, key, _decode_mask, jobs, (size, size), bool, f"masks {size}px")


def built_images(prepared: Path, size: int, key: str, count: int, view: str = "field") -> np.ndarray | None:
    """The built image cache at ``size`` px (and ``view``) of the manifest whose hash is ``key`` (``count`` rows),
    as a read-only memory map; None where it is not built or not that manifest's shape. Nothing is decoded or
    built here.
    """
    path = cache_file(Path(prepared) / CACHE, cache_name(size, view), key)
    if not path.is_file():
        return None
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.shape != (count, size, size, 3) or array.dtype != np.uint8:
        return None
    return array
