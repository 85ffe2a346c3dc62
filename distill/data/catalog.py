"""Which loader reads which ``data.kind``, and the class order every source is built in:
`build_source` is the one door from a ``data`` config to a `Source`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from omegaconf import OmegaConf

from distill.data.classes import resolve_class_order
from distill.data.scenes import fashion_scenes_source
from distill.data.sources import (
    Source,
    cifar_source,
    fashion_mnist_source,
    folder_source,
    synthetic_source,
    tinyimagenet_source,
)
from distill.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_KINDS: dict[str, Callable[..., Source]] = {
    "imagenet": lambda cfg, split: folder_source(cfg, split, imagenet=True),
    "folder": lambda cfg, split: folder_source(cfg, split, imagenet=False),
    "tinyimagenet": tinyimagenet_source,
    "cifar10": lambda cfg, split: cifar_source(cfg, split, hundred=False),
    "cifar100": lambda cfg, split: cifar_source(cfg, split, hundred=True),
    "fashion_mnist": fashion_mnist_source,
    "fashion_scenes": fashion_scenes_source,
    "synthetic": synthetic_source,
}


def with_class_order(cfg):
    """``cfg`` with ``classes`` in the order ``data.class_order`` names, and that name."""
    orders = cfg.get("class_orders")
    if OmegaConf.is_config(orders):
        orders = OmegaConf.to_container(orders, resolve=True)
    listed = cfg.get("classes")
    if OmegaConf.is_config(listed):
        listed = OmegaConf.to_container(listed, resolve=True)
    keys, name = resolve_class_order(listed, cfg.get("class_order"), orders)
    if keys != listed:
        cfg = OmegaConf.create(
            OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        )
        cfg.classes = keys
    return cfg, name


def build_source(cfg, split: str | None = None) -> Source:
    """Build the source described by a ``data`` config.

    Args:
        cfg: the ``data`` config node (``kind``, ``root``, ``classes`` ...).
        split: which split; defaults to ``data.split``.
    """
    kind = cfg.get("kind")
    if kind not in _KINDS:
        raise ConfigError(f"data.kind={kind!r} is not one of {sorted(_KINDS)}")
    split = split if split is not None else cfg.get("split")
    cfg, order = with_class_order(cfg)
    src = _KINDS[kind](cfg, split)
    src.class_order = order
    if not src.items:
        raise DataError(
            f"{src.name}/{split}: no usable images (root={cfg.get('root')}); see the warnings above."
        )
    log.info(src.describe())
    return src
