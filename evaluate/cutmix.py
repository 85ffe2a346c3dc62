"""CutMix as RDED applies it to a distilled batch: one box and one partner permutation per
batch. The teacher labels the *mixed* images (online or stored), so the soft targets need
no mixing; hard labels are mixed by the box's area.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class CutMixParams:
    """One batch's CutMix: paste ``images[perm]`` into the box (y0:y1, x0:x1)."""

    perm: torch.Tensor
    box: tuple[int, int, int, int]  # y0, y1, x0, x1
    lam: float  # share of the image NOT covered by the box: 1 - box area / image area


def sample_cutmix(
    batch: int, height: int, width: int, beta: float, rng: np.random.Generator
) -> CutMixParams | None:
    """Draw CutMix parameters (Yun et al. 2019, as RDED's ``rand_bbox``).

    ``lam0 ~ Beta(beta, beta)``; the box has sides ``sqrt(1 - lam0)`` times the image's,
    centred uniformly and clipped at the border, so the clipped box's area decides the
    returned ``lam`` (what label mixing must use). ``beta <= 0`` disables CutMix.
    """
    if beta <= 0 or batch < 2:
        return None
    lam0 = float(rng.beta(beta, beta))
    cut = np.sqrt(1.0 - lam0)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    # The centre lies inside the image, so each edge can only cross its own side.
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    perm = torch.from_numpy(rng.permutation(batch))
    return CutMixParams(perm, (y0, y1, x0, x1), lam)


def apply_cutmix(images: torch.Tensor, p: CutMixParams | None) -> torch.Tensor:
    """Return a copy of ``images`` (B, C, H, W) with the box filled from the partners."""
    if p is None:
        return images
    y0, y1, x0, x1 = p.box
    out = images.clone()
    perm = p.perm.to(images.device)
    out[:, :, y0:y1, x0:x1] = images[perm, :, y0:y1, x0:x1]
    return out


def mix_targets(targets: torch.Tensor, p: CutMixParams | None) -> torch.Tensor:
    """Mix per-sample target distributions (B, C) like the images: lam * t + (1 - lam) * t[perm].

    Only for targets that were *not* computed on the mixed images (hard one-hot labels);
    the teacher's soft labels are taken on the mixed batch itself, as RDED does.
    """
    if p is None:
        return targets
    perm = p.perm.to(targets.device)
    return p.lam * targets + (1.0 - p.lam) * targets[perm]
