import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from engine.data import DataError, find_class_dirs, load_cache, open_rgb, prepare, read_manifest
from tests.conftest import write_image_folder


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
    assert "decompression bomb" in rejected["bomb.png"]
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
    assert read_manifest(tmp_path / "bare") == read_manifest(tmp_path / "full")
