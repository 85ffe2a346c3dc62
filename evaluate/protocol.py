"""The evaluation protocol's dataset-dependent defaults: input and validation sizes, RDED's
batch-size rule, its augmentation factor (ShufflePatches and crop scale) and input statistics.
Every ``null`` in conf/evaluate/evaluate.yaml that means "as the protocol says" is resolved
here, in one place, from plain values.
"""

from __future__ import annotations

import logging
import math

from distill.errors import ConfigError

log = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Native input side of the low-resolution datasets (RDED's argument.py; Fashion-MNIST's 28 px
# become 32 so ConvNet-3's three poolings divide evenly, as RDED's ConvNet does for 28 px).
_LOW_RES = {"cifar10": 32, "cifar100": 32, "tinyimagenet": 64, "fashion_mnist": 32}


def input_size(cfg) -> int:
    """Side the networks see: ``input.size``, else 224 (ImageNet family and folders) or the
    dataset's native size."""
    if cfg.input.get("size"):
        return int(cfg.input.size)
    return _LOW_RES.get(str(cfg.data.get("kind")), 224)


def val_resize(cfg) -> int:
    """Validation resize of the short edge before the centre crop: ``input.val_resize``, else
    RDED's ``input_size // 7 * 8`` for every dataset (validation/main.py): 256 for 224, 72
    for Tiny-ImageNet's 64 (then a 64-px centre crop), 32 for CIFAR's 32 (a no-op)."""
    if cfg.input.get("val_resize"):
        return int(cfg.input.val_resize)
    return input_size(cfg) // 7 * 8


def rded_batch_size(ipc: int, num_classes: int, n_images: int, dataset: str = "") -> int:
    """RDED's student batch (argument.py): 10 at IPC 1, 50 at IPC 10, 100 at IPC 50, doubled
    for 100 or more classes, 100 for Tiny-ImageNet at every IPC; never more than the set holds.

    RDED defines IPC 1, 10 and 50 only: IPC 2-10 take IPC 10's batch, IPC above 10 take 50's.
    Its CIFAR-100 ConvNet-3 special case (batch 25, lr 2e-3) lives in the cifar100 presets.
    """
    if dataset == "tinyimagenet":
        batch = 100
    else:
        batch = 10 if ipc <= 1 else 50 if ipc <= 10 else 100
        if num_classes >= 100:
            batch *= 2
    return max(1, min(batch, n_images))


def rded_factor(factor: int | None, tiles: int | None, ipc: int, size: int) -> int:
    """RDED's ``factor``, the one number that couples its assembly to its augmentation.

    RDED tiles ``factor x factor`` patches per image and trains students with
    ShufflePatches(factor) and RandomResizedCrop scale (1 / factor, 1) (validation/main.py):
    factor 2 for its ImageNet sets, 1 at low resolution. Here the factor follows how the set
    was assembled (``tiles`` from its set.json or manifest): 2 for the paper's 2x2-tiled sets
    (IPC <= 10 at high resolution), 1 for single-patch sets (IPC >= 20) and low resolution.
    ``aug.factor`` overrides it (e.g. ``aug.factor=2``: RDED's ImageNet augmentation on
    single patches too). A folder that does not record its assembly gets the paper's rule.
    """
    if factor is not None:
        return int(factor)
    if tiles is not None:
        return int(tiles)
    guess = 2 if ipc <= 10 and size >= 128 else 1
    log.warning(
        "the distilled folder records no assembly (no set.json or manifest.csv): assuming "
        "factor %d (the paper's rule for IPC %d at %d px); set aug.factor to be sure",
        guess,
        ipc,
        size,
    )
    return guess


def best_window_start(epochs: int, best_after: float) -> int:
    """Fewest completed epochs whose validation counts towards ``acc_best``.

    RDED (validation/main.py) validates after 0-based epoch ``e`` when ``e % 10 == 9`` or at
    the end, and keeps the best only where ``e > best_after * epochs``: with 300 epochs the
    validations after 250, 260, ..., 300 completed epochs count, the one after 240 does not.
    Completed epochs are ``e + 1``, hence ``floor(best_after * epochs) + 2``.
    """
    return math.floor(float(best_after) * int(epochs)) + 2


def crop_scale(scale, factor: int) -> tuple[float, float] | None:
    """RandomResizedCrop area range: ``aug.scale``, else RDED's (1 / factor, 1)."""
    if scale is not None:
        return (float(scale[0]), float(scale[1]))
    return (1.0 / factor, 1.0)


def shuffle_factor(shuffle_patches: int | None, factor: int) -> int:
    """ShufflePatches strips per side: ``aug.shuffle_patches``, else RDED's factor."""
    return int(shuffle_patches) if shuffle_patches is not None else int(factor)


def stats(node, fallback: tuple[list[float], list[float]] | None = None):
    """(mean, std) from a ``normalize: {mean, std}`` node; null -> ``fallback`` or ImageNet's
    statistics (RDED normalises every dataset with them)."""
    if node is None:
        return fallback or (list(IMAGENET_MEAN), list(IMAGENET_STD))
    mean, std = [float(x) for x in node.mean], [float(x) for x in node.std]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"normalize needs 3 means and 3 positive stds, got {mean} / {std}")
    return mean, std
