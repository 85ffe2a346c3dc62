"""Fashion-MNIST scenes: one labelled item at a random place and scale among smaller
distractor items of other classes, on a dark textured canvas, with the item's box recorded.

The project's own diffusion model is trained on these (and on single items), and the demo
distils them: a patch selector that works must find the labelled item, which the recorded
box lets us measure (`distill.localization`). Every scene is a pure function of (seed, split,
index), generated on demand, so 60,000 of them cost no memory.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from distill.data.records import SourceItem
from distill.data.sources import FASHION_CLASSES, Source, _array_source, fashion_arrays
from distill.errors import ConfigError

# How scenes are drawn, unless a data config says otherwise (sizes in pixels).
SCENE_DEFAULTS = {
    "canvas": 64,
    "item_scale": (24, 44),
    "distractors": (1, 2),
    "distractor_scale": (12, 20),
    "noise": 12.0,
}


def _place(rng: np.random.Generator, canvas: int, size: int, avoid: list[tuple], tries: int = 20):
    """A top-left corner for a ``size`` square that overlaps none of ``avoid`` (if possible)."""
    best = None
    for _ in range(tries):
        x, y = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
        box = (x, y, x + size, y + size)
        if all(box[2] <= a[0] or a[2] <= box[0] or box[3] <= a[1] or a[3] <= box[1] for a in avoid):
            return box
        best = best or box
    return best


def _paste(canvas: np.ndarray, item: np.ndarray, box: tuple) -> None:
    """Draw a grey item (bright on black) into the canvas with a max blend (items occlude)."""
    size = box[2] - box[0]
    im = np.asarray(Image.fromarray(item).resize((size, size), Image.Resampling.BICUBIC))
    region = canvas[box[1] : box[3], box[0] : box[2]]
    np.maximum(region, im, out=region)


def make_scene(
    items: np.ndarray,
    labels: np.ndarray,
    index: int,
    seed: int,
    canvas: int = SCENE_DEFAULTS["canvas"],
    item_scale: tuple[int, int] = SCENE_DEFAULTS["item_scale"],
    distractors: tuple[int, int] = SCENE_DEFAULTS["distractors"],
    distractor_scale: tuple[int, int] = SCENE_DEFAULTS["distractor_scale"],
    noise: float = SCENE_DEFAULTS["noise"],
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Scene number ``index``: the item ``items[index]`` and its box (x0, y0, x1, y1).

    Distractors are other training items of *other* classes, smaller, placed where they do
    not overlap the labelled item when possible.
    """
    rng = np.random.default_rng([seed, index])
    img = np.clip(rng.normal(18, noise, size=(canvas, canvas)), 0, 255).astype(np.uint8)
    size = int(rng.integers(item_scale[0], item_scale[1] + 1))
    box = _place(rng, canvas, size, [])
    n_dis = int(rng.integers(distractors[0], distractors[1] + 1))
    placed = [box]
    for _ in range(n_dis):
        j = int(rng.integers(0, len(items)))
        while labels[j] == labels[index]:
            j = int(rng.integers(0, len(items)))
        d = _place(
            rng, canvas, int(rng.integers(distractor_scale[0], distractor_scale[1] + 1)), placed
        )
        _paste(img, items[j], d)
        placed.append(d)
    _paste(img, items[index], box)  # the labelled item last: it is never covered
    return np.repeat(img[..., None], 3, axis=2), box


def single_item(items: np.ndarray, index: int, canvas: int = 64, margin: int = 4) -> np.ndarray:
    """A training item alone, scaled to fill the canvas (the "single items" half of training)."""
    img = np.zeros((canvas, canvas), np.uint8)
    _paste(img, items[index], (margin, margin, canvas - margin, canvas - margin))
    return np.repeat(img[..., None], 3, axis=2)


class SceneSource(Source):
    """Scenes generated on demand from a Fashion-MNIST split; ``boxes`` holds the item boxes."""

    def __init__(
        self,
        *args,
        items: np.ndarray,
        labels: np.ndarray,
        indices: list[int],
        seed: int,
        params: dict,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.fashion_items, self.fashion_labels = items, labels
        self.indices, self.seed, self.params = indices, seed, params
        self._boxes: list | None = None

    def scene(self, i: int) -> tuple[np.ndarray, tuple]:
        return make_scene(
            self.fashion_items, self.fashion_labels, self.indices[i], self.seed, **self.params
        )

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.scene(i)[0], "RGB")

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Ground-truth box of the labelled item in every scene (computed once, on demand)."""
        if self._boxes is None:
            self._boxes = [self.scene(i)[1] for i in range(len(self.items))]
        return self._boxes


def fashion_scenes_source(cfg, split: str) -> Source:
    """``data.kind=fashion_scenes``: a scene per chosen Fashion-MNIST item of ``split``."""
    images, labels, root = fashion_arrays(cfg, split)
    canvas = int(cfg.get("canvas", SCENE_DEFAULTS["canvas"]))
    params = dict(
        canvas=canvas,
        **{
            k: tuple(cfg.get(k, SCENE_DEFAULTS[k]))
            for k in ("item_scale", "distractors", "distractor_scale")
        },
        noise=float(cfg.get("noise", SCENE_DEFAULTS["noise"])),
    )
    if not params["item_scale"][1] <= canvas:
        raise ConfigError(
            f"data.item_scale={list(params['item_scale'])} exceeds data.canvas={canvas}"
        )
    keys = [k for k, _ in FASHION_CLASSES]
    base = _array_source(cfg, split, keys, [n for _, n in FASHION_CLASSES], images, labels, root)
    indices = [int(it.source.split("/")[1]) for it in base.items]
    items = [SourceItem(it.source, it.label, (canvas, canvas)) for it in base.items]
    seed = int(cfg.get("seed", 0)) + (0 if split == "train" else 1_000_003)
    return SceneSource(
        cfg.name,
        split,
        base.classes,
        items,
        [],
        str(root),
        items=images,
        labels=labels,
        indices=indices,
        seed=seed,
        params=params,
    )
