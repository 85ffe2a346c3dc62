"""Distilled sets in the peers' formats, so their own evaluation code reads ours unchanged.

    python -m distill.export RUN format=rded                 # every distilled/ipc{K} of RUN
    python -m distill.export RUN format=imagefolder ipc=10
    python -m distill.export RUN/distilled/ipc10 format=ddranking dataset=ImageWoof

``RUN`` is a distill run folder (its ``distilled/ipc{K}`` sets: ``ipc=K`` picks one, none
means all), a folder of ``ipc{K}`` sets (``distilled/``, ``distilled/classes-<...>/``) or one
set folder. Output goes to ``RUN/export/<format>/ipc{K}/`` unless ``out`` is given (then
``out/ipc{K}/``); an existing export is replaced only with ``overwrite=true``.

Formats (label ``i`` is always the ``i``-th row of the set's ``classes.csv``, the teacher's
order, except where ``ddranking`` reorders to DD-Ranking's own order of a named dataset):

- ``rded``: RDED's layout (LINs-lab/RDED ``synthesize/main.py`` ``save_images``):
  ``{i:05d}/class{i:05d}_id{j:05d}.jpg``. RDED's validation (``validation/utils.py``) reads
  folder ``str(c).zfill(5)`` as label ``c`` and ``ipc`` files of it. JPEG at ``quality`` 95
  by default; RDED's own ``pil_image.save`` uses PIL's default, 75 (``quality=75``).
- ``imagefolder``: the images copied unchanged (lossless) into ``{i:03d}_{key}/``, so a
  sorted folder listing, which is how every ImageFolder reader numbers classes, is the
  label order even when the order is not sorted by key (ImageWoof's ``minimax``).
- ``ddranking``: DD-Ranking's tensor input (NUS-HPC-AI-Lab/DD-Ranking ``demo_hard.py``:
  ``torch.load(".../images.pt")``): ``images.pt``, a float32 tensor N x 3 x H x W, class
  by class with ``ipc`` images each, normalised with the dataset's mean and std (its real
  data goes through ``ToTensor, Normalize``, ``ddranking/utils/data.py`` ``get_dataset``,
  and the synthetic tensor is fed to the model as it is); its hard labels are
  ``[i] * ipc`` for each class ``i`` (``ddranking/metrics/hard_label.py``
  ``compute_metrics``), also written as ``hard_labels.pt``. With a DD-Ranking dataset
  (``dataset=ImageWoof``, or read from ``set.json``) the classes are put in DD-Ranking's
  order for it (``ImageNetSubsets`` for the ImageNet subsets: ImageWoof's is ``minimax``).

Every export writes ``export.json`` (format, source set, ipc, the class order with keys,
counts), ``classes.csv`` (label, key, name, set_index, source_index, folder) and
``files.csv`` (which source image became which exported one), and is checked after
writing: ``torchvision.datasets.ImageFolder`` must number the folders as the labels, RDED's
reader must find ``ipc`` images in each of its folders, ``images.pt`` must load with the
right shape.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from distill.cli import kv_usage, read_kv_args, setup_logging, wants_help
from distill.data.images import UnreadableImage, is_image_name, load_rgb
from distill.errors import ConfigError, DataError, DistillError
from distill.io import atomic_dir, atomic_write_json, human_bytes, write_csv_rows

log = logging.getLogger(__name__)

EXPORT_FORMAT = "dpd-export-v1"
FORMATS = ("rded", "imagefolder", "ddranking")
_IPC = re.compile(r"^ipc(\d+)$")

# DD-Ranking 0.2.0, ddranking/utils/data.py: ImageNetSubsets (label i = ImageNet index [i]).
DDRANKING_SUBSETS = {
    "ImageNette": [0, 217, 482, 491, 497, 566, 569, 571, 574, 701],
    "ImageWoof": [193, 182, 258, 162, 155, 167, 159, 273, 207, 229],
    "ImageMeow": [281, 282, 283, 284, 285, 291, 292, 290, 289, 287],
    "ImageSquawk": [84, 130, 88, 144, 145, 22, 96, 9, 100, 89],
    "ImageFruit": [953, 954, 949, 950, 951, 957, 952, 945, 943, 948],
    "ImageYellow": [309, 986, 954, 951, 987, 779, 599, 291, 72, 11],
}
# Its other datasets number classes as torchvision does: CIFAR's meta order (alphabetical for
# both), ImageFolder's sorted WordNet IDs for Tiny-ImageNet and ImageNet-1K.
DDRANKING_SORTED = {"CIFAR10": 10, "CIFAR100": 100, "TinyImageNet": 200, "ImageNet1K": 1000}
# CIFAR-10's batches.meta label_names.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse")
CIFAR10_CLASSES += ("ship", "truck")
# Mean and std of get_dataset: CIFAR's for CIFAR-10/100, ImageNet's for the rest.
NORMALIZATION = {
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "cifar": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
}
# This project's data names (set.json "dataset") for DD-Ranking's datasets.
OUR_DATASETS = {
    "imagenette": "ImageNette",
    "imagewoof": "ImageWoof",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "tinyimagenet": "TinyImageNet",
    "imagenet1k": "ImageNet1K",
}
DDRANKING_DATASETS = tuple(DDRANKING_SUBSETS) + tuple(DDRANKING_SORTED)


@dataclass
class SetClass:
    """One class of a distilled set: its label in the set and its image files (sorted)."""

    index: int
    key: str
    name: str
    source_index: str
    files: list[Path] = field(default_factory=list)


@dataclass
class DistilledFolder:
    """A distilled set as it lies on disk, checked against its ``classes.csv``."""

    path: Path
    ipc: int
    info: dict
    classes: list[SetClass]

    @property
    def counts(self) -> dict[str, int]:
        return {c.key: len(c.files) for c in self.classes}


def _preview(items, n: int = 6) -> str:
    items = list(items)
    return "[" + ", ".join(map(str, items[:n])) + (", ..." if len(items) > n else "") + "]"


# --------------------------------------------------------------------------- reading a set


def find_sets(src: str | Path, ipc: int | None) -> list[Path]:
    """The set folders ``src`` names: a set itself, a folder of ``ipc{K}`` sets or a run."""
    p = Path(src).expanduser()
    if not p.exists():
        raise DataError(
            f"{p} does not exist: give a distill run folder (holding distilled/ipc{{K}}/), a "
            "folder of ipc{K} sets or one distilled set folder"
        )
    if not p.is_dir():
        raise DataError(f"{p} is a file; give a run folder or a distilled set folder")
    if (p / "set.json").is_file() or _IPC.match(p.name):  # a set (read_set checks the rest)
        m = _IPC.match(p.name)
        recorded = _read_set_json(p).get("ipc", int(m.group(1)) if m else None)
        if ipc is not None and recorded is not None and int(recorded) != ipc:
            raise ConfigError(f"ipc={ipc} but the set {p} holds IPC {recorded}")
        return [p]
    parent = p / "distilled" if (p / "distilled").is_dir() else p
    found = {
        int(m.group(1)): d for d in parent.iterdir() if d.is_dir() and (m := _IPC.match(d.name))
    }
    if not found:
        raise DataError(
            f"no distilled set in {p}: expected {p}/distilled/ipc{{K}}/ (a run folder), "
            f"{p}/ipc{{K}}/ or a set folder holding classes.csv and set.json"
        )
    if ipc is None:
        return [found[k] for k in sorted(found)]
    if ipc not in found:
        raise DataError(f"{parent} has no ipc{ipc}/: its sets are IPC {sorted(found)}")
    return [found[ipc]]


def _read_set_json(p: Path) -> dict:
    f = p / "set.json"
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{f} cannot be read: {e}") from None


def read_set(path: str | Path) -> DistilledFolder:
    """Read a distilled set folder and check its class folders against ``classes.csv``.

    Raises:
        DataError: no ``classes.csv`` (the label order is unknown), a malformed one, class
            folders that differ from it, or a class folder without images.
    """
    p = Path(path)
    csv_path = p / "classes.csv"
    if not csv_path.is_file():
        raise DataError(
            f"{p} has no classes.csv, so its label order is unknown; export sets written by "
            "python -m distill or distill.materialize (they write classes.csv beside the images)"
        )
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        classes = [
            SetClass(
                int(r["index"]), r["key"], r.get("name") or r["key"], r.get("source_index", "")
            )
            for r in rows
        ]
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{csv_path} is not a classes.csv (index,key,name,...): {e}") from None
    classes.sort(key=lambda c: c.index)
    if [c.index for c in classes] != list(range(len(classes))) or not classes:
        raise DataError(
            f"{csv_path}: indices must be 0..n-1 once each, got {_preview(c.index for c in classes)}"
        )
    keys = [c.key for c in classes]
    if len(set(keys)) != len(keys):
        raise DataError(f"{csv_path} lists a class key twice: {_preview(keys)}")
    dirs = sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    extra, missing = sorted(set(dirs) - set(keys)), [k for k in keys if k not in set(dirs)]
    if extra or missing:
        raise DataError(
            f"class folders of {p} do not match its classes.csv: folders {_preview(dirs)}, "
            f"classes.csv {_preview(keys)}; only folders: {_preview(extra)}, only in "
            f"classes.csv: {_preview(missing)}"
        )
    empty = []
    for c in classes:
        c.files = sorted(f for f in (p / c.key).iterdir() if f.is_file() and is_image_name(f.name))
        if not c.files:
            empty.append(c.key)
    if empty:
        raise DataError(f"distilled set {p}: class folders without images: {_preview(empty)}")
    info = _read_set_json(p)
    m = _IPC.match(p.name)
    ipc = info.get("ipc") or (int(m.group(1)) if m else max(len(c.files) for c in classes))
    return DistilledFolder(p, int(ipc), info, classes)


def _require_even(s: DistilledFolder, fmt: str) -> None:
    """RDED's reader takes ``ipc`` files per folder and DD-Ranking labels ``ipc`` per class:
    a class with another count would crash the one and mislabel the other."""
    off = {k: n for k, n in s.counts.items() if n != s.ipc}
    if off:
        raise DataError(
            f"format={fmt} needs exactly ipc={s.ipc} images per class, but {s.path} has "
            + ", ".join(f"{k}: {n}" for k, n in list(off.items())[:6])
            + (" ..." if len(off) > 6 else "")
            + " (format=imagefolder takes uneven classes)"
        )


# ------------------------------------------------------------------------------ DD-Ranking


def ddranking_dataset(name: str | None, s: DistilledFolder) -> tuple[str | None, bool]:
    """(DD-Ranking's dataset name or None, whether it was asked for explicitly)."""
    if name is None or str(name).lower() == "auto":
        ours = str(s.info.get("dataset", "")).lower()
        return OUR_DATASETS.get(ours), False
    if str(name).lower() in ("none", "null", "set"):
        return None, True
    by_lower = {d.lower(): d for d in DDRANKING_DATASETS} | OUR_DATASETS
    if str(name).lower() not in by_lower:
        raise ConfigError(
            f"dataset={name!r} is not one of DD-Ranking's datasets {list(DDRANKING_DATASETS)} "
            "(or auto: set.json's dataset; none: keep the set's own order)"
        )
    return by_lower[str(name).lower()], True


def ddranking_order(dataset: str, s: DistilledFolder) -> list[str]:
    """The set's class keys in DD-Ranking's label order for ``dataset``.

    Raises:
        DataError: the set does not hold exactly DD-Ranking's classes of ``dataset``.
    """
    from distill.data.classes import imagenet_by_wnid, imagenet_classes

    keys = [c.key for c in s.classes]
    if dataset in DDRANKING_SUBSETS:
        wnids = [imagenet_classes()[i].wnid for i in DDRANKING_SUBSETS[dataset]]
    elif dataset == "ImageNet1K":
        wnids = [c.wnid for c in imagenet_classes()]
    elif dataset == "CIFAR10":
        wnids = list(CIFAR10_CLASSES)
    else:  # CIFAR100 (meta order is alphabetical), TinyImageNet (sorted WordNet IDs)
        wnids = sorted(keys)
        if len(keys) != DDRANKING_SORTED[dataset]:
            wnids = []  # reported below
        elif dataset == "TinyImageNet" and any(k not in imagenet_by_wnid() for k in keys):
            wnids = []
    if sorted(wnids) != sorted(keys):
        want = len(wnids) or DDRANKING_SORTED.get(dataset)
        raise DataError(
            f"DD-Ranking's {dataset} has {want} classes {_preview(wnids)}; the set {s.path} "
            f"holds {len(keys)}: {_preview(keys)}. DD-Ranking scores a set of all of its "
            "dataset's classes (its hard labels and test split cover them all); pass "
            "dataset=none to export this set in its own order anyway"
        )
    return wnids


# --------------------------------------------------------------------------------- writers


def _label_rows(classes: list[SetClass], folders: list[str | None]) -> list[list]:
    return [
        [i, c.key, c.name, c.index, c.source_index, f or ""]
        for i, (c, f) in enumerate(zip(classes, folders, strict=True))
    ]


def _write_rded(s: DistilledFolder, tmp: Path, quality: int) -> tuple[list, list, list]:
    folders, files = [], []
    for c in s.classes:
        folder = f"{c.index:05d}"
        (tmp / folder).mkdir()
        for j, src in enumerate(c.files):
            name = f"class{c.index:05d}_id{j:05d}.jpg"
            _load(src).save(tmp / folder / name, "JPEG", quality=quality)
            files.append([f"{folder}/{name}", str(src.relative_to(s.path)), c.index, c.key])
        folders.append(folder)
    return s.classes, folders, files


def _write_imagefolder(s: DistilledFolder, tmp: Path) -> tuple[list, list, list]:
    width = max(3, len(str(len(s.classes) - 1)))
    folders, files = [], []
    for c in s.classes:
        folder = f"{c.index:0{width}d}_{c.key}"
        (tmp / folder).mkdir()
        for src in c.files:
            shutil.copyfile(src, tmp / folder / src.name)
            files.append([f"{folder}/{src.name}", str(src.relative_to(s.path)), c.index, c.key])
        folders.append(folder)
    return s.classes, folders, files


def _load(path: Path):
    try:
        return load_rgb(path)
    except UnreadableImage as e:
        raise DataError(f"cannot read distilled image {path}: {e}") from None


def _size(size, s: DistilledFolder) -> tuple[int, int]:
    if size is None:
        w, h = _load(s.classes[0].files[0]).size
        return h, w
    vals = [size] if isinstance(size, int) else list(size)
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or not all(isinstance(v, int) and v > 0 for v in vals):
        raise ConfigError(f"size={size!r} must be a positive int or [height, width]")
    return int(vals[0]), int(vals[1])


def _write_ddranking(
    s: DistilledFolder, tmp: Path, order: list[str], size, normalize: str
) -> tuple[list, list, list, dict]:
    import torch
    from torchvision.transforms import functional as TF

    by_key = {c.key: c for c in s.classes}
    classes = [by_key[k] for k in order]
    h, w = _size(size, s)
    n = len(classes) * s.ipc
    log.info("images.pt: %d x 3 x %d x %d float32, %s", n, h, w, human_bytes(n * 3 * h * w * 4))
    images = torch.empty((n, 3, h, w), dtype=torch.float32)
    mean, std = NORMALIZATION.get(normalize, (None, None))
    files = []
    row = 0
    for label, c in enumerate(classes):
        for src in c.files:
            im = _load(src)
            # DD-Ranking's get_dataset: ToTensor, Normalize, then Resize + CenterCrop.
            x = TF.to_tensor(im)
            if mean is not None:
                x = TF.normalize(x, mean, std)
            if tuple(x.shape[1:]) != (h, w):
                x = TF.center_crop(TF.resize(x, [h, w], antialias=True), [h, w])
            images[row] = x
            files.append([f"images.pt[{row}]", str(src.relative_to(s.path)), label, c.key])
            row += 1
    labels = torch.tensor([i for i in range(len(classes)) for _ in range(s.ipc)], dtype=torch.long)
    torch.save(images, tmp / "images.pt")
    torch.save(labels, tmp / "hard_labels.pt")
    extra = {
        "tensor": {
            "shape": [n, 3, h, w],
            "dtype": "float32",
            "normalize": normalize,
            "mean": mean,
            "std": std,
        },
        "ddranking_args": {"ipc": s.ipc, "im_size": [h, w], "use_zca": False},
    }
    return classes, [None] * len(classes), files, extra


# ------------------------------------------------------------------------------- checking


def _check_imagefolder(root: Path, folders: list[str], per_class: list[int]) -> None:
    """torchvision's ImageFolder, as RDED, DD-Ranking (``image_path``) and most peers read a
    folder, must number the folders as our labels and find every image."""
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(root))
    want = {f: i for i, f in enumerate(folders)}
    if ds.class_to_idx != want:
        raise DataError(
            f"ImageFolder({root}) numbers the classes {ds.class_to_idx}, not the label order "
            f"{want}: the export would mislabel the images"
        )
    got = [0] * len(folders)
    for t in ds.targets:
        got[t] += 1
    if got != per_class:
        raise DataError(f"ImageFolder({root}) finds {got} images per class, not {per_class}")


