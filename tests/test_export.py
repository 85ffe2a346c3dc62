"""`python -m distill.export`: distilled sets in RDED's, an order-proof ImageFolder's and
DD-Ranking's formats, read back with torchvision's ImageFolder (the readers of the peers)
and, where ``.venv-ddranking`` exists (`make ddranking-check`), with DD-Ranking's own code.

The sets are built by hand in the layout `distill.assembly.write_distilled_set` writes:
solid-colour PNGs whose colour encodes (class, image), so every exported image can be traced
back to the class it came from."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision.datasets import ImageFolder

from distill.errors import ConfigError, DataError
from distill.export import DDRANKING_SUBSETS, NORMALIZATION, export, export_set, main
from tests.conftest import ROOT

# ImageWoof's classes: sorted WordNet IDs (ImageNet 155 ... 273) and the "minimax" order of
# Minimax, CaO2 and DD-Ranking (ImageNet 193, 182, 258, ...), which a sorted listing scrambles.
_WOOF = OmegaConf.load(ROOT / "conf" / "data" / "imagewoof.yaml")
WOOF_SORTED = list(_WOOF.classes)  # the preset's own lists, not a copy of them
WOOF_MINIMAX = list(_WOOF.class_orders.minimax)


def colour(key: str, j: int) -> tuple[int, int, int]:
    """A colour unique to (class key, image j), far apart between classes (JPEG-proof)."""
    k = WOOF_SORTED.index(key) if key in WOOF_SORTED else sum(map(ord, key)) % 10
    return (20 + 22 * k, 40 + 40 * j, 200 - 15 * k)


def key_of(rgb) -> str:
    """The class key a (possibly JPEG-ed) colour came from."""
    r = float(np.asarray(rgb, dtype=float)[..., 0].mean())
    return WOOF_SORTED[int(round((r - 20) / 22))]


def make_set(
    root: Path,
    keys: list[str],
    ipc: int = 2,
    size: int = 32,
    dataset: str = "imagewoof",
    class_order: str = "minimax",
    counts: dict[str, int] | None = None,
    name: str | None = None,
) -> Path:
    """A distilled set folder ``root/distilled/ipc{ipc}`` (classes in ``keys``' order) and the
    run's classes.csv, as distill writes them."""
    set_dir = root / "distilled" / (name or f"ipc{ipc}")
    set_dir.mkdir(parents=True)
    manifest = []
    for i, k in enumerate(keys):
        (set_dir / k).mkdir()
        for j in range((counts or {}).get(k, ipc)):
            Image.new("RGB", (size, size), colour(k, j)).save(set_dir / k / f"{j:04d}.png")
            manifest.append([f"{k}/{j:04d}.png", 0, i, k, f"src/{k}/{j}.JPEG", 0, 0, 8, 8, 0.5])
    with open(set_dir / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "slot", "class_index", "class_name", "source", "x0", "y0", "x1"])
        w.writerows(manifest)
    rows = [
        [i, k, f"dog {k}", WOOF_SORTED.index(k) if k in WOOF_SORTED else i]
        for i, k in enumerate(keys)
    ]
    for path in (set_dir / "classes.csv", root / "classes.csv"):
        if path == root / "classes.csv" and path.exists():
            continue
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "key", "name", "source_index"])
            w.writerows(rows)
    info = {
        "format": "dpd-distilled-set-v1",
        "ipc": ipc,
        "tiles": 2,
        "patches_per_image": 4,
        "image_size": size,
        "num_classes": len(keys),
        "images": ipc * len(keys),
        "selector": "diffusion",
        "dataset": dataset,
        "class_order": class_order,
        "class_subset": False,
    }
    (set_dir / "set.json").write_text(json.dumps(info))
    return set_dir


