"""The data layer on generated dataset trees: formats, class order, subsampling, bad input."""

import gzip
import io
import pickle
import struct

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from distill.data import ResizedImages, build_source, collate_images, write_skipped_csv
from distill.data.records import read_skipped_csv
from distill.errors import ConfigError, DataError
from tests.conftest import FASHION_DEBIAN, random_rgb, save_image

WOOF = ["n02086240", "n02087394", "n02088364"]


def data_cfg(**kw):
    base = dict(
        name="t",
        kind="imagenet",
        root=None,
        split="train",
        classes=None,
        class_names=None,
        class_names_file=None,
        class_name_style="name",
        images_per_class=None,
        subsample_seed=0,
        short_edge=64,
        min_side=16,
        strict_classes=True,
    )
    base.update(kw)
    return OmegaConf.create(base)


def make_tree(root, classes, n=3, size=(40, 30), split="train"):
    for ci, c in enumerate(classes):
        for j in range(n):
            save_image(
                root / split / c / f"{c}_{j}.JPEG",
                random_rgb(size[1], size[0], 10 * ci + j),
                format="JPEG",
            )
    return root


# ----------------------------------------------------------------------- class order and names


def test_imagenet_loader_class_order_follows_config(tmp_path):
    make_tree(tmp_path, WOOF)
    order = [WOOF[2], WOOF[0], WOOF[1]]
    src = build_source(data_cfg(root=str(tmp_path), classes=order))
    assert [c.key for c in src.classes] == order
    assert [c.name for c in src.classes] == ["beagle", "Shih-Tzu", "Rhodesian ridgeback"]
    for it in src.items:
        assert it.source.split("/")[0] == order[it.label]
    assert src.counts() == [3, 3, 3]
    assert src.items[0].size == (40, 30)


def test_imagenet_clip_names_and_explicit_names(tmp_path):
    make_tree(tmp_path, WOOF[:1])
    src = build_source(data_cfg(root=str(tmp_path), classes=WOOF[:1], class_name_style="clip_name"))
    assert src.classes[0].name == "Shih Tzu"
    src = build_source(data_cfg(root=str(tmp_path), classes=WOOF[:1], class_names=["small dog"]))
    assert src.classes[0].name == "small dog"


def test_folder_loader_names_from_folders_and_names_file(tmp_path):
    make_tree(tmp_path, ["golden_retriever", "cat"], split="")
    src = build_source(data_cfg(kind="folder", root=str(tmp_path), split=None))
    assert [c.key for c in src.classes] == ["cat", "golden_retriever"]  # sorted folders
    assert [c.name for c in src.classes] == ["cat", "golden retriever"]
    names = tmp_path / "names.txt"
    names.write_text("cat\tdomestic cat\ngolden_retriever\tgolden retriever dog\n")
    src = build_source(
        data_cfg(kind="folder", root=str(tmp_path), split=None, class_names_file=str(names))
    )
    assert [c.name for c in src.classes] == ["domestic cat", "golden retriever dog"]


# ----------------------------------------------------------------------- subsampling


def test_images_per_class_is_seeded_and_stable(tmp_path):
    make_tree(tmp_path, WOOF[:2], n=10)
    pick = lambda seed: [
        it.source
        for it in build_source(
            data_cfg(root=str(tmp_path), classes=WOOF[:2], images_per_class=4, subsample_seed=seed)
        ).items
    ]
    a, b, c = pick(0), pick(0), pick(1)
    assert a == b and a != c
    assert len(a) == 8
    # Sources stay sorted within a class, whatever the sample.
    assert a[:4] == sorted(a[:4])


# ----------------------------------------------------------------------- bad input


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        build_source(data_cfg(root=str(tmp_path / "nope"), classes=WOOF))
    with pytest.raises(DataError, match="data.root is not set"):
        build_source(data_cfg(root=None, classes=WOOF))


def test_listed_wnid_without_folder(tmp_path):
    make_tree(tmp_path, WOOF[:2])
    with pytest.raises(DataError, match=WOOF[2]):
        build_source(data_cfg(root=str(tmp_path), classes=WOOF))
    src = build_source(data_cfg(root=str(tmp_path), classes=WOOF, strict_classes=False))
    assert len(src.classes) == 3, "class indices must not shift when one is missing"
    assert src.counts() == [3, 3, 0]
    assert [(s.source, s.reason) for s in src.skipped] == [(WOOF[2], "class folder missing")]


def test_empty_class_folder(tmp_path):
    make_tree(tmp_path, WOOF[:2])
    (tmp_path / "train" / WOOF[2]).mkdir()
    with pytest.raises(DataError, match="no usable images"):
        build_source(data_cfg(root=str(tmp_path), classes=WOOF))
    src = build_source(data_cfg(root=str(tmp_path), classes=WOOF, strict_classes=False))
    assert any(s.class_index == 2 and "no usable" in s.reason for s in src.skipped)


