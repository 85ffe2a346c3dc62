"""Dataset sources: where the real images come from, in which class order, and what was skipped.

A `Source` is a list of `SourceItem` (one per real image, with its original size read from the
file header) plus the ordered classes and the `SkipRecord`s of everything left out. It decodes
nothing up front; `Source.load` decodes one image to RGB. `build_source(cfg.data)` picks the
loader by ``data.kind``:

- ``imagenet``: an ImageFolder tree of WordNet-ID folders (ImageNet-1K, ImageWoof,
  ImageNette, ImageNet-100 are the same loader with another class list).
- ``folder``: any ImageFolder tree of the user's own.
- ``tinyimagenet``, ``cifar10``, ``cifar100``, ``fashion_mnist``: their standard on-disk formats.
- ``synthetic``: generated shapes on textured backgrounds; needs no files (the smoke preset).
"""

from __future__ import annotations

import gzip
import logging
import multiprocessing as mp
import os
import pickle
import random
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from distill.data.classes import (
    ClassInfo,
    humanize,
    imagenet_by_wnid,
    imagenet_classes,
    imagenet_name,
    read_names_file,
)
from distill.data.images import UnreadableImage, is_image_name, load_rgb, read_size
from distill.data.records import SkipRecord, SourceItem
from distill.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class Source:
    """Real images of one split, in a fixed order, with their classes and skip records."""

    def __init__(
        self,
        name: str,
        split: str,
        classes: list[ClassInfo],
        items: list[SourceItem],
        skipped: list[SkipRecord],
        root: str | None,
    ):
        self.name = name
        self.split = split
        self.classes = classes
        self.items = items
        self.skipped = skipped
        self.root = root
        # The name of the label order (data.class_order), set by `build_source`.
        self.class_order = "native"

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> Image.Image:
        """Decode item ``i`` to RGB; raises `UnreadableImage` for a broken file."""
        item = self.items[i]
        if item.path is None:
            raise NotImplementedError
        return load_rgb(item.path)

    def indices_by_class(self) -> dict[int, list[int]]:
        """Item indices per label, in item order (labels without items are absent)."""
        out: dict[int, list[int]] = {}
        for i, it in enumerate(self.items):
            out.setdefault(it.label, []).append(i)
        return out

    def counts(self) -> list[int]:
        n = [0] * len(self.classes)
        for it in self.items:
            n[it.label] += 1
        return n

    def describe(self) -> str:
        counts = self.counts()
        return (
            f"{self.name}/{self.split}: {len(self.items)} images, {len(self.classes)} classes "
            f"(min {min(counts, default=0)}, max {max(counts, default=0)} per class), "
            f"{len(self.skipped)} skipped"
        )


class ArraySource(Source):
    """A source whose pixels are held in memory as a uint8 array (N, H, W[, 3])."""

    def __init__(self, *args, arrays: np.ndarray | list[np.ndarray], **kwargs):
        super().__init__(*args, **kwargs)
        self.arrays = arrays

    def load(self, i: int) -> Image.Image:
        arr = self.arrays[i]
        if arr.ndim == 2:
            return Image.fromarray(arr, "L").convert("RGB")
        return Image.fromarray(arr, "RGB")


# ----------------------------------------------------------------------------- helpers


def _require_dir(path: str | Path | None, setting: str, hint: str) -> Path:
    if path is None or str(path) in ("", "None", "null", "???"):
        raise DataError(f"{setting} is not set. {hint}")
    p = Path(os.path.expanduser(str(path)))
    if not p.is_dir():
        raise DataError(f"{setting}={p} does not exist or is not a folder. {hint}")
    return p


def _subsample(files: list[Any], n: int | None, seed: int, key: str) -> list[Any]:
    """Keep ``n`` files of a class, chosen by a seed and the class key (order kept)."""
    if n is None or n <= 0 or len(files) <= n:
        return files
    rng = random.Random(f"{seed}:{key}")
    keep = sorted(rng.sample(range(len(files)), n))
    return [files[i] for i in keep]


# The split name of the held-out part of the training split (``data.holdout_per_class``):
# settings are chosen on it (students validated with ``data.val_split=holdout``), never on
# the test split, and every other use of the training split (pools, teachers) leaves it out.
HOLDOUT_SPLIT = "holdout"


