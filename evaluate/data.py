"""Images for evaluation: the distilled ImageFolder (Stage II's ``distilled/ipc{K}/``), the
real training split (teacher training) and the real validation split, as uint8 batches.

A distilled set is tiny, so it is decoded once into one uint8 tensor; real splits are too
when they fit under ``data_cache_gb``, and are decoded per batch by loader workers otherwise.
Batches are drawn by `EpochBatches`, a seeded plan that every rank and a resumed run agree on.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from distill.data import ClassInfo, SkipRecord, Source, build_source
from distill.data.catalog import with_class_order
from distill.data.images import UnreadableImage, is_image_name, load_rgb
from distill.errors import DataError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- decoding


def resize_center_crop(im: Image.Image, resize: int, crop: int) -> np.ndarray:
    """torchvision's ``Resize(resize)`` (short edge, bilinear, antialiased) then
    ``CenterCrop(crop)``, as RDED's validation transform; returns (crop, crop, 3) uint8."""
    w, h = im.size
    if (w, h) != (crop, crop) or resize != crop:
        if w <= h:
            nw, nh = resize, int(resize * h / w)
        else:
            nw, nh = int(resize * w / h), resize
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
        if (nw, nh) != (crop, crop):
            im = im.crop((left, top, left + crop, top + crop))
    return np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)


@dataclass
class ImageStore:
    """Decoded images (N, 3, S, S) uint8 with their labels, plus what could not be decoded."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: list[SkipRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def decode_all(
    load: Callable[[int], Image.Image], n: int, resize: int, crop: int, workers: int = 4
) -> tuple[torch.Tensor, dict[int, str]]:
    """Decode items ``0..n-1`` with ``load`` into one (n, 3, crop, crop) uint8 tensor, on
    threads (PIL releases the GIL while decoding). Returns the tensor and, for items that
    could not be decoded, the reason (their rows stay zero)."""

    def one(i: int) -> np.ndarray | str:
        try:
            return resize_center_crop(load(i), resize, crop)
        except UnreadableImage as e:
            return str(e)

    images = torch.empty((n, 3, crop, crop), dtype=torch.uint8)
    failed: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, arr in enumerate(pool.map(one, range(n), chunksize=256)):
            if isinstance(arr, str):
                failed[i] = arr
            else:
                images[i] = torch.from_numpy(arr).permute(2, 0, 1)
    return images, failed


def decode_source(source: Source, resize: int, crop: int, workers: int = 4) -> ImageStore:
    """Every item of ``source``, decoded once; unreadable ones are left out and recorded."""
    images, failed = decode_all(source.load, len(source.items), resize, crop, workers)
    labels = torch.tensor([it.label for it in source.items], dtype=torch.long)
    skipped = []
    for i, why in failed.items():
        item = source.items[i]
        log.warning("skipping %s: %s", item.path or item.source, why)
        skipped.append(SkipRecord(item.source, item.path or "", item.label, "decode", why))
    if failed:
        keep = torch.tensor([i not in failed for i in range(len(labels))])
        images, labels = images[keep], labels[keep]
    return ImageStore(images, labels, skipped + list(source.skipped))


class StoreDataset(Dataset):
    """Batches from an `ImageStore`: ``dataset[list_of_indices]`` is one batch (one gather)."""

    def __init__(self, store: ImageStore):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.store.images[idx], self.store.labels[idx]


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Every item's label of a `StoreDataset` or `SourceDataset`, without decoding."""
    if isinstance(dataset, StoreDataset):
        return dataset.store.labels
    return torch.tensor([it.label for it in dataset.source.items], dtype=torch.long)


class ClassSubset(Dataset):
    """The items of ``dataset`` whose label is one of ``labels``, relabelled to that label's
    position in ``labels`` (``labels[i]`` becomes ``i``)."""

    def __init__(self, dataset: Dataset, labels: Sequence[int]):
        old = dataset_labels(dataset)
        n = max([*old.tolist(), *labels], default=0) + 1
        remap = torch.full((n,), -1, dtype=torch.long)
        remap[torch.as_tensor(list(labels), dtype=torch.long)] = torch.arange(len(labels))
        self.dataset, self.remap = dataset, remap
        self.idx = torch.nonzero(remap[old] >= 0).flatten()

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.dataset[self.idx[torch.as_tensor(idx, dtype=torch.long)].tolist()]
        return images, self.remap[labels]


