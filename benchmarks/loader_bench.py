"""Stage I's loader: images per second per CPU core for each ``data.decoder``, in one run.

    python benchmarks/loader_bench.py                  # ~2 min on 2 cores
    python benchmarks/loader_bench.py images=400 short_edge=512

What one DataLoader worker does per image, through the pipeline's own code
(`ResizedImages.__getitem__` on a folder source: open, EXIF rule, decode, resize to the short
edge, tensor): ``pil`` (the baseline: PIL decodes the whole file, then one antialiased bicubic
resize) against ``fast`` (JPEG DCT scaling at 2x the target or more, else torchvision's
``decode_jpeg`` and a tensor resize). One worker is one core, so images/s in a single process
with one thread *is* images/s per core. The decoders take turns over the same files in
rounds (pil, fast, pil, fast, ...) so drift on a shared machine moves both alike; the median
round counts.

The files are JPEGs (quality 90, 4:2:0) of photo-like content (smooth gradients and
texture) in an ImageNet-like mix of sizes (most images about 500x375 either way round, a
tail of larger camera images), written once to a temporary folder. The pixels of the two
decoders are compared too (mean and 99th-percentile absolute difference in 8-bit levels).
Writes ``results/loader_bench.json``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.data import ResizedImages  # noqa: E402
from distill.data.sources import folder_source  # noqa: E402
from distill.io import atomic_write_json  # noqa: E402
from distill.runtime import cpu_flags, machine_name  # noqa: E402

DEFAULTS = {"images": 240, "short_edge": 256, "rounds": 5, "seed": 0, "out": "results"}

# (width, height, share): ImageNet-1K's train images are mostly ~500 px on the long side
# (500x375, 500x333, 375x500, 500x500), with a tail of larger photographs.
SIZE_MIX = [
    (500, 375, 0.40),
    (500, 333, 0.15),
    (375, 500, 0.15),
    (500, 500, 0.07),
    (640, 480, 0.08),
    (800, 600, 0.05),
    (1024, 768, 0.05),
    (1600, 1200, 0.03),
    (2048, 1536, 0.02),
]


def photo(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    x = np.linspace(0, rng.uniform(3, 9), w)[None, :, None]
    y = np.linspace(0, rng.uniform(2, 6), h)[:, None, None]
    base = 127 + 70 * np.sin((x + y) * rng.uniform(0.5, 1.5, 3))
    return (base + rng.normal(0, 14, (h, w, 3))).clip(0, 255).astype(np.uint8)


def write_dataset(root: Path, n: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    shares = np.array([s for _, _, s in SIZE_MIX])
    picks = rng.choice(len(SIZE_MIX), size=n, p=shares / shares.sum())
    sizes = []
    for i, k in enumerate(picks):
        w, h, _ = SIZE_MIX[k]
        d = root / f"c{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(w, h, rng)).save(d / f"{i:05d}.jpg", quality=90)
        sizes.append((w, h))
    return sizes


def main(argv: list[str] | None = None) -> int:
    a = OmegaConf.merge(
        OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
    )
    torch.set_num_threads(1)  # one worker = one core
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        sizes = write_dataset(Path(d), int(a.images), int(a.seed))
        cfg = OmegaConf.create(
            {
                "name": "bench",
                "root": d,
                "classes": None,
                "class_names": None,
                "class_names_file": None,
                "images_per_class": None,
                "subsample_seed": 0,
                "min_side": 8,
                "strict_classes": True,
            }
        )
        source = folder_source(cfg, None, imagenet=False)
        loaders = {dec: ResizedImages(source, int(a.short_edge), 8, dec) for dec in ("pil", "fast")}
        n = len(source.items)
        for ds in loaders.values():  # warm the page cache and the libraries
            for i in range(min(20, n)):
                ds[i]
        rounds: dict[str, list[float]] = {k: [] for k in loaders}
        for _ in range(int(a.rounds)):
            for name, ds in loaders.items():
                t0 = time.perf_counter()
                for i in range(n):
                    ds[i]
                rounds[name].append(n / (time.perf_counter() - t0))
        diffs = []
        for i in range(0, n, max(1, n // 40)):
            p, f = loaders["pil"][i]["pixels"].int(), loaders["fast"][i]["pixels"].int()
            diffs.append((p - f).abs().flatten().float())
        diff = torch.cat(diffs)
    rate = {k: statistics.median(v) for k, v in rounds.items()}
    report = {
        "device": machine_name(),
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "threads": 1,
        # Above about 1 on this 2-core machine, another job shared the cores: figures low.
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "images": n,
        "short_edge": int(a.short_edge),
        "size_mix": [{"width": w, "height": h, "share": s} for w, h, s in SIZE_MIX],
        "mean_megapixels": float(np.mean([w * h for w, h in sizes]) / 1e6),
        "rounds": rounds,
        "decoders": rate,
        "speedup_vs_pil_baseline": rate["fast"] / rate["pil"],
        "pixel_difference": {
            "mean_levels": float(diff.mean()),
            "p99_levels": float(torch.quantile(diff[:1_000_000], 0.99)),
        },
        "command": "python benchmarks/loader_bench.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    out = Path(a.out)
    atomic_write_json(out / "loader_bench.json", report)
    print(
        f"images/s per core at short edge {a.short_edge}: "
        + ", ".join(f"{k} {v:.0f}" for k, v in rate.items())
        + f"; fast / pil = {report['speedup_vs_pil_baseline']:.2f}x; pixels differ by "
        f"{report['pixel_difference']['mean_levels']:.2f} levels on average "
        f"(99th percentile {report['pixel_difference']['p99_levels']:.0f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
