"""The features merge streams one shard at a time into a memory-mapped float16 file and gives
exactly the bytes of the in-memory merge (issue 16, bounded memory)."""

import json

import numpy as np

from distill.bank import npz_shard_index, prepare_stage, shard_path, write_shard
from distill.dift import _merge_features, _merge_features_in_memory


class Bank:
    def __init__(self, n):
        self.records = [{"source": f"s{i}"} for i in range(n)]


def make_shards(bank, n_shards=3, per=4, dim=6, patches=2, fail=(5,)):
    entry = prepare_stage(bank, "features", {"x": 1})
    rng = np.random.default_rng(0)
    shards = []
    for s in range(n_shards):
        recs = []
        for i in range(s * per, (s + 1) * per):
            if i in fail:
                recs.append({"index": i, "error": "cannot reload"})
                continue
            for k in reversed(range(patches)):  # out of order inside a shard: sorted on merge
                recs.append(
                    {"index": i, "k": k, "feature": rng.normal(size=dim).astype(np.float32)}
                )
        write_shard(shard_path(bank, "features", s), recs, entry["hash"])
        shards.append(type("Shard", (), {"id": s})())
    return shards


def test_streaming_merge_equals_the_in_memory_merge(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for bank in (a, b):
        shards = make_shards(bank)
    _merge_features(a, Bank(12), shards)
    _merge_features_in_memory(b, Bank(12), shards)
    for name in ("features.npy", "feature_owners.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    feats, owners = np.load(a / "features.npy"), np.load(a / "feature_owners.npy")
    assert feats.dtype == np.float16 and feats.shape == (22, 6)  # 11 images x 2 patches
    assert [tuple(o) for o in owners[:3]] == [(0, 0), (0, 1), (1, 0)]
    meta = json.loads((a / "meta.json").read_text())["stages"]["features"]
    assert meta["complete"] and meta["num_patches"] == 22 and meta["num_failed"] == 1


def test_shards_are_float16_and_indexed_without_their_features(tmp_path):
    make_shards(tmp_path)
    header, index, k, failed, dim = npz_shard_index(shard_path(tmp_path, "features", 1))
    assert header["records"] == 7 and len(failed) == 1 and dim == 6 and len(index) == len(k) == 6
    assert failed == [{"index": 5, "error": "cannot reload"}]
    with np.load(shard_path(tmp_path, "features", 0)) as z:
        assert z["feature"].dtype == np.float16


def test_clustering_reads_the_features_memory_mapped(tmp_path):
    """load_features(mmap=True) is the float16 file itself; one class's rows upcast equal the
    in-memory float32 rows exactly, so clusters are unchanged."""
    from distill.bank import load_features

    shards = make_shards(tmp_path)
    _merge_features(tmp_path, Bank(12), shards)
    mapped, owners = load_features(tmp_path, mmap=True)
    full, owners2 = load_features(tmp_path)
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.float16
    assert full.dtype == np.float32 and np.array_equal(owners, owners2)
    rows = [1, 4, 7]
    assert np.array_equal(np.asarray(mapped[rows], dtype=np.float32), full[rows])
