"""Two runs compared on the same images: by content, else by the path inside the class folder
(an original and its segmented copy differ in content but not in name)."""

from __future__ import annotations

import pandas as pd

from dashboard.artefacts import pair_images
from engine.matching import match_images


def rows(*items: tuple[str, str, str]) -> list[dict[str, str]]:
    return [{"path": p, "sha256": s, "class": c, "true": c} for p, s, c in items]


def test_engine_matches_by_sha256_then_by_class_and_path():
    a = rows(("Benign/x.jpg", "s1", "benign"), ("Pro/y.jpg", "s2", "pro"), ("Pre/z.jpg", "s3", "pre"))
    b = rows(("ALL_pro/y.jpg", "t2", "pro"), ("benign/copy.jpg", "s1", "benign"), ("Early/z.jpg", "t3", "early"))
    # x: same content under another name; y: a segmented copy in a differently named class folder;
    # z: same name but another stage, so another image.
    assert match_images(a, b) == {0: 1, 1: 0}


def test_dashboard_pairs_the_same_images_with_both_runs_columns():
    a = pd.DataFrame(rows(("Benign/x.jpg", "s1", "benign"), ("Pro/y.jpg", "s2", "pro"))).assign(pred=["benign", "pre"])
    b = pd.DataFrame(rows(("Benign/x.jpg", "s1", "benign"), ("Pro/y.jpg", "t2", "pro"),
                          ("Pro/w.jpg", "t9", "pro"))).assign(pred=["benign", "pro", "pro"])
    both = pair_images(a, b)
    assert sorted(both["path_a"]) == ["Benign/x.jpg", "Pro/y.jpg"]
    y = both[both["path_a"] == "Pro/y.jpg"].iloc[0]
    assert (y["sha256_a"], y["sha256_b"], y["pred_a"], y["pred_b"]) == ("s2", "t2", "pre", "pro")