def _check_rded(root: Path, n_classes: int, ipc: int) -> None:
    """RDED's validation/utils.py ImageFolder: folder ``str(c).zfill(5)`` for each c in
    range(nclass), ``ipc`` files taken from its listing, label c."""
    for c in range(n_classes):
        d = root / str(c).zfill(5)
        if not d.is_dir() or len(os.listdir(d)) < ipc:
            raise DataError(f"RDED's reader would fail on {d}: needs {ipc} images")


def _check_ddranking(root: Path, n: int, h: int, w: int, n_classes: int, ipc: int) -> None:
    import torch

    images = torch.load(root / "images.pt", map_location="cpu")
    if tuple(images.shape) != (n, 3, h, w) or images.dtype != torch.float32:
        raise DataError(f"{root}/images.pt holds {tuple(images.shape)} {images.dtype}")
    labels = torch.load(root / "hard_labels.pt", map_location="cpu")
    # DD-Ranking's own derivation (hard_label.py compute_metrics), for comparison.
    theirs = torch.arange(n_classes).repeat_interleave(ipc)
    if not torch.equal(labels, theirs):
        raise DataError(f"{root}/hard_labels.pt differs from DD-Ranking's [i] * ipc labels")


# --------------------------------------------------------------------------------- export


def default_out_root(set_path: Path, fmt: str) -> tuple[Path, Path]:
    """(export root, the set's path below it): ``<run>/export/<format>/<path under
    distilled/>``, or ``<parent>/export/<format>/<set name>`` for a set elsewhere."""
    for anc in set_path.parents:
        if anc.name == "distilled":
            return anc.parent / "export" / fmt, set_path.relative_to(anc)
    return set_path.parent / "export" / fmt, Path(set_path.name)


