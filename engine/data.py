"""Data handling: find the class folders, validate every file, deduplicate, split, cache.

``prepare(data_dir, out)`` writes ``out/manifest.csv`` (the one source of the split, and of the
smear groups and folds: engine.smears), ``out/data_report.json`` and a few sample thumbnails.
``read_manifest(out, split, fold)`` gives every reader a run's split (``effective_split``).
``load_cache(out, size)`` returns the decoded uint8 images at a training resolution, built once and
kept in ``out/cache/``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import signal
import stat
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from . import locks, smears
from .config import SPLIT_MODES
from .errors import DamagedFileError, DataError, deferred_signals  # DataError: also importable from here
from .progress import progress
from .runs import CLASSES, SPLITS, atomic_write_bytes, atomic_write_text, read_json, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
REPORT = "data_report.json"
MANIFEST_COLUMNS = ("path", "class", "sha256", "group", "split", "width", "height")
# Leukocyte mask of each image (engine.masks): a PNG in the prepared folder, its source and area.
# Empty for an image without a usable mask, and absent from manifests prepared without masks.
MASK_COLUMNS = ("mask", "mask_source", "mask_fraction")
# Acquisition ("smear") groups (engine.smears): images that probably share one smear, and the fold (0..K-1)
# each whole group is held out in by a run with split=smear (``effective_split``). Absent from manifests
# prepared before them, or where the data cannot fill the folds (data_report.json's "smear" says why).
SMEAR_GROUP = "smear_group"
SMEAR_FOLD = "smear_fold"
SMEAR_COLUMNS = (SMEAR_GROUP, SMEAR_FOLD)
MASKS = "masks"
CACHE = "cache"  # decoded images: cache/<size>px.<key>.npy, cache/<size>px-masks.<key>.npy (see _cached)
CACHE_KEY_CHARS = 16  # of the manifest's SHA-256 in a cache file's name
ACCEPTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "BMP": "BMP", "TIFF": "TIFF"}
# 40 megapixels is far above any smear photograph; more is treated as a decompression bomb.
MAX_PIXELS = 40_000_000
NEAR_DUPLICATE_BITS = 4  # perceptual-hash Hamming distance that counts as a near-duplicate
SAMPLES_PER_CLASS = 8




# ----------------------------------------------------------------------------- discovery


def _class_of(folder_name: str) -> str | None:
    name = folder_name.lower()
    if name.startswith("all_"):
        name = name[4:]
    return name if name in CLASSES else None


def _class_dirs(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    try:
        children = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"{folder}: folder not readable: {exc.strerror or exc}") from None
    for child in children:
        if child.is_dir() and not child.name.startswith("."):
            cls = _class_of(child.name)
            if cls is not None:
                if cls in found:
                    raise DataError(f"{folder}: two folders for class {cls}: {found[cls].name}, {child.name}")
                found[cls] = child
    return found


def find_class_dirs(data_dir: Path) -> dict[str, Path]:
    """Map each class to its folder, for the Kaggle, lower-case and Multi Cancer layouts."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    found = _class_dirs(data_dir)
    if not found:
        original = [c for c in data_dir.iterdir() if c.is_dir() and c.name.lower() == "original"]
        if original:
            found = _class_dirs(original[0])
    if len(found) < len(CLASSES):
        present = sorted(c.name for c in data_dir.iterdir() if not c.name.startswith("."))
        missing = [c for c in CLASSES if c not in found]
        raise DataError(
            f"{data_dir}: missing class folder(s) {', '.join(missing)}. Found: "
            f"{', '.join(present) or 'nothing'}. Expected one folder per class: "
            "benign, early, pre, pro (any case, optionally prefixed all_), directly or under Original/."
        )
    return {c: found[c] for c in CLASSES}


