"""The data path: class folders found (engine.discover), files decoded safely (engine.decoding), ``prepare``
(engine.prepare) and the decoded cache (engine.cache)."""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import ExifTags, Image

from engine.cache import load_cache
from engine.decoding import decode, load_image, open_rgb, read_regular, resize_square
from engine.discover import find_class_dirs
from engine.errors import DataError
from engine.manifest import read_manifest
from engine.prepare import prepare
from engine.runs import SMEAR_COLUMNS
from tests.support.images import add_segmented, write_image_folder


def _rejected(report):
    return {item["path"].rsplit("/", 1)[-1]: item["reason"] for item in report["rejected"]}


@pytest.mark.parametrize(
    ("names", "nested"),
    [(("Benign", "Early", "Pre", "Pro"), True), (("Benign", "Early", "Pre", "Pro"), False),
     (("benign", "early", "pre", "pro"), False), (("all_benign", "ALL_EARLY", "all_pre", "All_Pro"), False)],
)
def test_accepted_layouts_map_to_class_order(tmp_path, names, nested):
    root = tmp_path / "data"
    write_image_folder(root / "Original" if nested else root, per_class=2, names=names)
    dirs = find_class_dirs(root)
    assert list(dirs) == ["benign", "early", "pre", "pro"]
    assert [d.name for d in dirs.values()] == list(names)


def test_folder_without_class_folders_names_what_it_found(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    with pytest.raises(DataError, match=r"Found: cats, dogs.*Expected one folder per class"):
        find_class_dirs(tmp_path)


def test_empty_class_fails(tmp_path):
    write_image_folder(tmp_path, per_class=2)
    for f in (tmp_path / "Pre").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="Pre is empty"):
        prepare(tmp_path, tmp_path / "out")


def test_class_with_only_bad_files_fails_with_reasons(tmp_path):
    write_image_folder(tmp_path, per_class=2)
    for f in (tmp_path / "Pro").iterdir():
        f.write_bytes(b"")
    with pytest.raises(DataError, match=r"class pro .*empty file"):
        prepare(tmp_path, tmp_path / "out")