def _check_target(out: Path, set_path: Path, overwrite: bool) -> None:
    src, dst = set_path.resolve(), out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise ConfigError(
            f"out={out} overlaps the set being exported ({set_path}); choose another folder"
        )
    if out.exists():
        if not overwrite:
            raise ConfigError(
                f"{out} already exists; pass overwrite=true to replace it (or out=ANOTHER_DIR)"
            )
        if not (out / "export.json").is_file():
            raise ConfigError(
                f"{out} exists and is not an export (no export.json); it is left alone even "
                "with overwrite=true: remove it yourself or choose another out"
            )


def export_set(
    set_path: str | Path,
    fmt: str,
    out: str | Path,
    *,
    overwrite: bool = False,
    quality: int = 95,
    dataset: str | None = None,
    size=None,
    normalize: str = "auto",
) -> dict:
    """Export one distilled set folder to ``out`` in ``fmt``; returns ``export.json``'s dict."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not one of {list(FORMATS)}")
    s = read_set(set_path)
    out = Path(out)
    _check_target(out, s.path, overwrite)
    extra: dict = {}
    order_name = str(s.info.get("class_order", "unknown"))
    if fmt == "rded":
        if not 1 <= int(quality) <= 100:
            raise ConfigError(f"quality={quality} must be 1..100 (JPEG)")
        _require_even(s, fmt)
    elif fmt == "ddranking":
        _require_even(s, fmt)
        ddr, explicit = ddranking_dataset(dataset, s)
        order = [c.key for c in s.classes]
        if ddr is not None:
            try:
                order = ddranking_order(ddr, s)
            except DataError:
                if explicit:
                    raise
                log.warning(
                    "set.json names dataset %s, but the set is not DD-Ranking's %s (a class "
                    "subset?): images.pt keeps the set's own order",
                    s.info.get("dataset"),
                    ddr,
                )
                ddr = None
        if ddr is not None and order != [c.key for c in s.classes]:
            log.warning(
                "images.pt follows DD-Ranking's %s label order, not the set's (%s): block i "
                "is DD-Ranking's class i, %s",
                ddr,
                order_name,
                _preview(order, 10),
            )
        if normalize == "auto":
            normalize = "cifar" if ddr in ("CIFAR10", "CIFAR100") else "imagenet"
        if normalize not in (*NORMALIZATION, "none"):
            raise ConfigError(
                f"normalize={normalize!r} must be auto, imagenet, cifar or none ([0, 1])"
            )
        extra["ddranking_dataset"] = ddr
        order_name = f"ddranking:{ddr}" if ddr else order_name
    with atomic_dir(out) as tmp:
        if fmt == "rded":
            classes, folders, files = _write_rded(s, tmp, int(quality))
        elif fmt == "imagefolder":
            classes, folders, files = _write_imagefolder(s, tmp)
        else:
            classes, folders, files, more = _write_ddranking(s, tmp, order, size, normalize)
            extra.update(more)
            extra["ddranking_args"]["dataset"] = extra["ddranking_dataset"]
        counts = [len(c.files) for c in classes]
        if fmt in ("rded", "imagefolder"):
            _check_imagefolder(tmp, folders, counts)
        if fmt == "rded":
            _check_rded(tmp, len(classes), s.ipc)
        if fmt == "ddranking":
            _, _, h, w = extra["tensor"]["shape"]
            _check_ddranking(tmp, sum(counts), h, w, len(classes), s.ipc)
        from distill.data.classes import imagenet_by_wnid

        wnid = imagenet_by_wnid()
        record = {
            "format": EXPORT_FORMAT,
            "export_format": fmt,
            "source": str(s.path.resolve()),
            "source_set": {
                k: s.info.get(k)
                for k in (
                    "format",
                    "dataset",
                    "class_order",
                    "selector",
                    "class_subset",
                    "tiles",
                    "image_size",
                    "ipc",
                )
            },
            "ipc": s.ipc,
            "num_classes": len(classes),
            "images": sum(counts),
            "label_order": order_name,
            "classes": [
                {
                    "label": i,
                    "key": c.key,
                    "name": c.name,
                    "set_index": c.index,
                    "source_index": c.source_index,
                    **({"folder": f} if f else {}),
                    **({"imagenet_index": wnid[c.key].index} if c.key in wnid else {}),
                    "count": n,
                }
                for i, (c, f, n) in enumerate(zip(classes, folders, counts, strict=True))
            ],
            "counts": {c.key: n for c, n in zip(classes, counts, strict=True)},
            "options": {"quality": int(quality)} if fmt == "rded" else {},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **extra,
        }
        if fmt == "ddranking":
            record["options"] = {"size": record["tensor"]["shape"][2:], "normalize": normalize}
        write_csv_rows(
            tmp / "classes.csv",
            ["label", "key", "name", "set_index", "source_index", "folder"],
            _label_rows(classes, folders),
        )
        write_csv_rows(tmp / "files.csv", ["file", "source", "label", "key"], files)
        atomic_write_json(tmp / "export.json", record)
    if s.info.get("class_subset") and fmt == "rded":
        log.warning(
            "%s is a class subset: RDED's folders are numbered by the subset's labels 0..%d, "
            "not the teacher's outputs (source_index in classes.csv)",
            s.path,
            len(classes) - 1,
        )
    log.info("exported %s (%s, %d images) -> %s", s.path, fmt, sum(counts), out)
    return record


def export(
    src: str | Path,
    fmt: str,
    ipc: int | None = None,
    out: str | Path | None = None,
    **options,
) -> list[tuple[Path, dict]]:
    """Export every set ``src`` names (see `find_sets`); returns (folder, record) pairs."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not one of {list(FORMATS)}")
    plan = []
    for set_path in find_sets(src, ipc):
        root, rel = default_out_root(set_path, fmt)
        target = (Path(out) / rel) if out is not None else root / rel
        # Every set and target is checked before the first is written: no half-done runs.
        _check_target(target, read_set(set_path).path, bool(options.get("overwrite")))
        plan.append((set_path, target))
    return [(target, export_set(set_path, fmt, target, **options)) for set_path, target in plan]


