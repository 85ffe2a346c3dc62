"""Figures a person can read (issue 14, case 4): labels on a band, titles that say what is
shown, an IPC-1 overview that is a grid, the labelled item's box beside the chosen patch."""

import numpy as np
from PIL import Image, ImageDraw

from distill.assembly import MANIFEST_HEADER
from distill.figures import class_grids, label, manifest_labels
from distill.io import write_csv_rows
from distill.scoring.visualize import TRUTH, best_patch_grid


def test_label_reads_on_white_and_on_black():
    for bg in ((255, 255, 255), (0, 0, 0)):
        im = Image.new("RGB", (80, 20), bg)
        label(ImageDraw.Draw(im), (3, 3), "+0.0021")
        px = np.asarray(im).reshape(-1, 3)
        assert (px.max(axis=1) < 20).any() and (px.min(axis=1) > 200).any()


def write_set(root, classes, ipc, tiles=1):
    rows = []
    for c in classes:
        (root / c).mkdir(parents=True)
        for j in range(ipc):
            Image.new("RGB", (32, 32), (40 * j % 255, 90, 160)).save(root / c / f"{j:04d}.png")
            for slot in range(tiles * tiles):
                rows.append(
                    [
                        f"{c}/{j:04d}.png",
                        slot,
                        0,
                        c,
                        "s",
                        0,
                        0,
                        8,
                        8,
                        0.001 * (j + slot + 1),
                        j % 3,
                        0,
                        "",
                    ]
                )
    write_csv_rows(root / "manifest.csv", MANIFEST_HEADER, rows)


def test_manifest_labels_single_and_tiled(tmp_path):
    write_set(tmp_path / "a", ["cat"], 2, tiles=1)
    assert manifest_labels(tmp_path / "a") == {
        "cat/0000.png": "c0 +0.0010",
        "cat/0001.png": "c1 +0.0020",
    }
    write_set(tmp_path / "b", ["cat"], 1, tiles=2)
    assert manifest_labels(tmp_path / "b") == {"cat/0000.png": "+0.0025 c0"}


def test_ipc1_overview_is_a_grid_with_a_title(tmp_path):
    keys = [f"k{i}" for i in range(12)]
    write_set(tmp_path / "set", keys, 1)
    classes = [{"index": i, "key": k, "name": f"class {i}"} for i, k in enumerate(keys)]
    paths = class_grids(
        tmp_path / "set", classes, tmp_path / "fig", thumb=40, title="run r - ours - IPC 1"
    )
    ov = Image.open(paths[0])
    assert paths[0].name == "overview.png"
    assert ov.size[0] > 2 * ov.size[1]  # 10 to a row, not a one-column strip


def test_large_ipc_overview_says_it_samples(tmp_path, monkeypatch):
    import distill.figures as figures

    titles = []
    real = figures.grid
    monkeypatch.setattr(
        figures,
        "grid",
        lambda *a, **k: titles.append(a[4] if len(a) > 4 else k.get("title", "")) or real(*a, **k),
    )
    write_set(tmp_path / "set", ["a", "b"], 12)
    classes = [{"index": 0, "key": "a", "name": "a"}, {"index": 1, "key": "b", "name": "b"}]
    class_grids(
        tmp_path / "set", classes, tmp_path / "fig", thumb=24, title="run r - ours - IPC 12"
    )
    assert any("first 10 of 12 images per class, all 2 classes" in t for t in titles)
    assert any(t.startswith("run r - ours - IPC 12 - 0: a (12 images") for t in titles)


def test_scene_truth_box_is_drawn(tmp_path):
    from omegaconf import OmegaConf

    from distill.data.sources import synthetic_source

    src = synthetic_source(
        OmegaConf.create({"name": "s", "num_classes": 1, "images_per_class": 1}), "train"
    )
    w, h = src.items[0].size
    rec = {
        "source": src.items[0].source,
        "label": 0,
        "size": [w, h],
        "orig_size": [w, h],
        "boxes_resized": [[0, 0, 8, 8]],
        "scores": [0.01],
    }
    out = best_patch_grid([rec], [{"index": 0, "key": "k", "name": "n"}], src, tmp_path / "b.png")
    px = np.asarray(Image.open(out)).reshape(-1, 3)
    assert (px == TRUTH).all(axis=1).sum() > 50  # the box (and its legend swatch)