class SourceDataset(Dataset):
    """Batches decoded on demand from a `Source` (real splits too large to keep decoded)."""

    def __init__(self, source: Source, resize: int, crop: int):
        self.source, self.resize, self.crop = source, resize, crop

    def __len__(self) -> int:
        return len(self.source.items)

    def _one(self, i: int) -> np.ndarray:
        n = len(self.source.items)
        for k in range(n):  # a file that broke since the scan: warn, take the next one
            j = (i + k) % n
            try:
                return resize_center_crop(self.source.load(j), self.resize, self.crop)
            except UnreadableImage as e:
                log.warning("skipping %s: %s", self.source.items[j].path, e)
        raise DataError(f"{self.source.name}: no image can be decoded")

    def __getitem__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        arrs = np.stack([self._one(i) for i in idx])
        images = torch.from_numpy(arrs).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor([self.source.items[i].label for i in idx], dtype=torch.long)
        return images, labels


def real_split(
    data_cfg, split: str | None, resize: int, crop: int, cache_gb: float, workers: int
) -> tuple[Dataset, list[ClassInfo], list[SkipRecord]]:
    """A real split of ``data`` as a batch dataset: decoded in memory when it fits under
    ``cache_gb`` GiB, otherwise decoded per batch."""
    source = build_source(data_cfg, split)
    need = len(source.items) * 3 * crop * crop / 2**30
    if need <= cache_gb:
        store = decode_source(source, resize, crop, workers)
        return StoreDataset(store), source.classes, store.skipped
    log.info(
        "%s/%s: %.1f GiB decoded > data_cache_gb=%s: decoding per batch",
        source.name,
        split,
        need,
        cache_gb,
    )
    return SourceDataset(source, resize, crop), source.classes, list(source.skipped)


class RealData:
    """The real splits of ``cfg.data`` at the protocol's sizes, decoded at most once.

    Validation: resize the short edge to ``val_resize``, centre-crop ``input.size`` (RDED).
    Training (teachers): resize and centre-crop to ``val_resize`` squares; the random crop to
    ``input.size`` happens on the device (`evaluate.augment`).
    """

    def __init__(self, cfg):
        from evaluate.protocol import input_size, val_resize

        self.cfg = cfg
        self.size, self.resize = input_size(cfg), val_resize(cfg)
        split = cfg.data.get("val_split")
        if split is None and cfg.data.get("kind") in ("folder", "imagenet"):
            raise DataError(
                f"data={cfg.data.name} has no validation split (data.val_split is null): "
                "evaluation needs real validation images, e.g. data.split=train "
                "data.val_split=val for DATA_ROOT/train and DATA_ROOT/val."
            )
        self.val_set, self.classes, self.skipped = real_split(
            cfg.data, split, self.resize, self.size, cfg.data_cache_gb, cfg.num_workers
        )
        # The name of the label order (data.class_order), recorded in every output.
        self.class_order = with_class_order(cfg.data)[1]
        self._train = None

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.classes]

    def restricted(self, classes: list[ClassInfo]) -> RealData:
        """A view of this data with only ``classes`` (a `subset_classes` list, numbered
        0..k-1) in the validation split, relabelled: a class-subset set's students are
        measured on the classes they were taught, not on classes they have no output for."""
        by_key = {c.key: c.index for c in self.classes}
        view = object.__new__(RealData)
        view.__dict__.update(self.__dict__)
        view.classes = list(classes)
        view.val_set = ClassSubset(self.val_set, [by_key[c.key] for c in classes])
        view._train = None
        return view

    def train_set(self) -> Dataset:
        if self._train is None:
            cfg = self.cfg
            ds, classes, skipped = real_split(
                cfg.data,
                cfg.data.get("split"),
                self.resize,
                self.resize,
                cfg.data_cache_gb,
                cfg.num_workers,
            )
            theirs = [c.key for c in classes]
            if theirs != self.keys:
                raise DataError(
                    f"data={cfg.data.name}: the training split's classes {_preview(theirs)} differ "
                    f"from the validation split's {_preview(self.keys)}; set data.classes"
                )
            self._train, self.skipped = ds, self.skipped + skipped
        return self._train