def test_bad_files_are_skipped_and_listed(tmp_path):
    make_tree(tmp_path, WOOF[:1], n=2)
    d = tmp_path / "train" / WOOF[0]
    (d / "zero.JPEG").write_bytes(b"")
    (d / "garbage.JPEG").write_bytes(b"<html>not an image</html>" * 20)
    (d / "notes.txt").write_text("hello")
    save_image(d / "tiny.png", random_rgb(8, 8))
    buf = io.BytesIO()
    Image.fromarray(random_rgb(64, 64)).save(buf, "JPEG")
    (d / "trunc.JPEG").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    # Convertible oddities must be kept.
    cmyk = np.zeros((20, 20, 4), np.uint8)
    Image.fromarray(cmyk, "CMYK").save(d / "cmyk.JPEG")
    save_image(d / "gray.png", np.zeros((20, 20), np.uint8), "L")
    rgba = np.zeros((20, 20, 4), np.uint8)
    save_image(d / "alpha.png", rgba, "RGBA")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(d / "deep.png")

    src = build_source(data_cfg(root=str(tmp_path), classes=WOOF[:1]))
    reasons = {s.source.split("/")[-1]: s.reason for s in src.skipped}
    assert set(reasons) == {"zero.JPEG", "garbage.JPEG", "notes.txt", "tiny.png"}
    assert "0 bytes" in reasons["zero.JPEG"]
    assert "extension" in reasons["notes.txt"]
    assert "too small" in reasons["tiny.png"]
    kept = sorted(it.source.split("/")[-1] for it in src.items)
    assert kept == sorted(
        [
            f"{WOOF[0]}_0.JPEG",
            f"{WOOF[0]}_1.JPEG",
            "trunc.JPEG",
            "cmyk.JPEG",
            "gray.png",
            "alpha.png",
            "deep.png",
        ]
    )
    # The truncated file passes the header scan and fails at decode, with a reason.
    ds = ResizedImages(src, short_edge=64)
    by_name = {src.items[i].source.split("/")[-1]: ds[i] for i in range(len(ds))}
    assert "error" in by_name["trunc.JPEG"]
    for name in ("cmyk.JPEG", "gray.png", "alpha.png", "deep.png"):
        assert by_name[name]["pixels"].shape == (3, 64, 64), name
    # And everything round-trips through skipped.csv.
    write_skipped_csv(src.skipped, tmp_path / "skipped.csv")
    back = read_skipped_csv(tmp_path / "skipped.csv")
    assert {r.source for r in back} == {s.source for s in src.skipped}


def test_image_smaller_than_patch_is_upsampled(tmp_path):
    save_image(tmp_path / "train" / WOOF[0] / "small.png", random_rgb(20, 30))
    src = build_source(data_cfg(root=str(tmp_path), classes=WOOF[:1]))
    item = ResizedImages(src, short_edge=256)[0]
    assert item["pixels"].shape == (3, 256, 384)
    assert item["orig_size"] == (30, 20)


def test_unknown_kind_and_bad_wnid(tmp_path):
    with pytest.raises(ConfigError, match="data.kind"):
        build_source(data_cfg(kind="imagenet2"))
    make_tree(tmp_path, ["dogs"])
    with pytest.raises(ConfigError, match="WordNet"):
        build_source(data_cfg(root=str(tmp_path), classes=["dogs"]))


# ----------------------------------------------------------------------- array formats


def test_cifar10_and_100_pickles(tmp_path):
    rng = np.random.default_rng(0)
    d10 = tmp_path / "cifar-10-batches-py"
    d10.mkdir()
    imgs = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    flat = imgs.transpose(0, 3, 1, 2).reshape(6, -1)  # CIFAR stores planes: R, G, B
    for i in range(1, 6):
        with open(d10 / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": flat, b"labels": [0, 1, 2, 0, 1, 2]}, f)
    with open(d10 / "test_batch", "wb") as f:
        pickle.dump({b"data": flat[:3], b"labels": [2, 1, 0]}, f)
    with open(d10 / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird"]}, f)
    cfg = data_cfg(kind="cifar10", root=str(tmp_path), min_side=8)
    src = build_source(cfg)
    assert len(src) == 30 and [c.key for c in src.classes] == ["airplane", "automobile", "bird"]
    assert np.array_equal(np.asarray(src.load(0)), imgs[0])
    test = build_source(cfg, split="test")
    assert [it.label for it in test.items] == [2, 1, 0]
    sub = build_source(data_cfg(kind="cifar10", root=str(tmp_path), classes=["bird", "airplane"]))
    assert [c.key for c in sub.classes] == ["bird", "airplane"]
    assert sub.counts() == [10, 10]
    assert np.array_equal(np.asarray(sub.load(0)), imgs[0]) and sub.items[0].label == 1

    d100 = tmp_path / "c100" / "cifar-100-python"
    d100.mkdir(parents=True)
    with open(d100 / "train", "wb") as f:
        pickle.dump({b"data": flat, b"fine_labels": [0, 1, 1, 0, 1, 1]}, f)
    with open(d100 / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"maple_tree", b"apple"]}, f)
    src = build_source(data_cfg(kind="cifar100", root=str(tmp_path / "c100")))
    assert [c.name for c in src.classes] == ["maple tree", "apple"] and src.counts() == [2, 4]


