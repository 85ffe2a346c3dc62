"""The evaluation protocol's dataset-dependent defaults: input and validation sizes, RDED's
batch-size rule, the ShufflePatches factor and input statistics. Every ``null`` in
conf/evaluate/evaluate.yaml that means "as the protocol says" is resolved here, in one place.
"""

from __future__ import annotations

from distill.errors import ConfigError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Native input side of the low-resolution datasets (RDED's argument.py; Fashion-MNIST's 28 px
# become 32 so ConvNet-3's three poolings divide evenly, as RDED's ConvNet does for 28 px).
_LOW_RES = {"cifar10": 32, "cifar100": 32, "tinyimagenet": 64, "fashion_mnist": 32}


def is_low_res(data_cfg) -> bool:
    return str(data_cfg.get("kind")) in _LOW_RES


def input_size(cfg) -> int:
    """Side the networks see: ``input.size``, else 224 (ImageNet family and folders) or the
    dataset's native size."""
    if cfg.input.get("size"):
        return int(cfg.input.size)
    return _LOW_RES.get(str(cfg.data.get("kind")), 224)


def val_resize(cfg) -> int:
    """Validation resize of the short edge before the centre crop: ``size * 8 / 7`` (256 for
    224, RDED's ``input_size // 7 * 8``) for the ImageNet family, the size itself for
    low-resolution sets (NOTES.md: native size)."""
    if cfg.input.get("val_resize"):
        return int(cfg.input.val_resize)
    size = input_size(cfg)
    return size if is_low_res(cfg.data) else size // 7 * 8


def rded_batch_size(ipc: int, num_classes: int, n_images: int) -> int:
    """RDED's student batch (argument.py): 50 up to IPC 10, 100 above; doubled for 100 or
    more classes; never more than the distilled set holds."""
    batch = 50 if ipc <= 10 else 100
    if num_classes >= 100:
        batch *= 2
    return max(1, min(batch, n_images))


def shuffle_factor(cfg, ipc: int, size: int) -> int:
    """RDED's ShufflePatches factor: its 2x2-tiled ImageNet images are shuffled by quadrant
    (factor 2). Our sets are tiled up to IPC 10 only (paper §3.4); single patches above, and
    low-resolution images, are never cut (factor 1, RDED's CIFAR setting)."""
    if cfg.aug.get("shuffle_patches") is not None:
        return int(cfg.aug.shuffle_patches)
    return 2 if ipc <= 10 and size >= 128 else 1


def stats(node, fallback: tuple[list[float], list[float]] | None = None):
    """(mean, std) from a ``normalize: {mean, std}`` node; null -> ``fallback`` or ImageNet's
    statistics (RDED normalises every dataset with them)."""
    if node is None:
        return fallback or (list(IMAGENET_MEAN), list(IMAGENET_STD))
    mean, std = [float(x) for x in node.mean], [float(x) for x in node.std]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"normalize needs 3 means and 3 positive stds, got {mean} / {std}")
    return mean, std
