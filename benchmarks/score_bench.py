"""Stage I speed: the scoring module's predict path against a naive reference, in one run.

    python benchmarks/score_bench.py                 # CPU: tiny model and full-size SD1.5
    python benchmarks/score_bench.py --device cuda   # the same on a GPU (+ ImageNet-1K projection)

Both paths compute the same relevance maps for the same images, timesteps and noise; the
script reports how closely they agree (max difference and correlation: the fast path may run
in bf16). The naive reference does what a first implementation would:
per image, per timestep, per prompt, batch 1, fp32, the prompt re-encoded on every call. The
fast path is `ScoringModule.predict_step` as the pipeline runs it (batched draws and prompts,
cached prompt embeddings, the configured dtype and memory layout). The full-size model is
SD v1.5's public architecture with random weights: weights don't change speed. The paths
take turns (a naive image, a fast batch, ...), so drift on a shared machine moves both alike.
Writes ``results/score_bench.json`` with every raw figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.data.classes import ClassInfo  # noqa: E402
from distill.data.dataset import ResizedImages, collate_images  # noqa: E402
from distill.data.records import SourceItem  # noqa: E402
from distill.data.sources import ArraySource  # noqa: E402
from distill.diffusion import DiffusionBackend  # noqa: E402
from distill.diffusion.architectures import sd15_components, tiny_components  # noqa: E402
from distill.diffusion.backend import resolve_dtype  # noqa: E402
from distill.io import atomic_write_json  # noqa: E402
from distill.runtime import cpu_flags, machine_name  # noqa: E402
from distill.scoring.module import ScoringModule  # noqa: E402

IMAGENET1K_IMAGES = 1000 * 300  # the paper's Fig. 6 setting: 300 images per class


class PeakMemory:
    """Peak resident memory (CPU, sampled) or peak allocated memory (CUDA) over a block."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = self.rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss())


def _cpu_flash_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


