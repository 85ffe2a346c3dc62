"""Class lists: who is class 0, and what we call it in a prompt.

Class order is the peers' most reported failure (a teacher trained with another order scores
~10% on ImageWoof), so every source resolves its classes here into an explicit, ordered list
of `ClassInfo` that is written next to every output.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class ClassInfo:
    """One class: its label index, the key that names it on disk (a WordNet ID or a folder
    name) and the human-readable name used in prompts."""

    index: int
    key: str
    name: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    name: str
    clip_name: str
    lemmas: str


@functools.cache
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """The 1000 ImageNet-1K classes in the standard order (sorted WordNet IDs)."""
    text = resources.files("distill.resources").joinpath("imagenet_classes.tsv").read_text()
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    reader = csv.DictReader(rows, delimiter="\t")
    out = tuple(
        ImageNetClass(int(r["index"]), r["wnid"], r["name"], r["clip_name"], r["lemmas"])
        for r in reader
    )
    assert len(out) == 1000, "imagenet_classes.tsv must hold 1000 rows"
    return out


@functools.cache
def imagenet_by_wnid() -> dict[str, ImageNetClass]:
    return {c.wnid: c for c in imagenet_classes()}


def imagenet_name(wnid: str, style: str = "name") -> str:
    """Human-readable name of an ImageNet WordNet ID.

    Args:
        wnid: e.g. ``n02086240``.
        style: ``name`` (first WordNet lemma, e.g. "Shih-Tzu") or ``clip_name`` (CLIP's
            cleaned name, e.g. "Shih Tzu"). Neither is unique: lemmas repeat "crane" and
            "maillot", CLIP names "missile" and "sunglasses"; such classes share a prompt.
    """
    table = imagenet_by_wnid()
    if wnid not in table:
        raise KeyError(f"{wnid!r} is not an ImageNet-1K WordNet ID")
    if style not in ("name", "clip_name"):
        raise ValueError(f"class name style must be 'name' or 'clip_name', got {style!r}")
    return getattr(table[wnid], style)


def read_names_file(path: str | Path) -> dict[str, str] | list[str]:
    """Read a class-names file.

    Two forms are accepted: ``key<TAB>name`` lines (a mapping from folder name or WordNet ID
    to a human name), or one name per line (names in class-index order). Blank lines and
    lines starting with ``#`` are ignored.
    """
    from distill.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"class names file not found: {path} (data.class_names_file)")
    lines = [
        ln.rstrip("\n")
        for ln in path.read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    if lines and all("\t" in ln for ln in lines):
        return dict(ln.split("\t", 1) for ln in lines)
    return [ln.strip() for ln in lines]


def humanize(key: str) -> str:
    """Folder name to prompt name: ``golden_retriever`` -> ``golden retriever``."""
    return key.replace("_", " ").strip()


# Names a class order can go by in ``data.class_order`` besides the named lists a data config
# defines under ``data.class_orders``.
LISTED, SORTED, NATIVE = "listed", "sorted", "native"


def resolve_class_order(
    classes: list[str] | None, order: str | None, named: dict | None = None
) -> tuple[list[str] | None, str]:
    """The class keys in label order, and the name of that order.

    Class order is the peers' most reported failure (ImageWoof has two orders in use), so it
    is chosen by name and recorded in every output.

    Args:
        classes: ``data.classes`` as written (None: the dataset's own list).
        order: ``data.class_order``: ``sorted`` (the keys in sorted order: for WordNet IDs the
            ImageNet index order and an ImageFolder's; a list written in another order is an
            error, never silently re-sorted), ``listed`` (as written), a key of ``named``
            (e.g. ImageWoof's ``minimax``), or None (as written, named ``sorted`` when it is).
        named: ``data.class_orders``: name -> the keys in that order (a permutation of
            ``classes``).

    Returns:
        (keys or None for the dataset's own order, order name).
    """
    from distill.errors import ConfigError

    named = dict(named or {})
    keys = [str(k) for k in classes] if classes is not None else None
    if order in named:
        theirs = [str(k) for k in named[order]]
        if keys is not None and sorted(theirs) != sorted(keys):
            raise ConfigError(
                f"data.class_orders.{order} is not a permutation of data.classes: only in the "
                f"order {sorted(set(theirs) - set(keys))[:5]}, only in data.classes "
                f"{sorted(set(keys) - set(theirs))[:5]}"
            )
        return theirs, str(order)
    if order == SORTED:
        if keys is not None and keys != sorted(keys):
            # Sorting a list someone wrote in another order would relabel it silently.
            raise ConfigError(
                f"data.class_order=sorted but data.classes is listed in another order "
                f"({keys[:4]} ...): set data.class_order=listed to keep that order, or list "
                "the classes sorted"
            )
        return keys, SORTED
    if order in (None, LISTED):
        if keys is None:
            return None, NATIVE
        return keys, SORTED if keys == sorted(keys) and order is None else LISTED
    raise ConfigError(
        f"data.class_order={order!r}: use {SORTED}, {LISTED}"
        + "".join(f", {n}" for n in named)
        + " (data.class_orders defines the named ones)"
    )


def write_classes_csv(classes: list[ClassInfo], path: str | Path) -> None:
    """Record the class order next to an output (index, key, name)."""
    from distill.io import write_csv_rows

    write_csv_rows(path, ["index", "key", "name"], [[c.index, c.key, c.name] for c in classes])
