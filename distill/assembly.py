"""Writing distilled images (paper §3.4): 2x2 tilings of half-size patches up to
``assemble.concat_max_ipc``, single full-size patches above it, with the manifest and
set.json that say where every patch came from (the figures are in `distill.figures`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from distill.data.images import UnreadableImage, load_reduced
from distill.errors import DataError
from distill.io import atomic_dir, atomic_write_json, write_csv_rows
from distill.png import save_rgb

log = logging.getLogger(__name__)

# set.json's format tag: what a reader of a distilled folder may rely on.
SET_FORMAT = "dpd-distilled-set-v1"

MANIFEST_HEADER = [
    "file",
    "slot",
    "class_index",
    "class_name",
    "source",
    "x0",
    "y0",
    "x1",
    "y1",
    "score",
    "cluster",
    "cluster_rank",
    "note",
]


@dataclass(frozen=True)
class PatchRef:
    """Where a distilled patch comes from: a source item and a box in its original pixels."""

    item: int  # index into the source's items
    source: str
    box: tuple[int, int, int, int]
    score: float | None = None
    cluster: int = -1
    cluster_rank: int = -1
    note: str = ""


def centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square of a ``width`` x ``height`` image, as a box: how a whole
    image becomes one square patch (random real images, the coresets)."""
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return (x0, y0, x0 + side, y0 + side)


def crop_patch(im: Image.Image, box: tuple[int, int, int, int], size: int) -> Image.Image:
    """The patch ``box`` (original pixels) of an image, resized to ``size`` x ``size``."""
    crop = im.crop(box)
    if crop.size != (size, size):
        crop = crop.resize((size, size), Image.Resampling.BICUBIC)
    return crop


def tile(patches: list[Image.Image], tiles: int) -> Image.Image:
    """Tile ``tiles * tiles`` equal square patches row-major (slot 0 top-left); one tile is
    the patch itself."""
    side = patches[0].size[0]
    canvas = Image.new("RGB", (side * tiles, side * tiles))
    for slot, p in enumerate(patches):
        r, c = divmod(slot, tiles)
        canvas.paste(p, (c * side, r * side))
    return canvas


def load_crops(
    source, refs: list[PatchRef], size: int, workers: int = 8, decoder: str = "pil"
) -> list[Image.Image]:
    """Crops of every reference, decoding each source image once.

    With the ``fast`` decoder (the bank's ``data.decoder``) a JPEG whose patches are all at
    least 2x the tile is decoded at a reduced scale (`load_reduced`) and each patch resampled
    from its box scaled to it: at 1000 classes, decoding was most of the time.
    """
    by_item: dict[int, list[int]] = {}
    for i, r in enumerate(refs):
        by_item.setdefault(r.item, []).append(i)
    out: list[Image.Image | None] = [None] * len(refs)

    def reduced(item: int) -> bool:
        if decoder != "fast":
            return False
        path = getattr(source.items[item], "path", None)
        if path is None:
            return False
        boxes = [refs[i].box for i in by_item[item]]
        got = load_reduced(path, min(min(b[2] - b[0], b[3] - b[1]) for b in boxes) / size)
        if got is None:
            return False
        im, (w, h) = got
        sx, sy = im.size[0] / w, im.size[1] / h
        for i in by_item[item]:
            x0, y0, x1, y1 = refs[i].box
            out[i] = im.resize(
                (size, size), Image.Resampling.BICUBIC, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy)
            )
        return True

    def work(item: int):
        if reduced(item):
            return
        try:
            im = source.load(item)
        except UnreadableImage as e:
            raise DataError(
                f"cannot read {source.items[item].path or source.items[item].source} for a "
                f"distilled patch: {e} (the file changed after scoring?)"
            ) from e
        for i in by_item[item]:
            out[i] = crop_patch(im, refs[i].box, size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, by_item))
    return out  # type: ignore[return-value]


def write_distilled_set(
    out_dir: Path,
    classes: list[dict],
    refs_by_class: dict[int, list[PatchRef]],
    source,
    ipc: int,
    tiles: int,
    image_size: int,
    image_format: str = "png",
    info: dict | None = None,
    decoder: str = "pil",
) -> dict:
    """Write one IPC as an ImageFolder with ``manifest.csv``, ``classes.csv`` and
    ``set.json``, atomically.

    ``set.json`` says how the images were assembled (``tiles`` per side, image size) so that
    evaluation can follow RDED's coupling of augmentation to assembly (its ``factor``) from the
    set itself instead of guessing it from IPC and resolution; ``info`` adds fields to it.

    Args:
        classes: the distilled set's classes in label order: dicts with ``index`` (label in
            this set), ``key`` (folder name), ``name`` and ``source_index`` (label in the bank).
        refs_by_class: per label, the picked patches in rank order.
        tiles: patches per side of an image: 2 for 2x2 tilings, 1 for single patches.
        decoder: how source JPEGs are decoded (`load_crops`): the bank's ``data.decoder``.
    """
    per_image = tiles * tiles
    tile_size = image_size // tiles
    rows: list[list] = []
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for c in classes:
            refs = refs_by_class.get(c["index"], [])
            crops = load_crops(source, refs, tile_size, decoder=decoder)
            cdir = tmp / c["key"]
            cdir.mkdir()  # in the fresh temporary folder
            n_img = len(refs) // per_image
            for j in range(n_img):
                group = list(range(j * per_image, (j + 1) * per_image))
                img = tile([crops[g] for g in group], tiles)
                name = f"{j:04d}.{image_format}"
                if image_format == "png":
                    save_rgb(img, cdir / name)  # `distill.png`: 3x PIL's encoder
                else:
                    img.save(cdir / name)
                for slot, g in enumerate(group):
                    r = refs[g]
                    rows.append(
                        [
                            f"{c['key']}/{name}",
                            slot,
                            c["index"],
                            c["name"],
                            r.source,
                            *r.box,
                            r.score,  # None (random and teacher picks) is written empty
                            r.cluster,
                            r.cluster_rank,
                            r.note,
                        ]
                    )
            counts[c["key"]] = n_img
        write_csv_rows(tmp / "manifest.csv", MANIFEST_HEADER, rows)
        write_csv_rows(
            tmp / "classes.csv",
            ["index", "key", "name", "source_index"],
            [[c["index"], c["key"], c["name"], c["source_index"]] for c in classes],
        )
        atomic_write_json(
            tmp / "set.json",
            {
                "format": SET_FORMAT,
                "ipc": ipc,
                "tiles": tiles,
                "patches_per_image": per_image,
                "image_size": image_size,
                "num_classes": len(classes),
                "images": sum(counts.values()),
                **(info or {}),
            },
        )
    return {"images": sum(counts.values()), "per_class": counts, "patches": len(rows)}
