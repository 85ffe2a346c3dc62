"""How strongly a diffusion model is conditioned on its class prompts, measured as Stage I does.

Stage I can only find what the model knows: its relevance map is the drop in denoising loss
when the class prompt replaces the null prompt. Two figures say how much class information
that drop can carry, both on images the model never trained on:

- the **diffusion classifier** (Li et al. 2023): the class prompt with the lowest mean loss
  over shared (t, noise) draws; its top-1 is the model's accuracy as a classifier;
- the **class-vs-null gain**: the relative loss reduction of the true class prompt against
  the null prompt (Stage I's D averaged over the image), and against the other class prompts.

Every prompt sees the same draws, so differences between prompts are not noise. Used by
``distill.train_diffusion`` on held-out training items during training (to choose settings
without touching the test split) and checked against a per-image loop in the tests.
"""

from __future__ import annotations

import torch


def stratified_draws(
    n_images: int, draws: int, shape: tuple, t_lo: int, t_hi: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (B, N), one per equal sub-interval of [t_lo, t_hi], and noise (B, N, *shape)."""
    g = torch.Generator().manual_seed(int(seed))
    m = t_hi - t_lo + 1
    u = (torch.arange(draws) + torch.rand(n_images, draws, generator=g)) / draws
    t = (t_lo + (u * m).floor().long()).clamp(max=t_hi)
    eps = torch.randn(n_images, draws, *shape, generator=g)
    return t, eps


@torch.no_grad()
def prompt_losses(
    unet, z: torch.Tensor, embs: torch.Tensor, alphas_cumprod: torch.Tensor, t, eps, batch=256
) -> torch.Tensor:
    """Mean squared noise error (B, P, N) of each of the P prompts in ``embs`` (P, L, D).

    ``z`` are scaled latents (B, C, h, w); ``t`` (B, N) and ``eps`` (B, N, C, h, w) the draws.
    """
    b, n = t.shape
    c, h, w = z.shape[1:]
    a = alphas_cumprod.float()[t.reshape(-1)].view(-1, 1, 1, 1)
    flat_eps = eps.reshape(-1, c, h, w)
    z_t = a.sqrt() * z.unsqueeze(1).expand(b, n, c, h, w).reshape(-1, c, h, w)
    z_t = z_t + (1 - a).sqrt() * flat_eps
    flat_t = t.reshape(-1)
    out = torch.empty(b * n, len(embs))
    for k in range(len(embs)):
        for s in range(0, b * n, batch):
            e = embs[k : k + 1].expand(min(batch, b * n - s), *embs.shape[1:])
            pred = unet(z_t[s : s + batch], flat_t[s : s + batch], encoder_hidden_states=e).sample
            out[s : s + batch, k] = (pred.float() - flat_eps[s : s + batch]).pow(2).mean((1, 2, 3))
    return out.view(b, n, len(embs)).permute(0, 2, 1)


def summarize(losses: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1, gains and how often the true prompt beats the null one, from (B, K+1, N) losses.

    The last prompt is the null prompt; the first K are the classes in label order.
    """
    mean = losses.mean(dim=2)  # (B, K + 1)
    k = mean.shape[1] - 1
    idx = torch.arange(len(labels))
    true, null = mean[idx, labels], mean[:, k]
    cls = mean[:, :k]
    others = (cls.sum(dim=1) - true) / (k - 1)
    return {
        "n": int(len(labels)),
        "top1": float((cls.argmin(dim=1) == labels).float().mean()),
        "gain_vs_null": float(((null - true) / null).mean()),
        "gain_vs_other": float(((others - true) / others).mean()),
        "true_below_null": float((true < null).float().mean()),
        "loss_true": float(true.mean()),
    }
