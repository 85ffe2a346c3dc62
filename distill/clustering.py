"""Stage II clustering: per-class faiss k-means of the patches' DIFT features (paper §3.3).

Clusters are ranked by the *median* relevance of their patches (descending) and patches
inside a cluster by distance to its centroid (nearest first). The result does not depend on
IPC, so it is computed once, stored in the bank (``clusters.json``) and reused by every IPC
and class subset.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from distill.bank import (
    config_hash,
    feature_rows,
    load_bank,
    load_features,
    mark_complete,
    prepare_stage,
    read_meta,
    releases_bank_locks,
)
from distill.errors import ConfigError, DataError
from distill.io import atomic_write_json
from distill.record_table import group_by_label, labels_of, patch_scores
from distill.runtime import is_launch_rank_zero
from distill.scoring.relevance import stable_seed

log = logging.getLogger(__name__)

CLUSTER_KEYS = ("num_centers", "iterations", "seed", "normalize")


def faiss_gpu_available() -> bool:  # pragma: no mutate block (an environment probe)
    try:
        import faiss

        return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    except ImportError:
        return False


def kmeans(
    x: np.ndarray, k: int, iterations: int, seed: int, use_gpu: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """faiss k-means: (centroids (k, d), assignment (n,), squared distance (n,)).

    ``k`` must not exceed the number of points (faiss raises); callers clamp it.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=iterations,
        seed=seed,
        gpu=use_gpu,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=1 << 20,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        km.train(x)
    dist, assign = km.index.search(x, 1)
    return km.centroids, assign[:, 0].astype(np.int64), dist[:, 0].astype(np.float64)


def cluster_class(
    x: np.ndarray,
    scores: np.ndarray,
    num_centers: int,
    iterations: int,
    seed: int,
    use_gpu: bool,
    normalize: bool = False,
) -> dict:
    """Cluster one class's patches and rank clusters by median relevance.

    Features are clustered as they are (the paper and DIFT do not normalise them);
    ``normalize`` L2-normalises them first, an ablation kept as ``cluster.normalize``.

    Returns ``num_centers`` (after clamping), per-patch ``cluster`` and ``distance``, and
    ``ranked`` (cluster ids, best median relevance first) with their ``median`` scores.
    """
    n = len(x)
    if n == 0:
        return {
            "num_centers": 0,
            "cluster": [],
            "distance": [],
            "ranked": [],
            "median": [],
            "clamped": num_centers > 0,
        }
    k = min(num_centers, n)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if k == n:  # every patch its own cluster; faiss would train on nothing
        assign, dist = np.arange(n), np.zeros(n)
    else:
        _, assign, dist = kmeans(x, k, iterations, seed, use_gpu)
    used = sorted(set(assign.tolist()))
    medians = {c: float(np.median(scores[assign == c])) for c in used}
    # Descending median relevance; ties by cluster id so the order is reproducible.
    ranked = sorted(used, key=lambda c: (-medians[c], c))
    return {
        "num_centers": k,
        "cluster": assign.tolist(),
        "distance": dist.tolist(),
        "ranked": ranked,
        "median": [medians[c] for c in ranked],
        "clamped": k < num_centers,
    }


def cluster_spec(cfg: DictConfig, meta: dict) -> dict:
    c = OmegaConf.to_container(cfg.cluster, resolve=True)
    return {
        "features_hash": meta["stages"]["features"]["hash"],
        "cluster": {k: c.get(k) for k in CLUSTER_KEYS},
    }


def uses_clusters(cfg: DictConfig, stage: str) -> bool:
    """Whether the run's selection needs DIFT clusters (``cluster=none`` and the baselines
    select without them); logs why a stage is skipped when not."""
    if cfg.cluster.get("kind") == "none" or cfg.selector.get("kind") != "diffusion":
        log.info(
            "%s: not needed (cluster=%s, selector=%s)",
            stage,
            cfg.cluster.get("kind"),
            cfg.selector.get("kind"),
        )
        return False
    return True


# The stage driver (bank I/O, wiring, log lines) is tested end to end by tests/test_stage2.py,
# too slow to run per mutant: `make mutation` leaves it out.
@releases_bank_locks
def run_cluster(cfg: DictConfig) -> None:  # pragma: no mutate block
    """Cluster every class of the bank (the ``cluster`` stage; rank 0 only, seconds)."""
    if not uses_clusters(cfg, "cluster"):
        return
    if not is_launch_rank_zero():
        return
    bank_dir = Path(cfg.paths.bank_dir)
    bank = load_bank(bank_dir)
    meta = read_meta(bank_dir)
    if "features" not in meta.get("stages", {}) or not meta["stages"]["features"].get("complete"):
        raise DataError(
            f"{bank_dir} has no complete features stage: put 'features' before 'cluster' in stages"
        )
    spec = cluster_spec(cfg, meta)
    # Clustering takes seconds: a changed config simply recomputes it.
    entry = prepare_stage(bank_dir, "cluster", spec, str(cfg.cluster.get("on_mismatch", "rebuild")))
    if entry.get("complete") and (bank_dir / "clusters.json").is_file():
        log.info(
            "bank %s already holds clusters (hash %s): reusing them", bank_dir, entry["hash"][:12]
        )
        return
    # Memory-mapped float16: each class's rows are read (and upcast) on their own.
    feats, owners = load_features(bank_dir, mmap=True)
    use_gpu = cfg.cluster.get("use_gpu", "auto")
    use_gpu = faiss_gpu_available() if use_gpu == "auto" else bool(use_gpu)
    if use_gpu and not faiss_gpu_available():
        raise ConfigError("cluster.use_gpu=true but faiss has no GPU (install a faiss-gpu wheel)")
    m = int(cfg.cluster.num_centers)
    # top_clusters is a selection setting; recorded so materialising later picks the same way.
    out = {
        "version": 1,
        "hash": config_hash(spec),
        "top_clusters": int(cfg.cluster.top_clusters),
        "classes": {},
    }
    own = np.asarray(owners, dtype=np.int64).reshape(-1, 2)
    by_class = group_by_label(labels_of(bank.records)[own[:, 0]])
    unknown = set(by_class) - {c["index"] for c in bank.classes}
    if unknown:
        raise DataError(f"{bank_dir}: features of labels {sorted(unknown)} outside its classes")
    all_scores = patch_scores(bank.records, own[:, 0], own[:, 1])
    for c in bank.classes:
        patches = by_class.get(c["index"], np.zeros(0, dtype=np.int64))
        scores = all_scores[patches]
        res = cluster_class(
            feature_rows(feats, patches),
            scores,
            m,
            int(cfg.cluster.iterations),
            stable_seed(int(cfg.cluster.seed), c["key"]) % (2**31),
            use_gpu,
            bool(cfg.cluster.get("normalize", False)),
        )
        if res["clamped"]:
            log.warning(
                "class %d (%s): %d patches for %d centres; using %d",
                c["index"],
                c["name"],
                len(patches),
                m,
                res["num_centers"],
            )
        res["patches"] = patches.tolist()
        out["classes"][str(c["index"])] = res
    atomic_write_json(bank_dir / "clusters.json", out)
    mark_complete(bank_dir, "cluster", use_gpu=use_gpu)
    log.info(
        "clusters: %d classes, %d centres each (faiss %s) -> %s",
        len(bank.classes),
        m,
        "GPU" if use_gpu else "CPU",
        bank_dir / "clusters.json",
    )