def holdout_view(cfg, split: str | None):
    """The (config, split) a loader reads for ``split``: ``holdout`` is the training split
    with only its held-out items; the training split itself, while ``holdout_per_class`` is
    set, is read without them. The role travels as ``holdout_role`` on a copy of the config."""
    n = cfg.get("holdout_per_class")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"data.holdout_per_class={n!r}: must be an integer >= 1 or null")
    if split == HOLDOUT_SPLIT:
        if not n:
            raise ConfigError(
                f"split {HOLDOUT_SPLIT!r} (e.g. data.val_split={HOLDOUT_SPLIT}) needs "
                "data.holdout_per_class: how many items per class to hold out of data.split"
            )
        role, split = "held", cfg.get("split")
    elif n and split == cfg.get("split"):
        role = "rest"
    else:
        return cfg, split
    if cfg.get("kind") == "synthetic":
        raise ConfigError(
            "data.holdout_per_class: data.kind=synthetic has no training items to hold out"
        )
    data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    data["holdout_role"] = role
    return OmegaConf.create(data), split


def _class_files(files: list[Any], cfg, key: str) -> list[Any]:
    """One class's files as a source lists them: the held-out reservation first (the same
    items whatever the pool size or its seed, so no pool ever holds one), then the subsample
    (``images_per_class``, ``subsample_seed``). The held-out split itself is never subsampled."""
    role = cfg.get("holdout_role")
    if role is not None:
        n = int(cfg.holdout_per_class)
        if n >= len(files):
            raise DataError(
                f"data.holdout_per_class={n} leaves nothing of class {key} ({len(files)} items "
                f"in split {cfg.get('split')!r})"
            )
        rng = random.Random(f"holdout:{int(cfg.get('holdout_seed') or 0)}:{key}")
        held = set(rng.sample(range(len(files)), n))
        files = [f for i, f in enumerate(files) if (i in held) == (role == "held")]
        if role == "held":
            return files
    return _subsample(files, cfg.get("images_per_class"), cfg.get("subsample_seed", 0), key)


# Default pixel limit of a file-backed source (data.max_pixels): 64 MP is above every ImageNet
# photo and well below PIL's decompression-bomb guard (179 MP); one decode of it is ~190 MB.
DEFAULT_MAX_PIXELS = 64_000_000


def _size_or_reason(p: str, min_side: int, max_pixels: int | None) -> tuple[int, int] | str:
    try:
        w, h = read_size(p, max_pixels)
    except UnreadableImage as e:
        return str(e)
    if min(w, h) < min_side:
        return f"too small ({w}x{h}; data.min_side={min_side})"
    return (w, h)


def _sizes_chunk(args: tuple[list[str], int, int | None]) -> list[tuple[int, int] | str]:
    paths, min_side, max_pixels = args
    return [_size_or_reason(p, min_side, max_pixels) for p in paths]


# Header reads are Python-bound (PIL parses markers in Python): threads only add lock traffic
# (2.7x slower than a plain loop, measured), so large listings use one process per core.
_PARALLEL_FROM = 20_000
_CHUNK = 1024


def _scan_sizes(
    paths: list[str], min_side: int, max_pixels: int | None = None, workers: int | None = None
) -> list[tuple[int, int] | str]:
    """Read each file's header: its displayed (width, height), or a reason it can't be used.

    In input order. From `_PARALLEL_FROM` files on, chunks go to a pool of forked processes
    (one per available core, or ``workers``); smaller listings read in this process.
    """
    from tqdm.auto import tqdm

    if not workers:
        # The cores this process may use (not distill.runtime's helper: it imports Lightning).
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    chunks = [(paths[i : i + _CHUNK], min_side, max_pixels) for i in range(0, len(paths), _CHUNK)]
    bar = tqdm(
        total=len(paths), desc="reading image headers", disable=len(paths) < 5000, leave=False
    )
    out: list[tuple[int, int] | str] = []
    parallel = workers > 1 and len(paths) >= _PARALLEL_FROM and "fork" in mp.get_all_start_methods()
    if parallel:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            for part in pool.map(_sizes_chunk, chunks):
                out.extend(part)
                bar.update(len(part))
    else:
        for c in chunks:
            out.extend(_sizes_chunk(c))
            bar.update(len(c[0]))
    bar.close()
    return out


