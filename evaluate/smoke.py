"""Small generated folders for `python -m evaluate experiment=smoke` and the tests: real-style
training and validation ImageFolders and a distill-run-style ``distilled/ipc{K}`` set of
class-coloured shapes (`distill.data.sources.synthetic_image`), so evaluation runs with no files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from distill.data import ClassInfo
from distill.data.classes import write_classes_csv
from distill.data.sources import synthetic_image
from distill.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

SHAPES = ["ellipse", "rectangle", "triangle", "cross", "diamond", "ring"]


def smoke_classes(num_classes: int) -> list[ClassInfo]:
    # synthetic_image draws shape/colour by label modulo its tables; keys say which shape.
    return [ClassInfo(i, f"{SHAPES[i % 6]}_{i}", f"a {SHAPES[i % 6]}") for i in range(num_classes)]


def _write_png(path: Path, arr) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def write_folder(
    root: Path, classes: list[ClassInfo], per_class: int, size: int, seed: int
) -> None:
    """``root/<key>/<nnnn>.png``: ``per_class`` generated images of each class."""
    for c in classes:
        for j in range(per_class):
            arr, _ = synthetic_image(seed, c.index, j, (size, size))
            _write_png(root / c.key / f"{j:04d}.png", arr)


def generate(
    data_root: Path | None,
    distill_run: Path | None,
    ipcs: list[int],
    num_classes: int = 3,
    train_per_class: int = 24,
    val_per_class: int = 12,
    size: int = 32,
    seed: int = 0,
) -> None:
    """Write whatever of the smoke folders is missing; never touches an existing folder.

    Args:
        data_root: gets ``train/`` and ``val/`` (a ``data=folder`` root).
        distill_run: gets ``distilled/ipc{K}/`` for each K and ``classes.csv``, the layout
            Stage II writes.
    """
    classes = smoke_classes(num_classes)
    if data_root is not None and not data_root.exists():
        log.info("generating smoke training/validation folders in %s", data_root)
        write_folder(data_root / "train", classes, train_per_class, size, seed)
        write_folder(data_root / "val", classes, val_per_class, size, seed + 1)
    if distill_run is not None:
        for k in ipcs:
            d = distill_run / "distilled" / f"ipc{k}"
            if not d.exists():
                log.info("generating a smoke distilled set in %s", d)
                # A seed of its own: stands for selected real patches, not the training images.
                write_folder(d, classes, k, size, seed + 2)
                # Whole images, as Stage II records a low-resolution set.
                atomic_write_json(d / "set.json", {"ipc": k, "tiles": 1, "image_size": size})
        if not (distill_run / "classes.csv").exists():
            write_classes_csv(classes, distill_run / "classes.csv")
