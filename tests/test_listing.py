"""Listing large folders: the parallel header scan and the fast walk give the plain answers."""

import numpy as np
from PIL import Image

import distill.data.sources as sources


def test_parallel_header_scan_equals_the_plain_loop(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(40):
        p = tmp_path / f"{i:03d}.png"
        if i % 7 == 3:
            p.write_bytes(b"not an image")
        elif i % 11 == 5:
            p.write_bytes(b"")
        else:
            w, h = int(rng.integers(4, 40)), int(rng.integers(4, 40))
            Image.new("RGB", (w, h)).save(p)
        paths.append(str(p))
    plain = [sources._size_or_reason(p, 8, None) for p in paths]
    monkeypatch.setattr(sources, "_PARALLEL_FROM", 10)
    monkeypatch.setattr(sources, "_CHUNK", 3)
    assert sources._scan_sizes(paths, 8, None, workers=2) == plain
    assert sum(isinstance(r, str) for r in plain) >= 8  # unreadable, empty and too small


def test_walk_order_is_os_walks(tmp_path):
    """A folder's files (sorted), then its subfolders, depth first, as os.walk lists them."""
    import os

    for rel in ("c/b.png", "c/a.png", "c/z/y.png", "c/z/x/w.png", "c/m/n.png", "c/m.png"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (9, 9)).save(p)
    walk = sources.FolderWalk(tmp_path, {0: tmp_path / "c"})
    got = [s for s, _ in walk.list(tmp_path / "c", 0, [])]
    want = []
    for d, dirs, files in os.walk(tmp_path / "c"):
        dirs.sort()
        want += [os.path.relpath(os.path.join(d, f), tmp_path) for f in sorted(files)]
    assert got == want


def _folder_cfg(root):
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "name": "f",
            "kind": "folder",
            "root": str(root),
            "classes": None,
            "class_names": None,
            "class_names_file": None,
            "images_per_class": None,
            "subsample_seed": 0,
            "min_side": 8,
            "strict_classes": True,
        }
    )


def _tree(root):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10 + i, 12)).save(root / c / f"{i}.png")


def test_the_listing_index_is_reused_and_rebuilt_when_anything_changes(tmp_path, monkeypatch):
    import os

    import distill.data.catalog as catalog

    root, index = tmp_path / "data", tmp_path / "bank" / "listing"
    _tree(root)
    cfg = _folder_cfg(root)
    builds = []
    real_build = catalog._build
    monkeypatch.setattr(catalog, "_build", lambda c, s: builds.append(1) or real_build(c, s))

    def fresh():  # a new process: nothing cached in memory
        catalog.clear_source_cache()
        return catalog.build_source(cfg, None, index_dir=index)

    first = fresh()
    assert len(builds) == 1 and len(list(index.glob("listing-*.pkl"))) == 1
    again = fresh()
    assert len(builds) == 1, "a later stage must read the index, not list again"
    assert [(i.source, i.size) for i in again.items] == [(i.source, i.size) for i in first.items]
    # an image edited in place (same name, same folder, other size)
    p = root / "a" / "1.png"
    Image.new("RGB", (30, 31)).save(p)
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    edited = fresh()
    assert len(builds) == 2 and dict((i.source, i.size) for i in edited.items)["a/1.png"] == (
        30,
        31,
    )
    # a file added
    Image.new("RGB", (9, 9)).save(root / "b" / "new.png")
    assert len(fresh().items) == 7 and len(builds) == 3
    # a garbled index is listed again, with a warning
    next(index.glob("listing-*.pkl")).write_bytes(b"garbage")
    assert len(fresh().items) == 7 and len(builds) == 4
    fresh()
    assert len(builds) == 4


def test_the_index_is_keyed_by_the_data_config(tmp_path):
    import distill.data.catalog as catalog

    root, index = tmp_path / "data", tmp_path / "listing"
    _tree(root)
    catalog.build_source(_folder_cfg(root), None, index_dir=index)
    cfg2 = _folder_cfg(root)
    cfg2.images_per_class = 2
    catalog.clear_source_cache()
    assert len(catalog.build_source(cfg2, None, index_dir=index).items) == 4
    assert len(list(index.glob("listing-*.pkl"))) == 2
