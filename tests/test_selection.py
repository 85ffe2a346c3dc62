"""Stage II selection rules on hand-made banks, with exact expected picks."""

import logging

import numpy as np
import pytest

from distill.clustering import cluster_class
from distill.selection import (
    Patch,
    cluster_quota,
    patches_needed,
    reuse_to,
    select_by_relevance,
    select_clustered,
)


@pytest.mark.parametrize(
    "ipc,n,expect",
    [(1, 10, 0), (10, 10, 4), (50, 10, 5), (100, 10, 10), (20, 10, 2), (10, 3, 13), (5, 0, 0)],
)
def test_cluster_quota_paper_rule(ipc, n, expect):
    assert cluster_quota(ipc, n, concat_max_ipc=10) == expect


def test_patches_needed():
    assert patches_needed(1, 10) == 4 and patches_needed(10, 10) == 40
    assert patches_needed(20, 10) == 20 and patches_needed(100, 10) == 100


def bank():
    """Three clusters; cluster ids deliberately not in rank order."""
    ps = [
        # cluster 0: median score 0.5
        Patch(0, 0.4, 0, 0.3),
        Patch(1, 0.5, 0, 0.1),
        Patch(2, 0.9, 0, 0.2),
        # cluster 1: median score 0.1
        Patch(3, 0.1, 1, 0.5),
        Patch(4, 0.0, 1, 0.4),
        Patch(5, 0.95, 1, 0.9),
        # cluster 2: median score 0.7
        Patch(6, 0.7, 2, 0.2),
        Patch(7, 0.6, 2, 0.1),
        Patch(8, 0.8, 2, 0.3),
    ]
    return ps, [2, 0, 1]  # ranked by median relevance: 0.7, 0.5, 0.1


def ids(picks):
    return [p.patch.id for p in picks]


def test_concat_ipc_quota_then_fill():
    ps, ranked = bank()
    # IPC 1 -> 4 patches, N = 2 top clusters -> quota 2 each: nearest first in rank order.
    picks = select_clustered(ps, ranked, top_clusters=2, ipc=1)
    assert ids(picks) == [7, 6, 1, 2]
    assert [p.cluster_rank for p in picks] == [0, 0, 1, 1] and {p.note for p in picks} == {""}


def test_quota_zero_fills_by_relevance():
    ps, ranked = bank()
    # IPC 1 with N = 10 (clamped to the 3 clusters): quota 4 // 3 = 1 each, then 1 fill.
    picks = select_clustered(ps, ranked, top_clusters=10, ipc=1)
    assert ids(picks) == [7, 1, 4, 5]
    assert [p.note for p in picks] == ["", "", "", "fill"]
    assert picks[3].cluster_rank == 2  # a fill patch keeps its cluster's rank


def test_single_patch_ipc_quota():
    ps, ranked = bank()
    # IPC 20 > concat_max_ipc: need 20 patches, N = 2 -> quota 10: whole clusters, then fill,
    # then too few patches (9 exist): reused in order, marked.
    picks = select_clustered(ps, ranked, top_clusters=2, ipc=20)
    assert ids(picks)[:9] == [7, 6, 8, 1, 2, 0, 5, 3, 4]
    assert [p.note for p in picks[:9]] == [""] * 6 + ["fill"] * 3
    assert len(picks) == 20 and [p.note for p in picks[9:]] == ["reused"] * 11
    assert ids(picks[9:12]) == [7, 6, 8]


def test_single_patch_ipc_exact():
    ps, ranked = bank()
    picks = select_clustered(ps, ranked, top_clusters=3, ipc=11, concat_max_ipc=10)
    # need 11 > 9 patches; quota 11 // 3 = 3: all clusters whole in rank order, then reuse.
    assert ids(picks)[:9] == [7, 6, 8, 1, 2, 0, 4, 3, 5]


def test_select_by_relevance_and_ties():
    ps = [Patch(3, 0.5), Patch(1, 0.9), Patch(2, 0.5), Patch(0, 0.1)]
    picks = select_by_relevance(ps, ipc=1)  # 4 patches
    assert ids(picks) == [1, 2, 3, 0] and all(p.cluster_rank == -1 for p in picks)


def test_reuse_to_empty_stays_empty():
    assert reuse_to([], 4) == []


def test_cluster_class_separated_blobs_and_median_ranking():
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.1, (5, 3)) for c in centres]).astype(np.float32)
    scores = np.concatenate([np.full(5, 0.2), np.full(5, 0.9), np.full(5, 0.5)])
    res = cluster_class(x, scores, num_centers=3, iterations=20, seed=1, use_gpu=False)
    assign = np.array(res["cluster"])
    for b in range(3):  # each blob is one cluster
        assert len(set(assign[5 * b : 5 * b + 5])) == 1
    blob_cluster = [assign[0], assign[5], assign[10]]
    assert res["ranked"] == [blob_cluster[1], blob_cluster[2], blob_cluster[0]]
    assert res["median"] == pytest.approx([0.9, 0.5, 0.2])
    assert not res["clamped"]


