"""Batched augmentation: exact crops, flips, ShufflePatches strips, RandomResizedCrop ranges."""

from __future__ import annotations

import numpy as np
import pytest
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
    torch.testing.assert_close(aug.apply(x, p), x, atol=1e-4, rtol=0)
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


# ----------------------------------------------------------------------------- references


def reference_rrc(batch, height, width, scale, ratio, rng):
    """torchvision's RandomResizedCrop.get_params written out per image and per try, on the
    same numpy draws as the batched version (all tries' areas, then log-ratios, then the
    two uniforms of each try)."""
    import math

    area = height * width
    target = area * rng.uniform(scale[0], scale[1], size=(batch, 10))
    log_r = rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (batch, 10))
    u = rng.random((batch, 10, 2))
    boxes = []
    for b in range(batch):
        for k in range(10):
            r = math.exp(log_r[b, k])
            w = round(math.sqrt(target[b, k] * r))
            h = round(math.sqrt(target[b, k] / r))
            if 0 < w <= width and 0 < h <= height:
                top = math.floor(u[b, k, 0] * (height - h + 1))
                left = math.floor(u[b, k, 1] * (width - w + 1))
                boxes.append((top, left, h, w))
                break
        else:  # the central crop at the clamped aspect ratio
            in_ratio = width / height
            if in_ratio < ratio[0]:
                cw, ch = width, round(width / ratio[0])
            elif in_ratio > ratio[1]:
                ch, cw = height, round(height * ratio[1])
            else:
                cw, ch = width, height
            boxes.append(((height - ch) // 2, (width - cw) // 2, ch, cw))
    return np.array(boxes, dtype=np.float64)


@pytest.mark.parametrize(
    "height,width,scale,ratio",
    [
        (20, 30, (0.5, 1.0), (3 / 4, 4 / 3)),
        (31, 17, (0.08, 1.0), (3 / 4, 4 / 3)),
        (32, 32, (1.0, 1.0), (3 / 4, 4 / 3)),  # RDED's factor 1: the whole image
        (9, 40, (0.9, 1.0), (3 / 4, 4 / 3)),  # too wide for any try: clamped central crop
        (40, 9, (0.9, 1.0), (3 / 4, 4 / 3)),  # too tall
        (16, 16, (0.9, 1.0), (2.0, 3.0)),  # ratios that never fit a square: fallback
        (9, 41, (0.9, 1.0), (3 / 4, 4 / 3)),  # fallback with an odd margin to halve
        (41, 9, (0.9, 1.0), (3 / 4, 4 / 3)),
        (24, 20, (0.3, 0.8), (3 / 4, 4 / 3)),  # an upper scale below 1
        (4, 4, (0.01, 0.2), (1 / 3, 3.0)),  # sides that round to 0 or 1
        (3, 4, (0.9, 1.0), (3 / 4, 4 / 3)),  # the image's own ratio at the range's edge
    ],
)
def test_rrc_boxes_match_torchvisions_algorithm(height, width, scale, ratio):
    aug = BatchAugment(8, scale=scale, ratio=ratio)
    got = aug.sample(64, height, width, np.random.default_rng(3)).boxes
    ref_rng = np.random.default_rng(3)
    want = reference_rrc(64, height, width, scale, ratio, ref_rng)
    np.testing.assert_array_equal(got, want)
    # sample() draws the flips after the boxes, from the same generator.
    flips = (
        BatchAugment(8, scale=scale, ratio=ratio)
        .sample(64, height, width, np.random.default_rng(3))
        .flips
    )
    assert np.array_equal(flips, ref_rng.random(64) < 0.5)


def test_sample_draw_order_and_modes():
    """ShufflePatches draws one column and one row order per image first; pad mode draws
    integer shifts in [-pad, pad] and keeps the full size; scale=None keeps the image."""
    aug = BatchAugment(8, scale=(0.5, 1.0), shuffle_patches=2, flip=0.3)
    p = aug.sample(5, 16, 16, np.random.default_rng(7))
    ref = np.random.default_rng(7)
    cols = [ref.permutation(2) for _ in range(5)]
    rows = [ref.permutation(2) for _ in range(5)]
    boxes = reference_rrc(5, 16, 16, (0.5, 1.0), (3 / 4, 4 / 3), ref)
    flips = ref.random(5) < 0.3
    assert all(np.array_equal(a, b) for a, b in zip(p.col_perms, cols, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(p.row_perms, rows, strict=True))
    np.testing.assert_array_equal(p.boxes, boxes)
    assert np.array_equal(p.flips, flips) and p.boxes.dtype == np.float64
    assert BatchAugment(8).sample(3, 8, 8, np.random.default_rng(0)).col_perms is None
    pad = BatchAugment(8, pad=3).sample(4, 10, 12, np.random.default_rng(1))
    shift = np.random.default_rng(1).integers(-3, 4, size=(4, 2))
    np.testing.assert_array_equal(pad.boxes, np.c_[shift, np.full(4, 10), np.full(4, 12)])
    full = BatchAugment(8, scale=None).sample(2, 10, 12, np.random.default_rng(0))
    np.testing.assert_array_equal(full.boxes, [[0, 0, 10, 12], [0, 0, 10, 12]])
    assert BatchAugment(8, scale=[0.2, 0.9]).scale == (0.2, 0.9)
    assert BatchAugment(8, ratio=[0.5, 2]).ratio == (0.5, 2)


def reference_apply(x, p, size, pad):
    """Per image: RDED's ShufflePatches (column strips, then row strips), the crop, a bilinear
    resize (torchvision's, no antialiasing) and the flip; pad mode translates with zeros."""
    import torch.nn.functional as F

    out = []
    for b in range(x.shape[0]):
        img = x[b]
        if p.col_perms is not None:
            for dim, perm in ((2, p.col_perms[b]), (1, p.row_perms[b])):
                n, f = img.shape[dim], len(perm)
                step = n // f
                strips = [
                    img.narrow(dim, k * step, step if k < f - 1 else n - k * step) for k in range(f)
                ]
                img = torch.cat([strips[k] for k in perm], dim)
        top, left, h, w = (int(v) for v in p.boxes[b])
        if pad:
            canvas = torch.zeros_like(img)
            H, W = img.shape[1:]
            ys, xs = slice(max(0, -top), min(H, H - top)), slice(max(0, -left), min(W, W - left))
            yd, xd = (
                slice(max(0, top), max(0, top) + ys.stop - ys.start),
                slice(max(0, left), max(0, left) + xs.stop - xs.start),
            )
            canvas[:, ys, xs] = img[:, yd, xd]
            crop = canvas
        else:
            crop = img[:, top : top + h, left : left + w]
        if crop.shape[1:] != (size, size):
            crop = F.interpolate(
                crop[None], size=(size, size), mode="bilinear", align_corners=False
            )[0]
        out.append(crop.flip(-1) if p.flips[b] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("shuffle,size", [(2, 8), (3, 8), (1, 8), (2, 12), (1, 5)])
def test_apply_matches_the_per_image_reference(shuffle, size):
    """The one batched grid_sample equals shuffle, crop, resize and flip done image by image."""
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    aug = BatchAugment(size, scale=(0.3, 1.0), shuffle_patches=shuffle)
    p = aug.sample(6, 16, 16, np.random.default_rng(11))
    got = aug.apply(x, p)
    want = reference_apply(x, p, size, pad=0)
    assert got.shape == (6, 3, size, size) and got.dtype == x.dtype
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_apply_pad_mode_matches_the_reference():
    torch.manual_seed(1)
    x = torch.rand(5, 3, 10, 10)
    aug = BatchAugment(10, pad=3)
    p = aug.sample(5, 10, 10, np.random.default_rng(2))
    torch.testing.assert_close(aug.apply(x, p), reference_apply(x, p, 10, pad=3), atol=1e-5, rtol=0)


def test_normalize_per_channel():
    from evaluate.augment import normalize

    x = torch.rand(2, 3, 4, 5)
    mean, std = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.2, 0.25, 4.0])
    want = torch.stack([(x[:, c] - mean[c]) / std[c] for c in range(3)], 1)
    torch.testing.assert_close(normalize(x, mean, std), want)


def test_apply_flips_full_images_keeps_dtype_and_pad_one():
    """Whole-image boxes still flip the flipped images; float64 batches stay float64; a pad
    of one pixel is pad mode (shifts of -1, 0, 1 with zeros), not a crop."""
    x = _ramp(3)
    aug = BatchAugment(8, scale=(1.0, 1.0))
    p = _params([[0, 0, 8, 8]] * 3, [True, False, True])
    out = aug.apply(x, p)
    torch.testing.assert_close(
        out, torch.stack([x[0].flip(-1), x[1], x[2].flip(-1)]), atol=1e-4, rtol=0
    )
    x64 = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    p64 = BatchAugment(6, scale=(0.5, 1.0)).sample(2, 8, 8, np.random.default_rng(0))
    got = BatchAugment(6, scale=(0.5, 1.0)).apply(x64, p64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference_apply(x64, p64, 6, pad=0), atol=1e-9, rtol=0)
    one = BatchAugment(8, pad=1)
    p1 = one.sample(6, 8, 8, np.random.default_rng(4))
    assert set(p1.boxes[:, :2].ravel()) <= {-1.0, 0.0, 1.0} and (p1.boxes[:, 2:] == 8).all()
    x = torch.rand(6, 3, 8, 8)
    torch.testing.assert_close(
        one.apply(x, p1), reference_apply(x, p1, 8, pad=1), atol=1e-5, rtol=0
    )