def test_every_bad_file_is_rejected_with_a_reason_and_good_ones_kept(image_folder):
    benign = image_folder / "Benign"
    good = Image.open(benign / "benign-000.png")
    buffer = io.BytesIO()
    good.save(buffer, format="JPEG")
    (benign / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (benign / "zero.jpg").write_bytes(b"")
    (benign / "notes.jpg").write_text("this is not an image")
    Image.new("1", (8000, 8000)).save(benign / "bomb.png")  # 64 MP: a decompression bomb
    good.save(benign / "animated.gif")
    (benign / ".hidden.png").write_bytes(b"ignored")
    (benign / ".cache").mkdir()
    (benign / ".cache" / "x.png").write_bytes(b"ignored")
    good.convert("L").save(image_folder / "Early" / "gray.png")
    good.convert("RGBA").save(image_folder / "Early" / "rgba.png")
    good.convert("P").save(image_folder / "Early" / "palette.bmp")
    good.save(image_folder / "Early" / "photo.tiff")

    report = prepare(image_folder, image_folder.parent / "out")
    rejected = _rejected(report)
    assert set(rejected) == {"truncated.jpg", "zero.jpg", "notes.jpg", "bomb.png", "animated.gif"}
    assert "truncated" in rejected["truncated.jpg"]
    assert "empty file" in rejected["zero.jpg"]
    assert "not an image" in rejected["notes.jpg"]
    assert rejected["bomb.png"].endswith("decompression bomb: more than the 40,000,000-pixel limit")
    assert "unsupported format GIF" in rejected["animated.gif"]
    manifest = read_manifest(image_folder.parent / "out")
    paths = {row["path"] for row in manifest}
    assert {"Early/gray.png", "Early/rgba.png", "Early/palette.bmp", "Early/photo.tiff"} <= paths
    assert not any("hidden" in p or ".cache" in p for p in paths)
    # Nothing silently dropped: every visible file is in the manifest or rejected.
    assert report["files_found"] == len(manifest) + len(rejected) == 4 * 24 + 9
    assert report["modes_converted"] == {"L": 1, "RGBA": 1, "P": 1}


def test_conversions_give_rgb():
    for mode in ("L", "RGBA", "P", "LA"):
        buffer = io.BytesIO()
        Image.new(mode, (10, 10)).save(buffer, format="PNG")
        assert open_rgb(buffer.getvalue()).mode == "RGB"


def test_exact_duplicates_share_a_split_and_near_duplicates_are_flagged(image_folder):
    source = image_folder / "Pre" / "pre-000.png"
    for i in range(3):
        shutil.copy(source, image_folder / "Pre" / f"copy-{i}.png")
    Image.open(source).save(image_folder / "Pre" / "reencoded.jpg", quality=90)
    report = prepare(image_folder, image_folder.parent / "out")
    manifest = read_manifest(image_folder.parent / "out")
    group = [row for row in manifest if row["path"].startswith("Pre/copy-") or row["path"] == "Pre/pre-000.png"]
    assert len(group) == 4 and len({row["group"] for row in group}) == 1 and len({row["split"] for row in group}) == 1
    assert any(len(g["paths"]) == 4 for g in report["duplicate_groups"])
    near = {(n["a"], n["b"]) for n in report["near_duplicates"]}
    assert any("reencoded.jpg" in a + b for a, b in near)
    by_sha = {}
    for row in manifest:
        by_sha.setdefault(row["sha256"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in by_sha.values())


def test_split_is_stratified_and_reproducible(image_folder, tmp_path):
    prepare(image_folder, tmp_path / "a", seed=3)
    prepare(image_folder, tmp_path / "b", seed=3)
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    prepare(image_folder, tmp_path / "c", seed=4)
    assert (tmp_path / "a" / "manifest.csv").read_bytes() != (tmp_path / "c" / "manifest.csv").read_bytes()
    report = json.loads((tmp_path / "a" / "data_report.json").read_text())
    for counts in report["counts"].values():
        assert counts["train"] >= 15 and counts["val"] >= 3 and counts["test"] >= 3


def test_cache_follows_manifest_order_and_rebuilds_when_it_changes(prepared_tiny, tmp_path):
    prepared = tmp_path / "prepared"
    shutil.copytree(prepared_tiny, prepared)
    images = load_cache(prepared, 32)
    manifest = read_manifest(prepared)
    assert images.shape == (len(manifest), 32, 32, 3) and images.dtype == np.uint8
    again = load_cache(prepared, 32)
    assert isinstance(again, np.memmap)  # the second call reads the cache instead of decoding
    lines = (prepared / "manifest.csv").read_text().splitlines()
    (prepared / "manifest.csv").write_text("\n".join(lines[:-5]) + "\n")
    assert load_cache(prepared, 32).shape[0] == len(manifest) - 5


class _Killed(BaseException):
    """A writer killed at a chosen point (not an Exception: nothing may catch it)."""


def test_cache_writer_killed_mid_swap_never_pairs_a_manifest_with_another_manifests_images(
        prepared_tiny, tmp_path, monkeypatch):
    prepared = tmp_path / "prepared"
    shutil.copytree(prepared_tiny, prepared, ignore=shutil.ignore_patterns("cache"))
    manifest = prepared / "manifest.csv"
    full = manifest.read_bytes()
    short = b"".join(full.splitlines(keepends=True)[:-5])
    manifest.write_bytes(short)
    first = np.array(load_cache(prepared, 32))

    # A new prepare changes the manifest; the writer rebuilding the cache dies right after its
    # first file replacement. Whatever it managed to write, a reader of the old manifest must get
    # the old images (or a rebuild), never the new manifest's.
    manifest.write_bytes(full)
    real_replace = os.replace

    def replace_then_die(src, dst):
        real_replace(src, dst)
        raise _Killed

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(_Killed):
        load_cache(prepared, 32)
    monkeypatch.setattr(os, "replace", real_replace)

    manifest.write_bytes(short)
    again = load_cache(prepared, 32)
    assert again.shape == first.shape and np.array_equal(again, first)
    manifest.write_bytes(full)
    assert load_cache(prepared, 32).shape[0] == len(read_manifest(prepared))
    # A rebuild removes the caches of other manifests instead of letting them pile up.
    manifest.write_bytes(b"".join(full.splitlines(keepends=True)[:-3]))
    assert load_cache(prepared, 32).shape[0] == len(read_manifest(prepared))
    assert len(list((prepared / "cache").glob("32px*.npy"))) == 1


def test_prepare_without_imagehash_still_splits_and_says_near_duplicates_were_not_checked(
        image_folder, tmp_path, monkeypatch):
    import sys

    # A bare GPU machine has no ImageHash: prepare must still run (the worker processes fork this state).
    monkeypatch.setitem(sys.modules, "imagehash", None)
    report = prepare(image_folder, tmp_path / "bare")
    assert report["near_duplicates_checked"] is False and report["near_duplicates"] == []
    assert report["images"] == report["files_found"] > 0
    monkeypatch.undo()
    full = prepare(image_folder, tmp_path / "full")
    assert full["near_duplicates_checked"] is True

    def without_smears(rows):
        # Smear groups join near-duplicate pairs, which a bare machine cannot find: only they may differ.
        return [{k: v for k, v in row.items() if k not in SMEAR_COLUMNS} for row in rows]

    assert without_smears(read_manifest(tmp_path / "bare")) == without_smears(read_manifest(tmp_path / "full"))


# ----------------------------------------------------------------------------- hostile pixels and shapes


def _png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG (grey for H x W, RGB for H x W x 3) written by hand: Pillow cannot save 16-bit colour."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width = samples.shape[:2]
    colour_type = 2 if samples.ndim == 3 else 0
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_16_bit_png_is_scaled_by_its_bit_depth_not_clipped():
    grey = np.array([[0, 257 * 60, 257 * 128, 65535]] * 4, dtype=np.uint16)
    expected = np.array([0, 60, 128, 255], dtype=np.uint8)
    for samples in (grey, np.stack([grey] * 3, axis=-1)):
        pixels = np.asarray(open_rgb(_png16(samples)))
        assert pixels.shape == (4, 4, 3)
        assert (pixels[0, :, 0] == expected).all() and (pixels[..., 0] == pixels[..., 2]).all()
    assert decode(_png16(grey)).mode == "I;16"


def test_float_tiff_in_unit_range_is_scaled_and_any_other_refused():
    values = np.array([[0.0, 0.25, 0.5, 1.0]] * 4, dtype=np.float32)
    pixels = np.asarray(open_rgb(_encoded(Image.fromarray(values), "TIFF")))
    assert pixels[0, :, 1].tolist() == [0, 64, 128, 255]
    with pytest.raises(ValueError, match=r"float pixels span \[0, 1000\]"):
        open_rgb(_encoded(Image.fromarray(values * 1000), "TIFF"))
    with pytest.raises(ValueError, match="NaN"):
        open_rgb(_encoded(Image.fromarray(np.full((4, 4), np.nan, np.float32)), "TIFF"))
    with pytest.raises(ValueError, match=r"mode I \(signed or 32-bit"):
        open_rgb(_encoded(Image.fromarray(np.full((4, 4), -5, np.int32)), "TIFF"))
    tifffile = pytest.importorskip("tifffile")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.full((4, 4, 3), 0.5, np.float32), photometric="rgb")  # Pillow cannot read it
    with pytest.raises(ValueError, match="TIFF that Pillow cannot decode"):
        open_rgb(buffer.getvalue())


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_exif_orientation_is_honoured(fmt):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red, right half blue, as stored
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # displayed turned 90 degrees clockwise: the left half on top
    decoded = decode(_encoded(Image.fromarray(stored), fmt, exif=exif))
    pixels = np.asarray(decoded.image).astype(int)
    assert decoded.image.size == (20, 40) and decoded.oriented
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 50  # top: red
    assert pixels[35, 10, 2] > 200 and pixels[35, 10, 0] < 50  # bottom: blue


@pytest.mark.parametrize(("fmt", "kind"), [("PNG", "animated PNG"), ("TIFF", "multi-page TIFF")])
def test_multi_frame_files_are_refused_not_read_as_their_first_frame(fmt, kind):
    frames = [Image.new("RGB", (16, 16), (60 * i, 0, 0)) for i in range(3)]
    with pytest.raises(ValueError, match=f"{kind} of 3 frames"):
        open_rgb(_encoded(frames[0], fmt, save_all=True, append_images=frames[1:]))
    assert open_rgb(_encoded(frames[1], fmt)).getpixel((0, 0)) == (60, 0, 0)  # one frame: fine


def test_extreme_aspect_ratio_is_refused_before_any_large_allocation():
    thin = _encoded(Image.new("L", (1, 20_000), 200), "PNG")  # a few hundred bytes asking for 224 x 4.5 M pixels
    assert len(thin) < 1000
    with pytest.raises(ValueError, match=r"extreme aspect ratio 1x20000 \(more than 10:1\)"):
        load_image(thin, 224)
    with pytest.raises(ValueError, match="extreme aspect ratio"):
        resize_square(Image.new("RGB", (20_000, 1)), 224)
    assert load_image(_encoded(Image.new("RGB", (10, 100), (9, 9, 9)), "PNG"), 64).shape == (64, 64, 3)  # 10:1


def test_resize_is_bounded_and_out_of_memory_is_a_per_file_error(image_folder, monkeypatch):
    with pytest.raises(ValueError, match="would exceed"):
        resize_square(Image.new("RGB", (10, 100)), 4096)  # 4096 x 40960 pixels
    original = Image.Image.resize

    def resize(self, size, *args, **kwargs):
        if self.size == (30, 90):
            raise MemoryError
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    tall = _encoded(Image.new("RGB", (30, 90)), "PNG")
    with pytest.raises(ValueError, match="out of memory resizing 30x90"):
        load_image(tall, 32)
    (image_folder / "Pre" / "thin.png").write_bytes(_encoded(Image.new("L", (2, 900)), "PNG"))
    report = prepare(image_folder, image_folder.parent / "out")
    assert "extreme aspect ratio 2x900" in _rejected(report)["thin.png"]


def test_prepare_converts_16_bit_and_oriented_images_and_rejects_unsure_ones(image_folder):
    grey = np.full((40, 40), 257 * 100, np.uint16)
    (image_folder / "Benign" / "deep.png").write_bytes(_png16(grey))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 8
    Image.new("RGB", (40, 30), (200, 100, 50)).save(image_folder / "Early" / "turned.jpg", exif=exif)
    frames = [Image.new("RGB", (40, 40), (i, 0, 0)) for i in range(2)]
    frames[0].save(image_folder / "Pro" / "pages.tiff", save_all=True, append_images=frames[1:])
    out = image_folder.parent / "out"
    report = prepare(image_folder, out)
    assert report["modes_converted"] == {"I;16": 1} and report["orientation_corrected"] == 1
    assert "multi-page TIFF" in _rejected(report)["pages.tiff"]
    rows = {r["path"]: r for r in read_manifest(out)}
    assert (rows["Early/turned.jpg"]["width"], rows["Early/turned.jpg"]["height"]) == ("30", "40")
    images = load_cache(out, 40)
    deep = next(i for i, r in enumerate(read_manifest(out)) if r["path"] == "Benign/deep.png")
    assert (np.asarray(images[deep]) == 100).all()  # the cache decodes it the same way


# ----------------------------------------------------------------------------- everything in the data folder


def _bytes_name(folder, name: bytes) -> bytes:
    return os.fsencode(folder) + b"/" + name


@pytest.mark.timeout(120)  # before the fix, the FIFO blocked prepare for ever
def test_prepare_accounts_for_links_special_files_unreadable_folders_and_bad_names(image_folder, monkeypatch):
    benign, early = image_folder / "Benign", image_folder / "Early"
    os.mkfifo(benign / "pipe.png")
    (benign / "link.png").symlink_to(benign / "benign-000.png")  # a symlinked file: not followed either
    outside = image_folder.parent / "elsewhere"
    write_image_folder(outside, per_class=2, names=("Extra",))
    (benign / "linked").symlink_to(outside / "Extra", target_is_directory=True)
    (early / "locked").mkdir()
    shutil.copy(early / "early-000.png", early / "locked" / "inside.png")
    (benign / ".hidden.png").write_bytes(b"ignored")
    real_scandir = os.scandir

    def scandir(path="."):  # a folder this user may not list (root reads any folder, so chmod cannot show it)
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    bad_name = _bytes_name(early, b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    with open(bad_name, "wb") as handle:
        handle.write((early / "early-001.png").read_bytes())

    out = image_folder.parent / "out"
    report = prepare(image_folder, out)
    rejected = {item["path"]: item["reason"] for item in report["rejected"]}
    assert "not a regular file (a FIFO)" in rejected["Benign/pipe.png"]
    assert "symbolic link" in rejected["Benign/link.png"] and "symbolic link" in rejected["Benign/linked"]
    assert "folder not readable: Permission denied" in rejected["Early/locked"]
    assert "not valid UTF-8" in rejected["Early/caf\\xe9.png"]
    manifest = read_manifest(out)
    assert not any(r["path"].startswith(("Benign/link", "Early/locked", "Early/caf")) for r in manifest)
    # Every entry is in the manifest or rejected with its reason; hidden ones are counted.
    assert report["files_found"] == len(manifest) + len(rejected) == 4 * 24 + 5
    assert report["hidden_ignored"] == 1
    json.loads((out / "data_report.json").read_text())


@pytest.mark.timeout(120)
def test_segmented_masks_follow_the_same_file_rules(tmp_path):
    root = tmp_path / "ALL"
    write_image_folder(root / "Original", per_class=6)
    add_segmented(root)
    segmented = root / "Segmented"
    (segmented / "Benign" / "benign-000.png").unlink()
    os.mkfifo(segmented / "Benign" / "benign-000.png")
    (segmented / "Early" / "early-000.png").unlink()
    (segmented / "Early" / "early-000.png").symlink_to(segmented / "Early" / "early-001.png")
    report = prepare(root / "Original", tmp_path / "out")
    problems = {p["path"]: p["segmented"] for p in report["masks"]["problems"]}
    assert problems["Benign/benign-000.png"] == "unreadable: not a regular file (a FIFO)"
    assert problems["Early/early-000.png"] == "unreadable: symbolic link: not followed"


def test_read_regular_never_opens_a_fifo_or_a_device(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match="a FIFO"):
        read_regular(tmp_path / "pipe")
    with pytest.raises(ValueError, match="a character device"):
        read_regular("/dev/zero")
    with pytest.raises(ValueError, match="a folder"):
        load_image(tmp_path, 32)
    (tmp_path / "zero").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="symbolic link"):
        read_regular(tmp_path / "zero", follow_symlinks=False)
    with pytest.raises(ValueError, match="a character device"):
        read_regular(tmp_path / "zero")
