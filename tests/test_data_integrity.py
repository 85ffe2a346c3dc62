"""Every image counted once, under its true label, in the frame a viewer shows; one huge file
skipped with its reason, never the end of a run (issue 15, cases 1-3)."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from distill.data import ResizedImages, build_source
from distill.data.images import DECODE_RULES, UnreadableImage, load_rgb, read_size
from distill.data.records import read_skipped_csv
from distill.data.sources import DEFAULT_MAX_PIXELS
from tests.conftest import random_rgb, save_image
from tests.test_sources import data_cfg


def folder_cfg(root, **kw):
    return data_cfg(kind="folder", root=str(root), split=None, **kw)


def make_classes(root, counts):
    for c, n in counts.items():
        for j in range(n):
            save_image(root / c / f"{c}_{j}.png", random_rgb(20, 24, hash((c, j)) % 1000))


def labels_of(src):
    return {it.source: src.classes[it.label].key for it in src.items}


# ----------------------------------------------------------------------------- 1. links


def test_symlink_loops_are_not_followed_and_are_reported(tmp_path):
    make_classes(tmp_path, {"a": 3, "b": 4})
    os.symlink("..", tmp_path / "a" / "up")  # would list every class under "a"
    os.symlink(".", tmp_path / "a" / "self")  # would list "a" 40 times
    (tmp_path / "a" / "sub").mkdir()
    os.symlink("../..", tmp_path / "a" / "sub" / "upup")
    src = build_source(folder_cfg(tmp_path))
    assert src.counts() == [3, 4]
    # Every file once, under its own folder's class.
    labels = labels_of(src)
    assert all(key == sid.split("/")[0] for sid, key in labels.items())
    reasons = {s.source: s.reason for s in src.skipped}
    assert "loop" in reasons["a/up"] and "loop" in reasons["a/self"]
    assert "loop" in reasons["a/sub/upup"]


def test_link_into_another_class_is_refused_by_name(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})
    os.symlink("../b", tmp_path / "a" / "more")  # b's images would become a's
    os.symlink("../b/b_0.png", tmp_path / "a" / "stolen.png")
    src = build_source(folder_cfg(tmp_path))
    assert src.counts() == [2, 2]
    reasons = {s.source: s.reason for s in src.skipped}
    assert "class 'b'" in reasons["a/more"]
    assert "class 'b'" in reasons["a/stolen.png"]


def test_a_file_reached_twice_is_listed_once(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 1})
    os.symlink("a_0.png", tmp_path / "a" / "again.png")
    src = build_source(folder_cfg(tmp_path))
    assert src.counts() == [2, 1]
    reasons = {s.source: s.reason for s in src.skipped}
    assert reasons["a/again.png"].startswith("same file as a/a_0.png")


def test_links_to_folders_outside_the_tree_are_followed(tmp_path):
    """Datasets assembled from links (a class folder on another disk) still work."""
    elsewhere = tmp_path / "disk2"
    make_classes(elsewhere, {"b": 3})
    root = tmp_path / "data"
    make_classes(root, {"a": 2})
    os.symlink(elsewhere / "b", root / "b")
    (root / "a" / "extra").symlink_to(tmp_path / "disk2")  # holds b's real folder
    src = build_source(folder_cfg(root))
    assert src.counts() == [2, 3]
    assert "class 'b'" in {s.source: s.reason for s in src.skipped}["a/extra/b"]


def test_skipped_links_reach_skipped_csv(tmp_path):
    from distill.data import write_skipped_csv

    make_classes(tmp_path / "d", {"a": 1, "b": 1})
    os.symlink("..", tmp_path / "d" / "a" / "up")
    src = build_source(folder_cfg(tmp_path / "d"))
    write_skipped_csv(src.skipped, tmp_path / "skipped.csv")
    rows = read_skipped_csv(tmp_path / "skipped.csv")
    assert any(r.source == "a/up" and "loop" in r.reason for r in rows)


def test_tinyimagenet_train_links_are_checked_too(tmp_path):
    wnids = ["n01443537", "n01629819"]
    (tmp_path / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for j in range(2):
            save_image(tmp_path / "train" / w / "images" / f"{w}_{j}.JPEG", random_rgb(64, 64, j))
    os.symlink("../..", tmp_path / "train" / wnids[0] / "images" / "loop")
    src = build_source(data_cfg(kind="tinyimagenet", root=str(tmp_path), min_side=8))
    assert src.counts() == [2, 2]
    assert all(it.source.startswith("train/") for it in src.items)
    assert any("loop" in s.reason for s in src.skipped)


# ----------------------------------------------------------------------------- 2. EXIF


def exif_jpeg(path, arr, orientation):
    im = Image.fromarray(arr, "RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, format="JPEG", quality=98, exif=exif.tobytes())


def marked(h=24, w=40):
    """An image whose top-left quadrant is red and the rest dark: orientation is visible."""
    arr = np.full((h, w, 3), 30, np.uint8)
    arr[: h // 2, : w // 2] = (230, 20, 20)
    return arr


@pytest.mark.parametrize(
    "tag,turn",
    [
        (1, None),
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_270),
        (8, Image.Transpose.ROTATE_90),
        (2, Image.Transpose.FLIP_LEFT_RIGHT),
    ],
)
def test_exif_orientation_is_applied_to_size_and_pixels(tmp_path, tag, turn):
    arr = marked()
    exif_jpeg(tmp_path / "x.jpg", arr, tag)
    stored = Image.fromarray(arr, "RGB")
    shown = stored.transpose(turn) if turn is not None else stored
    assert read_size(tmp_path / "x.jpg") == shown.size
    got = np.asarray(load_rgb(tmp_path / "x.jpg"), dtype=np.int16)
    assert got.shape[:2] == shown.size[::-1]
    # Red where the viewer shows red (JPEG noise aside).
    want = np.asarray(shown, dtype=np.int16)
    assert np.abs(got - want).mean() < 6


def test_png_exif_orientation_is_applied(tmp_path):
    arr = marked()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr, "RGB").save(tmp_path / "x.png", exif=exif.tobytes())
    assert read_size(tmp_path / "x.png") == (24, 40)
    assert load_rgb(tmp_path / "x.png").size == (24, 40)


def test_rotated_photo_is_scored_upright(tmp_path):
    """A landscape sensor image tagged "rotate 90 clockwise" is a portrait photo to its
    viewer: the pipeline's item size, resized frame and pixels are all portrait, and the red
    corner sits top-right, where the viewer sees it."""
    (tmp_path / "a").mkdir()
    exif_jpeg(tmp_path / "a" / "p.jpg", marked(32, 64), 6)
    src = build_source(folder_cfg(tmp_path))
    assert src.items[0].size == (32, 64)
    ds = ResizedImages(src, 32, 8)
    w, h = ds.target_size(0)
    assert (w, h) == (32, 64)
    item = ds[0]
    assert "error" not in item
    px = item["pixels"].numpy().astype(int)  # (3, H, W)
    assert px.shape == (3, 64, 32)
    top_right, top_left = px[0, :32, 16:].mean(), px[0, :32, :16].mean()
    assert top_right > 150 > 60 > top_left


def test_decoding_rules_are_in_the_bank_spec():
    from distill.scoring.stage import score_spec

    assert DECODE_RULES["exif_orientation"] == "applied"

    class Backend:
        def fingerprint(self):
            return {"m": 1}

    from omegaconf import OmegaConf

    from distill.data.sources import synthetic_source

    cfg = OmegaConf.create(
        {"scoring": {}, "data": {"name": "s", "kind": "synthetic", "num_classes": 2}}
    )
    src = synthetic_source(cfg.data, "train")
    assert score_spec(cfg, src, Backend())["decode"] == DECODE_RULES


# ----------------------------------------------------------------------------- 3. huge images


def png_header_only(path, width, height):
    """A PNG that declares ``width`` x ``height`` (its pixel data is a stub): enough for any
    reader of headers, and a 400-megapixel file without writing 1.2 GB."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_huge_image_is_skipped_with_its_size_and_the_run_goes_on(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})
    png_header_only(tmp_path / "a" / "scan.png", 20000, 20000)  # 400 MP: over PIL's guard
    png_header_only(tmp_path / "b" / "pano.png", 12000, 6000)  # 72 MP: over ours only
    src = build_source(folder_cfg(tmp_path))
    assert src.counts() == [2, 2]
    reasons = {s.source: s.reason for s in src.skipped}
    assert "too large" in reasons["a/scan.png"]
    assert "12000x6000" in reasons["b/pano.png"] and "data.max_pixels" in reasons["b/pano.png"]


def test_pixel_limit_is_configurable(tmp_path):
    make_classes(tmp_path, {"a": 2})
    png_header_only(tmp_path / "a" / "pano.png", 12000, 6000)
    assert DEFAULT_MAX_PIXELS < 12000 * 6000
    src = build_source(folder_cfg(tmp_path, max_pixels=None))
    assert src.counts() == [3]  # listed; PIL's own guard (179 MP) lets it through
    src = build_source(folder_cfg(tmp_path, max_pixels=20 * 24))  # the 20x24 images pass
    assert src.counts() == [2]
    assert "data.max_pixels=480" in src.skipped[0].reason


def test_load_of_a_bomb_is_an_unreadable_image_not_a_crash(tmp_path):
    png_header_only(tmp_path / "x.png", 20000, 20000)
    with pytest.raises(UnreadableImage, match="too large"):
        read_size(tmp_path / "x.png")
    with pytest.raises(UnreadableImage):
        load_rgb(tmp_path / "x.png")
