"""The DataLoader datasets index their items as arrays (`ItemTable`), never the source's list
of objects, which forked workers would otherwise copy page by page."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from distill.data.dataset import ResizedImages
from distill.data.item_table import ItemTable, compact_items
from distill.data.records import SourceItem
from distill.data.sources import Source


class Untouchable(list):
    """A list the dataset may hold but must not index once built."""

    armed = False

    def __getitem__(self, i):
        if self.armed:
            raise AssertionError("a worker indexed the source's list of items")
        return super().__getitem__(i)

    def __iter__(self):
        if self.armed:
            raise AssertionError("a worker iterated the source's list of items")
        return super().__iter__()


def items_of(n: int) -> list[SourceItem]:
    names = ["a/x.JPEG", "ünï/cödé 1.png", "b/ c.jpg", ""]
    return [
        SourceItem(
            f"{i}-{names[i % 4]}",
            i % 7,
            (100 + i, 50 + 3 * i),
            None if i % 5 == 0 else f"/data/{names[i % 4]}{i}",
        )
        for i in range(n)
    ]


def test_table_gives_back_each_item():
    items = items_of(53)
    t = ItemTable(items)
    assert len(t) == 53 and list(t) == items and t[-1] == items[-1] and t[3:9] == items[3:9]
    assert all(type(x.size) is tuple and type(x.label) is int for x in t)
    assert t[0].path is None and t[1].path == items[1].path
    assert compact_items(t) is t and list(ItemTable([])) == []
    with pytest.raises(IndexError):
        t[53]


def test_table_is_far_smaller_than_the_objects():
    import sys

    items = items_of(5000)
    objects = sum(
        sys.getsizeof(it) + sys.getsizeof(it.source) + sys.getsizeof(it.path) + 64 for it in items
    )
    assert ItemTable(items).nbytes() * 3 < objects


def test_resized_images_never_index_the_source_list(tmp_path):
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40 + i, 60, 3), 40 * i, np.uint8)).save(p)
        paths.append(p)
    items = Untouchable(SourceItem(p.name, i, (60, 40 + i), str(p)) for i, p in enumerate(paths))
    src = Source("t", "train", [], items, [], None)
    ds = ResizedImages(src, 32, multiple=8)
    ref = [
        ResizedImages(Source("t", "train", [], list(items), [], None), 32, multiple=8)[i]
        for i in range(4)
    ]
    items.armed = True
    for i in range(4):
        got = ds[i]
        assert got["source"] == ref[i]["source"] and got["orig_size"] == ref[i]["orig_size"]
        assert got["size"] == ds.target_size(i) == ref[i]["size"]
        assert np.array_equal(got["pixels"].numpy(), ref[i]["pixels"].numpy())