def _entry_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def shown(path: str | os.PathLike[str]) -> str:
    """A path as text that can always be written: bytes that are not UTF-8 appear as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass
class Scan:
    """What lies below a class folder: the regular files to read, and everything else with its reason."""

    files: list[Path]
    skipped: list[tuple[Path, str]]  # (path, reason): symbolic links, special files, unreadable entries
    hidden: int = 0  # entries whose name starts with "." (and what lies below them), ignored by rule


def scan_folder(folder: Path) -> Scan:
    """Every non-hidden entry below ``folder``, in a stable order (a folder's files, then its subfolders).

    Only regular files are read later. Symbolic links are neither followed nor read, whether to
    files or folders (they could lead outside the data folder, loop, or count an image twice);
    FIFOs, sockets and devices are never opened; a folder that cannot be listed is reported.
    """
    scan = Scan([], [])

    def walk(directory: Path) -> None:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            scan.skipped.append((directory, f"folder not readable: {exc.strerror or exc}"))
            return
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                scan.hidden += 1
                continue
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                scan.skipped.append((path, f"unreadable: {exc.strerror or exc}"))
                continue
            if stat.S_ISLNK(mode):
                scan.skipped.append((path, "symbolic link: not followed (links inside class folders are never "
                                           "followed; copy the file or folder in)"))
            elif stat.S_ISDIR(mode):
                subfolders.append(path)
            elif stat.S_ISREG(mode):
                scan.files.append(path)
            else:
                scan.skipped.append((path, f"not a regular file ({_entry_kind(mode)})"))
        for sub in subfolders:
            walk(sub)

    walk(Path(folder))
    return scan


# ----------------------------------------------------------------------------- decoding

# An image far wider than high (or the reverse) is not a smear photograph, and resizing its short
# side to the model's input would ask for gigabytes (a 1 x 20,000 PNG at 224 px: 224 x 4.5 million).
# Every image of the ALL data set is square; 10:1 leaves room for any real crop or strip.
MAX_ASPECT = 10
# The most pixels one resize may produce before its centre crop (at most MAX_ASPECT x size^2 normally).
MAX_RESIZE_PIXELS = MAX_PIXELS
# Far above any smear image (an uncompressed 40-megapixel 16-bit RGBA TIFF is 320 MB).
MAX_FILE_BYTES = 512 * 2**20
# Colour modes with one defined conversion to 8-bit RGB. 16-bit ("I;16*") and float ("F") are
# converted here; signed or 32-bit integers ("I"), Lab, HSV and the like have no known scale.
_CONVERTIBLE_MODES = {"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "LA", "La", "PA", "CMYK", "YCbCr"}


def read_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> bytes:
    """The bytes of a regular file; ValueError with a reason for anything else.

    The file is checked with ``stat`` before it is opened, so a FIFO (which would block), a socket
    or a device is never opened, and checked again on the open descriptor, so one swapped in
    between is refused too. ``follow_symlinks=False``: a symbolic link is refused, not followed.
    """
    try:
        mode = (os.stat if follow_symlinks else os.lstat)(path).st_mode
    except OSError as exc:
        raise ValueError(f"unreadable: {exc.strerror or exc}") from None
    if not follow_symlinks and stat.S_ISLNK(mode):
        raise ValueError("symbolic link: not followed")
    if not stat.S_ISREG(mode):
        raise ValueError(f"not a regular file ({_entry_kind(mode)})")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ValueError(f"unreadable: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"not a regular file ({_entry_kind(info.st_mode)})")
        if info.st_size > MAX_FILE_BYTES:
            raise ValueError(f"file too large ({info.st_size / 2**20:.0f} MB; the limit is "
                             f"{MAX_FILE_BYTES // 2**20} MB)")
        try:
            data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"unreadable: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:  # grew after the check
        raise ValueError(f"file too large (over {MAX_FILE_BYTES // 2**20} MB)")
    return data


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # 8-bit RGB, upright
    mode: str  # the file's colour mode before conversion ("RGB", "I;16", "F", ...)
    oriented: bool  # an EXIF orientation other than "upright" was applied


def _check_shape(width: int, height: int) -> None:
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ValueError(f"extreme aspect ratio {width}x{height} (more than {MAX_ASPECT}:1): not a smear image, "
                         "and resizing it would need far too much memory")


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB with every value scaled by the file's real range; ValueError where there is none."""
    mode = image.mode
    if mode.startswith("I;16") and not mode.endswith("S"):
        # 16-bit grey: keep the high byte, i.e. scale by the full 16-bit range (PNG and TIFF samples
        # span it), as Pillow itself does for 16-bit colour. Pillow's own convert clips at 255: all white.
        return Image.fromarray((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        # Float samples have a defined scale only as [0, 1] (Pillow's convert truncates: all black).
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("float pixels include NaN or infinity")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise ValueError(f"float pixels span [{low:g}, {high:g}]: only [0, 1] has a known scale to 8 bits")
        return Image.fromarray(np.rint(values * 255).astype(np.uint8), "L").convert("RGB")
    if mode not in _CONVERTIBLE_MODES:
        what = f"colour mode {mode}" + (" (signed or 32-bit integer pixels)" if mode.startswith("I") else "")
        raise ValueError(f"{what} has no known conversion to 8-bit RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "P", "PA"):
        # Composite transparency on white rather than black, which would read as stain.
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def _is_tiff(data: bytes) -> bool:
    return data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def decode(source: str | os.PathLike[str] | bytes) -> Decoded:
    """The one decoding of an image file (prepare, the cache, predict, the dashboard, segmented masks).

    Returns it upright (EXIF orientation applied) as 8-bit RGB with every sample scaled by its real
    range, or raises ValueError with the reason it cannot be used: never wrong pixels. A path is read
    only if it is a regular file (``read_regular``).
    """
    data = source if isinstance(source, bytes) else read_regular(source)
    if not data:
        raise ValueError("empty file (0 bytes)")
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            try:
                image = Image.open(io.BytesIO(data))
            except UnidentifiedImageError:
                if _is_tiff(data):
                    raise ValueError("a TIFF that Pillow cannot decode (float colour, 64-bit or half-float "
                                     "samples, or an unsupported compression)") from None
                raise ValueError("not an image (no known image format)") from None
            if image.format not in ACCEPTED_FORMATS:
                raise ValueError(f"unsupported format {image.format}; accepted: JPEG, PNG, BMP, TIFF")
            frames = getattr(image, "n_frames", 1)
            # An MPO's first image is its primary picture by definition (the others are previews or
            # stereo views); an animated PNG or multi-page TIFF has no one image to classify.
            if frames > 1 and image.format != "MPO":
                kind = "an animated PNG" if image.format == "PNG" else f"a multi-page {image.format}"
                raise ValueError(f"{kind} of {frames} frames: which one to classify is unknown; "
                                 "save the frame to use as a file of its own")
            _check_shape(*image.size)
            # Pillow turns a TIFF upright itself while loading it (and drops the tag): read it first.
            tiff_orientation = image.tag_v2.get(ExifTags.Base.Orientation, 1) if image.format == "TIFF" else 1
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own message quotes its hard limit (twice ours) above that: name the one this project applies.
        raise ValueError(f"decompression bomb: more than the {MAX_PIXELS:,}-pixel limit") from None
    except MemoryError:
        raise ValueError("out of memory while decoding") from None
    except ValueError:
        raise
    except Exception as exc:  # a crafted file can make a decoder raise nearly anything
        raise ValueError(f"corrupt or truncated image: {exc}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    mode = image.mode
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        # Orientation 1 is upright; a value outside 1-8 is ignored by exif_transpose (and by viewers).
        upright = ImageOps.exif_transpose(image)
    except MemoryError:
        raise ValueError("out of memory while turning it upright") from None
    except Exception as exc:  # malformed EXIF can raise nearly anything: the orientation cannot be known
        raise ValueError(f"unreadable EXIF metadata, so the orientation is unknown: {exc}") from None
    try:
        return Decoded(_to_rgb(upright), mode, orientation in range(2, 9) or tiff_orientation in range(2, 9))
    except MemoryError:
        raise ValueError("out of memory while converting it to RGB") from None


def open_rgb(source: str | os.PathLike[str] | bytes) -> Image.Image:
    """Decode an image file fully and return it upright as RGB; raise ValueError with a reason (``decode``)."""
    return decode(source).image


def resize_square(image: Image.Image, size: int,
                  resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """Resize the short side to ``size`` and centre-crop: the one preprocessing for all paths.

    ValueError (never a multi-gigabyte allocation) for a shape beyond ``MAX_ASPECT`` or a resize
    larger than ``MAX_RESIZE_PIXELS``.
    """
    width, height = image.size
    _check_shape(width, height)
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if new_w * new_h > MAX_RESIZE_PIXELS:
        raise ValueError(f"resizing {width}x{height} to {new_w}x{new_h} would exceed {MAX_RESIZE_PIXELS:,} pixels")
    try:
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), resample)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8)
    except MemoryError:
        raise ValueError(f"out of memory resizing {width}x{height} to {new_w}x{new_h}") from None


def load_image(source: str | os.PathLike[str] | bytes, size: int) -> np.ndarray:
    """An image file as the model sees it: RGB, ``size`` x ``size``, uint8 HWC; ValueError with a reason."""
    return resize_square(open_rgb(source), size)


@dataclass(frozen=True)
class Checked:
    path: str
    cls: str
    sha256: str
    width: int = 0
    height: int = 0
    mode: str = ""
    phash: int = 0
    reason: str = ""
    mask_png: bytes = b""  # the chosen leukocyte mask, 0/255 PNG; empty without one
    mask_source: str = ""
    mask_fraction: float = 0.0
    segmented_problem: str = ""
    derived_problem: str = ""
    mask_agreement: float | None = None
    oriented: bool = False  # turned upright by its EXIF orientation
    colour: tuple[float, ...] = ()  # engine.smears.FEATURES: background colour and brightness statistics
    colour_from_background: bool = False  # False: taken over the whole image (no mask, or too little background)


@dataclass(frozen=True)
class FileJob:
    full: str
    rel: str
    cls: str
    mask_file: str | None = None  # the segmented copy to make the mask from; None: no mask wanted
    derive_masks: bool = True  # derive a mask from the image where the segmented one cannot serve


def _check_mask(job: FileJob, image: Image.Image) -> tuple[dict[str, Any], np.ndarray | None]:
    """The Checked fields of the image's leukocyte mask, and the mask itself (None without one)."""
    from . import masks

    segmented, problem = None, ""
    if not job.mask_file or not os.path.lexists(job.mask_file):
        problem = "missing"
    else:
        try:
            # The images' rules: only a regular file, no symbolic link, decoded like the image.
            segmented = np.asarray(open_rgb(read_regular(job.mask_file, follow_symlinks=False)))
        except ValueError as exc:
            problem = f"unreadable: {exc}"
    chosen = masks.choose(np.asarray(image), segmented, problem, job.derive_masks)
    fields: dict[str, Any] = {"mask_source": chosen.source, "mask_fraction": chosen.fraction,
                              "segmented_problem": chosen.segmented_problem, "derived_problem": chosen.derived_problem,
                              "mask_agreement": chosen.agreement}
    if chosen.mask is not None:
        buffer = io.BytesIO()
        Image.fromarray(chosen.mask.astype(np.uint8) * 255).save(buffer, format="PNG")
        fields["mask_png"] = buffer.getvalue()
    return fields, chosen.mask


def _check_file(job: FileJob) -> Checked:
    try:
        return _check_file_unguarded(job)
    except MemoryError:
        # One huge file must not end prepare: it is rejected like any other unusable file.
        return Checked(job.rel, job.cls, "", reason="out of memory while checking it")


def _check_file_unguarded(job: FileJob) -> Checked:
    rel, cls = job.rel, job.cls
    try:
        # Inside the data folder a symbolic link is never followed (scan_folder reports them).
        data = read_regular(job.full, follow_symlinks=False)
    except ValueError as exc:
        return Checked(rel, cls, "", reason=str(exc))
    sha = hashlib.sha256(data).hexdigest()
    try:
        decoded = decode(data)
    except ValueError as exc:
        return Checked(rel, cls, sha, reason=str(exc))
    image = decoded.image
    mask, mask_array = _check_mask(job, image) if job.mask_file is not None else ({}, None)
    # The smear statistics come from the pixels decoded here: prepare decodes each file once.
    colour, from_background = smears.colour_statistics(np.asarray(image), mask_array)
    extra = {**mask, "oriented": decoded.oriented, "colour": colour, "colour_from_background": from_background}
    try:
        import imagehash
    except ImportError:  # a bare GPU machine: prepare still runs, without the near-duplicate check
        return Checked(rel, cls, sha, image.width, image.height, decoded.mode, phash=-1, **extra)
    phash = int(str(imagehash.phash(image)), 16)
    return Checked(rel, cls, sha, image.width, image.height, decoded.mode, phash, **extra)


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- splitting


def _worker_signals() -> None:
    # Ctrl+C reaches every process of the terminal's group: the parent alone decides what to do with it
    # (engine.errors.interruptible), and a SIGTERM sent to a worker ends it as usual.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def parallel_map(fn: Any, jobs: list[Any], desc: str) -> Iterator[Any]:
    """``fn`` over ``jobs`` in worker processes, in order, with a progress bar.

    When the parent is interrupted (a signal, an error) the jobs not started yet are cancelled, so a
    stop waits for the chunks under way only, not for the whole folder.
    """
    with ProcessPoolExecutor(_workers(), initializer=_worker_signals) as pool:
        try:
            yield from progress(pool.map(fn, jobs, chunksize=32), total=len(jobs), desc=desc, unit="img")
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def split_groups(
    groups: dict[str, str], seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> dict[str, str]:
    """Assign each duplicate group (id -> class) to a split, stratified by class."""
    from sklearn.model_selection import train_test_split

    ids = sorted(groups)
    labels = [groups[g] for g in ids]
    _, val_frac, test_frac = fractions
    if abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise DataError(f"split fractions must be positive and sum to 1, got {fractions}")
    train_ids, rest_ids, _, rest_labels = train_test_split(
        ids, labels, test_size=val_frac + test_frac, stratify=labels, random_state=seed
    )
    val_ids, test_ids = train_test_split(
        rest_ids, test_size=test_frac / (val_frac + test_frac), stratify=rest_labels,
        random_state=seed,
    )
    assignment = {g: "train" for g in train_ids}
    assignment.update({g: "val" for g in val_ids})
    assignment.update({g: "test" for g in test_ids})
    return assignment


def near_duplicate_pairs(hashes: list[int], max_bits: int = NEAR_DUPLICATE_BITS) -> list[tuple[int, int, int]]:
    """Index pairs whose 64-bit perceptual hashes differ in at most ``max_bits`` bits."""
    if len(hashes) < 2:
        return []
    values = np.array(hashes, dtype=np.uint64)
    pairs = []
    for i in range(len(values) - 1):
        distance = np.bitwise_count(values[i + 1:] ^ values[i])
        for j in np.nonzero(distance <= max_bits)[0]:
            pairs.append((i, i + 1 + int(j), int(distance[j])))
    return pairs


# ----------------------------------------------------------------------------- prepare


def class_root(class_dirs: dict[str, Path]) -> Path:
    """The folder that holds the class folders: manifest paths are relative to it."""
    return next(iter(class_dirs.values())).parent


def find_mask_dir(data_dir: Path, masks: Path | str | None) -> Path | None:
    """The folder of segmented copies: ``masks`` itself, or with "auto" a ``Segmented/`` beside ``Original/``."""
    if masks is None or masks == "none":
        return None
    if masks != "auto":
        folder = Path(masks).resolve()
        if not folder.is_dir():
            raise DataError(f"mask folder not found: {folder}")
        return folder
    if data_dir.name.lower() != "original":
        return None
    beside = [c for c in data_dir.parent.iterdir() if c.is_dir() and c.name.lower() == "segmented"]
    return beside[0] if beside else None


def _mask_files(mask_dir: Path, class_dirs: dict[str, Path]) -> dict[str, Path]:
    """Each class's folder of segmented copies (same class folder names as the images, any case)."""
    found = _class_dirs(mask_dir)
    if not found:
        raise DataError(f"mask folder {mask_dir} has no class folders (benign, early, pre, pro) like the images'")
    return found


def prepare(data_dir: Path, out: Path, seed: int = 0,
            fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), *,
            masks: Path | str | None = "auto", derive_masks: bool = True,
            folds: int = smears.DEFAULT_FOLDS) -> dict[str, Any]:
    """Validate, deduplicate and split ``data_dir``; write the manifest and the report.

    ``masks``: a folder of segmented copies (same class folders and file names) whose
    leukocytes become the images' masks; "auto" uses ``Segmented/`` beside ``Original/``;
    None or "none": no masks. ``derive_masks``: where a segmented copy cannot serve, derive
    the mask from the image itself (``engine.masks``). ``folds``: how many smear folds
    (``SMEAR_COLUMNS``, engine.smears) to hold whole smear groups out in.
    """
    if folds < smears.MIN_FOLDS:
        raise DataError(f"--folds {folds}: at least {smears.MIN_FOLDS} smear folds are needed (test, validation "
                        "and training folds)")
    out = Path(out)
    class_dirs = find_class_dirs(Path(data_dir).resolve())
    # Paths are relative to the folder holding the class folders, so ALL/ and ALL/Original/
    # give the same manifest.
    data_dir = class_root(class_dirs)
    mask_dir = find_mask_dir(data_dir, masks)
    mask_dirs = _mask_files(mask_dir, class_dirs) if mask_dir else {}
    jobs = []
    # Entries rejected before decoding: links, special files, unreadable folders, names that are not UTF-8.
    refused: list[Checked] = []
    hidden = 0
    for cls, folder in class_dirs.items():
        scan = scan_folder(folder)
        hidden += scan.hidden
        if not scan.files and not scan.skipped:
            raise DataError(f"class folder {folder} is empty: every class needs images")
        for path, reason in scan.skipped:
            refused.append(Checked(shown(path.relative_to(data_dir).as_posix()), cls, "", reason=reason))
        for f in scan.files:
            rel = f.relative_to(data_dir).as_posix()
            try:
                rel.encode("utf-8")  # the manifest is UTF-8 text: a name that is not cannot be written to it
            except UnicodeEncodeError:
                refused.append(Checked(shown(rel), cls, "", reason="file name is not valid UTF-8: rename it"))
                continue
            # A mask pairs with its image by class folder and path inside it.
            # "": a mask is wanted but the mask folder lacks this class (reported as missing).
            mask_file = None if mask_dir is None else str(mask_dirs[cls] / f.relative_to(folder)) \
                if cls in mask_dirs else ""
            jobs.append(FileJob(str(f), rel, cls, mask_file, derive_masks))

    checked = list(parallel_map(_check_file, jobs, "prepare: hash and decode"))
    checked += refused

    good = [c for c in checked if not c.reason]
    rejected = [{"path": c.path, "class": c.cls, "reason": c.reason} for c in checked if c.reason]
    for cls in CLASSES:
        if not any(c.cls == cls for c in good):
            raise DataError(
                f"class {cls} ({class_dirs[cls]}) has no usable image; rejected: "
                + "; ".join(f"{r['path']}: {r['reason']}" for r in rejected if r["class"] == cls)
            )

    by_hash: dict[str, list[Checked]] = defaultdict(list)
    for c in good:
        by_hash[c.sha256].append(c)
    # A group is one distinct content; its class is the majority label (ties: class order).
    group_class = {}
    conflicts = []
    for sha, members in by_hash.items():
        counts = Counter(m.cls for m in members)
        group_class[sha[:16]] = min(counts, key=lambda k: (-counts[k], CLASSES.index(k)))
        if len(counts) > 1:
            conflicts.append({"sha256": sha, "paths": [m.path for m in members],
                              "classes": sorted(counts)})
    split_of = split_groups(group_class, seed, fractions)

    ordered = sorted(good, key=lambda c: (CLASSES.index(c.cls), c.path))
    rows = [{"path": c.path, "class": c.cls, "sha256": c.sha256, "group": c.sha256[:16],
             "split": split_of[c.sha256[:16]], "width": c.width, "height": c.height, **_mask_fields(c)}
            for c in ordered]

    unique = sorted(by_hash)
    near_checked = all(c.phash >= 0 for c in good)
    if not near_checked:
        log.warning("prepare: ImageHash is not installed; near-duplicates were not looked for")
    near_pairs = near_duplicate_pairs([by_hash[s][0].phash for s in unique]) if near_checked else []
    near = [{"a": by_hash[unique[i]][0].path, "b": by_hash[unique[j]][0].path, "distance": d}
            for i, j, d in near_pairs]
    smear_report = _smear_groups(ordered, rows, [(unique[i], unique[j]) for i, j, _ in near_pairs],
                                 folds=folds, seed=seed)

    # A signal here would leave the new masks or manifest beside the old report: the writes (seconds at most)
    # finish first, and the signal is handled after them.
    with deferred_signals():
        out.mkdir(parents=True, exist_ok=True)
        if mask_dir:
            for c in good:
                if c.mask_png:
                    atomic_write_bytes(out / _mask_fields(c)["mask"], c.mask_png)
        buffer = io.StringIO()
        columns = (MANIFEST_COLUMNS + (MASK_COLUMNS if mask_dir else ())
                   + (SMEAR_COLUMNS if smear_report["made"] else ()))
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out / MANIFEST, buffer.getvalue())
        counts = {cls: {s: 0 for s in SPLITS} for cls in CLASSES}
        for r in rows:
            counts[r["class"]][r["split"]] += 1
        report = {
            "data_dir": str(data_dir),
            "class_dirs": {c: str(p) for c, p in class_dirs.items()},
            "seed": seed,
            "fractions": dict(zip(SPLITS, fractions, strict=True)),
            "files_found": len(checked),
            "images": len(rows),
            "counts": counts,
            "hidden_ignored": hidden,
            "modes_converted": dict(Counter(c.mode for c in good if c.mode != "RGB")),
            "orientation_corrected": sum(c.oriented for c in good),
            "limits": {"max_pixels": MAX_PIXELS, "max_aspect": MAX_ASPECT, "max_file_bytes": MAX_FILE_BYTES},
            "duplicate_groups": [
                {"sha256": sha, "paths": [m.path for m in ms], "split": split_of[sha[:16]]}
                for sha, ms in sorted(by_hash.items()) if len(ms) > 1
            ],
            "label_conflicts": conflicts,
            "near_duplicates": near,
            "near_duplicate_max_bits": NEAR_DUPLICATE_BITS,
            "near_duplicates_checked": near_checked,
            "rejected": rejected,
            "masks": mask_report(good, mask_dir, derive_masks),
            "smear": smear_report,
        }
        write_json(out / REPORT, report)
    _write_samples(data_dir, rows, out / "samples")
    log.info("prepare: %d images, %d rejected, %d duplicate groups, %d near-duplicate pairs -> %s",
             len(rows), len(rejected), len(report["duplicate_groups"]), len(near), out)
    return report


def _smear_groups(ordered: list[Checked], rows: list[dict[str, Any]], near: list[tuple[str, str]], *,
                  folds: int, seed: int) -> dict[str, Any]:
    """Fill ``rows``' SMEAR_COLUMNS (engine.smears) and return the report's "smear" section.

    ``ordered`` are the images in the rows' order; ``near`` the near-duplicate pairs by sha256. Where the
    data cannot fill ``folds`` folds, the columns are left out and the section says why.
    """
    first: dict[str, int] = {}
    links = [(first.setdefault(c.sha256, i), i) for i, c in enumerate(ordered)]  # exact duplicates
    links += [(first[a], first[b]) for a, b in near]
    features = np.array([c.colour for c in ordered], dtype=np.float64)
    stages = [c.cls for c in ordered]
    try:
        grouping = smears.make_groups(features, stages, links, classes=CLASSES, folds=folds, seed=seed)
    except ValueError as exc:
        log.warning("prepare: no smear folds (%s); split=smear will not be available", exc)
        return {"made": False, "problem": str(exc), "folds": folds, "seed": seed}
    for row, group, fold in zip(rows, grouping.group, grouping.fold, strict=True):
        row[SMEAR_GROUP], row[SMEAR_FOLD] = group, fold
    background = sum(c.colour_from_background for c in ordered)
    check = smears.shortcut_check(features, stages, grouping.fold, classes=CLASSES, seed=seed)
    log.info("prepare: %d smear groups in %d folds; background-colour forest %.1f%% by image, %.1f%% by smear fold",
             grouping.report["groups"], folds, 100 * check["image_split"]["mean"], 100 * check["smear_split"]["mean"])
    return {"made": True, "problem": None, "seed": seed, **grouping.report,
            "statistics_from": {"background": background, "whole_image": len(ordered) - background},
            "shortcut_check": check}


def _mask_fields(c: Checked) -> dict[str, Any]:
    if not c.mask_png:
        return {"mask": "", "mask_source": "", "mask_fraction": ""}
    return {"mask": f"{MASKS}/{c.sha256[:16]}.png", "mask_source": c.mask_source,
            "mask_fraction": f"{c.mask_fraction:.6f}"}


def mask_report(good: list[Checked], mask_dir: Path | None, derive_masks: bool) -> dict[str, Any]:
    """Per stage: how many images have a mask of each source, and why the others' masks could not serve."""
    from . import masks

    if mask_dir is None:
        return {"dir": None}
    per_class: dict[str, dict[str, Any]] = {}
    problems = []
    for cls in CLASSES:
        members = [c for c in good if c.cls == cls]
        sources = Counter(c.mask_source or "none" for c in members)
        # Why a segmented copy could not serve, by kind (the number in the reason varies per image).
        unusable = Counter(c.segmented_problem.split(" (")[0] for c in members if c.segmented_problem)
        agreement = [c.mask_agreement for c in members if c.mask_agreement is not None]
        per_class[cls] = {
            "images": len(members), **{s: sources.get(s, 0) for s in (*masks.SOURCES, "none")},
            "segmented_unusable": dict(unusable),
            "derived_unusable": dict(Counter(c.derived_problem.split(" (")[0] for c in members
                                             if not c.mask_source and c.derived_problem)),
            "mask_fraction_median": float(np.median([c.mask_fraction for c in members if c.mask_source] or [0])),
            "derived_vs_segmented_iou_median": float(np.median(agreement)) if agreement else None,
        }
        problems += [{"path": c.path, "class": cls, "segmented": c.segmented_problem,
                      "derived": c.derived_problem if not c.mask_source else "", "used": c.mask_source or "none"}
                     for c in members if c.segmented_problem]
    return {"dir": str(mask_dir), "derived_fallback": derive_masks, "rule": masks.RULE, "per_class": per_class,
            "problems": problems}


def _write_samples(data_dir: Path, rows: list[dict], folder: Path) -> None:
    """A few thumbnails per class, so the dashboard shows data without reading the raw folder."""
    for cls in CLASSES:
        members = [r for r in rows if r["class"] == cls]
        picked = members[:: max(1, len(members) // SAMPLES_PER_CLASS)][:SAMPLES_PER_CLASS]
        for i, row in enumerate(picked):
            image = Image.fromarray(load_image(data_dir / row["path"], 224))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            atomic_write_bytes(folder / cls / f"{i:02d}.png", buffer.getvalue())


def read_manifest(prepared: Path, split: str = "image", fold: int = 0) -> list[dict[str, Any]]:
    """The manifest's rows; the mask columns are '' where the data was prepared without masks.

    Each row's ``split`` is the one a run with ``split`` and ``fold`` (``Config.split``, ``Config.fold``)
    trains and is scored on (``effective_split``): every reader of a run's split reads it through here.
    """
    path = Path(prepared) / MANIFEST
    rows = _read_manifest(prepared)[1]
    if split != "image":
        for row, effective in zip(rows, effective_split(rows, split, fold, source=str(path)), strict=True):
            row["split"] = effective
    return rows


def smear_folds(rows: list[dict[str, Any]], source: str = MANIFEST) -> int:
    """How many smear folds the manifest's rows hold (SMEAR_FOLD is 0..K-1); DataError where it has none."""
    if not rows or SMEAR_FOLD not in rows[0]:
        raise DataError(f"{source} has no smear folds (no {SMEAR_FOLD} column), which split=smear needs: run "
                        "`python -m engine prepare` again to add them (data_report.json's \"smear\" says why a "
                        "prepared folder has none)")
    try:
        found = {int(r[SMEAR_FOLD]) for r in rows}
    except (TypeError, ValueError):
        raise DataError(f"{source}: {SMEAR_FOLD} holds a value that is not a fold number: run "
                        "`python -m engine prepare` again") from None
    count = max(found) + 1
    if found != set(range(count)) or count < smears.MIN_FOLDS:
        raise DataError(f"{source}: smear folds {sorted(found)} are not 0..K-1 with K >= {smears.MIN_FOLDS}: run "
                        "`python -m engine prepare` again")
    return count


def effective_split(rows: list[dict[str, Any]], split: str = "image", fold: int = 0, *,
                    source: str = MANIFEST) -> list[str]:
    """The split of each manifest row for a run's ``split`` and ``fold``: the one rule, used by every reader.

    ``split="image"``: the manifest's own ``split`` column (the 70/15/15 split by exact-duplicate group).
    ``split="smear"``: whole smear groups held out: test is smear fold ``fold``, validation fold
    ``(fold + 1) % K``, training the other K - 2 folds. DataError (naming ``source``) for a manifest
    without smear folds or a fold out of range.
    """
    if split == "image":
        return [r["split"] for r in rows]
    if split not in SPLIT_MODES:
        raise DataError(f"split={split!r}: one of {', '.join(SPLIT_MODES)}")
    count = smear_folds(rows, source)
    if not 0 <= fold < count:
        raise DataError(f"fold={fold} is out of range: {source} has {count} smear folds, 0 to {count - 1} (prepare "
                        "with --folds to change how many)")
    val = (fold + 1) % count
    return ["test" if f == fold else "val" if f == val else "train" for f in (int(r[SMEAR_FOLD]) for r in rows)]


def _read_manifest(prepared: Path) -> tuple[str, list[dict[str, Any]]]:
    """The manifest's SHA-256 and its rows, both from one read (a new prepare may replace it meanwhile)."""
    path = Path(prepared) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: run `python -m engine prepare` first")
    data = path.read_bytes()
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DamagedFileError(path, f"damaged: not a CSV manifest ({exc})",
                               "run `python -m engine prepare` again to write it") from None
    missing = set(MANIFEST_COLUMNS) - set(rows[0] if rows else MANIFEST_COLUMNS)
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    for row in rows:
        for column in MASK_COLUMNS:
            row[column] = row.get(column) or ""
    return hashlib.sha256(data).hexdigest(), rows


def has_masks(rows: list[dict[str, Any]]) -> np.ndarray:
    """Which manifest rows have a usable leukocyte mask."""
    return np.array([bool(r["mask"]) for r in rows], dtype=bool)


def data_root(prepared: Path) -> Path:
    return Path(read_json(Path(prepared) / REPORT)["data_dir"])


# ----------------------------------------------------------------------------- cache


def _decode_for_cache(args: tuple[str, int]) -> np.ndarray:
    path, size = args
    try:
        return load_image(Path(path), size)
    except ValueError as exc:  # changed since prepare checked it
        raise DataError(f"{shown(path)}: {exc} (run `python -m engine prepare` again)") from None


def _decode_mask(args: tuple[str, int]) -> np.ndarray:
    path, size = args
    if not path:
        return np.zeros((size, size), dtype=bool)
    try:
        image = open_rgb(Path(path)).convert("L")
    except ValueError as exc:
        raise DataError(f"{shown(path)}: {exc} (run `python -m engine prepare` again)") from None
    # Bilinear, then half-way: the mask shrinks and grows like the image's edges do.
    return resize_square(image, size, Image.Resampling.BILINEAR) >= 128


def _cache_file(folder: Path, name: str, key: str) -> Path:
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
    path = _cache_file(folder, name, key)
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


def cache_bytes_needed(prepared: Path, size: int, masks: bool = False) -> int:
    """Bytes the decoded cache at ``size`` px (or its masks) will take in ``prepared/cache``: 0 when it is built.

    The estimate of docs/robustness.md#before-long-work: images x size x size x 3 bytes (x 1 for masks).
    """
    key, rows = _read_manifest(Path(prepared))
    name = f"{size}px-masks" if masks else f"{size}px"
    shape = (size, size) if masks else (size, size, 3)
    if _cache_hit(_cache_file(Path(prepared) / CACHE, name, key), len(rows), shape, bool if masks else np.uint8) \
            is not None:
        return 0
    return len(rows) * size * size * (1 if masks else 3)


def load_cache(prepared: Path, size: int) -> np.ndarray:
    """The decoded images of the manifest, in its order, as uint8 (N, size, size, 3).

    Built once per resolution with all cores and stored as ``cache/<size>px.<key>.npy``, where
    the key is the manifest's hash, so a changed manifest rebuilds it.
    """
    prepared = Path(prepared)
    key, rows = _read_manifest(prepared)
    root = data_root(prepared)
    jobs = [(str(root / r["path"]), size) for r in rows]
    return _cached(prepared, f"{size}px", key, _decode_for_cache, jobs, (size, size, 3), np.uint8,
                   f"cache {size}px")


def load_mask_cache(prepared: Path, size: int) -> np.ndarray:
    """The leukocyte masks of the manifest, in its order, as bool (N, size, size), cropped like the images.

    All False for an image without a usable mask (``has_masks`` tells which those are).
    """
    prepared = Path(prepared)
    key, rows = _read_manifest(prepared)
    jobs = [(str(prepared / r["mask"]) if r["mask"] else "", size) for r in rows]
    return _cached(prepared, f"{size}px-masks", key, _decode_mask, jobs, (size, size), bool, f"masks {size}px")
