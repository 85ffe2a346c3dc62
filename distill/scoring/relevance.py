"""Stage I math: the spatial relevance map of an image for its class, and its best patches.

For draw i with timestep t_i and noise eps_i (the same for both prompts, NOTES.md "paired
noise"), the per-latent-pixel loss of a prompt p is L_p = mean_channels (eps_theta(z_t, t, p)
- eps)^2. The relevance map is D = mean_i (L_null - L_class): positive where the class prompt
helps denoising. The paper's Eq. (6) writes R = E[L_c - L_phi] but then takes argmax R; NOTES.md
settles the sign: higher D = more class-relevant, and D is used everywhere the paper ranks by R.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from distill.errors import ConfigError


def stable_seed(*parts) -> int:
    """A 63-bit seed from any parts (strings, ints), stable across processes and machines.

    Python's ``hash`` of a string changes per process; a digest does not.
    """
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def timestep_bounds(t_range, num_train_timesteps: int) -> tuple[int, int]:
    """Integer timestep bounds [lo, hi] for fractions ``t_range`` of the training steps."""
    if len(t_range) != 2:
        raise ConfigError(f"scoring.t_range={list(t_range)} must be [t_min, t_max]")
    t_min, t_max = float(t_range[0]), float(t_range[1])
    if not 0.0 <= t_min <= t_max <= 1.0:
        raise ConfigError(f"scoring.t_range={list(t_range)} must satisfy 0 <= t_min <= t_max <= 1")
    lo = int(round(t_min * num_train_timesteps))
    hi = min(int(round(t_max * num_train_timesteps)), num_train_timesteps - 1)
    return min(lo, hi), hi


# How the N timesteps of an image are spread over [lo, hi] (``scoring.t_sampling``).
T_SAMPLING = ("iid", "stratified", "grid")


def check_t_sampling(value) -> str:
    """``value`` if it names a timestep scheme of `T_SAMPLING`, else a `ConfigError`."""
    if value not in T_SAMPLING:
        raise ConfigError(
            f"scoring.t_sampling={value!r} must be one of {', '.join(T_SAMPLING)} "
            "(iid: the paper's t ~ U[lo, hi]; stratified: one draw in each of N equal "
            "sub-intervals; grid: their midpoints)"
        )
    return value


def stratum_bounds(i: int, n: int, t_lo: int, t_hi: int) -> tuple[int, int]:
    """Integer timesteps [a, b] that meet the i-th of ``n`` equal sub-intervals of [lo, hi].

    The integers lo..hi are the unit cells [t, t + 1) of the real interval [lo, hi + 1), of
    width M = hi - lo + 1; sub-interval i is [lo + i M / n, lo + (i + 1) M / n). Exact
    integer arithmetic; neighbouring strata share a timestep when M / n is not whole.
    """
    m = t_hi - t_lo + 1
    return t_lo + (i * m) // n, t_lo + -(-(i + 1) * m // n) - 1


def draw_noise(
    seed: int,
    source: str,
    num_draws: int,
    latent_shape: tuple[int, int, int],
    t_lo: int,
    t_hi: int,
    t_sampling: str = "iid",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (N,) and noise (N, C, h, w) for one image, from (seed, source id, draw index).

    Seeding per draw from the image's stable id makes a score independent of batch size,
    batch order and the number of devices. Draw i's generator yields, in this order, an iid
    timestep ``randint(lo, hi)``, the noise, then (stratified only) the stratum jitter, so
    the noise of draw i is the same under every scheme and every N. ``t_sampling``:

    - ``iid`` (the paper, the default): t_i ~ U{lo..hi}, independent; draw i does not
      depend on N.
    - ``stratified``: u_i ~ U[i/N, (i+1)/N), t_i = lo + floor(u_i M) with M = hi - lo + 1:
      exactly one draw per equal sub-interval, each t_i still marginally U{lo..hi} for a
      random i, so the mean over draws estimates the same expectation as iid.
    - ``grid``: the midpoints t_i = lo + floor((i + 1/2) M / N) of those sub-intervals,
      deterministic (the diffusion classifier's evenly spaced timesteps, Li et al. 2023, whose
      ``range(T // N // 2, T, T // N)`` is the same midpoint rule on [0, T)).
    """
    check_t_sampling(t_sampling)
    ts = torch.empty(num_draws, dtype=torch.long)
    eps = torch.empty(num_draws, *latent_shape)
    m = t_hi - t_lo + 1
    for i in range(num_draws):
        g = torch.Generator().manual_seed(stable_seed(seed, source, i))
        ts[i] = torch.randint(t_lo, t_hi + 1, (1,), generator=g)
        eps[i] = torch.randn(latent_shape, generator=g)
        if t_sampling == "stratified":
            a, b = stratum_bounds(i, num_draws, t_lo, t_hi)
            u = (i + float(torch.rand(1, generator=g, dtype=torch.float64))) / num_draws
            ts[i] = min(max(t_lo + math.floor(u * m), a), b)
        elif t_sampling == "grid":
            ts[i] = t_lo + ((2 * i + 1) * m) // (2 * num_draws)
    return ts, eps


