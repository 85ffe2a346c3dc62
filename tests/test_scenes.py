"""Fashion-MNIST scenes: the labelled item is inside its recorded box, scenes are seeded."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from distill.data import build_source
from distill.data.scenes import make_scene, single_item
from tests.conftest import FASHION_DEBIAN


def fake_items(n=40):
    rng = np.random.default_rng(0)
    items = np.zeros((n, 28, 28), np.uint8)
    items[:, 4:24, 6:22] = rng.integers(200, 256, size=(n, 20, 16))  # bright blobs on black
    return items, np.arange(n) % 10


def test_scene_item_lies_in_its_box_and_scene_is_seeded():
    items, labels = fake_items()
    img, box = make_scene(items, labels, 3, seed=5, canvas=64)
    assert img.shape == (64, 64, 3) and (img[..., 0] == img[..., 2]).all()
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and 24 <= x1 - x0 <= 44 and x1 - x0 == y1 - y0
    inside = img[y0:y1, x0:x1, 0]
    assert inside.max() >= 200 and (inside > 150).mean() > 0.3  # the item's pixels are there
    img2, box2 = make_scene(items, labels, 3, seed=5, canvas=64)
    assert box2 == box and np.array_equal(img2, img)
    assert make_scene(items, labels, 3, seed=6, canvas=64)[1] != box or not np.array_equal(
        make_scene(items, labels, 3, seed=6, canvas=64)[0], img
    )


def test_single_item_fills_the_canvas():
    items, _ = fake_items()
    img = single_item(items, 0, 64)
    assert img.shape == (64, 64, 3) and img[:4].max() == 0 and img[20:40, 20:40, 0].max() > 150


@pytest.mark.skipif(
    not FASHION_DEBIAN.is_dir(), reason="Debian dataset-fashion-mnist not installed"
)
def test_scene_source_from_real_fashion_mnist():
    cfg = OmegaConf.create(
        dict(
            name="fs",
            kind="fashion_scenes",
            root=str(FASHION_DEBIAN),
            split="train",
            images_per_class=3,
            subsample_seed=0,
            seed=0,
            canvas=64,
            item_scale=[24, 44],
            distractor_scale=[12, 20],
            distractors=[1, 2],
        )
    )
    src = build_source(cfg)
    assert len(src) == 30 and src.counts() == [3] * 10
    assert all(it.size == (64, 64) for it in src.items) and len(src.boxes) == 30
    im = np.asarray(src.load(0))
    x0, y0, x1, y1 = src.boxes[0]
    assert im.shape == (64, 64, 3) and im[y0:y1, x0:x1].mean() > im.mean()
