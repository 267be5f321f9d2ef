"""Safe decoding: the one way an image file becomes pixels (prepare, the cache, predict, the dashboard, masks).

``read_regular`` reads a regular file only (never a FIFO, a device or, on request, a symbolic link);
``decode`` returns it upright as 8-bit RGB with every sample scaled by its real range, or raises
ValueError with the reason it cannot be used: never wrong pixels. ``load_image`` is the image as the
model sees it (``resize_square``). The ``MAX_*`` limits are copied into data_report.json by prepare.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from .discover import entry_kind

ACCEPTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "BMP": "BMP", "TIFF": "TIFF"}
# 40 megapixels is far above any smear photograph; more is treated as a decompression bomb.
MAX_PIXELS = 40_000_000
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
        raise ValueError(f"not a regular file ({entry_kind(mode)})")
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
            raise ValueError(f"not a regular file ({entry_kind(info.st_mode)})")
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


def check_shape(width: int, height: int) -> None:
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
            check_shape(*image.size)
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
    check_shape(width, height)
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
