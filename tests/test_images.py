"""Decoding every kind of image file a real dataset holds, and the pipeline's resize."""

import io

import numpy as np
import pytest
from PIL import Image

from distill.data.images import UnreadableImage, load_rgb, read_size, resized_size
from tests.conftest import random_rgb, save_image


def test_cmyk_jpeg_converts_with_right_colours(tmp_path):
    # Pure cyan in CMYK is (255, 0, 0, 0); in RGB it is (0, 255, 255).
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[..., 0] = 255
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, "CMYK").save(p, quality=100)
    im = load_rgb(p)
    assert im.mode == "RGB"
    r, g, b = np.asarray(im).reshape(-1, 3).mean(0)
    assert r < 20 and g > 235 and b > 235


def test_grayscale_becomes_three_equal_channels(tmp_path):
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    p = save_image(tmp_path / "g.png", g, "L")
    arr = np.asarray(load_rgb(p))
    assert arr.shape == (16, 16, 3)
    assert (arr[..., 0] == g).all() and (arr[..., 1] == g).all() and (arr[..., 2] == g).all()


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path):
    v = np.full((8, 8), 32768, np.uint16)  # half of the 16-bit range
    p = tmp_path / "16.png"
    Image.fromarray(v).save(p)
    assert Image.open(p).mode.startswith("I")
    arr = np.asarray(load_rgb(p))
    assert abs(int(arr[0, 0, 0]) - 128) <= 1  # clipping would give 255


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 0  # black under full transparency ...
    rgba[:4, :, 3] = 0
    rgba[4:, :, 0] = 255  # ... and opaque red below
    rgba[4:, :, 3] = 255
    p = save_image(tmp_path / "a.png", rgba, "RGBA")
    arr = np.asarray(load_rgb(p))
    assert (arr[:4] == 255).all(), "transparent pixels must become the white background"
    assert (arr[4:] == [255, 0, 0]).all()


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.info["transparency"] = 0
    px = im.load()
    for x in range(8):
        px[x, 7] = 1
    p = tmp_path / "p.png"
    im.save(p, transparency=0)
    arr = np.asarray(load_rgb(p))
    assert (arr[0, 0] == 255).all() and (arr[7, 0] == [0, 255, 0]).all()


def test_palette_without_transparency(tmp_path):
    im = Image.fromarray(random_rgb(10, 12)).convert("P")
    p = tmp_path / "p.gif"
    im.save(p)
    assert load_rgb(p).size == (12, 10)


@pytest.mark.parametrize("kind", ["zero", "garbage", "truncated"])
def test_broken_files_raise_with_reason(tmp_path, kind):
    p = tmp_path / "bad.jpg"
    if kind == "zero":
        p.write_bytes(b"")
    elif kind == "garbage":
        p.write_bytes(b"this is not an image at all" * 10)
    else:
        buf = io.BytesIO()
        Image.fromarray(random_rgb(64, 64)).save(buf, "JPEG")
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UnreadableImage) as e:
        load_rgb(p)
    assert str(e.value)
    if kind != "truncated":  # a truncated file still has a readable header
        with pytest.raises(UnreadableImage):
            read_size(p)
    else:
        assert read_size(p) == (64, 64)


@pytest.mark.parametrize(
    "w,h,short,mult,expect",
    [
        (500, 375, 256, 8, (344, 256)),  # 341.33 -> 344 (nearest multiple of 8)
        (375, 500, 256, 8, (256, 344)),  # portrait
        (300, 300, 256, 8, (256, 256)),  # square
        (100, 1000, 256, 8, (256, 2560)),  # extreme aspect
        (32, 32, 256, 8, (256, 256)),  # upsampled low resolution
        (640, 480, 64, 8, (88, 64)),  # 85.33 -> 88
        (641, 480, 256, 1, (342, 256)),  # no rounding constraint
    ],
)
def test_resized_size(w, h, short, mult, expect):
    assert resized_size(w, h, short, mult) == expect


def test_resized_size_rejects_misaligned_short_edge():
    with pytest.raises(ValueError):
        resized_size(100, 100, 250, 8)
