"""Distilled folders (classes checked against the evaluation's, errors naming both sides),
batch plans shared by ranks, and the protocol's sizes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from distill.data import ClassInfo
from distill.errors import DataError
from evaluate.data import EpochBatches, ShardBatches, load_distilled, resize_center_crop
from evaluate.protocol import input_size, val_resize
from tests.evaluate.conftest import CLASSES, compose_eval

CLS = [ClassInfo(i, k, k) for i, k in enumerate(CLASSES)]


def test_load_distilled_from_folder_or_run(folders):
    d = load_distilled(folders["run_a"] / "distilled" / "ipc2", CLS, 32)
    assert d.ipc == 2 and d.counts == [2, 2, 2] and d.run_dir == folders["run_a"]
    assert d.store.images.shape == (6, 3, 32, 32) and d.store.labels.tolist() == [0, 0, 1, 1, 2, 2]
    d1 = load_distilled(folders["run_a"], CLS, 16, ipc=1)
    assert d1.ipc == 1 and d1.store.images.shape == (3, 3, 16, 16)
    with pytest.raises(DataError, match=r"IPC \[1, 2\]: choose one with ipc=K"):
        load_distilled(folders["run_a"], CLS, 32)
    # The run's distilled/ folder itself (what materialise's out_dir holds) works the same.
    d3 = load_distilled(folders["run_a"] / "distilled", CLS, 16, ipc=1)
    assert d3.ipc == 1 and np.array_equal(d3.store.images, d1.store.images)
    with pytest.raises(DataError, match=r"IPC \[1, 2\]: choose one with ipc=K"):
        load_distilled(folders["run_a"] / "distilled", CLS, 32)
    # Labels follow the evaluation's class order, not the folder's.
    rev = [ClassInfo(i, c.key, c.name) for i, c in enumerate(reversed(CLS))]
    d2 = load_distilled(folders["run_a"] / "distilled" / "ipc2", rev, 32)
    assert d2.store.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(d2.store.images[0], d.store.images[4])  # triangle first now


def test_distilled_bad_input_names_both_sides(folders, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_distilled(tmp_path / "nope", CLS, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no class folders; expected.*ellipse_0"):
        load_distilled(tmp_path / "empty", CLS, 32, dataset_name="smoke")
    other = [*CLS[:2], ClassInfo(2, "beagle", "beagle")]
    with pytest.raises(DataError) as e:
        load_distilled(folders["run_a"] / "distilled" / "ipc2", other, 32, dataset_name="woof")
    msg = str(e.value)
    assert "triangle_2" in msg and "beagle" in msg and "data=woof" in msg
    assert "Only in the distilled set: [triangle_2]" in msg and "only in data=woof: [beagle]" in msg
    # A classes.csv that disagrees with the folders.
    bad = tmp_path / "run" / "distilled" / "ipc2"
    shutil.copytree(folders["run_a"] / "distilled" / "ipc2", bad)
    (tmp_path / "run" / "classes.csv").write_text("index,key,name\n0,a,a\n1,b,b\n2,c,c\n")
    with pytest.raises(DataError, match=r"classes.csv lists \[a, b, c\], data=smoke has"):
        load_distilled(bad, CLS, 32, dataset_name="smoke")
    # A class folder without images, and an undecodable image.
    (tmp_path / "run" / "classes.csv").unlink()
    for f in (bad / "ellipse_0").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"without images: \[ellipse_0\]"):
        load_distilled(bad, CLS, 32)
    (bad / "ellipse_0" / "0000.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot be decoded.*0000.png"):
        load_distilled(bad, CLS, 32)


def test_epoch_batches_shard_the_global_batch():
    single = EpochBatches(23, 8, seed=3)
    ranks = [EpochBatches(23, 8, seed=3, rank=r, world=3) for r in range(3)]
    for e in (0, 1):
        for s in (single, *ranks):
            s.set_epoch(e)
        full = list(single)
        assert len(full) == 3 and sorted(sum(full, [])) == list(range(23))
        for step, batches in enumerate(zip(*ranks, strict=True)):
            assert sum(batches, []) == full[step]
            assert max(map(len, batches)) - min(map(len, batches)) <= 1
            assert [r.batch(e, step) for r in ranks] == list(batches)
    single.set_epoch(0)
    first = list(single)
    single.set_epoch(1)
    assert list(single) != first  # reshuffled each epoch
    cyc = EpochBatches(23, 8, seed=3, cycle=2)
    assert cyc.batch(2, 0) == cyc.batch(0, 0) and cyc.batch(3, 1) == cyc.batch(1, 1)
    # 10 items, batch 4, 4 ranks: the last global batch (2 items) is topped up to 4.
    last = [EpochBatches(10, 4, seed=0, rank=r, world=4).batch(0, 2) for r in range(4)]
    assert all(len(b) == 1 for b in last)
    assert sum(last, [])[:2] == EpochBatches(10, 4, seed=0).batch(0, 2)
    with pytest.raises(DataError, match="smaller than the 4 devices"):
        EpochBatches(10, 3, seed=0, world=4)


def test_shard_batches_cover_every_item_once():
    got = [i for r in range(3) for b in ShardBatches(10, 2, r, 3) for i in b]
    assert sorted(got) == list(range(10))


def test_resize_center_crop_like_torchvision():
    from PIL import Image

    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    out = resize_center_crop(im, 256, 224)
    assert out.shape == (224, 224, 3) and out.flags.writeable
    import torchvision.transforms as T

    want = np.asarray(T.Compose([T.Resize(256), T.CenterCrop(224)])(im))
    assert np.abs(out.astype(int) - want.astype(int)).max() <= 1


def test_protocol_defaults():
    """Sizes as RDED's validation/main.py: input, and resize = input // 7 * 8 everywhere."""
    cfg = compose_eval(["data=imagewoof"])
    assert input_size(cfg) == 224 and val_resize(cfg) == 256
    cfg = compose_eval(["data=cifar10"])
    assert input_size(cfg) == 32 and val_resize(cfg) == 32
    cfg = compose_eval(["data=fashion_mnist"])
    assert input_size(cfg) == 32 and val_resize(cfg) == 32
    cfg = compose_eval(["data=tinyimagenet"])
    assert input_size(cfg) == 64 and val_resize(cfg) == 72  # RDED: Resize(72), CenterCrop(64)