def _resolve_names(
    keys: list[str],
    explicit: Sequence[str] | None,
    names_file: str | None,
    default: Callable[[str], str],
) -> list[str]:
    if explicit is not None:
        if len(explicit) != len(keys):
            raise ConfigError(f"data.class_names has {len(explicit)} names for {len(keys)} classes")
        return [str(n) for n in explicit]
    if names_file:
        table = read_names_file(names_file)
        if isinstance(table, dict):
            missing = [k for k in keys if k not in table]
            if missing:
                raise DataError(
                    f"class names file {names_file} has no name for {missing[:5]}"
                    f"{' ...' if len(missing) > 5 else ''}"
                )
            return [table[k] for k in keys]
        if len(table) != len(keys):
            raise DataError(
                f"class names file {names_file} lists {len(table)} names for {len(keys)} classes"
            )
        return table
    return [default(k) for k in keys]


def _max_pixels(cfg) -> int | None:
    """``data.max_pixels``: absent = the default, null = no limit of ours (PIL's guard against
    decompression bombs still applies)."""
    value = cfg.get("max_pixels", DEFAULT_MAX_PIXELS)
    return None if value is None else int(value)


def _class_problem(strict: bool, message: str, skipped: list[SkipRecord], record: SkipRecord):
    if strict:
        raise DataError(message + " Set data.strict_classes=false to skip it with a warning.")
    log.warning(message)
    skipped.append(record)


