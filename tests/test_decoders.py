"""The ``fast`` decoder: the same pixels as ``pil`` up to rounding, the same EXIF rule, the same
refusals, and a different bank hash; ``num_workers=auto``."""

import io

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from distill.data.images import (
    DECODE_RULES,
    UnreadableImage,
    _load_resized_fast,
    decode_rules,
    load_resized,
    resized_size,
)
from distill.errors import ConfigError


def photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients with texture: what JPEG and bicubic resizing were made for."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 6, w)[None, :, None] + np.linspace(0, 4, h)[:, None, None]
    base = 127 + 70 * np.sin(x * np.array([1.0, 1.3, 0.7]))
    return (base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)


def jpeg(path, arr, orientation: int | None = None, quality: int = 92):
    im = Image.fromarray(arr)
    kw = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    im.save(path, format="JPEG", quality=quality, **kw)
    return path


def size_of(short_edge: int, multiple: int = 8):
    return lambda wh: resized_size(wh[0], wh[1], short_edge, multiple)


@pytest.mark.parametrize(
    "w,h,short",
    [(300, 200, 64), (500, 375, 256), (1024, 768, 256), (200, 300, 96), (100, 80, 128)],
)
def test_fast_matches_pil_up_to_rounding(tmp_path, w, h, short):
    """Both paths: tensor resize (below 2x) and DCT scaling (at 2x and more), even upscaling."""
    p = jpeg(tmp_path / "x.jpg", photo(w, h))
    ref, ref_size = load_resized(p, size_of(short), "pil")
    got, got_size = load_resized(p, size_of(short), "fast")
    assert got_size == ref_size == (w, h)
    assert got.shape == ref.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - ref.astype(int))
    assert diff.mean() < 2.0, diff.mean()
    assert np.percentile(diff, 99) <= 12


def test_the_fast_path_is_taken_for_jpegs(tmp_path):
    p = jpeg(tmp_path / "x.jpg", photo(300, 200))
    assert _load_resized_fast(p, size_of(64)) is not None


