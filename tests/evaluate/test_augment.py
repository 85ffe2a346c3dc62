"""Batched augmentation: exact crops, flips, ShufflePatches strips, RandomResizedCrop ranges."""

from __future__ import annotations

import numpy as np
import torch

from evaluate.augment import AugmentParams, BatchAugment, shuffle_strips


def _ramp(b=2, h=8, w=8):
    x = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    return x.expand(b, 3, h, w).clone() + torch.arange(b).view(b, 1, 1, 1) * 1000


def _params(boxes, flips, cols=None, rows=None):
    return AugmentParams(cols, rows, np.asarray(boxes, dtype=np.float64), np.asarray(flips))


def test_crop_without_resize_is_a_slice_and_flip_mirrors():
    x = _ramp()
    aug = BatchAugment(4, scale=None)
    out = aug.apply(x, _params([[2, 3, 4, 4], [0, 0, 4, 4]], [False, True]))
    assert torch.allclose(out[0], x[0, :, 2:6, 3:7], atol=1e-4)
    assert torch.allclose(out[1], x[1, :, 0:4, 0:4].flip(-1), atol=1e-4)


def test_identity_and_resize():
    x = _ramp()
    aug = BatchAugment(8, scale=None, flip=0.0)
    p = aug.sample(2, 8, 8, np.random.default_rng(0))
    assert torch.equal(aug.apply(x, p), x)
    up = BatchAugment(16, scale=None, flip=0.0)
    out = up.apply(x, up.sample(2, 8, 8, np.random.default_rng(0)))
    # The whole image as the crop: a plain bilinear resize (edges clamped, not zero-padded).
    want = torch.nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False)
    assert out.shape == (2, 3, 16, 16) and torch.allclose(out, want, atol=1e-3)


def test_shuffle_strips_swaps_halves_like_rded():
    x = _ramp(1)
    cols = [np.array([1, 0])]
    out = shuffle_strips(x, cols, dim=3)
    assert torch.equal(out[..., :4], x[..., 4:]) and torch.equal(out[..., 4:], x[..., :4])
    keep = shuffle_strips(x, [np.array([0, 1])], dim=2)
    assert torch.equal(keep, x)
    # Uneven: the last strip keeps the remainder (RDED's ShufflePatches).
    y = torch.arange(7.0).view(1, 1, 1, 7)
    assert shuffle_strips(y, [np.array([1, 0])], dim=3).flatten().tolist() == [3, 4, 5, 6, 0, 1, 2]


def test_random_resized_crop_boxes_respect_scale_and_bounds():
    aug = BatchAugment(16, scale=(0.5, 1.0))
    p = aug.sample(500, 20, 30, np.random.default_rng(1))
    top, left, h, w = p.boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 20).all() and (left + w <= 30).all()
    area = h * w / (20 * 30)
    assert area.min() >= 0.45 and area.max() <= 1.0  # rounding of sides
    assert 0.35 < p.flips.mean() < 0.65


def test_pad_mode_translates_with_zero_fill():
    x = _ramp(1) + 1
    aug = BatchAugment(8, pad=2, flip=0.0)
    p = _params([[2, -1, 8, 8]], [False])  # content moves up by 2, right by 1
    out = BatchAugment(8, pad=2).apply(x, p)
    assert torch.allclose(out[0, :, :6, 1:], x[0, :, 2:, :7], atol=1e-4)
    assert (out[0, :, 6:, :] == 0).all() and (out[0, :, :, 0] == 0).all()
    draws = aug.sample(200, 8, 8, np.random.default_rng(0)).boxes
    assert draws[:, :2].min() == -2 and draws[:, :2].max() == 2
