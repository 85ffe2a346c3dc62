"""Assembly geometry and pixel content, and the written ImageFolder + manifest."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from distill.assembly import PatchRef, crop_patch, tile, write_distilled_set
from distill.data.classes import ClassInfo
from distill.data.records import SourceItem
from distill.data.sources import ArraySource
from tests.conftest import random_rgb


def source_of(sizes):
    classes = [ClassInfo(0, "cat_dir", "cat"), ClassInfo(1, "dog_dir", "dog")]
    arrays = [random_rgb(h, w, seed=i) for i, (w, h) in enumerate(sizes)]
    items = [SourceItem(f"s/{i}", i % 2, (w, h)) for i, (w, h) in enumerate(sizes)]
    return ArraySource("t", "train", classes, items, [], None, arrays=arrays)


def test_tile_places_patches_row_major():
    patches = [
        Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]
    ]
    out = np.asarray(tile(patches, 2))
    assert out.shape == (16, 16, 3)
    assert (out[:8, :8] == [255, 0, 0]).all() and (out[:8, 8:] == [0, 255, 0]).all()
    assert (out[8:, :8] == [0, 0, 255]).all() and (out[8:, 8:] == [9, 9, 9]).all()


def test_crop_patch_resizes_the_box():
    im = Image.fromarray(random_rgb(100, 150))
    got = crop_patch(im, (10, 20, 74, 84), 32)
    want = im.crop((10, 20, 74, 84)).resize((32, 32), Image.Resampling.BICUBIC, reducing_gap=None)
    assert np.array_equal(np.asarray(got), np.asarray(want))
    assert np.array_equal(np.asarray(crop_patch(im, (0, 0, 32, 32), 32)), np.asarray(im)[:32, :32])


@pytest.mark.parametrize("per_image,size", [(4, 64), (1, 48)])
def test_write_distilled_set(tmp_path, per_image, size):
    src = source_of([(120, 90), (90, 120), (64, 64), (200, 100)])
    classes = [
        {"index": 0, "key": "cat_dir", "name": "cat", "source_index": 0},
        {"index": 1, "key": "dog_dir", "name": "dog", "source_index": 1},
    ]
    boxes = {0: (10, 5, 70, 65), 1: (0, 60, 60, 120), 2: (4, 4, 36, 36), 3: (140, 40, 200, 100)}
    refs = {
        0: [
            PatchRef(i, f"s/{i}", boxes[i], 0.1 * j, j % 3, j % 3)
            for j, i in enumerate([0, 2, 0, 2] * 2)
        ],
        1: [PatchRef(i, f"s/{i}", boxes[i], 0.2, -1, -1, "fill") for i in [1, 3, 3, 1] * 2],
    }
    out = tmp_path / "ipc"
    (out / "stale_class").mkdir(parents=True)  # an older set is replaced whole
    info = write_distilled_set(
        out,
        classes,
        refs,
        src,
        ipc=8 // per_image,
        tiles=2 if per_image == 4 else 1,
        image_size=size,
    )
    n_img = 8 // per_image
    assert info["images"] == 2 * n_img
    assert sorted(p.name for p in out.iterdir()) == [
        "cat_dir",
        "classes.csv",
        "dog_dir",
        "manifest.csv",
        "set.json",
    ]
    info_json = json.loads((out / "set.json").read_text())
    assert info_json["tiles"] == (2 if per_image == 4 else 1)
    assert info_json["patches_per_image"] == per_image and info_json["image_size"] == size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16
    tile_size = size // 2 if per_image == 4 else size
    for r in rows:
        img = np.asarray(Image.open(out / r["file"]))
        assert img.shape == (size, size, 3)
        i = int(r["source"].split("/")[1])
        box = tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1"))
        w, h = src.items[i].size
        assert box == boxes[i] and 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
        slot = int(r["slot"])
        y, x = divmod(slot, 2) if per_image == 4 else (0, 0)
        want = np.asarray(crop_patch(src.load(i), box, tile_size))
        got = img[y * tile_size : (y + 1) * tile_size, x * tile_size : (x + 1) * tile_size]
        assert np.array_equal(got, want), r
        assert r["class_name"] == ("cat" if r["file"].startswith("cat") else "dog")
    assert {r["note"] for r in rows if r["class_index"] == "1"} == {"fill"}
    with open(out / "classes.csv", newline="") as f:
        assert [r["key"] for r in csv.DictReader(f)] == ["cat_dir", "dog_dir"]


def test_write_distilled_set_files_and_records(tmp_path):
    """What a reader relies on, exactly: file names and format, the manifest's score field,
    a class without patches, classes.csv's header and set.json's fields, a new nested
    folder, and an unreadable source named in the error."""
    from distill.assembly import SET_FORMAT
    from distill.errors import DataError

    src = source_of([(64, 64), (64, 64), (64, 64)])
    classes = [
        {"index": 0, "key": "cat_dir", "name": "cat", "source_index": 0},
        {"index": 1, "key": "dog_dir", "name": "dog", "source_index": 1},
        {"index": 2, "key": "cow_dir", "name": "cow", "source_index": 5},
    ]
    refs = {
        0: [PatchRef(0, "s/0", (0, 0, 32, 32)), PatchRef(2, "s/2", (8, 8, 40, 40), 0.5)],
        1: [PatchRef(1, "s/1", (0, 0, 64, 64), -0.25, 3, 1, "fill")],
    }  # no entry for label 2
    out = tmp_path / "new" / "nested" / "ipc1"
    info = write_distilled_set(out, classes, refs, src, ipc=1, tiles=1, image_size=32)
    assert info == {
        "images": 3,
        "per_class": {"cat_dir": 2, "dog_dir": 1, "cow_dir": 0},
        "patches": 3,
    }
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == [
        "cat_dir/0000.png", "cat_dir/0001.png", "classes.csv", "dog_dir/0000.png",
        "manifest.csv", "set.json",
    ]  # fmt: skip
    assert (out / "cow_dir").is_dir() and not list((out / "cow_dir").iterdir())
    assert Image.open(out / "cat_dir" / "0000.png").format == "PNG"
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["file"], r["score"], r["cluster"], r["cluster_rank"], r["note"]) for r in rows] == [
        ("cat_dir/0000.png", "", "-1", "-1", ""),
        ("cat_dir/0001.png", "0.5", "-1", "-1", ""),
        ("dog_dir/0000.png", "-0.25", "3", "1", "fill"),
    ]
    assert (out / "classes.csv").read_text().splitlines() == [
        "index,key,name,source_index", "0,cat_dir,cat,0", "1,dog_dir,dog,1", "2,cow_dir,cow,5",
    ]  # fmt: skip
    assert json.loads((out / "set.json").read_text()) == {
        "format": SET_FORMAT, "ipc": 1, "tiles": 1, "patches_per_image": 1, "image_size": 32,
        "num_classes": 3, "images": 3,
    }  # fmt: skip
    # Rewriting replaces the set whole (and a stale copy a killed rewrite left) and leaves no
    # temporary folder behind.
    (out.parent / ".ipc1.old" / "cat_dir").mkdir(parents=True)
    write_distilled_set(out, classes[:1], {0: refs[0][:1]}, src, ipc=1, tiles=1, image_size=32)
    assert sorted(p.name for p in out.iterdir()) == [
        "cat_dir", "classes.csv", "manifest.csv", "set.json",
    ]  # fmt: skip
    assert [p.name for p in out.parent.iterdir()] == ["ipc1"]

    class Watched(ArraySource):
        """While the set is being written, the only new entry beside it is a hidden folder
        named after it (same filesystem: the final rename is atomic; hidden: no reader takes
        a half-written set for one)."""

        seen: list[list[str]] = []

        def load(self, i):
            self.seen.append(sorted(p.name for p in out.parent.iterdir()))
            return super().load(i)

    watched = Watched("t", "train", src.classes, src.items, [], None, arrays=src.arrays)
    write_distilled_set(out, classes, refs, watched, ipc=1, tiles=1, image_size=32)
    for names in watched.seen:
        assert names[0].startswith(".ipc1.") and names[1:] == ["ipc1"], names

    class Broken(ArraySource):
        def load(self, i):
            from distill.data.images import UnreadableImage

            raise UnreadableImage("truncated")

    bad = Broken("t", "train", src.classes, src.items, [], None, arrays=src.arrays)
    bad.items = [SourceItem("s/0", 0, (64, 64), path="/data/cat/0.jpg")] + src.items[1:]
    with pytest.raises(DataError, match="cannot read /data/cat/0.jpg for a distilled patch"):
        write_distilled_set(tmp_path / "x", classes, refs, bad, ipc=1, tiles=1, image_size=32)
    assert not (tmp_path / "x").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".x.")]  # cleaned up