@pytest.mark.parametrize("tag", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("w", [200, 700])  # tensor path and draft path
def test_exif_orientation_as_pil_applies_it(tmp_path, tag, w):
    arr = photo(w, w * 3 // 4, seed=tag)
    arr[: w // 8, : w // 8] = (255, 0, 0)  # a red corner: a wrong turn moves it
    p = jpeg(tmp_path / "x.jpg", arr, tag)
    ref, ref_size = load_resized(p, size_of(64), "pil")
    got, got_size = load_resized(p, size_of(64), "fast")
    assert got_size == ref_size and got.shape == ref.shape
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 3.0


def test_truncated_jpeg_is_refused_as_pil_refuses_it(tmp_path):
    p = jpeg(tmp_path / "x.jpg", photo(300, 200))
    p.write_bytes(p.read_bytes()[:-2000])
    assert _load_resized_fast(p, size_of(64)) is None  # handed to PIL, which raises
    with pytest.raises(UnreadableImage, match="cannot decode"):
        load_resized(p, size_of(64), "fast")


def test_other_formats_take_the_pil_path_bit_for_bit(tmp_path):
    arr = photo(120, 90)
    Image.fromarray(arr).save(tmp_path / "x.png")
    Image.fromarray(arr).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    for name in ("x.png", "c.jpg"):
        ref, _ = load_resized(tmp_path / name, size_of(64), "pil")
        got, _ = load_resized(tmp_path / name, size_of(64), "fast")
        assert np.array_equal(ref, got), name


def test_grey_jpeg_becomes_rgb(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(photo(160, 120)[..., 0]).save(buf, format="JPEG")
    (tmp_path / "g.jpg").write_bytes(buf.getvalue())
    ref, _ = load_resized(tmp_path / "g.jpg", size_of(64), "pil")
    got, _ = load_resized(tmp_path / "g.jpg", size_of(64), "fast")
    assert got.shape == ref.shape == (64, 88, 3)
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 2.0


def test_the_decoder_is_hashed_unless_it_is_pil():
    assert decode_rules("pil") == DECODE_RULES  # banks made before the choice keep their hash
    assert decode_rules("fast") == {**DECODE_RULES, "decoder": "fast"}
    with pytest.raises(ConfigError, match="data.decoder='turbo'"):
        decode_rules("turbo")


def test_score_spec_changes_with_the_decoder(tmp_path):
    from distill.data.sources import synthetic_source
    from distill.scoring.stage import score_spec

    class Backend:
        def fingerprint(self):
            return {"m": 1}

    specs = []
    for dec in ("pil", "fast"):
        cfg = OmegaConf.create(
            {
                "scoring": {},
                "data": {"name": "s", "kind": "synthetic", "num_classes": 2, "decoder": dec},
            }
        )
        specs.append(score_spec(cfg, synthetic_source(cfg.data, "train"), Backend()))
    assert specs[0]["data"] == specs[1]["data"]  # not under data: old banks keep their hash
    assert specs[0]["decode"] != specs[1]["decode"]


def test_a_bad_decoder_is_one_line_before_any_stage():
    from distill.validate import check_data

    with pytest.raises(ConfigError, match=r"data.decoder='jpeg': must be one of \['pil', 'fast'\]"):
        check_data(OmegaConf.create({"short_edge": 64, "min_side": 8, "decoder": "jpeg"}))


def test_resized_images_use_the_decoder(tmp_path):
    from distill.data import ResizedImages
    from distill.data.sources import folder_source

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            jpeg(tmp_path / c / f"{i}.jpg", photo(240, 160, seed=i))
    cfg = OmegaConf.create(
        {
            "name": "f",
            "root": str(tmp_path),
            "classes": None,
            "class_names": None,
            "class_names_file": None,
            "images_per_class": None,
            "subsample_seed": 0,
            "min_side": 8,
            "strict_classes": True,
        }
    )
    src = folder_source(cfg, None, imagenet=False)
    pil, fast = ResizedImages(src, 64, 8, "pil"), ResizedImages(src, 64, 8, "fast")
    for i in range(len(src.items)):
        a, b = pil[i], fast[i]
        assert "error" not in b and a["size"] == b["size"] == (96, 64)
        assert (a["pixels"].int() - b["pixels"].int()).abs().float().mean() < 2.0


def test_num_workers_auto():
    from distill.runtime import available_cores, resolve_workers

    cpu = OmegaConf.create({"accelerator": "cpu", "devices": 1})
    assert resolve_workers("auto", cpu) == 0  # the U-Net already has every core
    assert resolve_workers(3, cpu) == 3 and resolve_workers(None, cpu) == 0
    gpu = OmegaConf.create({"accelerator": "gpu", "devices": 2})
    assert resolve_workers("auto", gpu) == max(1, min(16, available_cores() // 2 - 1))
    assert torch.get_num_threads() >= 1


class _Items:
    """A source of file-backed items, as `load_crops` reads one."""

    def __init__(self, paths):
        from distill.data.images import load_rgb

        self.items = [type("It", (), {"path": str(p), "source": p.name})() for p in paths]
        self.load = lambda i: load_rgb(self.items[i].path)


@pytest.mark.parametrize("tag", [None, 6, 8, 3])
def test_crops_from_a_reduced_decode_match_the_exact_crops(tmp_path, tag, monkeypatch):
    """materialise with the fast decoder: a JPEG decoded at 1/2 (or less) scale, each patch
    resampled from its box scaled to it, close to the exact crop of the full decode; boxes
    are in the image as shown (EXIF applied), as the bank's are."""
    import distill.assembly as A
    from distill.assembly import PatchRef, load_crops

    p = jpeg(tmp_path / "a.jpg", photo(800, 600, seed=2), orientation=tag)
    src = _Items([p])
    w, h = src.load(0).size
    boxes = [(0, 0, 300, 300), (w - 340, h - 340, w, h), (100, 50, 420, 370)]
    refs = [PatchRef(0, "a.jpg", b) for b in boxes]
    calls = []
    real = A.load_reduced
    monkeypatch.setattr(A, "load_reduced", lambda *a: calls.append(a[1]) or real(*a))
    exact = load_crops(src, refs, 112, decoder="pil")
    assert calls == []
    fast = load_crops(src, refs, 112, decoder="fast")
    assert len(calls) == 1 and calls[0] == pytest.approx(300 / 112)  # the smallest box
    for a, b in zip(exact, fast, strict=True):
        assert a.size == b.size == (112, 112)
        d = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
        assert d.mean() < 2.5, d.mean()
    # a box under 2x the tile, a PNG: the exact path, bit for bit
    small = [PatchRef(0, "a.jpg", (0, 0, 200, 200))]
    assert [np.asarray(x).tobytes() for x in load_crops(src, small, 112, decoder="fast")] == [
        np.asarray(x).tobytes() for x in load_crops(src, small, 112, decoder="pil")
    ]
    q = tmp_path / "b.png"
    Image.fromarray(photo(800, 600)).save(q)
    png = _Items([q])
    ref = [PatchRef(0, "b.png", boxes[0])]
    assert np.array_equal(
        np.asarray(load_crops(png, ref, 112, decoder="fast")[0]),
        np.asarray(load_crops(png, ref, 112, decoder="pil")[0]),
    )


def test_a_truncated_jpeg_is_refused_by_the_reduced_decode_too(tmp_path):
    from distill.assembly import PatchRef, load_crops
    from distill.errors import DataError

    p = jpeg(tmp_path / "a.jpg", photo(800, 600))
    p.write_bytes(p.read_bytes()[:-3000])
    with pytest.raises(DataError, match="cannot read .*a.jpg for a distilled patch"):
        load_crops(_Items([p]), [PatchRef(0, "a.jpg", (0, 0, 400, 400))], 112, decoder="fast")