def _files_to_items(
    per_class: list[list[tuple[str, str]]],
    classes: list[ClassInfo],
    min_side: int,
    skipped: list[SkipRecord],
    strict: bool,
    stage: str = "scan",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[list[SourceItem], list[ClassInfo]]:
    """Turn (source id, absolute path) lists per class into items, reading headers."""
    flat = [(ci, src, p) for ci, files in enumerate(per_class) for src, p in files]
    sizes = _scan_sizes([p for _, _, p in flat], min_side, max_pixels)
    items: list[SourceItem] = []
    for (ci, src, p), size in zip(flat, sizes, strict=True):
        if isinstance(size, str):
            log.warning("skipping %s: %s", p, size)
            skipped.append(SkipRecord(src, p, ci, stage, size))
        else:
            items.append(SourceItem(src, ci, size, p))
    have = {it.label for it in items}
    reported = {s.class_index for s in skipped if s.reason == "class folder missing"}
    for c in classes:
        if c.index not in have and c.index not in reported:
            _class_problem(
                strict,
                f"class {c.index} ({c.key}, {c.name!r}) has no usable images.",
                skipped,
                SkipRecord(c.key, "", c.index, stage, "class has no usable images"),
            )
    return items, classes


class FolderWalk:
    """Lists class folders so that every file is counted once, under its own class.

    Symbolic links are followed (datasets are often assembled from links), but safely:
    each directory and file is resolved to its real path; a directory already walked (a
    loop such as ``cls/self -> .``), one that holds the class folder itself (``cls/up ->
    ..``, which would list every other class under this label), one inside another class's
    folder, and a file already listed or lying in another class's folder are left out and
    recorded in ``skipped.csv`` with the reason.
    """

    def __init__(self, root: Path, class_folders: dict[int, Path]):
        self.root = root
        # Real path of each class folder -> class index.
        self.class_real = {os.path.realpath(f): ci for ci, f in class_folders.items() if f.is_dir()}
        self.keys = {ci: f.name for ci, f in class_folders.items()}
        self.files_seen: dict[str, str] = {}  # real path -> id it was listed under

    def _owner(self, real: str) -> int | None:
        """The class whose folder holds ``real`` (the innermost one), if any.

        Walks up ``real``'s parents (a dict lookup each), not over every class folder: with
        1000 classes the scan of all folders per file was the listing's largest cost.
        """
        p = real
        while True:
            ci = self.class_real.get(p)
            if ci is not None:
                return ci
            parent = os.path.dirname(p)
            if parent == p:
                return None
            p = parent

    def _dir_problem(self, real: str, class_index: int, class_real: str, walked: set[str]) -> str:
        if real in walked:
            return "symbolic link loop (directory already listed)"
        if class_real == real or class_real.startswith(real + os.sep):
            return "symbolic link to a folder holding this class folder (a loop)"
        owner = self._owner(real)
        if owner is not None and owner != class_index:
            return f"symbolic link into the folder of class {self.keys[owner]!r}"
        return ""

    def list(self, folder: Path, class_index: int, skipped: list[SkipRecord]):
        """All image files under ``folder`` (recursive, sorted) as (id, path) pairs.

        The order is ``os.walk``'s, top-down with sorted names: a folder's files, then its
        subfolders. Real paths are derived from the folder's own real path, so only entries
        that are symbolic links cost a ``realpath`` (one per file made the walk slow at
        ImageNet scale).
        """
        files: list[tuple[str, str]] = []
        class_real = os.path.realpath(folder)
        walked = {class_real}
        cut = len(str(self.root)) + 1

        def skip(p: str, reason: str) -> None:
            log.warning("skipping %s: %s", p, reason)
            skipped.append(SkipRecord(p[cut:], p, class_index, "scan", reason))

        def walk(path: str, real_dir: str) -> None:
            try:
                with os.scandir(path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                skip(path, f"cannot list folder: {e.strerror or e}")
                return
            dirs, names = [], []
            for e in entries:
                try:
                    is_dir = e.is_dir()
                except OSError:
                    is_dir = False
                (dirs if is_dir else names).append(e)
            sub = []
            for e in dirs:
                real = os.path.realpath(e.path) if e.is_symlink() else f"{real_dir}/{e.name}"
                problem = self._dir_problem(real, class_index, class_real, walked)
                if problem:
                    skip(e.path, problem)
                    continue
                walked.add(real)
                sub.append((e.path, real))
            here = self._owner(real_dir)
            for e in names:
                p = e.path
                if not is_image_name(e.name):
                    skipped.append(
                        SkipRecord(p[cut:], p, class_index, "scan", "not an image file (extension)")
                    )
                    continue
                link = e.is_symlink()
                real = os.path.realpath(p) if link else f"{real_dir}/{e.name}"
                first = self.files_seen.get(real)
                if first is not None:
                    skip(p, f"same file as {first} (listed once)")
                    continue
                owner = self._owner(real) if link else here
                if owner is not None and owner != class_index:
                    skip(p, f"symbolic link to a file in the folder of class {self.keys[owner]!r}")
                    continue
                self.files_seen[real] = p[cut:]
                files.append((p[cut:], p))
            for path_, real in sub:
                walk(path_, real)

        walk(str(folder), class_real)
        return files


# ----------------------------------------------------------------------------- loaders


def folder_source(cfg, split: str | None, *, imagenet: bool) -> Source:
    """ImageFolder tree: ``root[/split]/<class key>/**/<image>``.

    With ``imagenet`` the keys are WordNet IDs and names come from the shipped ImageNet table;
    ``data.classes: null`` then means all 1000 classes in the standard order. Otherwise the
    keys are folder names (all subfolders, sorted, when ``data.classes`` is null).
    """
    hint = (
        "Pass data.root=/path/to/dataset (a folder holding "
        + (f"{split}/" if split else "")
        + ("<wnid>/*.JPEG folders)." if imagenet else "one folder per class).")
    )
    root = _require_dir(cfg.root, "data.root", hint)
    base = root / split if split else root
    if not base.is_dir():
        raise DataError(
            f"split folder {base} does not exist (data.root={root}, split={split!r}). {hint}"
        )
    skipped: list[SkipRecord] = []
    strict = bool(cfg.get("strict_classes", True))
    if cfg.get("classes") is not None:
        keys = [str(k) for k in cfg.classes]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"data.classes lists a class twice: {keys}")
    elif imagenet:
        keys = [c.wnid for c in imagenet_classes()]
    else:
        keys = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not keys:
            raise DataError(f"{base} holds no class folders. {hint}")
    if imagenet:
        style = cfg.get("class_name_style", "name")
        default = lambda k: imagenet_name(k, style)
        named = cfg.get("class_names") is not None or cfg.get("class_names_file")
        bad = [k for k in keys if not k.startswith("n") or len(k) != 9]
        if bad and not named:
            raise ConfigError(f"data.classes holds entries that are not WordNet IDs: {bad[:5]}")
        unknown = [k for k in keys if k not in imagenet_by_wnid()]
        if unknown and not named:
            raise ConfigError(
                f"data.classes holds WordNet IDs that are not ImageNet-1K classes: {unknown[:5]}; "
                "fix the typo, or give names with data.class_names / data.class_names_file"
            )
    else:
        default = humanize
    names = _resolve_names(keys, cfg.get("class_names"), cfg.get("class_names_file"), default)
    classes = [ClassInfo(i, k, n) for i, (k, n) in enumerate(zip(keys, names, strict=True))]

    per_class: list[list[tuple[str, str]]] = []
    walk = FolderWalk(base, {c.index: base / c.key for c in classes})
    for c in classes:
        folder = base / c.key
        if not folder.is_dir():
            _class_problem(
                strict,
                f"class {c.index} ({c.key}, {c.name!r}) has no folder {folder}.",
                skipped,
                SkipRecord(c.key, str(folder), c.index, "scan", "class folder missing"),
            )
            per_class.append([])
            continue
        files = walk.list(folder, c.index, skipped)
        per_class.append(_class_files(files, cfg, c.key))
    items, classes = _files_to_items(
        per_class, classes, cfg.get("min_side", 16), skipped, strict, max_pixels=_max_pixels(cfg)
    )
    return Source(cfg.name, split or "", classes, items, skipped, str(root))


def tinyimagenet_source(cfg, split: str) -> Source:
    """Tiny-ImageNet-200: ``train/<wnid>/images/*.JPEG``; ``val/images`` + ``val_annotations.txt``.

    Classes default to the sorted WordNet IDs of ``wnids.txt`` (the order an ImageFolder over
    ``train/`` gives, which is what the peers' teachers use); names from ``words.txt``.
    """
    hint = "Pass data.root=/path/to/tiny-imagenet-200 (holding wnids.txt, words.txt, train/, val/)."
    root = _require_dir(cfg.root, "data.root", hint)
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    if not (root / "wnids.txt").is_file():
        raise DataError(f"{root}/wnids.txt not found. {hint}")
    all_wnids = sorted((root / "wnids.txt").read_text().split())
    keys = [str(k) for k in cfg.classes] if cfg.get("classes") is not None else all_wnids
    words: dict[str, str] = {}
    if (root / "words.txt").is_file():
        for ln in (root / "words.txt").read_text(encoding="utf-8").splitlines():
            if "\t" in ln:
                w, n = ln.split("\t", 1)
                words[w] = n.split(",")[0].strip()
    names = _resolve_names(
        keys, cfg.get("class_names"), cfg.get("class_names_file"), lambda k: words.get(k, k)
    )
    classes = [ClassInfo(i, k, n) for i, (k, n) in enumerate(zip(keys, names, strict=True))]
    strict = bool(cfg.get("strict_classes", True))
    skipped: list[SkipRecord] = []
    index = {k: i for i, k in enumerate(keys)}
    per_class: list[list[tuple[str, str]]] = [[] for _ in keys]
    if split == "train":
        walk = FolderWalk(root, {c.index: root / "train" / c.key for c in classes})
        for c in classes:
            folder = root / "train" / c.key
            if not folder.is_dir():
                _class_problem(
                    strict,
                    f"class {c.index} ({c.key}) has no folder {folder}.",
                    skipped,
                    SkipRecord(c.key, str(folder), c.index, "scan", "class folder missing"),
                )
                continue
            per_class[c.index] = [(f"train/{i}", p) for i, p in walk.list(folder, c.index, skipped)]
    elif split == "val":
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise DataError(f"{ann} not found. {hint}")
        for ln in ann.read_text().splitlines():
            parts = ln.split("\t")
            if len(parts) >= 2 and parts[1] in index:
                p = root / "val" / "images" / parts[0]
                per_class[index[parts[1]]].append((p.relative_to(root).as_posix(), str(p)))
        for files in per_class:
            files.sort()
    else:
        raise ConfigError(f"Tiny-ImageNet split must be 'train' or 'val', got {split!r}")
    per_class = [_class_files(f, cfg, k) for f, k in zip(per_class, keys, strict=True)]
    items, classes = _files_to_items(
        per_class, classes, cfg.get("min_side", 16), skipped, strict, max_pixels=_max_pixels(cfg)
    )
    return Source(cfg.name, split, classes, items, skipped, str(root))


def _array_source(
    cfg,
    split: str,
    keys: list[str],
    default_names: list[str],
    arrays: np.ndarray,
    labels: np.ndarray,
    root: Path,
) -> Source:
    """Shared tail of the array-backed loaders: class selection, subsampling, items."""
    all_index = {k: i for i, k in enumerate(keys)}
    chosen = [str(k) for k in cfg.classes] if cfg.get("classes") is not None else keys
    unknown = [k for k in chosen if k not in all_index]
    if unknown:
        raise ConfigError(f"data.classes has unknown classes {unknown}; known: {keys}")
    names_by_key = dict(zip(keys, default_names, strict=True))
    names = _resolve_names(
        chosen, cfg.get("class_names"), cfg.get("class_names_file"), lambda k: names_by_key[k]
    )
    classes = [ClassInfo(i, k, n) for i, (k, n) in enumerate(zip(chosen, names, strict=True))]
    labels = np.asarray(labels, dtype=np.int64)
    keep_idx: list[int] = []
    new_label: dict[int, int] = {}
    for c in classes:
        old = all_index[c.key]
        idx = np.flatnonzero(labels == old).tolist()
        idx = _class_files(idx, cfg, c.key)
        keep_idx.extend(idx)
        new_label[old] = c.index
    keep_idx.sort()
    h, w = arrays.shape[1], arrays.shape[2]
    items = [SourceItem(f"{split}/{i:06d}", new_label[int(labels[i])], (w, h)) for i in keep_idx]
    return ArraySource(cfg.name, split, classes, items, [], str(root), arrays=arrays[keep_idx])


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path} not found: data.root must hold the python-version CIFAR batches.")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def cifar_source(cfg, split: str, *, hundred: bool) -> Source:
    """CIFAR-10/100 from the python pickles (``cifar-10-batches-py`` / ``cifar-100-python``)."""
    sub = "cifar-100-python" if hundred else "cifar-10-batches-py"
    hint = f"Pass data.root=/path/to/{sub} (or its parent), as torchvision downloads it."
    root = _require_dir(cfg.root, "data.root", hint)
    if (root / sub).is_dir():
        root = root / sub
    if split not in ("train", "test"):
        raise ConfigError(f"CIFAR split must be 'train' or 'test', got {split!r}")
    if hundred:
        d = _unpickle(root / split)
        data, labels = d[b"data"], d[b"fine_labels"]
        keys = [n.decode() for n in _unpickle(root / "meta")[b"fine_label_names"]]
    else:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        parts = [_unpickle(root / f) for f in files]
        data = np.concatenate([p[b"data"] for p in parts])
        labels = sum((list(p[b"labels"]) for p in parts), [])
        keys = [n.decode() for n in _unpickle(root / "batches.meta")[b"label_names"]]
    arrays = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return _array_source(
        cfg,
        split,
        keys,
        [humanize(k) for k in keys],
        np.ascontiguousarray(arrays),
        np.asarray(labels),
        root,
    )


