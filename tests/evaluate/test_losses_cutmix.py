"""The KL objective against a hand computation, and CutMix's box, images and label mixing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluate.cutmix import apply_cutmix, mix_targets, sample_cutmix
from evaluate.losses import kd_kl_loss


def _softmax(v):
    e = [math.exp(x - max(v)) for x in v]
    return [x / sum(e) for x in e]


def test_kl_matches_hand_computation():
    s = [[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]
    t = [[1.0, 1.0, 0.0], [-2.0, 0.0, 4.0]]
    temp = 4.0
    # KL(p_t || p_s) summed over classes, averaged over the batch ("batchmean"), at T.
    total = 0.0
    for si, ti in zip(s, t, strict=True):
        ps = _softmax([x / temp for x in si])
        pt = _softmax([x / temp for x in ti])
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps, strict=True))
    want = total / len(s)
    got = kd_kl_loss(torch.tensor(s), torch.tensor(t), temp)
    assert math.isclose(float(got), want, rel_tol=1e-5)
    # RDED's convention has no T^2 factor; Hinton's is opt-in.
    scaled = kd_kl_loss(torch.tensor(s), torch.tensor(t), temp, t2_scale=True)
    assert math.isclose(float(scaled), want * temp**2, rel_tol=1e-5)
    # batchmean, not mean over elements: the value does not depend on the class count.
    assert not math.isclose(float(got), total / (len(s) * 3), rel_tol=1e-3)
    # The temperature matters: at T=1 the value differs.
    assert not math.isclose(float(kd_kl_loss(torch.tensor(s), torch.tensor(t), 1.0)), want)
    assert float(kd_kl_loss(torch.tensor(t), torch.tensor(t), temp)) < 1e-7


def test_kl_gradient_is_softened_difference():
    s = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    t = torch.tensor([[1.0, 1.0, 0.0]])
    temp = 20.0
    kd_kl_loss(s, t, temp).backward()
    want = (torch.softmax(s / temp, 1) - torch.softmax(t / temp, 1)) / temp
    assert torch.allclose(s.grad, want.detach(), atol=1e-7)


def test_cutmix_box_area_is_one_minus_lambda():
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(200):
        p = sample_cutmix(6, 24, 32, beta=1.0, rng=rng)
        y0, y1, x0, x1 = p.box
        assert 0 <= y0 <= y1 <= 24 and 0 <= x0 <= x1 <= 32
        assert math.isclose(1 - p.lam, (y1 - y0) * (x1 - x0) / (24 * 32))
        assert sorted(p.perm.tolist()) == list(range(6))
        seen.append(p.lam)
    assert 0.3 < np.mean(seen) < 0.8  # Beta(1, 1) box, clipped at the border
    assert sample_cutmix(6, 24, 32, beta=0.0, rng=rng) is None  # off
    assert sample_cutmix(1, 24, 32, beta=1.0, rng=rng) is None  # nothing to mix with


def test_cutmix_images_and_labels():
    rng = np.random.default_rng(3)
    b, h, w = 4, 10, 10
    images = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, h, w).clone()
    p = sample_cutmix(b, h, w, 1.0, rng)
    while p.lam in (0.0, 1.0):
        p = sample_cutmix(b, h, w, 1.0, rng)
    mixed = apply_cutmix(images, p)
    y0, y1, x0, x1 = p.box
    for i in range(b):
        partner = int(p.perm[i])
        inside = mixed[i, :, y0:y1, x0:x1]
        assert torch.all(inside == partner)
        # Pixels of image i outside the box are untouched; their share is lam.
        share = (mixed[i, 0] == i).float().mean().item() if partner != i else 1.0
        if partner != i:
            assert math.isclose(share, p.lam, rel_tol=1e-6)
    assert torch.equal(images[:, :, 0, 0], torch.arange(b).float().view(b, 1).expand(b, 3))
    labels = torch.tensor([0, 1, 2, 0])
    onehot = torch.nn.functional.one_hot(labels, 3).float()
    mixed_t = mix_targets(onehot, p)
    assert torch.allclose(mixed_t.sum(1), torch.ones(b))
    for i in range(b):
        want = p.lam * onehot[i] + (1 - p.lam) * onehot[int(p.perm[i])]
        assert torch.allclose(mixed_t[i], want)


def reference_cutmix(batch, height, width, beta, rng):
    """RDED's rand_bbox (validation/utils.py) on the same draws: lam ~ Beta, a box of sides
    sqrt(1 - lam) times the image's around a uniform centre, clipped; then the partners."""
    lam0 = rng.beta(beta, beta)
    cut = math.sqrt(1.0 - lam0)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y0, y1 = min(max(cy - ch // 2, 0), height), min(max(cy + ch // 2, 0), height)
    x0, x1 = min(max(cx - cw // 2, 0), width), min(max(cx + cw // 2, 0), width)
    perm = rng.permutation(batch)
    return (y0, y1, x0, x1), 1.0 - (y1 - y0) * (x1 - x0) / (height * width), perm


@pytest.mark.parametrize("height,width", [(32, 32), (31, 17), (7, 45), (224, 224)])
def test_cutmix_draws_match_rdeds_rand_bbox(height, width):
    for seed in range(40):
        p = sample_cutmix(5, height, width, 1.0, np.random.default_rng(seed))
        box, lam, perm = reference_cutmix(5, height, width, 1.0, np.random.default_rng(seed))
        assert p.box == box and p.lam == pytest.approx(lam, abs=1e-12)
        assert p.perm.tolist() == perm.tolist()
    assert sample_cutmix(2, 8, 8, 1.0, np.random.default_rng(0)) is not None  # 2 images mix
    assert sample_cutmix(1, 8, 8, 1.0, np.random.default_rng(0)) is None
    assert sample_cutmix(4, 8, 8, 0.0, np.random.default_rng(0)) is None
    assert apply_cutmix(torch.ones(2, 1, 2, 2), None).sum() == 8 and mix_targets(
        torch.eye(2), None
    ).equal(torch.eye(2))
