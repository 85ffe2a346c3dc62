"""Training augmentation on whole batches of tensors, on the training device.

RDED's student pipeline (`validation/main.py`) is ShufflePatches -> RandomResizedCrop ->
horizontal flip, per image on the CPU. Here the random parameters are drawn per image on the
CPU from a generator seeded by (seed, epoch, step, rank) and the pixels move once, batched:
one ``grid_sample`` does crop, resize and flip together, equal to torchvision's crop then
bilinear resize (tests/evaluate/test_augment.py checks it image by image). RDED resizes with
antialiasing, which only acts when shrinking: a student's crop never shrinks (distilled sets
are decoded at the input size), but a teacher's may (its 256-px squares cropped to 224), and
is then resized without it, a small departure from torchvision's reference recipe. A resumed
run draws the very same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentParams:
    """The random draws for one batch (all in input pixel units)."""

    col_perms: list[np.ndarray] | None  # ShufflePatches: strip order along the width
    row_perms: list[np.ndarray] | None  # ... and along the height
    boxes: np.ndarray  # (B, 4): top, left, height, width of each crop in the input
    flips: np.ndarray  # (B,) bool


class BatchAugment:
    """ShufflePatches + RandomResizedCrop (or pad-and-crop) + flip for a batch.

    Args:
        size: output side in pixels.
        scale: RandomResizedCrop area range as fractions of the input; null = no crop.
            RDED uses (1 / factor, 1): (0.5, 1) for 2x2-tiled ImageNet sets.
        ratio: aspect-ratio range of the crop (torchvision's default 3/4 .. 4/3).
        flip: probability of a horizontal flip.
        shuffle_patches: RDED's ShufflePatches factor: the image is cut into this many
            strips along each axis and the strips are shuffled (1 = off).
        pad: if > 0, a random translation by up to ``pad`` pixels with zero fill instead of
            RandomResizedCrop (the CIFAR "pad 4 and crop" of teacher training).
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] | None = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.5,
        shuffle_patches: int = 1,
        pad: int = 0,
    ):
        self.size = int(size)
        self.scale = tuple(scale) if scale is not None else None
        self.ratio = tuple(ratio)
        self.flip = float(flip)
        self.shuffle_patches = int(shuffle_patches)
        self.pad = int(pad)

    # ------------------------------------------------------------------ drawing

    def sample(self, batch: int, height: int, width: int, rng: np.random.Generator):
        """Draw one batch's parameters (cheap; CPU only)."""
        cols = rows = None
        if self.shuffle_patches > 1:
            cols = [rng.permutation(self.shuffle_patches) for _ in range(batch)]
            rows = [rng.permutation(self.shuffle_patches) for _ in range(batch)]
        if self.pad > 0:
            shift = rng.integers(-self.pad, self.pad + 1, size=(batch, 2))
            boxes = np.stack(
                [shift[:, 0], shift[:, 1], np.full(batch, height), np.full(batch, width)], 1
            )
        elif self.scale is not None:
            boxes = self._rrc_boxes(batch, height, width, rng)
        else:
            boxes = np.tile(np.array([0, 0, height, width]), (batch, 1))
        flips = rng.random(batch) < self.flip
        return AugmentParams(cols, rows, boxes.astype(np.float64), flips)

    def _rrc_boxes(self, batch: int, height: int, width: int, rng) -> np.ndarray:
        """torchvision's RandomResizedCrop.get_params, vectorised over the batch."""
        area = height * width
        tries = 10
        target = area * rng.uniform(self.scale[0], self.scale[1], size=(batch, tries))
        log_r = rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), (batch, tries))
        r = np.exp(log_r)
        w = np.round(np.sqrt(target * r))
        h = np.round(np.sqrt(target / r))
        ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
        u = rng.random((batch, tries, 2))
        boxes = np.zeros((batch, 4))
        for b in range(batch):
            hit = np.flatnonzero(ok[b])
            if hit.size:
                k = hit[0]
                top = np.floor(u[b, k, 0] * (height - h[b, k] + 1))
                left = np.floor(u[b, k, 1] * (width - w[b, k] + 1))
                boxes[b] = (top, left, h[b, k], w[b, k])
            else:  # torchvision's fallback: the central crop at the clamped aspect ratio
                in_ratio = width / height
                if in_ratio < self.ratio[0]:
                    cw, ch = width, round(width / self.ratio[0])
                elif in_ratio > self.ratio[1]:
                    ch, cw = height, round(height * self.ratio[1])
                else:
                    cw, ch = width, height
                boxes[b] = ((height - ch) // 2, (width - cw) // 2, ch, cw)
        return boxes

    # ------------------------------------------------------------------ applying

    def apply(self, x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        """Augment a float batch (B, C, H, W) into (B, C, size, size)."""
        if p.col_perms is not None:
            x = shuffle_strips(x, p.col_perms, dim=3)
            x = shuffle_strips(x, p.row_perms, dim=2)
        b, _, h, w = x.shape
        boxes = torch.as_tensor(p.boxes, dtype=torch.float32)
        top, left, bh, bw = boxes.unbind(1)
        sign = torch.where(torch.as_tensor(p.flips), -1.0, 1.0)
        # Affine map from output coordinates in [-1, 1] to the box in input coordinates
        # (align_corners=False: pixel edges at -1 and 1).
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = bw / w * sign
        theta[:, 0, 2] = (2 * left + bw) / w - 1
        theta[:, 1, 1] = bh / h
        theta[:, 1, 2] = (2 * top + bh) / h - 1
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, [b, x.shape[1], self.size, self.size], align_corners=False)
        if self.pad > 0:
            # Translations sit on pixel centres and fill the outside with zeros.
            return F.grid_sample(
                x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        # An upscaled crop's outer sample points reach half a pixel past its edge pixels'
        # centres. torchvision crops first and then resizes, so there they repeat the crop's
        # edge pixels; clamp each image's grid to its crop's outer pixel centres to match,
        # rather than blend in the pixels around the crop.
        lo_x, hi_x = (2 * left + 1) / w - 1, (2 * (left + bw) - 1) / w - 1
        lo_y, hi_y = (2 * top + 1) / h - 1, (2 * (top + bh) - 1) / h - 1
        lo = torch.stack([lo_x, lo_y], 1).to(grid).view(b, 1, 1, 2)
        hi = torch.stack([hi_x, hi_y], 1).to(grid).view(b, 1, 1, 2)
        grid = torch.maximum(torch.minimum(grid, hi), lo)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def shuffle_strips(x: torch.Tensor, perms: list[np.ndarray], dim: int) -> torch.Tensor:
    """Reorder equal strips of each image along ``dim`` (RDED's ShufflePatches, one axis).

    With ``f`` strips of ``n // f`` pixels the last strip keeps the remainder, as RDED's.
    """
    n = x.shape[dim]
    f = len(perms[0])
    step = n // f
    bounds = [(k * step, (k + 1) * step if k < f - 1 else n) for k in range(f)]
    index = torch.stack(
        [
            torch.cat([torch.arange(*bounds[k]) for k in perm])
            for perm in perms  # one index row per image
        ]
    ).to(x.device)
    shape = [x.shape[0], 1, 1, 1]
    shape[dim] = n
    index = index.view(shape).expand_as(x)
    return torch.gather(x, dim, index)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel; ``mean``/``std`` are (C,) tensors on x's device."""
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
