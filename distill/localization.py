"""How well Stage I finds the labelled object, where the object's box is known (scenes).

Two measures per image: the IoU of the selected patch with the object's box, and whether the
patch contains the object's centre. The baseline is a patch of the same size placed
uniformly at random, whose expected values are computed exactly by enumerating every
position rather than sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Box = tuple[float, float, float, float]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 for disjoint or empty ones."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def contains_centre(patch: Box, obj: Box) -> bool:
    """Does ``patch`` contain the centre of ``obj`` (boundary included)?"""
    cx, cy = (obj[0] + obj[2]) / 2, (obj[1] + obj[3]) / 2
    return patch[0] <= cx <= patch[2] and patch[1] <= cy <= patch[3]


def random_patch_expectation(
    obj: Box, width: int, height: int, patch: int, step: int = 1
) -> tuple[float, float]:
    """Expected IoU and centre-hit rate of a ``patch`` square placed uniformly at random
    (top-left on a ``step`` grid) inside a ``width`` x ``height`` image."""
    ious, hits = [], []
    for y in range(0, height - patch + 1, step):
        for x in range(0, width - patch + 1, step):
            p = (x, y, x + patch, y + patch)
            ious.append(box_iou(p, obj))
            hits.append(contains_centre(p, obj))
    return float(np.mean(ious)), float(np.mean(hits))


@dataclass(frozen=True)
class Localisation:
    images: int
    mean_iou: float
    centre_hit: float
    random_mean_iou: float
    random_centre_hit: float

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "mean_iou": self.mean_iou,
            "centre_hit": self.centre_hit,
            "random_mean_iou": self.random_mean_iou,
            "random_centre_hit": self.random_centre_hit,
        }


def localisation(
    records: list[dict], truth: dict[str, Box], patch: int, step: int = 1
) -> Localisation:
    """Stage I's best patch per image against the known object boxes (original pixels).

    Args:
        records: bank records (``source``, ``boxes`` best first, ``orig_size``).
        truth: the object's box per source id.
        patch: the patch side in original pixels (for the random baseline).
    """
    ious, hits, r_ious, r_hits = [], [], [], []
    for r in records:
        obj = truth[r["source"]]
        best = tuple(r["boxes"][0])
        ious.append(box_iou(best, obj))
        hits.append(contains_centre(best, obj))
        w, h = r["orig_size"]
        ri, rh = random_patch_expectation(obj, w, h, patch, step)
        r_ious.append(ri)
        r_hits.append(rh)
    return Localisation(
        len(records),
        float(np.mean(ious)),
        float(np.mean(hits)),
        float(np.mean(r_ious)),
        float(np.mean(r_hits)),
    )
