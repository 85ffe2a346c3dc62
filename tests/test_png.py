"""The set writer's PNGs decode to exactly the pixels written, in PIL and in torchvision."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_png

from distill.png import encode_rgb, save_rgb


@pytest.mark.parametrize("h,w", [(1, 1), (1, 7), (5, 1), (224, 224), (37, 113)])
def test_pixels_round_trip_exactly(h, w):
    rng = np.random.default_rng(h * 1000 + w)
    smooth = np.linspace(0, 255, h * w * 3).reshape(h, w, 3)
    a = (smooth + rng.integers(0, 255, (h, w, 3)) * (rng.random((h, w, 1)) < 0.3)) % 256
    a = a.astype(np.uint8)
    data = encode_rgb(a)
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG" and im.mode == "RGB" and im.size == (w, h)
    im.load()  # PIL checks every chunk's CRC while loading
    assert np.array_equal(np.asarray(im), a)
    t = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    assert np.array_equal(t.permute(1, 2, 0).numpy(), a)


def test_extremes_wrap_modulo_256(tmp_path):
    """The Up filter's differences wrap (0 - 255 = 1): rows alternating 0 and 255."""
    a = np.zeros((6, 4, 3), np.uint8)
    a[1::2] = 255
    save_rgb(Image.fromarray(a), tmp_path / "x.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), a)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_other_arrays_are_refused(bad):
    with pytest.raises(ValueError, match="non-empty"):
        encode_rgb(bad)