def test_real_split_skips_and_records_broken_images(folders, tmp_path):
    """A truncated validation image (readable header, broken pixels) is left out, warned
    about and listed with its reason, as the data layer does for distillation."""
    from evaluate.data import RealData
    from tests.evaluate.conftest import tiny_overrides

    data = tmp_path / "data"
    shutil.copytree(folders["data"], data)
    victim = data / "val" / "rectangle_1" / "0003.png"
    victim.write_bytes(victim.read_bytes()[:60])
    real = RealData(compose_eval(tiny_overrides(data, tmp_path / "out")))
    assert len(real.val_set) == 3 * 8 - 1
    (rec,) = [r for r in real.skipped if r.stage == "decode"]
    assert rec.path == str(victim) and rec.class_index == 1 and rec.reason


def test_real_split_decodes_per_batch_when_over_the_cache(folders, tmp_path):
    """Over data_cache_gb, real splits are decoded per batch (loader workers), with the
    same pixels and labels as the in-memory path."""
    from evaluate.data import RealData, SourceDataset, StoreDataset
    from tests.evaluate.conftest import tiny_overrides

    over = tiny_overrides(folders["data"], tmp_path, data_cache_gb=0)
    streamed = RealData(compose_eval(over))
    cached = RealData(compose_eval([*over, "data_cache_gb=8"]))
    assert isinstance(streamed.val_set, SourceDataset) and isinstance(cached.val_set, StoreDataset)
    assert isinstance(streamed.train_set(), SourceDataset)
    idx = [0, 5, 23]
    a, b = streamed.val_set[idx], cached.val_set[idx]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