def fixed_chunks(total: int, size: int, pad: bool):
    """Index chunks of exactly ``size`` rows (the last one padded by repeating its last row).

    Every model call then has the same batch shape whatever the batch size or device count,
    and CPU kernels (oneDNN) give bitwise-identical per-sample results; a batch-1 call, for
    instance, takes another code path and differs in the last bits. Yields (indices, n_real).
    """
    size = max(1, int(size))
    for s in range(0, total, size):
        m = min(size, total - s)
        idx = torch.arange(s, s + m)
        if pad and m < size:
            idx = torch.cat([idx, idx[-1:].expand(size - m)])
        yield idx, m


def encode_fixed(backend, pixels: torch.Tensor, vae_batch: int, pad: bool = True) -> torch.Tensor:
    """``backend.encode_images`` in fixed-shape chunks (see `fixed_chunks`)."""
    parts = [
        backend.encode_images(pixels[idx])[:m]
        for idx, m in fixed_chunks(len(pixels), vae_batch, pad)
    ]
    return torch.cat(parts)


def relevance_maps(
    backend,
    z: torch.Tensor,
    class_emb: torch.Tensor,
    null_emb: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    unet_batch: int = 64,
    pad: bool = False,
) -> torch.Tensor:
    """The relevance map D (B, h, w) of latents ``z`` (B, C, h, w), in float32.

    Args:
        backend: a `DiffusionBackend`.
        class_emb: (B, L, D) text embedding of each image's class prompt.
        null_emb: (L, D) embedding of the null prompt.
        t: (B, N) integer timesteps; eps: (B, N, C, h, w) noise. Draw i of image b is noised
            once and denoised under both prompts (one batched U-Net call per chunk).
        unet_batch: the most samples per U-Net call (memory bound), not a semantic choice.
        pad: pad the last U-Net call to ``unet_batch`` samples (batch-size invariance).
    """
    b, n = t.shape
    dev = z.device
    z_rep = z.unsqueeze(1).expand(b, n, *z.shape[1:]).reshape(b * n, *z.shape[1:])
    t_flat = t.reshape(-1).to(dev)
    eps_flat = eps.reshape(b * n, *eps.shape[2:]).to(dev, z.dtype)
    z_t = backend.add_noise(z_rep, eps_flat, t_flat)
    cls_flat = (
        class_emb.unsqueeze(1)
        .expand(b, n, *class_emb.shape[1:])
        .reshape(b * n, *class_emb.shape[1:])
    )
    # Class and null prompt on the same noisy latent: stack them along the batch.
    x = torch.cat([z_t, z_t])
    tt = torch.cat([t_flat, t_flat])
    emb = torch.cat([cls_flat, null_emb.unsqueeze(0).expand(b * n, *null_emb.shape)])
    target = torch.cat([eps_flat, eps_flat])
    losses = torch.empty(2 * b * n, *z.shape[2:], device=dev, dtype=torch.float32)
    for idx, m in fixed_chunks(2 * b * n, unet_batch, pad):
        idx = idx.to(dev)
        pred = backend.predict_eps(x[idx], tt[idx], emb[idx].to(backend.dtype))[:m]
        losses[idx[:m]] = (pred.float() - target[idx[:m]].float()).pow(2).mean(dim=1)
    l_cls, l_null = losses[: b * n], losses[b * n :]
    return (l_null - l_cls).view(b, n, *z.shape[2:]).mean(dim=1)


@dataclass(frozen=True)
class Window:
    """A candidate patch on the latent grid: top-left (row, col), side ``k`` latent pixels."""

    row: int
    col: int
    score: float


def pool_scores(d: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Mean relevance of every kernel x kernel window (B, H', W') of maps ``d`` (B, h, w)."""
    if kernel > d.shape[-1] or kernel > d.shape[-2]:
        raise ValueError(f"patch of {kernel} latent pixels exceeds the {tuple(d.shape[-2:])} map")
    return F.avg_pool2d(d.unsqueeze(1).float(), kernel_size=kernel, stride=stride).squeeze(1)


def pick_windows(pooled: np.ndarray, topk: int, kernel: int, stride: int) -> list[Window]:
    """The ``topk`` best windows of one pooled map that do not overlap, best first.

    Greedy: take the best remaining window, drop every window it overlaps. Ties break by
    raster order (stable sort), so a pick never depends on anything but the scores.
    """
    h, w = pooled.shape
    order = np.argsort(-pooled.reshape(-1), kind="stable")
    picked: list[Window] = []
    for flat in order:
        r, c = divmod(int(flat), w)
        y, x = r * stride, c * stride
        if all(abs(y - p.row) >= kernel or abs(x - p.col) >= kernel for p in picked):
            picked.append(Window(y, x, float(pooled[r, c])))
            if len(picked) == topk:
                break
    return picked


def box_to_original(
    box: tuple[int, int, int, int], resized: tuple[int, int], original: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Map a box (x0, y0, x1, y1) from resized-image pixels to original-image pixels.

    Each axis uses its own exact scale (the long edge was rounded to the VAE factor), and the
    result is rounded to whole pixels and clamped inside the original image.
    """
    (rw, rh), (ow, oh) = resized, original
    sx, sy = ow / rw, oh / rh
    x0 = min(max(int(math.floor(box[0] * sx + 0.5)), 0), ow)
    y0 = min(max(int(math.floor(box[1] * sy + 0.5)), 0), oh)
    x1 = min(max(int(math.floor(box[2] * sx + 0.5)), 0), ow)
    y1 = min(max(int(math.floor(box[3] * sy + 0.5)), 0), oh)
    return x0, y0, x1, y1