def run_export(cfg) -> None:
    """The pipeline's ``export`` stage: every IPC of ``cfg.ipc`` in each of
    ``export.formats``, under ``<output_dir>/export/`` (rank 0 only)."""
    from distill.runtime import is_launch_rank_zero

    if not is_launch_rank_zero():
        return
    e = cfg.get("export") or {}
    out = Path(cfg.paths.output_dir)
    for fmt in e.get("formats") or []:
        opts = {"overwrite": bool(e.get("overwrite", True))}
        if fmt == "rded":
            opts["quality"] = int(e.get("quality", 95))
        if fmt == "ddranking":
            ds = e.get("dataset", "auto")
            opts.update(dataset=None if ds in (None, "auto") else str(ds), size=e.get("size"))
            opts["normalize"] = str(e.get("normalize", "auto"))
        for ipc in cfg.ipc:
            for target, _ in export(out, str(fmt), ipc=int(ipc), **opts):
                log.info("export %s: %s", fmt, target)


# ------------------------------------------------------------------------------------ CLI

DEFAULTS = dict(
    src=None,
    format=None,
    ipc=None,
    out=None,
    overwrite=False,
    quality=None,
    dataset=None,
    size=None,
    normalize=None,
)
ARG_HELP = dict(
    src="the run folder, folder of ipc{K} sets or set folder (or give it first, without src=)",
    format="rded, imagefolder or ddranking (required)",
    ipc="one IPC of a run folder (default: all of them)",
    out="where the ipc{K} folders go (default: RUN/export/<format>)",
    overwrite="replace an existing export",
    quality="rded: JPEG quality 1..100 (RDED's own files: PIL's default, 75)",
    dataset="ddranking: DD-Ranking's dataset, whose label order images.pt follows "
    f"({', '.join(DDRANKING_DATASETS)}; auto: set.json's; none: the set's order)",
    size="ddranking: image size, an int or [height, width] (default: the set's)",
    normalize="ddranking: imagenet, cifar or none ([0, 1]) (auto: by dataset)",
)
FORMAT_ONLY = {
    "quality": "rded",
    "dataset": "ddranking",
    "size": "ddranking",
    "normalize": "ddranking",
}
OPTION_DEFAULTS = {"quality": 95, "dataset": "auto", "size": None, "normalize": "auto"}


