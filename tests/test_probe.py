"""The model probe (benchmarks/fashion_probe.py) uses Stage I's own noise and math."""

import torch
from omegaconf import OmegaConf

from distill.scoring.relevance import draw_noise, relevance_maps
from tests.conftest import load_benchmark

probe = load_benchmark("fashion_probe")


@torch.no_grad()
def test_probe_losses_give_stage1_relevance(tiny_backend):
    """L_null - L_class from the probe equals Stage I's relevance map for the same ids."""
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    ids = ["test/000001", "test/000002"]
    a = OmegaConf.create({"seed": 3, "num_draws": 3})
    prompts = ["An image of beagle", "An image of dingo", "An image of ."]
    embs = tiny_backend.embed_prompts(prompts)
    losses, t = probe.prompt_losses(tiny_backend, pixels, ids, embs, a, 100, 700)
    assert losses.shape == (2, 3, 3, 8, 8)
    z = tiny_backend.encode_images(pixels)
    ts, eps = zip(*(draw_noise(3, s, 3, tuple(z.shape[1:]), 100, 700) for s in ids), strict=True)
    assert torch.equal(t, torch.stack(ts))
    labels = [1, 0]
    d = relevance_maps(tiny_backend, z, embs[labels], embs[2], t, torch.stack(eps))
    mine = torch.stack([losses[j, 2] - losses[j, lab] for j, lab in enumerate(labels)]).mean(1)
    assert d.abs().max() > 1e-6
    # Batch shapes differ (one prompt per call here, both stacked in Stage I): float32 rounding.
    torch.testing.assert_close(mine, d, rtol=1e-3, atol=1e-3 * float(d.abs().max()))


def test_best_box_finds_a_hot_window():
    d = torch.zeros(16, 16)
    d[5:13, 2:10] = 1.0  # an 8x8 latent square at row 5, column 2
    # Kernel 8, stride 1, VAE factor 4: the pixel box of that square.
    assert probe.best_box(d, 8, 1, 4) == (8, 20, 40, 52)
    assert probe.best_box(-d, 8, 1, 4) != (8, 20, 40, 52)