# torch's counter knows the CUDA attention kernels but not the CPU one that
# F.scaled_dot_product_attention dispatches to (about 5% of the SD1.5 U-Net at 256 px); without
# this the CPU count, and so the CPU FLOP/s, would leave attention out while CUDA's includes it.
EXTRA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops
}


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call, counted by `torch.utils.flop_counter` (plus CPU attention)."""
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as fc:
        fn(*args, **kwargs)
    return fc.get_total_flops()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: str) -> dict:
    """Best dense-matmul FLOP/s over a few square sizes, measured now on this device.

    Each size keeps its fastest repetition: a slow one says the machine was busy, not what
    the hardware can do, and a low peak would flatter every fraction of it.
    """
    best, per_size = 0.0, {}
    for n in (1024, 2048, 4096) if device == "cpu" else (4096, 8192):
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        a @ b
        sync(device)
        reps, inner = (5, 1) if device == "cpu" else (5, 10)
        fastest = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            for _ in range(inner):
                a @ b
            sync(device)
            fastest = min(fastest, (time.perf_counter() - t) / inner)
        per_size[n] = 2 * n**3 / fastest
        best = max(best, per_size[n])
    return {"flops_per_s": best, "by_size": per_size, "dtype": str(dtype).replace("torch.", "")}


def make_source(n: int, size: int, classes: list[ClassInfo], seed: int = 0) -> ArraySource:
    rng = np.random.default_rng(seed)
    arrays = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    items = [SourceItem(f"bench/{i:05d}", i % len(classes), (size, size)) for i in range(n)]
    return ArraySource("bench", "train", classes, items, [], None, arrays=arrays)


def scoring_cfg(num_draws: int, unet_batch: int, vae_batch: int):
    return OmegaConf.create(
        dict(
            t_range=[0.1, 0.7],
            num_draws=num_draws,
            seed=0,
            prompt="An image of {name}",
            null_prompt="An image of .",
            patch=224,
            stride=8,
            topk=1,
            unet_batch=unet_batch,
            vae_batch=vae_batch,
            fixed_shapes=True,
            num_threads=None,
        )
    )


@torch.no_grad()
def naive_maps(
    backend: DiffusionBackend, module: ScoringModule, ds: ResizedImages, idx: list[int], device: str
) -> list[torch.Tensor]:
    """Per image, per draw, per prompt; batch 1; fp32; the prompt re-encoded every call."""
    maps = []
    for i in idx:
        item = ds[i]
        x = item["pixels"][None].to(device).float() / 127.5 - 1
        z = backend.vae.encode(x).latent_dist.mean * backend.vae.config.scaling_factor
        t, eps = module.draws([item["source"]], tuple(z.shape[1:]))
        acc = torch.zeros(z.shape[-2:], device=device)
        for d in range(t.shape[1]):
            a = float(backend.scheduler.alphas_cumprod[int(t[0, d])])
            e = eps[0, d : d + 1].to(device)
            z_t = a**0.5 * z + (1 - a) ** 0.5 * e
            losses = []
            for prompt in (module.prompts[item["label"]], module.null_prompt):
                ids = backend.tokenizer(
                    [prompt],
                    padding="max_length",
                    max_length=77,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids.to(device)
                emb = backend.text_encoder(ids)[0]
                pred = backend.unet(
                    z_t, t[0, d : d + 1].to(device), encoder_hidden_states=emb
                ).sample
                losses.append(((pred - e) ** 2).mean(dim=1)[0])
            acc += losses[1] - losses[0]
        maps.append((acc / t.shape[1]).cpu())
    return maps


def preset(name: str, device: str, args) -> tuple[torch.dtype, bool]:
    """The fast path's dtype and layout: the model's diffusion preset, unless overridden."""
    conf = OmegaConf.load(
        ROOT / "conf" / "diffusion" / ("tiny.yaml" if name == "tiny" else "random_sd15.yaml")
    )
    dtype = args.dtype or str(conf.dtype)
    channels_last = (
        bool(conf.get("channels_last", False)) if args.channels_last is None else args.channels_last
    )
    return resolve_dtype(dtype, device), channels_last


def run_model(name: str, device: str, args) -> dict:
    size = 256
    classes = [
        ClassInfo(i, f"c{i}", n) for i, n in enumerate(["beagle", "church", "tench", "golf ball"])
    ]
    # The pipeline's defaults: 8 draws; VAE calls of one batch (no padding wasted).
    draws = 8
    if name == "tiny":
        n_naive, n_fast, batch = 4, 16, 4
        comps = tiny_components()
    else:
        n_naive, n_fast, batch = (2, 4, 2) if device == "cpu" else (4, 256, 16)
        comps = sd15_components()
    batch = args.batch_size or batch
    unet_batch = args.unet_batch or (2 * draws * batch if device == "cpu" else 128)
    fast_dtype, channels_last = preset(name, device, args)
    if args.quick:
        n_naive, n_fast = 1, batch
    print(f"[{name}] building models ...", flush=True)
    naive_be = DiffusionBackend.from_components(comps, name, torch.float32).to(device)
    fast_comps = {
        k: (v if k in ("tokenizer", "scheduler") else _clone(v)) for k, v in comps.items()
    }
    fast_be = DiffusionBackend.from_components(
        fast_comps, name, fast_dtype, channels_last=channels_last
    ).to(device)
    src = make_source(max(n_fast, n_naive) + batch, size, classes)
    ds = ResizedImages(src, size, fast_be.vae_factor)
    cfg = scoring_cfg(draws, unet_batch, batch)
    naive_mod = ScoringModule(naive_be, classes, cfg, size)
    fast_mod = ScoringModule(fast_be, classes, cfg, size).to(device)
    fast_mod.on_predict_start()

    # U-Net FLOPs per sample at the fast path's call shape, counted by torch.
    lat = size // fast_be.vae_factor
    unet_flops = (
        count_flops(
            fast_be.predict_eps,
            torch.zeros(unet_batch, 4, lat, lat, device=device),
            torch.full((unet_batch,), 500, device=device),
            fast_mod.class_emb[:1].expand(unet_batch, -1, -1),
        )
        / unet_batch
    )
    vae_flops = count_flops(
        fast_be.encode_images, torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device)
    )

    # Fast path: the module's predict step on collated batches; time the U-Net calls inside.
    unet_time = [0.0]
    unet_samples = [0]
    real_predict = fast_be.predict_eps

    def timed_predict(z_t, t, emb):
        sync(device)
        s = time.perf_counter()
        out = real_predict(z_t, t, emb)
        sync(device)
        unet_time[0] += time.perf_counter() - s
        unet_samples[0] += z_t.shape[0]
        return out

    batches = [
        collate_images([ds[i] for i in range(s, min(s + batch, n_fast))])
        for s in range(0, n_fast, batch)
    ]
    # One warm-up call of each path (it also fills oneDNN's kernel cache).
    naive_maps(naive_be, naive_mod, ds, [len(ds) - 1], device)
    fast_mod.predict_step(collate_images([ds[i] for i in range(len(ds) - batch, len(ds))]), 0)
    # The two paths take turns (a naive image, a fast batch, ...), so that a shared machine
    # slowing down or speeding up mid-run moves both sides of the ratio alike.
    t_naive = t_fast = 0.0
    naive_peak = fast_peak = 0
    ref = []
    for r in range(max(n_naive, len(batches))):
        if r < n_naive:
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                ref.extend(naive_maps(naive_be, naive_mod, ds, [r], device))
                sync(device)
                t_naive += time.perf_counter() - t0
            naive_peak = max(naive_peak, mem.peak)
        if r < len(batches):
            fast_be.predict_eps = timed_predict
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                fast_mod.predict_step(batches[r], 0)
                sync(device)
                t_fast += time.perf_counter() - t0
            fast_be.predict_eps = real_predict
            fast_peak = max(fast_peak, mem.peak)
    maps = []
    for b in batches[: (n_naive + batch - 1) // batch]:
        maps.extend(fast_mod.score(b["pixels"], b["label"], b["source"]).float().cpu())
    maps = maps[:n_naive]

    diff = max(float((a - b).abs().max()) for a, b in zip(maps, ref, strict=True))
    scale = max(float(b.abs().max()) for b in ref)
    corr = float(
        np.corrcoef(torch.stack(maps).flatten().numpy(), torch.stack(ref).flatten().numpy())[0, 1]
    )
    naive_ips, fast_ips = n_naive / t_naive, n_fast / t_fast
    achieved = unet_flops * unet_samples[0] / unet_time[0]
    return {
        "image_size": size,
        "num_draws": draws,
        "batch_size": batch,
        "unet_batch": unet_batch,
        "fast_dtype": str(fast_dtype).replace("torch.", ""),
        "channels_last": channels_last,
        "timing": "interleaved: a naive image, then a fast batch, and so on",
        "naive": {
            "images": n_naive,
            "seconds": t_naive,
            "images_per_s": naive_ips,
            "peak_memory_bytes": naive_peak,
        },
        "fast": {
            "images": n_fast,
            "seconds": t_fast,
            "images_per_s": fast_ips,
            "peak_memory_bytes": fast_peak,
            "unet_seconds": unet_time[0],
            "unet_samples": unet_samples[0],
            "unet_share_of_time": unet_time[0] / t_fast,
        },
        "speedup_vs_naive": fast_ips / naive_ips,
        "unet_flops_per_sample": unet_flops,
        "vae_flops_per_image": vae_flops,
        "unet_achieved_flops_per_s": achieved,
        "agreement": {"max_abs_diff": diff, "max_abs_map": scale, "correlation": corr},
        # 300 images per class (paper Fig. 6), the default 8 draws, this device alone.
        "projection_imagenet1k_300_per_class_hours": IMAGENET1K_IMAGES / fast_ips / 3600,
    }


def _clone(module):
    import copy

    return copy.deepcopy(module) if module is not None else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="tiny,sd15")
    ap.add_argument(
        "--dtype",
        default=None,
        help="fast path dtype (auto, fp32, bf16, fp16); default: each model's preset",
    )
    ap.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument("--batch-size", type=int, default=None, help="fast path images per batch")
    ap.add_argument("--unet-batch", type=int, default=None, help="fast path samples per U-Net call")
    ap.add_argument("--quick", action="store_true", help="one batch each (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "results" / "score_bench.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    device = args.device
    peaks: dict[str, dict] = {}

    def peak_for(dtype: torch.dtype) -> dict:
        key = str(dtype).replace("torch.", "")
        if key not in peaks:
            peaks[key] = matmul_peak(dtype, device)
        return peaks[key]

    result = {
        "device": machine_name(),
        "cpu_flags": cpu_flags(),
        "device_type": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "matmul_peak": peaks,
        "models": {},
    }
    peak_for(torch.float32)
    for name in args.models.split(","):
        fast_dtype, _ = preset(name, device, args)
        peak_for(fast_dtype)
        r = run_model(name, device, args)
        r["matmul_peak_dtype"] = str(fast_dtype).replace("torch.", "")
        result["models"][name] = r
    # Measured again after the models: the peak is the better of the two measurements.
    for key, first in list(peaks.items()):
        again = matmul_peak(getattr(torch, key), device)
        peaks[key] = max(first, again, key=lambda p: p["flops_per_s"])
        peaks[key]["measurements_flops_per_s"] = [first["flops_per_s"], again["flops_per_s"]]
    for r in result["models"].values():
        peak = peaks[r["matmul_peak_dtype"]]["flops_per_s"]
        r["matmul_peak_flops_per_s"] = peak
        r["matmul_peak_fraction"] = r["unet_achieved_flops_per_s"] / peak
    main_model = "sd15" if "sd15" in result["models"] else next(iter(result["models"]))
    result["speedup_vs_naive"] = result["models"][main_model]["speedup_vs_naive"]
    result["matmul_peak_fraction"] = result["models"][main_model]["matmul_peak_fraction"]
    result["headline_model"] = main_model
    atomic_write_json(args.out, result)

    print(
        f"\nscoring benchmark on {result['device']} ({device}, {result['threads']} threads, "
        f"torch {result['torch']})"
    )
    print(
        "matmul peak: "
        + ", ".join(f"{k} {v['flops_per_s'] / 1e9:.1f} GFLOP/s" for k, v in peaks.items())
    )
    hdr = (
        f"{'model':6} {'naive img/s':>12} {'fast img/s':>11} {'speedup':>8} {'naive peak':>11} "
        f"{'fast peak':>10} {'dtype':>9} {'U-Net GFLOP/s':>14} {'of peak':>8} {'max|diff|/max|map|':>19}"
    )
    print(hdr)
    for name, r in result["models"].items():
        print(
            f"{name:6} {r['naive']['images_per_s']:12.4f} {r['fast']['images_per_s']:11.4f} "
            f"{r['speedup_vs_naive']:7.2f}x {r['naive']['peak_memory_bytes'] / 2**30:9.2f}GB "
            f"{r['fast']['peak_memory_bytes'] / 2**30:8.2f}GB {r['fast_dtype']:>9} "
            f"{r['unet_achieved_flops_per_s'] / 1e9:14.1f} {r['matmul_peak_fraction']:7.1%} "
            f"{r['agreement']['max_abs_diff'] / max(r['agreement']['max_abs_map'], 1e-12):19.3g}"
        )
        print(
            f"       ImageNet-1K at 300 images/class, 8 draws: "
            f"{r['projection_imagenet1k_300_per_class_hours']:.1f} h on this device"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
