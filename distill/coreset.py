"""Coreset baselines: real images chosen by herding or k-center greedy on a trained
classifier's penultimate features (the two standard coreset selections of the dataset
distillation literature; DC-Bench and DeepCore report both).

Both select whole real images (the centred largest square, as ``selector=random
selector.mode=image`` does), class by class, from the embeddings a ``teacher.pt`` of
``python -m evaluate mode=teacher`` gives them:

- **herding** (Welling 2009, as iCaRL uses it): greedily add the image that brings the mean
  of the chosen embeddings closest to the class mean.
- **k-center greedy** (Sener & Savarese 2018): start from the image nearest the class mean,
  then repeatedly add the image farthest from everything chosen so far.

Embeddings are used as the network gives them (no normalisation), the input of its last
linear layer. Ties go to the lower index, so a selection is a pure function of the images
and the checkpoint.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from distill.assembly import PatchRef, centre_square, crop_patch
from distill.errors import ConfigError
from distill.selection import patches_needed

log = logging.getLogger(__name__)

METHODS = ("herding", "kcenter")


def herding(features: np.ndarray, k: int) -> list[int]:
    """Indices of ``k`` rows chosen by herding, in the order chosen."""
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    k = min(k, n)
    mu = x.mean(axis=0)
    chosen: list[int] = []
    total = np.zeros_like(mu)
    free = np.ones(n, dtype=bool)
    for t in range(1, k + 1):
        # Mean after adding each candidate: (total + x_i) / t; pick the closest to mu.
        d = np.linalg.norm((total[None, :] + x) / t - mu[None, :], axis=1)
        d[~free] = np.inf
        i = int(np.argmin(d))
        chosen.append(i)
        free[i] = False
        total += x[i]
    return chosen


def kcenter_greedy(features: np.ndarray, k: int) -> list[int]:
    """Indices of ``k`` rows chosen by k-center greedy, in the order chosen."""
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    k = min(k, n)
    if k == 0:
        return []
    first = int(np.argmin(np.linalg.norm(x - x.mean(axis=0), axis=1)))
    chosen = [first]
    nearest = np.linalg.norm(x - x[first], axis=1)  # distance to the closest chosen point
    for _ in range(1, k):
        nearest[chosen] = -1.0
        i = int(np.argmax(nearest))
        chosen.append(i)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[i], axis=1))
    return chosen


def _head(model: torch.nn.Module) -> torch.nn.Linear:
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not heads:
        raise ConfigError(f"{type(model).__name__} has no linear head to take features before")
    return heads[-1]


@torch.no_grad()
def head_inputs(images, model, mean, std, batch: int = 256) -> np.ndarray:
    """Penultimate features (the input of the model's last linear layer) of RGB images that
    already have the model's input size, ``batch`` at a time. ``images``: a sequence (sliced
    one batch at a time) of PIL images or uint8 H x W x 3 arrays."""
    captured: list[torch.Tensor] = []
    hook = _head(model).register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    out = []
    try:
        for s in range(0, len(images), batch):
            arr = np.stack([np.asarray(im, dtype=np.float32) for im in images[s : s + batch]])
            x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 255.0
            captured.clear()
            model((x - mean) / std)
            out.append(captured[-1].flatten(1).double().numpy())
    finally:
        hook.remove()
    return np.concatenate(out) if out else np.zeros((0, 0))


class _CentreSquares:
    """Source items as their centre squares at ``size``, decoded one slice (batch) at a time."""

    def __init__(self, source, items: list[int], size: int):
        self.source, self.items, self.size = source, items, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, sl: slice) -> list:
        return [
            crop_patch(self.source.load(i), centre_square(*self.source.items[i].size), self.size)
            for i in self.items[sl]
        ]


def embed(source, items: list[int], model, size: int, mean, std, batch: int = 256) -> np.ndarray:
    """Penultimate features of whole images (their centre squares at the model's size)."""
    return head_inputs(_CentreSquares(source, items, size), model, mean, std, batch)


def coreset_refs(
    source,
    classes: list[dict],
    ipc: int,
    concat_max_ipc: int,
    tiles: int,
    checkpoint: str | None,
    method: str,
) -> dict:
    """Per distilled label, the images ``method`` picks (as `PatchRef`), in pick order."""
    from distill.teacher_selector import load_classifier

    if method not in METHODS:
        raise ConfigError(f"selector.kind={method!r}: coreset methods are {list(METHODS)}")
    if not checkpoint:
        raise ConfigError(f"selector={method} needs selector.checkpoint=PATH (a teacher.pt)")
    model, size, mean, std = load_classifier(checkpoint, [c.key for c in source.classes])
    pick = herding if method == "herding" else kcenter_greedy
    need = patches_needed(ipc, concat_max_ipc, tiles)
    by_class = source.indices_by_class()
    out = {}
    for c in classes:
        items = by_class.get(c["source_index"], [])
        if not items:
            out[c["index"]] = []
            continue
        order = [items[j] for j in pick(embed(source, items, model, size, mean, std), need)]
        refs = []
        for j in range(need):
            i = order[j % len(order)]
            box = centre_square(*source.items[i].size)
            note = "reused" if j >= len(order) else ""
            refs.append(PatchRef(i, source.items[i].source, box, None, -1, -1, note))
        if len(order) < need:
            log.warning("class %s: %d images for %d picks; reusing", c["name"], len(order), need)
        out[c["index"]] = refs
    return out