FASHION_CLASSES = [
    ("tshirt_top", "T-shirt/top"),
    ("trouser", "trouser"),
    ("pullover", "pullover"),
    ("dress", "dress"),
    ("coat", "coat"),
    ("sandal", "sandal"),
    ("shirt", "shirt"),
    ("sneaker", "sneaker"),
    ("bag", "bag"),
    ("ankle_boot", "ankle boot"),
]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, file holds {arr.size} values")
    return arr.reshape(dims)


def fashion_arrays(cfg, split: str) -> tuple[np.ndarray, np.ndarray, Path]:
    """Fashion-MNIST images (N, 28, 28) and labels of ``split`` from their IDX files."""
    hint = (
        "Pass data.root=DIR holding train-images-idx3-ubyte[.gz] etc. On Debian: "
        "apt install dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist)."
    )
    root = _require_dir(cfg.root, "data.root", hint)
    if (root / "FashionMNIST" / "raw").is_dir():
        root = root / "FashionMNIST" / "raw"
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ConfigError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")

    def find(stem: str) -> Path:
        for cand in (root / stem, root / f"{stem}.gz"):
            if cand.is_file():
                return cand
        raise DataError(f"{root}/{stem}[.gz] not found. {hint}")

    images = read_idx(find(f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} {split} images but {len(labels)} labels")
    return np.ascontiguousarray(images), labels, root


def fashion_mnist_source(cfg, split: str) -> Source:
    """Fashion-MNIST from its IDX files (Debian's ``dataset-fashion-mnist`` or torchvision's)."""
    images, labels, root = fashion_arrays(cfg, split)
    keys = [k for k, _ in FASHION_CLASSES]
    return _array_source(cfg, split, keys, [n for _, n in FASHION_CLASSES], images, labels, root)


# Shapes and colours of the synthetic classes: distinct enough for a tiny model to tell apart.
_SYN_SHAPES = ["ellipse", "rectangle", "triangle", "cross", "diamond", "ring"]
_SYN_COLOURS = [
    (220, 40, 40),
    (40, 160, 60),
    (40, 80, 220),
    (230, 180, 30),
    (160, 60, 200),
    (30, 190, 200),
    (240, 120, 30),
    (120, 120, 120),
]
_SYN_SIZES = [(128, 96), (96, 128), (112, 112), (160, 96), (96, 144)]


def synthetic_image(
    seed: int, label: int, index: int, size: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One generated image: a class-coloured shape on a noisy textured background.

    Returns the RGB array and the shape's box (x0, y0, x1, y1), which tests use as ground
    truth for localisation.
    """
    rng = np.random.default_rng([seed, label, index])
    w, h = size
    base = rng.integers(60, 200, size=3)
    bg = np.clip(base + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(im)
    side = int(rng.integers(min(w, h) // 4, min(w, h) // 2))
    x0 = int(rng.integers(0, w - side))
    y0 = int(rng.integers(0, h - side))
    box = (x0, y0, x0 + side, y0 + side)
    colour = _SYN_COLOURS[label % len(_SYN_COLOURS)]
    shape = _SYN_SHAPES[label % len(_SYN_SHAPES)]
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(x0, y0 + side), (x0 + side // 2, y0), (x0 + side, y0 + side)], fill=colour)
    elif shape == "cross":
        t = max(2, side // 4)
        c = side // 2
        draw.rectangle((x0 + c - t, y0, x0 + c + t, y0 + side), fill=colour)
        draw.rectangle((x0, y0 + c - t, x0 + side, y0 + c + t), fill=colour)
    elif shape == "diamond":
        c = side // 2
        draw.polygon(
            [(x0 + c, y0), (x0 + side, y0 + c), (x0 + c, y0 + side), (x0, y0 + c)], fill=colour
        )
    else:
        draw.ellipse(box, outline=colour, width=max(2, side // 6))
    return np.asarray(im), box


def synthetic_source(cfg, split: str) -> Source:
    """Generated images of ``num_classes`` shape classes; needs no files.

    ``images_per_class`` may be an int or a per-class list (e.g. [13, 12, 12] = 37 images).
    Sizes cycle through landscape, portrait and square so the non-square paths run too.
    """
    n_cls = int(cfg.get("num_classes", 3))
    per = cfg.get("images_per_class", 8)
    per = (
        list(per) if isinstance(per, Sequence) and not isinstance(per, str) else [int(per)] * n_cls
    )
    if len(per) != n_cls:
        raise ConfigError(f"data.images_per_class lists {len(per)} counts for {n_cls} classes")
    seed = int(cfg.get("seed", 0)) + (0 if split == "train" else 1_000_003)
    keys = [f"{_SYN_SHAPES[i % len(_SYN_SHAPES)]}_{i}" for i in range(n_cls)]
    names = _resolve_names(keys, cfg.get("class_names"), None, lambda k: k.split("_")[0])
    classes = [ClassInfo(i, k, n) for i, (k, n) in enumerate(zip(keys, names, strict=True))]
    sizes = [tuple(s) for s in cfg.get("sizes") or _SYN_SIZES]
    arrays: list[np.ndarray] = []
    items: list[SourceItem] = []
    boxes: list[tuple[int, int, int, int]] = []
    for label, count in enumerate(per):
        for j in range(count):
            size = sizes[(label + j) % len(sizes)]
            arr, box = synthetic_image(seed, label, j, size)
            items.append(SourceItem(f"{split}/{label:02d}-{j:05d}", label, size))
            arrays.append(arr)
            boxes.append(box)
    src = ArraySource(cfg.name, split, classes, items, [], None, arrays=arrays)
    src.boxes = boxes
    return src