# ----------------------------------------------------------------------------- distilled sets


@dataclass
class DistilledSet:
    """A distilled ImageFolder resolved against the evaluation's classes."""

    path: Path
    ipc: int
    store: ImageStore
    counts: list[int]
    run_dir: Path | None  # the distill run that wrote it, if recognisable
    # Patches per side of each image (2: 2x2 tiles, 1: single patches), from the set's
    # set.json or manifest.csv; None for a foreign folder that does not say.
    tiles: int | None = None
    info: dict = field(default_factory=dict)
    # The classes its labels index: the evaluation's, or for a class-subset set (distill's
    # materialise with ``classes=[...]``) those of the evaluation's classes it holds, in the
    # evaluation's order and numbered 0..k-1 (`subset_classes`).
    classes: list[ClassInfo] = field(default_factory=list)
    class_subset: bool = False


def _holds_ipc_sets(p: Path) -> bool:
    """True for a folder whose subfolders are all ``ipc{K}`` sets (Stage II's ``distilled/``)."""
    subdirs = [d for d in p.iterdir() if d.is_dir()]
    return bool(subdirs) and all(_IPC.match(d.name) for d in subdirs)


def resolve_distilled(path: str | Path, ipc: int | None) -> tuple[Path, int | None]:
    """Accept the ``distilled/ipc{K}`` folder itself, or a distill run folder plus ``ipc``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(
            f"distilled={p} does not exist. Point it at a distilled ImageFolder (Stage II "
            "writes <run>/distilled/ipc{K}/<class>/<nnnn>.png) or at the distill run folder."
        )
    if not p.is_dir():
        raise DataError(f"distilled={p} is a file; it must be a folder of class folders")
    if (p / "distilled").is_dir() or _holds_ipc_sets(p):
        # A run folder (<run>/distilled/ipc{K}) or its distilled/ folder itself (ipc{K}).
        parent = p / "distilled" if (p / "distilled").is_dir() else p
        found = sorted(int(m.group(1)) for d in parent.iterdir() if (m := _IPC.match(d.name)))
        if ipc is None:
            if len(found) != 1:
                raise DataError(
                    f"distilled={p} is a run folder with distilled sets for IPC {found}: "
                    "choose one with ipc=K"
                )
            ipc = found[0]
        p = parent / f"ipc{ipc}"
        if not p.is_dir():
            raise DataError(f"{p} does not exist: the run has distilled sets for IPC {found}")
    m = _IPC.match(p.name)
    if m and ipc is not None and int(m.group(1)) != ipc:
        raise DataError(f"distilled={p} is named for IPC {m.group(1)} but ipc={ipc}")
    return p, ipc if ipc is not None else (int(m.group(1)) if m else None)


_IPC = re.compile(r"^ipc(\d+)$")


def load_distilled(
    path: str | Path,
    classes: list[ClassInfo],
    size: int,
    ipc: int | None = None,
    dataset_name: str = "data",
) -> DistilledSet:
    """Decode a distilled ImageFolder whose class folders are the class keys.

    Labels come from ``classes`` (the evaluation's order, which the teacher and the
    validation split share); the folder must hold exactly those classes, or some of them
    when the set declares itself a class subset (`_declares_subset`): its labels then index
    `DistilledSet.classes`, the subset renumbered in the evaluation's order. A
    ``classes.csv`` beside it (or in the run folder above) must list the same keys.

    Raises:
        DataError: missing or empty folder, or classes that differ, naming both sides.
    """
    p, ipc = resolve_distilled(path, ipc)
    keys = [c.key for c in classes]
    dirs = sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise DataError(
            f"distilled folder {p} holds no class folders; expected one per class of "
            f"data={dataset_name}: {_preview(keys)}"
        )
    info, tiles = read_set_info(p)
    extra, missing = sorted(set(dirs) - set(keys)), [k for k in keys if k not in set(dirs)]
    subset = bool(missing) and not extra and _declares_subset(p, info, dirs)
    if (extra or missing) and not subset:
        raise DataError(
            f"classes differ: distilled folder {p} has {len(dirs)} class folders "
            f"{_preview(dirs)}, data={dataset_name} (the teacher's and validation's classes) "
            f"has {len(keys)}: {_preview(keys)}. Only in the distilled set: {_preview(extra)}; "
            f"only in data={dataset_name}: {_preview(missing)}. Evaluate with the data config "
            "the set was distilled from (same data.classes); a class-subset set says so in its "
            "own classes.csv or set.json (class_subset), as distill's materialise writes it."
        )
    full = classes
    if subset:
        classes = subset_classes(full, dirs)
        keys = [c.key for c in classes]
        log.info(
            "distilled set %s holds %d of data=%s's %d classes: the teacher's outputs, the "
            "students' head and the validation split are restricted to %s",
            p,
            len(classes),
            dataset_name,
            len(full),
            _preview(keys),
        )
    run_dir = p.parent.parent if p.parent.name == "distilled" else None
    # The set's own classes.csv lists its classes; a run's lists the run's (all of data's).
    for csv_path, expect in (
        (p / "classes.csv", keys),
        (p.parent / "classes.csv", [c.key for c in full]),
        *([(run_dir / "classes.csv", [c.key for c in full])] if run_dir else []),
    ):
        if csv_path.is_file():
            _check_classes_csv(csv_path, expect, dataset_name)
            break
    files: list[tuple[str, int]] = []
    empty = []
    for c in classes:
        fs = sorted(f for f in (p / c.key).rglob("*") if f.is_file() and is_image_name(f.name))
        if not fs:
            empty.append(c.key)
        files.extend((str(f), c.index) for f in fs)
    if empty:
        raise DataError(f"distilled folder {p}: class folders without images: {_preview(empty)}")
    store = _decode_files(files, size)
    counts = np.bincount(store.labels.numpy(), minlength=len(classes)).tolist()
    if ipc is None:
        ipc = max(counts)
    if min(counts) != max(counts) or max(counts) != ipc:
        log.warning("distilled set %s: images per class %s (ipc=%s)", p, counts, ipc)
    log.info(
        "distilled set %s: %d images, %d classes, ipc %s, %s",
        p,
        len(store),
        len(classes),
        ipc,
        f"{tiles}x{tiles} patches per image" if tiles else "assembly not recorded",
    )
    return DistilledSet(p, int(ipc), store, counts, run_dir, tiles, info, classes, subset)


def _declares_subset(p: Path, info: dict, dirs: list[str]) -> bool:
    """True when a set that lacks some of the data's classes says it was made that way: its
    ``set.json`` has ``class_subset: true`` or its own ``classes.csv`` lists exactly its
    folders. A set that merely lost class folders says neither and stays an error."""
    if info.get("class_subset") is True:
        return True
    if (p / "classes.csv").is_file():
        with open(p / "classes.csv", newline="", encoding="utf-8") as f:
            return sorted(r["key"] for r in csv.DictReader(f)) == dirs
    return False


def subset_classes(classes: list[ClassInfo], keys) -> list[ClassInfo]:
    """The classes of ``classes`` whose key is in ``keys``, in ``classes``' order, numbered
    0..k-1: the label space of a class-subset evaluation (the teacher's outputs are picked
    by the original indices, `evaluate.run`)."""
    keep = set(keys)
    return [ClassInfo(i, c.key, c.name) for i, c in enumerate(c for c in classes if c.key in keep)]


def read_set_info(p: Path) -> tuple[dict, int | None]:
    """How a distilled folder was assembled: ``set.json`` (written by Stage II), else the
    patches per image counted in ``manifest.csv`` (older sets), else unknown."""
    if (p / "set.json").is_file():
        try:
            info = json.loads((p / "set.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{p / 'set.json'} cannot be read: {e}") from None
        return info, int(info["tiles"]) if info.get("tiles") else None
    if (p / "manifest.csv").is_file():
        with open(p / "manifest.csv", newline="", encoding="utf-8") as f:
            slots = [int(r["slot"]) for r in csv.DictReader(f) if r.get("slot", "").isdigit()]
        if slots:
            tiles = math.isqrt(max(slots) + 1)
            return {}, tiles if tiles * tiles == max(slots) + 1 else None
    return {}, None


def _decode_files(files: list[tuple[str, int]], size: int) -> ImageStore:
    images, failed = decode_all(lambda i: load_rgb(files[i][0]), len(files), size, size)
    if failed:
        raise DataError(
            f"distilled images that cannot be decoded ({len(failed)}): "
            + "; ".join(f"{files[i][0]}: {why}" for i, why in list(failed.items())[:3])
        )
    return ImageStore(images, torch.tensor([lab for _, lab in files], dtype=torch.long))


def _check_classes_csv(path: Path, keys: list[str], dataset_name: str) -> None:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    theirs = [r["key"] for r in sorted(rows, key=lambda r: int(r["index"]))]
    if set(theirs) != set(keys):
        raise DataError(
            f"classes differ: {path} lists {_preview(theirs)}, data={dataset_name} has "
            f"{_preview(keys)}"
        )
    if theirs != keys:
        # Labels are assigned by key, so a different order is harmless here; say so.
        log.info(
            "%s orders the classes differently from data=%s; labels follow data", path, dataset_name
        )


def read_distill_config(run_dir: Path | None) -> dict:
    """The composed config of the distill run that wrote a set (``.hydra/config.yaml``)."""
    if run_dir is None or not (run_dir / ".hydra" / "config.yaml").is_file():
        return {}
    try:
        return OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    except Exception as e:  # a foreign or broken file: the tables just lose its columns
        log.warning("cannot read %s: %s", run_dir / ".hydra" / "config.yaml", e)
        return {}


def _preview(items: Sequence[str], n: int = 6) -> str:
    items = list(items)
    return (
        "["
        + ", ".join(items[:n])
        + (f", ... {len(items) - n} more" if len(items) > n else "")
        + "]"
    )


# ----------------------------------------------------------------------------- batch plans


class EpochBatches(Sampler):
    """The seeded batch plan of an epoch, sharded over ranks.

    Epoch ``e`` shuffles all ``n`` items with ``(seed, e)`` and cuts the order into global
    batches of ``global_batch``; rank ``r`` takes the ``r``-th of ``world`` near-equal slices
    of each. The union over ranks is the single-process batch, the step count does not
    depend on the number of devices, and a resumed run replays the same batches.
    ``cycle`` repeats the plans of epochs ``0 .. cycle-1`` (stored soft labels).
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        cycle: int | None = None,
    ):
        if global_batch < world:
            raise DataError(
                f"batch size {global_batch} is smaller than the {world} devices it is split over"
            )
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world, self.cycle = rank, world, cycle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.global_batch)

    def plan_epoch(self, epoch: int) -> int:
        return epoch % self.cycle if self.cycle else epoch

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.plan_epoch(epoch)]).permutation(self.n)

    def _local(self, order: np.ndarray, step: int) -> list[int]:
        chunk = order[step * self.global_batch : (step + 1) * self.global_batch]
        if len(chunk) < self.world:
            # A last partial batch smaller than the device count would leave a rank empty:
            # top it up from the start of the epoch's order.
            chunk = np.concatenate([chunk, order[: self.world - len(chunk)]])
        return np.array_split(chunk, self.world)[self.rank].tolist()

    def batch(self, epoch: int, step: int) -> list[int]:
        """This rank's indices at ``step`` of ``epoch`` (without iterating)."""
        return self._local(self._order(epoch), step)

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order(self.epoch)
        for s in range(len(self)):
            yield self._local(order, s)


class ShardBatches(Sampler):
    """Validation batches: rank ``r`` takes items ``r, r + world, ...``; no padding, so the
    all-reduced counts cover every item exactly once."""

    def __init__(self, n: int, batch: int, rank: int = 0, world: int = 1):
        self.idx = list(range(rank, n, world))
        self.batch = batch

    def __len__(self) -> int:
        return math.ceil(len(self.idx) / self.batch)

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(0, len(self.idx), self.batch):
            yield self.idx[s : s + self.batch]


def batch_loader(dataset: Dataset, sampler: Sampler, workers: int = 0) -> DataLoader:
    """A loader whose sampler yields whole index lists (``dataset[list]`` is a batch)."""
    in_memory = isinstance(getattr(dataset, "dataset", dataset), StoreDataset)  # ClassSubset too
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=0 if in_memory else workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )
