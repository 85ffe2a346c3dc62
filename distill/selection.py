"""Which patches of a class become its distilled images: the paper's quota rules, as pure
functions over a class's patches (supplementary §5, NOTES.md "Quotas").

With clusters ranked by median relevance, each of the top N clusters gives its patches
nearest the centroid first: ``tiles**2 * IPC // N`` of them when IPC <= ``concat_max_ipc``
(images are 2x2 tilings of four patches), else ``IPC // N``. The remaining slots are filled from
the unused patches by descending relevance. Without clusters (``cluster=none``) patches are
taken by relevance alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Patch:
    """One candidate: an id the caller understands, its relevance, its cluster (or -1)."""

    id: int
    score: float
    cluster: int = -1
    distance: float = 0.0


@dataclass(frozen=True)
class Pick:
    patch: Patch
    cluster_rank: int  # rank of the patch's cluster by median relevance; -1 without clusters
    note: str = ""  # "" (quota), "fill" (relevance fill) or "reused" (too few patches)


def patches_per_image(ipc: int, concat_max_ipc: int, tiles: int = 2) -> int:
    """Patches in one distilled image: tiles x tiles up to ``concat_max_ipc``, else one."""
    return tiles * tiles if ipc <= concat_max_ipc else 1


def patches_needed(ipc: int, concat_max_ipc: int, tiles: int = 2) -> int:
    return ipc * patches_per_image(ipc, concat_max_ipc, tiles)


def cluster_quota(ipc: int, n_clusters: int, concat_max_ipc: int, tiles: int = 2) -> int:
    """Patches each of the top clusters gives (paper: 4*IPC//N for IPC <= 10, else IPC//N)."""
    if n_clusters <= 0:
        return 0
    return patches_needed(ipc, concat_max_ipc, tiles) // n_clusters


def by_relevance(patches: list[Patch]) -> list[Patch]:
    """Descending relevance; ties by id, so the order never depends on input order."""
    return sorted(patches, key=lambda p: (-p.score, p.id))


def select_clustered(
    patches: list[Patch],
    ranked_clusters: list[int],
    top_clusters: int,
    ipc: int,
    concat_max_ipc: int = 10,
    tiles: int = 2,
) -> list[Pick]:
    """The paper's selection: quotas from the top clusters, then a relevance fill.

    Args:
        patches: the class's patches, each with its cluster and distance to its centroid.
        ranked_clusters: cluster ids, best median relevance first (see `distill.clustering`).
        top_clusters: N, clamped to the clusters that exist.
    """
    need = patches_needed(ipc, concat_max_ipc, tiles)
    top = ranked_clusters[: max(0, min(top_clusters, len(ranked_clusters)))]
    quota = cluster_quota(ipc, len(top), concat_max_ipc, tiles)
    rank_of = {c: r for r, c in enumerate(ranked_clusters)}
    members: dict[int, list[Patch]] = {c: [] for c in ranked_clusters}
    for p in patches:
        members.setdefault(p.cluster, []).append(p)
    picks: list[Pick] = []
    for c in top:
        nearest = sorted(members[c], key=lambda p: (p.distance, -p.score, p.id))
        picks.extend(Pick(p, rank_of[c]) for p in nearest[:quota])
    used = {pk.patch.id for pk in picks}
    for p in by_relevance([p for p in patches if p.id not in used]):
        if len(picks) >= need:
            break
        picks.append(Pick(p, rank_of.get(p.cluster, -1), "fill"))
    return reuse_to(picks[:need], need)


def select_by_relevance(
    patches: list[Patch], ipc: int, concat_max_ipc: int = 10, tiles: int = 2
) -> list[Pick]:
    """Ablation "w/o Cluster" (paper Table 5): the most relevant patches."""
    need = patches_needed(ipc, concat_max_ipc, tiles)
    return reuse_to([Pick(p, -1) for p in by_relevance(patches)[:need]], need)


def reuse_to(picks: list[Pick], need: int) -> list[Pick]:
    """Too few patches: repeat the picks in order (marked ``reused``) to keep IPC exact."""
    if not picks or len(picks) >= need:
        return picks
    out = list(picks)
    i = 0
    while len(out) < need:
        pk = picks[i % len(picks)]
        out.append(Pick(pk.patch, pk.cluster_rank, "reused"))
        i += 1
    return out
