"""Which loader reads which ``data.kind``, and the class order every source is built in:
`build_source` is the one door from a ``data`` config to a `Source`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from omegaconf import OmegaConf

from distill.data.classes import resolve_class_order
from distill.data.scenes import fashion_scenes_source
from distill.data.sources import (
    HOLDOUT_SPLIT,
    Source,
    cifar_source,
    fashion_mnist_source,
    folder_source,
    holdout_view,
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


# Sources built in this process, by data config and split: a run's stages (score, features,
# cluster, assemble) and evaluation's splits list the dataset once, not once per stage.
_BUILT: OrderedDict[str, tuple[Source, dict[str, int]]] = OrderedDict()
_KEEP = 4


def _folders_state(src: Source) -> dict[str, int]:
    """mtime_ns of every folder holding a listed or skipped file: a file added, removed or
    renamed in any of them changes its folder's time, and the cached listing is rebuilt."""
    # The set of distinct heads first: one dirname per folder, not per file (1.3M calls).
    heads = {it.path.rpartition(os.sep)[0] for it in src.items if it.path}
    heads |= {s.path.rpartition(os.sep)[0] for s in src.skipped if s.path}
    dirs = {os.path.dirname(h + os.sep + "x") for h in heads}
    if src.root:
        dirs.add(str(src.root))
    state = {}
    for d in sorted(dirs):
        try:
            state[d] = os.stat(d).st_mtime_ns
        except OSError:
            state[d] = -1
    return state


def _cache_key(cfg, split) -> str:
    data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    return json.dumps([data, split], sort_keys=True, default=str)


def clear_source_cache() -> None:
    _BUILT.clear()


# Kinds whose listing walks folders and reads headers (the others are arrays in memory).
_FILE_KINDS = ("imagenet", "folder", "tinyimagenet")
INDEX_VERSION = 1


def _index_path(index_dir, key: str):
    from pathlib import Path

    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(index_dir) / f"listing-{digest}.pkl"


def _file_stats(src: Source) -> np.ndarray:
    """(size, mtime_ns) of every listed file; -1 where a file cannot be stat'ed."""
    out = np.empty((len(src.items), 2), np.int64)
    for i, it in enumerate(src.items):
        try:
            st = os.stat(it.path)
            out[i] = (st.st_size, st.st_mtime_ns)
        except (OSError, TypeError):
            out[i] = (-1, -1)
    return out


def _load_index(path, key: str, root: str | None) -> tuple[Source, dict] | None:
    """The listing stored at ``path`` (and its folders' state) if it is of this config and
    nothing it lists changed.

    Checked: the config key, the dataset root's real path, the modification time of every
    folder holding a listed or skipped file (a file added, removed or renamed changes it)
    and the size and modification time of every listed file (an image edited in place).
    """
    try:
        with open(path, "rb") as f:
            saved = pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as e:  # a cut or garbled index is rebuilt, never trusted
        log.warning("listing index %s is unreadable (%s): listing again", path, e)
        return None
    if saved.get("version") != INDEX_VERSION or saved.get("key") != key:
        return None
    src = saved["source"]
    real = os.path.realpath(root) if root else None
    if saved.get("root") != real:
        return None
    state = _folders_state(src)
    if state != saved["folders"]:
        log.info("listing index %s: a folder changed; listing again", path.name)
        return None
    if not np.array_equal(_file_stats(src), saved["files"]):
        log.info("listing index %s: an image changed; listing again", path.name)
        return None
    return src, state


def _save_index(path, key: str, root: str | None, src: Source) -> None:
    from distill.io import atomic_path

    blob = {
        "version": INDEX_VERSION,
        "key": key,
        "root": os.path.realpath(root) if root else None,
        "folders": _folders_state(src),
        "files": _file_stats(src),
        "source": src,
    }
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(blob, f, protocol=pickle.HIGHEST_PROTOCOL)
    except OSError as e:  # a read-only bank still runs; it lists again next time
        log.warning("cannot write the listing index %s: %s", path, e)


def build_source(cfg, split: str | None = None, index_dir=None) -> Source:
    """Build the source described by a ``data`` config (once per process and config: a later
    call with the same config returns the same listing while none of its folders changed).

    Args:
        cfg: the ``data`` config node (``kind``, ``root``, ``classes`` ...).
        split: which split; defaults to ``data.split``.
        index_dir: where a listing of a folder dataset is kept between processes (the
            bank's ``listing/``): later stages, ranks and ``materialize`` read it instead
            of walking the folders and reading every header again (`_load_index` says
            what is checked first).
    """
    split = split if split is not None else cfg.get("split")
    key = _cache_key(cfg, split)
    hit = _BUILT.get(key)
    if hit is not None and _folders_state(hit[0]) == hit[1]:
        _BUILT.move_to_end(key)
        log.debug("reusing the listing of %s/%s", hit[0].name, split)
        return hit[0]
    src = state = None
    index = None
    if index_dir is not None and cfg.get("kind") in _FILE_KINDS:
        index = _index_path(index_dir, key)
        got = _load_index(index, key, cfg.get("root"))
        if got is not None:
            src, state = got
            log.info("%s (listing from %s)", src.describe(), index)
    if src is None:
        src = _build(cfg, split)
        if index is not None:
            _save_index(index, key, cfg.get("root"), src)
    _BUILT[key] = (src, state if state is not None else _folders_state(src))
    while len(_BUILT) > _KEEP:
        _BUILT.popitem(last=False)
    return src


def _build(cfg, split) -> Source:
    kind = cfg.get("kind")
    if kind not in _KINDS:
        raise ConfigError(f"data.kind={kind!r} is not one of {sorted(_KINDS)}")
    cfg, order = with_class_order(cfg)
    cfg, read_split = holdout_view(cfg, split)
    src = _KINDS[kind](cfg, read_split)
    src.class_order = order
    if split == HOLDOUT_SPLIT:
        src.split = HOLDOUT_SPLIT
    if not src.items:
        raise DataError(
            f"{src.name}/{split}: no usable images (root={cfg.get('root')}); see the warnings above."
        )
    log.info(src.describe())
    return src