def usage() -> str:
    return kv_usage(__doc__, {**DEFAULTS, **OPTION_DEFAULTS}, ARG_HELP, width=10)


def main(argv: list[str] | None = None) -> int:
    """``python -m distill.export RUN format=rded [ipc=10] [out=DIR] [overwrite=true] ...``."""
    argv = list(argv if argv is not None else sys.argv[1:])
    if wants_help(argv):
        print(usage())
        return 0
    setup_logging()
    try:
        positional = [a for a in argv if "=" not in a]
        if len(positional) > 1:
            raise ConfigError(f"one source folder, please; got {positional}")
        args = read_kv_args([a for a in argv if "=" in a], DEFAULTS)
        src = positional[0] if positional else args.src
        if positional and args.src is not None:
            raise ConfigError("give the source once: either first or as src=")
        if src is None:
            raise ConfigError("the source is required: python -m distill.export RUN format=...")
        if args.format is None:
            raise ConfigError(f"format= is required: one of {list(FORMATS)}")
        fmt = str(args.format)
        if fmt not in FORMATS:
            raise ConfigError(f"format={fmt!r} is not one of {list(FORMATS)}")
        wrong = [k for k, f in FORMAT_ONLY.items() if args[k] is not None and f != fmt]
        if wrong:
            raise ConfigError(
                "; ".join(f"{k}= applies to format={FORMAT_ONLY[k]} only" for k in wrong)
            )
        ipc = args.ipc
        if ipc is not None and (isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1):
            raise ConfigError(f"ipc={ipc!r} must be a positive integer (or absent: all)")
        if not isinstance(args.overwrite, bool):
            raise ConfigError(f"overwrite={args.overwrite!r} must be true or false")
        if args.quality is not None and (
            isinstance(args.quality, bool) or not isinstance(args.quality, int)
        ):
            raise ConfigError(f"quality={args.quality!r} must be an integer 1..100 (JPEG)")
        size = args["size"]
        size = OmegaConf.to_container(size) if OmegaConf.is_config(size) else size
        options = {
            "overwrite": bool(args.overwrite),
            "quality": int(args.quality) if args.quality is not None else 95,
            "dataset": None if args.dataset is None else str(args.dataset),
            "size": size,
            "normalize": str(args.normalize) if args.normalize is not None else "auto",
        }
        done = export(src, fmt, ipc, args.out, **options)
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for target, rec in done:
        print(f"{target}: {rec['images']} images, {rec['num_classes']} classes ({fmt})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
