"""A source's items as a few arrays, for the datasets DataLoader workers index.

A forked DataLoader worker shares its parent's memory page by page until it writes to a page,
and Python writes to every object it touches (its reference count) and to every object the
cyclic garbage collector visits. A list of 1.3M `SourceItem` dataclasses (about 0.5 GB) is
therefore copied, bit by bit, into every worker that reads it. `ItemTable` holds the same
items as two byte blobs (ids and paths, with their end offsets), a label array and a size
array: no Python object per item, so nothing per item is copied, and ``table[i]`` builds the
`SourceItem` that ``items[i]`` was (same fields, same Python types).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from distill.data.records import SourceItem


def _blob(strings: list[bytes]) -> tuple[bytes, np.ndarray]:
    ends = np.cumsum(np.fromiter(map(len, strings), dtype=np.int64, count=len(strings)))
    return b"".join(strings), ends


class ItemTable(Sequence):
    """Read-only `SourceItem`s stored column by column."""

    def __init__(self, items: Iterable[SourceItem]):
        items = list(items)
        self._ids, self._id_ends = _blob([it.source.encode("utf-8") for it in items])
        # A missing path (items a source makes itself) is kept apart from an empty one.
        self._has_path = np.fromiter((it.path is not None for it in items), bool, len(items))
        self._paths, self._path_ends = _blob(
            [(it.path or "").encode("utf-8", "surrogateescape") for it in items]
        )
        self.labels = np.fromiter((it.label for it in items), dtype=np.int64, count=len(items))
        self.sizes = np.array([it.size for it in items], dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def _cut(blob: bytes, ends: np.ndarray, i: int) -> bytes:
        return blob[int(ends[i - 1]) if i else 0 : int(ends[i])]

    def source(self, i: int) -> str:
        return self._cut(self._ids, self._id_ends, i).decode("utf-8")

    def path(self, i: int) -> str | None:
        if not self._has_path[i]:
            return None
        return self._cut(self._paths, self._path_ends, i).decode("utf-8", "surrogateescape")

    def size(self, i: int) -> tuple[int, int]:
        w, h = self.sizes[i].tolist()
        return (w, h)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        j = int(i)
        if j < 0:
            j += len(self)
        if not 0 <= j < len(self):
            raise IndexError(f"item {i} of {len(self)}")
        return SourceItem(self.source(j), int(self.labels[j]), self.size(j), self.path(j))

    def nbytes(self) -> int:
        arrays = (self._id_ends, self._path_ends, self._has_path, self.labels, self.sizes)
        return len(self._ids) + len(self._paths) + sum(a.nbytes for a in arrays)


def compact_items(items: Sequence[SourceItem]) -> ItemTable:
    """``items`` as an `ItemTable` (an `ItemTable` is returned as it is)."""
    return items if isinstance(items, ItemTable) else ItemTable(items)