def test_clusters_ranked_by_median_not_mean():
    """Paper §3.3: clusters rank by the *median* relevance of their patches. Blob A has one
    outlier that lifts its mean above blob B's while its median stays below."""
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0, 0], [0, 10.0, 0]])
    x = np.concatenate([c + rng.normal(0, 0.1, (5, 3)) for c in centres]).astype(np.float32)
    a = np.array([0.1, 0.1, 0.2, 0.2, 5.0])  # median 0.2, mean 1.12
    b = np.array([0.5, 0.5, 0.6, 0.6, 0.6])  # median 0.6, mean 0.56
    res = cluster_class(x, np.concatenate([a, b]), 2, 20, 1, False)
    ca, cb = res["cluster"][0], res["cluster"][5]
    assert ca != cb and res["ranked"] == [cb, ca]
    assert res["median"] == pytest.approx([0.6, 0.2])


def test_cluster_class_clamps_centres():
    x = np.eye(3, dtype=np.float32)
    res = cluster_class(
        x, np.array([0.1, 0.3, 0.2]), num_centers=32, iterations=5, seed=0, use_gpu=False
    )
    assert res["clamped"] and res["num_centers"] == 3
    assert res["ranked"] == [1, 2, 0]  # each patch its own cluster, by relevance
    res = cluster_class(np.zeros((0, 3), np.float32), np.zeros(0), 32, 5, 0, False)
    assert res["num_centers"] == 0 and res["ranked"] == []


def test_cluster_spec_hashes_the_settings_that_change_clusters(caplog):
    """The cluster stage's hash covers its features' hash and every setting that moves a
    cluster (centres, iterations, seed, normalisation), not top_clusters (a selection
    setting, read at assembly)."""
    from omegaconf import OmegaConf

    from distill.clustering import cluster_spec, uses_clusters

    cfg = OmegaConf.create(
        {
            "seed": 3,
            "cluster": {"kind": "kmeans", "num_centers": 32, "iterations": 20, "seed": "${seed}",
                        "normalize": False, "top_clusters": 10, "use_gpu": "auto"},
            "selector": {"kind": "diffusion"},
        }
    )  # fmt: skip
    meta = {"stages": {"features": {"hash": "abc"}}}
    spec = cluster_spec(cfg, meta)
    assert spec == {
        "features_hash": "abc",
        "cluster": {"num_centers": 32, "iterations": 20, "seed": 3, "normalize": False},
    }
    assert uses_clusters(cfg, "cluster")
    with caplog.at_level(logging.INFO, logger="distill.clustering"):
        assert not uses_clusters(OmegaConf.merge(cfg, {"cluster": {"kind": "none"}}), "cluster")
        assert not uses_clusters(OmegaConf.merge(cfg, {"selector": {"kind": "random"}}), "dift")
    assert caplog.messages == [
        "cluster: not needed (cluster=none, selector=diffusion)",
        "dift: not needed (cluster=kmeans, selector=random)",
    ]


def test_quota_rules_at_their_edges():
    """One cluster takes the whole quota; 3x3 tiles need nine patches per image; the defaults
    are the paper's (2x2 tiles up to IPC 10)."""
    from distill.selection import patches_per_image

    assert cluster_quota(10, 1, concat_max_ipc=10) == 40 and cluster_quota(10, 0, 10) == 0
    assert patches_per_image(1, 10) == 4 and patches_per_image(11, 10) == 1
    assert patches_needed(1, 10, tiles=3) == 9 and cluster_quota(1, 3, 10, tiles=3) == 3
    ps = [Patch(i, float(i), i % 3, 0.0) for i in range(30)]
    picks = select_clustered(ps, [0, 1, 2], top_clusters=3, ipc=1, tiles=3)
    assert len(picks) == 9 and all(pk.note == "" for pk in picks)  # 3 from each cluster
    assert len(select_clustered(ps, [0, 1, 2], 3, ipc=11)) == 11  # default concat_max_ipc 10
    assert len(select_by_relevance(ps, ipc=11)) == 11 and len(select_by_relevance(ps, 1)) == 4
    assert len(select_by_relevance(ps, ipc=1, tiles=3)) == 9


def test_selection_tie_breaks_and_strays():
    """Inside a cluster, equal distances go to the more relevant patch; a patch of a cluster
    that is not ranked (e.g. -1) can still fill, with cluster rank -1; top_clusters=0 is a
    pure relevance fill; reused picks keep their cluster rank."""
    ps = [Patch(0, 0.2, 0, 0.5), Patch(1, 0.9, 0, 0.5), Patch(2, 0.1, 0, 0.9), Patch(3, 5.0, -1)]
    q = select_clustered(ps, [0], top_clusters=1, ipc=1, concat_max_ipc=10)
    assert [pk.patch.id for pk in q] == [1, 0, 2, 3]  # quota 4: cluster 0 by distance, tie -> 0.9
    assert [pk.cluster_rank for pk in q] == [0, 0, 0, -1] and q[3].note == "fill"
    none = select_clustered(ps, [0], top_clusters=0, ipc=1, concat_max_ipc=10)
    assert [pk.patch.id for pk in none] == [3, 1, 0, 2] and {pk.note for pk in none} == {"fill"}
    few = select_clustered(ps[:2], [0], top_clusters=1, ipc=1, concat_max_ipc=10)
    assert [(pk.patch.id, pk.cluster_rank, pk.note) for pk in few] == [
        (1, 0, ""), (0, 0, ""), (1, 0, "reused"), (0, 0, "reused"),
    ]  # fmt: skip
