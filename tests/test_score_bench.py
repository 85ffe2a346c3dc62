"""The speed benchmark (benchmarks/score_bench.py) measures what it claims to."""

import torch
import torch.nn.functional as F

from distill.data.classes import ClassInfo
from distill.data.dataset import ResizedImages, collate_images
from distill.scoring.module import ScoringModule
from tests.conftest import load_benchmark

bench = load_benchmark("score_bench")


def test_cpu_attention_flops_are_counted():
    """torch's counter skips CPU attention; the bench adds 4*b*h*L*S*d for it."""
    b, h, q_len, kv_len, d = 2, 3, 16, 10, 8
    q = torch.randn(b, h, q_len, d)
    k, v = torch.randn(b, h, kv_len, d), torch.randn(b, h, kv_len, d)
    assert (
        bench.count_flops(F.scaled_dot_product_attention, q, k, v) == 4 * b * h * q_len * kv_len * d
    )
    # Matmuls are still counted by torch's own formulas.
    assert bench.count_flops(torch.mm, torch.randn(5, 7), torch.randn(7, 3)) == 2 * 5 * 7 * 3


@torch.no_grad()
def test_naive_reference_matches_the_predict_path(tiny_backend):
    """The bench's per-call fp32 reference computes the module's relevance maps (tiny model)."""
    classes = [ClassInfo(i, f"c{i}", n) for i, n in enumerate(["beagle", "church", "tench"])]
    src = bench.make_source(3, 256, classes)
    ds = ResizedImages(src, 256, tiny_backend.vae_factor)
    cfg = bench.scoring_cfg(num_draws=3, unet_batch=6, vae_batch=3)
    module = ScoringModule(tiny_backend, classes, cfg, 256)
    module.on_predict_start()
    ref = bench.naive_maps(tiny_backend, module, ds, [0, 1, 2], "cpu")
    batch = collate_images([ds[i] for i in range(3)])
    fast = module.score(batch["pixels"], batch["label"], batch["source"]).float()
    assert float(fast.abs().max()) > 1e-6
    torch.testing.assert_close(
        fast, torch.stack(ref), rtol=1e-4, atol=1e-4 * float(fast.abs().max())
    )