class _Source:
    """What `write_distilled_set` reads: ``load(item)`` and ``items``."""

    def __init__(self, keys):
        self.keys = keys
        self.items = list(range(len(keys) * 8))

    def load(self, item):
        return Image.new("RGB", (64, 64), colour(self.keys[item // 8], item % 8 // 4))


def test_reads_the_sets_distill_writes(tmp_path):
    """The set as `distill.assembly.write_distilled_set` writes it (2x2 tilings, minimax
    order), exported to every format."""
    from distill.assembly import PatchRef, write_distilled_set

    classes = [
        {"index": i, "key": k, "name": k, "source_index": WOOF_SORTED.index(k)}
        for i, k in enumerate(WOOF_MINIMAX)
    ]
    refs = {
        i: [PatchRef(i * 8 + r, f"src{i}_{r}", (0, 0, 64, 64)) for r in range(8)] for i in range(10)
    }
    set_dir = tmp_path / "run" / "distilled" / "ipc2"
    info = {"dataset": "imagewoof", "class_order": "minimax", "class_subset": False}
    write_distilled_set(set_dir, classes, refs, _Source(WOOF_MINIMAX), 2, 2, 32, info=info)
    for fmt in ("rded", "imagefolder", "ddranking"):
        [(out, rec)] = export(tmp_path / "run", fmt)
        assert rec["images"] == 20 and [c["key"] for c in rec["classes"]] == WOOF_MINIMAX
        assert rec["source_set"]["tiles"] == 2 and rec["label_order"] == (
            "ddranking:ImageWoof" if fmt == "ddranking" else "minimax"
        )
    ds = ImageFolder(str(tmp_path / "run" / "export" / "imagefolder" / "ipc2"))
    assert [f.split("_", 1)[1] for f in ds.class_to_idx] == WOOF_MINIMAX


def read_json(p: Path) -> dict:
    return json.loads(p.read_text())


# ---------------------------------------------------------------------------------- rded


def test_rded_layout_keeps_an_unsorted_order_through_imagefolder(tmp_path):
    set_dir = make_set(tmp_path / "run", WOOF_MINIMAX, ipc=2)
    [(out, rec)] = export(tmp_path / "run", "rded")
    assert out == tmp_path / "run" / "export" / "rded" / "ipc2"
    folders = sorted(d.name for d in out.iterdir() if d.is_dir())
    assert folders == [f"{i:05d}" for i in range(10)]
    assert sorted(os.listdir(out / "00003")) == ["class00003_id00000.jpg", "class00003_id00001.jpg"]
    # torchvision's ImageFolder (RDED's reader subclasses it): label i = classes.csv row i.
    ds = ImageFolder(str(out))
    assert ds.class_to_idx == {f"{i:05d}": i for i in range(10)}
    for path, label in ds.samples:
        assert key_of(Image.open(path).convert("RGB")) == WOOF_MINIMAX[label], path
    # RDED's validation/utils.py ImageFolder: folder str(c).zfill(5), ipc files, label c.
    for c in range(10):
        files = os.listdir(out / str(c).zfill(5))
        assert len(files) >= 2
        assert key_of(Image.open(out / str(c).zfill(5) / files[0])) == WOOF_MINIMAX[c]
    with open(out / "classes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == WOOF_MINIMAX
    assert [r["folder"] for r in rows] == [f"{i:05d}" for i in range(10)]
    assert rec == read_json(out / "export.json")
    assert rec["export_format"] == "rded" and rec["ipc"] == 2 and rec["images"] == 20
    assert [c["key"] for c in rec["classes"]] == WOOF_MINIMAX
    assert rec["label_order"] == "minimax" and rec["options"] == {"quality": 95}
    assert rec["source"] == str(set_dir.resolve())
    assert rec["counts"] == dict.fromkeys(WOOF_MINIMAX, 2)
    with open(out / "files.csv", newline="") as f:
        files = list(csv.DictReader(f))
    assert files[0] == {
        "file": "00000/class00000_id00000.jpg",
        "source": f"{WOOF_MINIMAX[0]}/0000.png",
        "label": "0",
        "key": WOOF_MINIMAX[0],
    }


def test_rded_quality_is_the_jpeg_quality(tmp_path):
    make_set(tmp_path / "run", WOOF_SORTED[:3], ipc=1, size=64, dataset="folder")
    # A textured image, where quality shows in the file size.
    src = tmp_path / "run" / "distilled" / "ipc1" / WOOF_SORTED[0] / "0000.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(src)
    sizes = {}
    for q in (75, 95):
        [(out, rec)] = export(tmp_path / "run", "rded", out=tmp_path / f"q{q}", quality=q)
        assert rec["options"] == {"quality": q}
        sizes[q] = (out / "00000" / "class00000_id00000.jpg").stat().st_size
    assert sizes[75] < sizes[95]
    with pytest.raises(ConfigError, match="quality=0"):
        export(tmp_path / "run", "rded", out=tmp_path / "q0", quality=0)


# --------------------------------------------------------------------------- imagefolder


def test_imagefolder_prefixes_make_sorted_order_the_label_order(tmp_path):
    set_dir = make_set(tmp_path / "run", WOOF_MINIMAX, ipc=2)
    # The problem: an ImageFolder reader of the set itself re-sorts its <wnid>/ folders.
    assert list(ImageFolder(str(set_dir)).class_to_idx) == WOOF_SORTED != WOOF_MINIMAX
    [(out, rec)] = export(set_dir, "imagefolder")
    assert out == tmp_path / "run" / "export" / "imagefolder" / "ipc2"
    ds = ImageFolder(str(out))
    assert ds.class_to_idx == {f"{i:03d}_{k}": i for i, k in enumerate(WOOF_MINIMAX)}
    for path, label in ds.samples:
        p = Path(path)
        assert p.parent.name.split("_", 1)[1] == WOOF_MINIMAX[label]
        # Copied unchanged: the same bytes as the distilled PNG.
        assert p.read_bytes() == (set_dir / WOOF_MINIMAX[label] / p.name).read_bytes()
    assert [c["folder"] for c in rec["classes"]] == list(ds.class_to_idx)
    assert read_json(out / "export.json")["export_format"] == "imagefolder"


def test_imagefolder_takes_uneven_classes_rded_and_ddranking_refuse_them(tmp_path):
    keys = WOOF_SORTED[:3]
    make_set(tmp_path / "run", keys, ipc=2, counts={keys[1]: 1}, dataset="folder")
    [(out, rec)] = export(tmp_path / "run", "imagefolder")
    assert rec["counts"] == {keys[0]: 2, keys[1]: 1, keys[2]: 2}
    for fmt in ("rded", "ddranking"):
        with pytest.raises(DataError, match=f"format={fmt} needs exactly ipc=2.*{keys[1]}: 1"):
            export(tmp_path / "run", fmt)


def test_imagefolder_wide_class_counts_pad_to_the_widest_label(tmp_path):
    keys = [f"c{i}" for i in range(1001)][::-1]  # 1001 classes, listed in reverse
    set_dir = make_set(tmp_path / "run", keys[:1001], ipc=1, size=4, dataset="folder")
    [(out, _)] = export(set_dir, "imagefolder")
    ds = ImageFolder(str(out))
    assert list(ds.class_to_idx)[:2] == ["0000_c1000", "0001_c999"]
    assert list(ds.class_to_idx.values()) == list(range(1001))


# ----------------------------------------------------------------------------- ddranking


def test_ddranking_tensor_is_normalised_class_by_class(tmp_path):
    make_set(tmp_path / "run", WOOF_MINIMAX, ipc=2, size=16)
    [(out, rec)] = export(tmp_path / "run", "ddranking", dataset="none")
    images = torch.load(out / "images.pt", map_location="cpu")  # as DD-Ranking's demos do
    assert images.shape == (20, 3, 16, 16) and images.dtype == torch.float32
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATION["imagenet"])
    for row in range(20):
        label, j = divmod(row, 2)
        want = (torch.tensor(colour(WOOF_MINIMAX[label], j)).view(3, 1, 1) / 255 - mean) / std
        assert torch.allclose(images[row], want.expand(3, 16, 16), atol=1e-5), row
    # DD-Ranking's hard labels: [i] * ipc for each class i (metrics/hard_label.py).
    theirs = torch.tensor(np.array([np.ones(2) * i for i in range(10)]), dtype=torch.long).view(-1)
    assert torch.equal(torch.load(out / "hard_labels.pt"), theirs)
    assert rec["label_order"] == "minimax" and rec["ddranking_dataset"] is None
    assert rec["tensor"]["shape"] == [20, 3, 16, 16] and rec["tensor"]["normalize"] == "imagenet"
    assert rec["ddranking_args"] == {
        "ipc": 2,
        "im_size": [16, 16],
        "use_zca": False,
        "dataset": None,
    }
    assert not (out / "labels.pt").exists()  # labels.pt means soft labels to DD-Ranking


@pytest.mark.parametrize("order", [WOOF_SORTED, WOOF_MINIMAX])
def test_ddranking_follows_its_own_imagewoof_order(tmp_path, order):
    """DD-Ranking's ImageWoof label i is ImageNet class ImageNetSubsets.imagewoof[i] (the
    minimax order); a set in the sorted order is reordered, loudly, one in minimax is not."""
    make_set(tmp_path / "run", order, ipc=1, size=8, class_order="x")
    [(out, rec)] = export(tmp_path / "run", "ddranking")  # dataset=auto: set.json's imagewoof
    assert rec["ddranking_dataset"] == "ImageWoof" and rec["label_order"] == "ddranking:ImageWoof"
    assert [c["imagenet_index"] for c in rec["classes"]] == DDRANKING_SUBSETS["ImageWoof"]
    assert [c["key"] for c in rec["classes"]] == WOOF_MINIMAX
    assert [c["set_index"] for c in rec["classes"]] == [order.index(k) for k in WOOF_MINIMAX]
    images = torch.load(out / "images.pt")
    std, mean = NORMALIZATION["imagenet"][1][0], NORMALIZATION["imagenet"][0][0]
    for i, k in enumerate(WOOF_MINIMAX):
        red = float(images[i, 0].mean()) * std + mean
        assert key_of([red * 255, 0, 0]) == k


def test_ddranking_class_subset_refused_for_a_named_dataset(tmp_path):
    make_set(tmp_path / "run", WOOF_SORTED[:3], ipc=1, size=8)
    with pytest.raises(DataError, match="DD-Ranking's ImageWoof has 10 classes.*dataset=none"):
        export(tmp_path / "run", "ddranking", dataset="ImageWoof")
    # dataset=auto falls back to the set's own order (with a warning).
    [(_, rec)] = export(tmp_path / "run", "ddranking")
    assert (
        rec["ddranking_dataset"] is None and [c["key"] for c in rec["classes"]] == WOOF_SORTED[:3]
    )


def test_ddranking_size_normalize_and_cifar_stats(tmp_path):
    cifar = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    make_set(tmp_path / "run", cifar[::-1], ipc=1, size=16, dataset="cifar10", class_order="native")
    [(out, rec)] = export(tmp_path / "run", "ddranking", size=8)
    assert rec["ddranking_dataset"] == "CIFAR10" and [c["key"] for c in rec["classes"]] == cifar
    assert rec["tensor"]["mean"] == NORMALIZATION["cifar"][0]
    assert torch.load(out / "images.pt").shape == (10, 3, 8, 8)
    [(out, rec)] = export(
        tmp_path / "run", "ddranking", out=tmp_path / "raw", normalize="none", size=[4, 6]
    )
    x = torch.load(out / "images.pt")
    assert x.shape == (10, 3, 4, 6) and float(x.min()) >= 0 and float(x.max()) <= 1
    with pytest.raises(ConfigError, match="normalize='zca'"):
        export(tmp_path / "run", "ddranking", out=tmp_path / "z", normalize="zca")
    with pytest.raises(ConfigError, match="dataset='CIFAR11'"):
        export(tmp_path / "run", "ddranking", out=tmp_path / "z", dataset="CIFAR11")


# ------------------------------------------------------------------ sources and refusals


def test_run_folder_exports_every_ipc_or_the_one_asked(tmp_path):
    run = tmp_path / "run"
    make_set(run, WOOF_MINIMAX[:2], ipc=1, size=8)
    make_set(run, WOOF_MINIMAX[:2], ipc=3, size=8)
    make_set(run, WOOF_MINIMAX[:1], ipc=1, size=8, name="classes-x/ipc1")
    done = export(run, "imagefolder")
    assert [p.name for p, _ in done] == ["ipc1", "ipc3"]
    [(out, rec)] = export(run, "rded", ipc=3, out=tmp_path / "elsewhere")
    assert out == tmp_path / "elsewhere" / "ipc3" and rec["ipc"] == 3
    # A class subset's folder of sets (distilled/classes-<...>/) keeps its path.
    [(out, _)] = export(run / "distilled" / "classes-x", "rded")
    assert out == run / "export" / "rded" / "classes-x" / "ipc1"
    with pytest.raises(DataError, match=r"no ipc2/: its sets are IPC \[1, 3\]"):
        export(run, "rded", ipc=2)
    with pytest.raises(ConfigError, match="ipc=2 but the set .* holds IPC 3"):
        export(run / "distilled" / "ipc3", "rded", ipc=2)


def test_refuses_to_overwrite_without_overwrite_true(tmp_path):
    make_set(tmp_path / "run", WOOF_MINIMAX[:2], ipc=1, size=8)
    [(out, _)] = export(tmp_path / "run", "rded")
    (out / "stale.txt").write_text("old")
    with pytest.raises(ConfigError, match="already exists; pass overwrite=true"):
        export(tmp_path / "run", "rded")
    [(out, _)] = export(tmp_path / "run", "rded", overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "export.json").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left
    # A folder that is no export is never replaced, and the set itself never written over.
    (tmp_path / "mine" / "ipc1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not an export"):
        export(tmp_path / "run", "rded", out=tmp_path / "mine", overwrite=True)
    with pytest.raises(ConfigError, match="overlaps the set"):
        export_set(
            tmp_path / "run" / "distilled" / "ipc1", "rded", tmp_path / "run", overwrite=True
        )


def test_every_target_is_checked_before_the_first_is_written(tmp_path):
    run = tmp_path / "run"
    make_set(run, WOOF_MINIMAX[:2], ipc=1, size=8)
    make_set(run, WOOF_MINIMAX[:2], ipc=3, size=8)
    export(run, "rded", ipc=3)
    with pytest.raises(ConfigError, match="ipc3 already exists"):
        export(run, "rded")
    assert not (run / "export" / "rded" / "ipc1").exists()


def test_errors_for_bad_sets_and_arguments(tmp_path):
    set_dir = make_set(tmp_path / "run", WOOF_MINIMAX[:3], ipc=1, size=8)
    with pytest.raises(DataError, match="does not exist"):
        export(tmp_path / "nowhere", "rded")
    with pytest.raises(ConfigError, match="format='tfrecord' is not one of"):
        export(tmp_path / "run", "tfrecord")
    with pytest.raises(DataError, match="no distilled set in"):
        export(tmp_path, "rded")
    os.rename(set_dir / WOOF_MINIMAX[2], set_dir / "n99999999")
    with pytest.raises(
        DataError, match="do not match its classes.csv.*only folders: \\[n99999999\\]"
    ):
        export(tmp_path / "run", "rded")
    os.rename(set_dir / "n99999999", set_dir / WOOF_MINIMAX[2])
    for f in (set_dir / WOOF_MINIMAX[2]).iterdir():
        f.unlink()
    with pytest.raises(DataError, match="class folders without images"):
        export(tmp_path / "run", "rded")
    (set_dir / "classes.csv").unlink()
    with pytest.raises(DataError, match="no classes.csv, so its label order is unknown"):
        export(set_dir, "rded")
    assert not (tmp_path / "run" / "export" / "rded" / "ipc1").exists()


def test_cli_one_line_errors_and_help(tmp_path, capsys):
    make_set(tmp_path / "run", WOOF_MINIMAX[:2], ipc=1, size=8)
    cases = {
        (str(tmp_path / "nowhere"), "format=rded"): "does not exist",
        (str(tmp_path / "run"), "format=zip"): "format='zip' is not one of",
        (str(tmp_path / "run"),): "format= is required",
        ("format=rded",): "the source is required",
        (
            str(tmp_path / "run"),
            "format=ddranking",
            "quality=90",
        ): "quality= applies to format=rded",
        (str(tmp_path / "run"), "format=rded", "colour=red"): "unknown arguments ['colour']",
        (str(tmp_path / "run"), "format=rded", "ipc=0"): "ipc=0 must be a positive integer",
        (str(tmp_path / "run"), "format=rded", "quality=high"): "quality='high' must be an",
        (str(tmp_path / "run"), "format=rded", "overwrite=maybe"): "overwrite='maybe' must be true",
        (str(tmp_path / "run"), "format=ddranking", "size=abc"): "size='abc' must be",
    }
    for argv, msg in cases.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and msg in err and "\n" not in err, err
    assert main(["--help"]) == 0
    assert "format" in capsys.readouterr().out
    assert main([f"src={tmp_path / 'run'}", "format=imagefolder"]) == 0
    assert "ipc1: 2 images, 2 classes (imagefolder)" in capsys.readouterr().out


def test_python_m_distill_export(tmp_path):
    make_set(tmp_path / "run", WOOF_MINIMAX[:2], ipc=1, size=8)
    r = subprocess.run(
        [sys.executable, "-m", "distill.export", str(tmp_path / "run"), "format=rded"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "export" / "rded" / "ipc1" / "00001").is_dir()
    r = subprocess.run(
        [sys.executable, "-m", "distill.export", str(tmp_path / "run"), "format=rded"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ")


# -------------------------------------------------------------- DD-Ranking's own code path

DDRANKING_PY = ROOT / ".venv-ddranking" / "bin" / "python"


@pytest.mark.skipif(not DDRANKING_PY.exists(), reason="no .venv-ddranking (make ddranking-check)")
def test_ddranking_reads_our_export_with_its_own_code(tmp_path):
    """benchmarks/ddranking_check.py, under DD-Ranking's own install: its get_dataset over a
    stand-in ImageNet whose ImageWoof images are our distilled ones, its hard-label
    derivation, TensorDataset and one epoch of its train_one_epoch on images.pt, and its
    image_path reader (torchvision's ImageFolder) on the rded and imagefolder exports."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ddranking_check.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ddranking-check: ok" in r.stdout