def write_idx(path, arr):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_idx(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = np.arange(20) % 10
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    src = build_source(data_cfg(kind="fashion_mnist", root=str(tmp_path), min_side=8))
    assert len(src) == 20 and src.classes[9].key == "ankle_boot"
    rgb = np.asarray(src.load(3))
    assert rgb.shape == (28, 28, 3) and (rgb[..., 1] == imgs[3]).all()
    with pytest.raises(DataError, match="t10k-images"):
        build_source(data_cfg(kind="fashion_mnist", root=str(tmp_path)), split="test")


@pytest.mark.skipif(
    not FASHION_DEBIAN.is_dir(), reason="Debian dataset-fashion-mnist not installed"
)
def test_fashion_mnist_debian_package():
    cfg = data_cfg(kind="fashion_mnist", root=str(FASHION_DEBIAN), min_side=8)
    train, test = build_source(cfg, "train"), build_source(cfg, "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.counts() == [6000] * 10 and test.counts() == [1000] * 10


def test_tinyimagenet_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02124075", "n01443537"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text(
        "n01443537\tgoldfish, Carassius auratus\nn02124075\tEgyptian cat\n"
    )
    for w in wnids:
        for j in range(2):
            save_image(root / "train" / w / "images" / f"{w}_{j}.JPEG", random_rgb(64, 64, j))
    ann = []
    for j, w in enumerate(wnids):
        save_image(root / "val" / "images" / f"val_{j}.JPEG", random_rgb(64, 64, j))
        ann.append(f"val_{j}.JPEG\t{w}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    cfg = data_cfg(kind="tinyimagenet", root=str(tmp_path), min_side=8)
    src = build_source(cfg)
    assert [c.key for c in src.classes] == sorted(wnids)
    assert [c.name for c in src.classes] == ["goldfish", "Egyptian cat"]
    val = build_source(cfg, split="val")
    assert {(it.source, it.label) for it in val.items} == {
        ("val/images/val_0.JPEG", 1),
        ("val/images/val_1.JPEG", 0),
    }


def test_synthetic_counts_and_sizes():
    cfg = OmegaConf.create(
        dict(
            name="s",
            kind="synthetic",
            num_classes=3,
            images_per_class=[13, 12, 12],
            seed=0,
            short_edge=64,
            split="train",
        )
    )
    src = build_source(cfg)
    assert len(src) == 37 and src.counts() == [13, 12, 12]
    sizes = {it.size for it in src.items}
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)
    again = build_source(cfg)
    assert np.array_equal(np.asarray(src.load(5)), np.asarray(again.load(5)))


def test_collate_groups_equal_sizes_and_reports_failures(tmp_path):
    make_tree(tmp_path, WOOF[:1], n=2, size=(48, 32))
    buf = io.BytesIO()
    Image.fromarray(random_rgb(32, 48)).save(buf, "JPEG")
    (tmp_path / "train" / WOOF[0] / "broken.JPEG").write_bytes(
        buf.getvalue()[: len(buf.getvalue()) // 2]
    )
    src = build_source(data_cfg(root=str(tmp_path), classes=WOOF[:1]))
    ds = ResizedImages(src, short_edge=64)
    batch = collate_images([ds[i] for i in range(len(ds))])
    assert batch["pixels"].shape == (2, 3, 64, 96) and batch["pixels"].dtype == torch.uint8
    assert batch["size"] == (96, 64)
    assert [f["source"] for f in batch["failed"]] == [f"{WOOF[0]}/broken.JPEG"]
    assert "decode" in batch["failed"][0]["error"]


def test_a_run_lists_its_dataset_once(tmp_path, caplog):
    """The stages of a run share one listing; a file added to a class folder is seen."""
    import logging

    from distill.data.catalog import build_source as build

    make_tree(tmp_path, WOOF)
    cfg = data_cfg(root=str(tmp_path), classes=WOOF)
    caplog.set_level(logging.INFO, logger="distill.data.catalog")
    a = build(cfg)
    b = build(data_cfg(root=str(tmp_path), classes=WOOF))
    assert a is b and sum("images, 3 classes" in r.message for r in caplog.records) == 1
    save_image(tmp_path / "train" / WOOF[0] / "new.JPEG", random_rgb(30, 40, 99), format="JPEG")
    c = build(cfg)
    assert c is not a and c.counts() == [4, 3, 3]
    assert build(data_cfg(root=str(tmp_path), classes=WOOF[:2])) is not c  # another config
