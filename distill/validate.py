"""The whole distill config checked before the first stage runs, so a typo costs a second.

Every check names the key, the value it got and what would be valid, in one line, and runs
before any dataset is listed or model loaded. Values that used to be changed quietly
(``scoring.topk=0`` read as 1, ``cluster.top_clusters=0`` as no clustering,
``data.images_per_class=0`` as no limit) are errors here; the one convenience kept is a
scalar ``ipc=10``, the natural thing to type, read as ``[10]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from distill.data.images import DECODERS
from distill.errors import ConfigError

T_SAMPLING = ("iid", "stratified", "grid")
POOLS = ("mean", "max")
# Where a DIFT feature is cropped from (distill.dift): the patch (exact) or the image.
CROP_FROM = ("patch", "image_latent", "image_map")
ON_MISMATCH = ("error", "rebuild")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_at_least(node, key: str, prefix: str, low: int, hint: str = "", optional=False) -> None:
    """``prefix.key`` must be an integer >= ``low`` (or null when ``optional``)."""
    if node is None or key not in node:
        return
    v = node[key]
    if v is None and optional:
        return
    if not _is_int(v) or v < low:
        null = " or null" if optional else ""
        raise ConfigError(
            f"{prefix}.{key}={v!r}: must be an integer >= {low}{null}"
            + (f" ({hint})" if hint else "")
        )


def _one_of(node, key: str, prefix: str, allowed: tuple[str, ...]) -> None:
    if node is None or key not in node:
        return
    if node[key] not in allowed:
        raise ConfigError(f"{prefix}.{key}={node[key]!r}: must be one of {list(allowed)}")


def normalize_ipc(cfg: DictConfig) -> list[int]:
    """``cfg.ipc`` as a non-empty list of positive integers (a scalar becomes a list of one)."""
    raw = cfg.get("ipc")
    values = list(raw) if OmegaConf.is_list(raw) or isinstance(raw, (list, tuple)) else [raw]
    if not values:
        raise ConfigError("ipc=[]: give at least one images-per-class value, e.g. ipc=[10]")
    bad = [v for v in values if not _is_int(v) or v < 1]
    if bad:
        raise ConfigError(
            f"ipc={OmegaConf.to_container(raw) if OmegaConf.is_config(raw) else raw!r}: "
            f"images per class must be integers >= 1 (got {bad[0]!r}); e.g. ipc=10 or ipc=[1,10,50]"
        )
    if len(set(values)) != len(values):
        raise ConfigError(f"ipc={values}: a value is listed twice")
    return [int(v) for v in values]


def schedule_length(diffusion, cache_dir: str | None = None) -> int | None:
    """The model's number of training timesteps, read from its scheduler config without
    loading the model; None when it cannot be known yet (a hub id not in the cache)."""
    model = str(diffusion.get("model") or "")
    if model in ("tiny", "random-sd15"):
        from distill.diffusion.architectures import SD15_SCHEDULE

        return int(SD15_SCHEDULE["num_train_timesteps"])
    local = Path(os.path.expanduser(model))
    path = local / "scheduler" / "scheduler_config.json"
    if not path.is_file() and model.count("/") == 1 and not local.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(
                model, "scheduler/scheduler_config.json", revision=diffusion.get("revision")
            )
        except Exception:
            found = None
        path = Path(found) if isinstance(found, str) else path
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text())["num_train_timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_data(data) -> None:
    """Data settings whose zero or negative values used to mean something else."""
    per = data.get("images_per_class")
    if per is not None and not (OmegaConf.is_list(per) or isinstance(per, (list, tuple))):
        _int_at_least(data, "images_per_class", "data", 1, "null = every image")
    _int_at_least(data, "short_edge", "data", 1)
    _int_at_least(data, "min_side", "data", 1)
    _int_at_least(data, "max_pixels", "data", 1, "null = no limit", optional=True)
    _one_of(data, "decoder", "data", DECODERS)
    _int_at_least(data, "holdout_per_class", "data", 1, "null = none held out", optional=True)
    if data.get("val_split") == "holdout" and not data.get("holdout_per_class"):
        raise ConfigError(
            "data.val_split=holdout needs data.holdout_per_class: the items per class held "
            "out of data.split to validate on"
        )


def _workers(node, prefix: str) -> None:
    if node is None or node.get("num_workers") in (None, "auto"):
        return
    _int_at_least(node, "num_workers", prefix, 0, "or auto")


def check_scoring(scoring) -> None:
    p = "scoring"
    for key in ("num_draws", "batch_size", "unet_batch", "vae_batch", "shard_size", "stride"):
        _int_at_least(scoring, key, p, 1)
    _int_at_least(scoring, "topk", p, 1, "best patches kept per image")
    _int_at_least(scoring, "patch", p, 1, "null = the whole image", optional=True)
    _workers(scoring, p)
    _one_of(scoring, "t_sampling", p, T_SAMPLING)
    _one_of(scoring, "on_mismatch", p, ON_MISMATCH)
    tr = scoring.get("t_range")
    if tr is not None:
        vals = list(tr) if OmegaConf.is_list(tr) or isinstance(tr, (list, tuple)) else [tr]
        if (
            len(vals) != 2
            or not all(_is_number(v) for v in vals)
            or not 0 <= vals[0] <= vals[1] <= 1
        ):
            raise ConfigError(
                f"scoring.t_range={vals}: must be [t_min, t_max] with 0 <= t_min <= t_max <= 1 "
                "(fractions of the model's training steps)"
            )


def check_features(features, steps: int | None) -> None:
    p = "features"
    _one_of(features, "kind", p, ("dift", "clip"))
    keep = features.get("keep_shards", False)
    if not isinstance(keep, bool):
        raise ConfigError(f"features.keep_shards={keep!r} must be true or false")
    if features.get("kind", "dift") == "clip":
        for key in ("batch_size", "unet_batch", "shard_size"):
            _int_at_least(features, key, p, 1)
        return
    for key in ("ensemble", "batch_size", "unet_batch", "vae_batch", "shard_size"):
        _int_at_least(features, key, p, 1)
    _int_at_least(features, "up_ft_index", p, 0)
    _workers(features, p)
    _one_of(features, "pool", p, POOLS)
    _one_of(features, "crop_from", p, CROP_FROM)
    _one_of(features, "on_mismatch", p, ON_MISMATCH)
    t = features.get("timestep")
    if t is not None and (not _is_int(t) or t < 0 or (steps is not None and t >= steps)):
        rng = f"[0, {steps - 1}]" if steps is not None else ">= 0"
        raise ConfigError(
            f"features.timestep={t!r}: must be an integer timestep in {rng} of the model's "
            "schedule (the paper's 't = 1.60' is 160)"
        )


def check_cluster(cluster) -> None:
    p = "cluster"
    if cluster.get("kind", "kmeans") == "none":
        return
    _one_of(cluster, "kind", p, ("kmeans", "none"))
    _int_at_least(cluster, "num_centers", p, 1)
    _int_at_least(cluster, "top_clusters", p, 1, "for no clustering pass cluster=none")
    _int_at_least(cluster, "iterations", p, 1)


def check_assemble(assemble) -> None:
    p = "assemble"
    _int_at_least(assemble, "tiles", p, 1, "patches per side of a concatenated image; 1 = none")
    _int_at_least(assemble, "concat_max_ipc", p, 0)
    _int_at_least(assemble, "tile_min_size", p, 0)
    _int_at_least(assemble, "image_size", p, 1, "null = the patch size", optional=True)
    _int_at_least(assemble, "max_reuse", p, 1, "null = no limit", optional=True)


def check_config(cfg: DictConfig) -> DictConfig:
    """Check every section a distill run reads; returns ``cfg`` with ``ipc`` as a list.

    Raises `ConfigError` naming the first bad key. Only reads files that are cheap and local
    (the model's scheduler config), never loads a model or lists a dataset.
    """
    ipc = normalize_ipc(cfg)
    with open_dict(cfg):
        cfg.ipc = ipc
    if cfg.get("data") is not None:
        check_data(cfg.data)
    if cfg.get("scoring") is not None:
        check_scoring(cfg.scoring)
    if cfg.get("features") is not None:
        steps = schedule_length(cfg.diffusion) if cfg.get("diffusion") is not None else None
        check_features(cfg.features, steps)
    if cfg.get("cluster") is not None:
        check_cluster(cfg.cluster)
    if cfg.get("assemble") is not None:
        check_assemble(cfg.assemble)
    return cfg


def check_reuse(class_label: str, patches: int, need: int, max_reuse: int | None) -> None:
    """Refuse a set that would repeat each of a class's few patches many times.

    A class with fewer candidates than its set needs repeats them (marked ``reused``); at
    ``ipc=[100000]`` with 35 patches that was 300,000 duplicate files. Up to ``max_reuse``
    uses of each patch pass with a warning; beyond, the run stops here.
    """
    if max_reuse is None or need <= patches * max_reuse:
        return
    raise ConfigError(
        f"{class_label}: {need} patches needed but only {patches} candidates; each would be "
        f"used {need / max(patches, 1):.0f} times (assemble.max_reuse={max_reuse}). Lower ipc, "
        "score more images or patches per image (scoring.topk), or pass "
        "assemble.max_reuse=null to allow it"
    )


def check_candidates(source, ipcs: list[int], per_image: int, max_reuse: int | None) -> None:
    """Before any scoring: refuse an IPC that no class could fill within ``max_reuse``.

    A class's candidates are at most its images x ``per_image`` (``scoring.topk``), and a
    set needs at least ``ipc`` patches per class, so this never refuses a set the assembly
    would accept; the assembly checks the exact numbers.
    """
    top = max(ipcs)
    for c, n in zip(source.classes, source.counts(), strict=True):
        if n:
            check_reuse(f"class {c.index} ({c.name})", n * per_image, top, max_reuse)
