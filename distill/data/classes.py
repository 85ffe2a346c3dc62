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


def write_classes_csv(classes: list[ClassInfo], path: str | Path) -> None:
    """Record the class order next to an output (index, key, name)."""
    from distill.io import write_csv_rows

    write_csv_rows(path, ["index", "key", "name"], [[c.index, c.key, c.name] for c in classes])
