"""Train the project's own small text-to-image latent diffusion model on Fashion-MNIST.

    python -m distill.train_diffusion                       # the committed model: ~40 min, 2 CPU cores
    python -m distill.train_diffusion out_dir=outputs/ldm-try vae.steps=20 unet.steps=20   # a quick try

Real SD v1.5 weights cannot reach every machine, so the project ships a small but real
model in the Stable Diffusion layout (``AutoencoderKL``, ``UNet2DConditionModel`` with
cross-attention, ``CLIPTextModel`` with the real CLIP BPE tokenizer, a DDPM schedule). It is
trained on 64x64 canvases, half of them single Fashion-MNIST items and half *scenes*: one
labelled item at a random place and scale among smaller distractors (`distill.data.scenes`).
Prompts are "An image of {class name}", replaced by the null prompt "An image of ." with
probability ``null_prob``, so the model learns both losses Stage I compares.

Three phases, each a plain loop: the VAE (reconstruction + a small KL), the latent scale
(1 / std of the latents, as SD's 0.18215 was chosen), then the U-Net and the text encoder
together on epsilon prediction. Weights are saved as fp16 safetensors with a model card.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from distill.data.scenes import SCENE_DEFAULTS, make_scene, single_item
from distill.data.sources import FASHION_CLASSES, fashion_arrays
from distill.diffusion.architectures import save_components
from distill.errors import DistillError
from distill.runtime import machine_name

log = logging.getLogger("distill.train_diffusion")

DEFAULTS = {
    "out_dir": "models/fashion-ldm",
    "data_root": "/usr/share/datasets/fashion-mnist",
    "canvas": 64,
    # Share of training canvases that are scenes (the rest are single items).
    "scene_fraction": 0.5,
    # Probability of training on the null prompt instead of the class prompt.
    "null_prob": 0.15,
    "prompt": "An image of {name}",
    "null_prompt": "An image of .",
    "seed": 0,
    "threads": None,
    # Stop a phase early when the whole run has used this many minutes (null: no limit).
    "time_budget_min": 45,
    # The VAE is convolutional: it trains on random crops (4x cheaper than whole canvases).
    "vae": {
        "steps": 800,
        "batch": 32,
        "crop": 32,
        "lr": 1e-3,
        "kl_weight": 1e-6,
        "channels": [16, 32, 32],
        "latent_channels": 4,
        "layers_per_block": 1,
    },
    # The U-Net trains on a pool of pre-encoded canvases (VAE posterior means).
    "pool": 40000,
    "unet": {
        "steps": 2500,
        "batch": 64,
        "lr": 6e-4,
        "warmup": 200,
        "ema": 0.995,
        "channels": [32, 64, 64],
        "layers_per_block": 1,
        "heads": 4,
    },
    "text": {"hidden": 64, "layers": 2, "heads": 4, "intermediate": 128, "lr": 3e-4},
    "log_every": 100,
}


def build_models(cfg) -> dict:
    """Untrained components in the SD layout (f = 2^(len(vae.channels) - 1))."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from distill.diffusion.architectures import SD15_SCHEDULE

    v, u, t = cfg.vae, cfg.unet, cfg.text
    n = len(v.channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=int(v.latent_channels),
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(v.channels),
        layers_per_block=int(v.layers_per_block),
        norm_num_groups=8,
        sample_size=int(cfg.canvas),
        scaling_factor=1.0,
    )
    m = len(u.channels)
    unet = UNet2DConditionModel(
        sample_size=int(cfg.canvas) // 2 ** (n - 1),
        in_channels=int(v.latent_channels),
        out_channels=int(v.latent_channels),
        layers_per_block=int(u.layers_per_block),
        block_out_channels=tuple(u.channels),
        down_block_types=("CrossAttnDownBlock2D",) * (m - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (m - 1),
        cross_attention_dim=int(t.hidden),
        attention_head_dim=int(u.heads),
        norm_num_groups=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=int(t.hidden),
            intermediate_size=int(t.intermediate),
            num_hidden_layers=int(t.layers),
            num_attention_heads=int(t.heads),
            max_position_embeddings=77,
            projection_dim=int(t.hidden),
            hidden_act="quick_gelu",
        )
    )
    return {
        "vae": vae,
        "unet": unet,
        "text_encoder": text_encoder,
        "scheduler": DDPMScheduler(**SD15_SCHEDULE),
    }


class CanvasSampler:
    """Random training canvases (scenes or single items) with their labels, seeded."""

    def __init__(
        self, items: np.ndarray, labels: np.ndarray, canvas: int, scene_fraction: float, seed: int
    ):
        self.items, self.labels, self.canvas = items, labels, canvas
        self.scene_fraction = scene_fraction
        self.rng = np.random.default_rng(seed)
        self.scene_seed = seed + 7

    def __call__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.rng.integers(0, len(self.items), size=n)
        scenes = self.rng.random(n) < self.scene_fraction
        out = np.empty((n, self.canvas, self.canvas, 3), np.uint8)
        for k, (i, sc) in enumerate(zip(idx, scenes, strict=True)):
            if sc:
                # A fresh scene every time: the scene seed advances with the sampler.
                out[k] = make_scene(
                    self.items,
                    self.labels,
                    int(i),
                    int(self.rng.integers(1 << 30)),
                    canvas=self.canvas,
                )[0]
            else:
                out[k] = single_item(self.items, int(i), self.canvas)
        x = torch.from_numpy(out).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return x, torch.from_numpy(self.labels[idx].astype(np.int64))


def _budget_left(t0: float, minutes) -> bool:
    return minutes is None or (time.perf_counter() - t0) < float(minutes) * 60


def train_vae(vae, sample: CanvasSampler, cfg, t0: float) -> dict:
    opt = torch.optim.AdamW(vae.parameters(), lr=float(cfg.vae.lr), weight_decay=0.0)
    vae.train()
    losses, step = [], 0
    crop = int(cfg.vae.get("crop") or cfg.canvas)
    rng = np.random.default_rng(int(cfg.seed) + 3)
    for step in range(1, int(cfg.vae.steps) + 1):
        x, _ = sample(int(cfg.vae.batch))
        if crop < x.shape[-1]:
            y0, x0 = (int(v) for v in rng.integers(0, x.shape[-1] - crop + 1, size=2))
            x = x[:, :, y0 : y0 + crop, x0 : x0 + crop]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()
        loss = mse + float(cfg.vae.kl_weight) * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(mse.detach()))
        if step % int(cfg.log_every) == 0:
            log.info("vae step %d: mse %.5f", step, float(np.mean(losses[-cfg.log_every :])))
        if not _budget_left(t0, cfg.time_budget_min * 0.15 if cfg.time_budget_min else None):
            log.warning("vae: time budget reached at step %d", step)
            break
    vae.eval()
    return {
        "steps": step,
        "final_mse": float(np.mean(losses[-100:])),
        "first_mse": float(np.mean(losses[:20])),
    }


@torch.no_grad()
def encode_pool(vae, sample: CanvasSampler, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fresh canvases encoded once (posterior means, unscaled) with their labels."""
    zs, ys = [], []
    for k in range(0, n, 256):
        x, y = sample(min(256, n - k))
        zs.append(vae.encode(x).latent_dist.mean)
        ys.append(y)
    return torch.cat(zs), torch.cat(ys)


def latent_scale(z: torch.Tensor) -> float:
    """1 / std of the latents, so they have unit variance as SD's do (its 0.18215)."""
    return float(1.0 / z.std())


def train_unet(
    models: dict, tokenizer, pool: tuple[torch.Tensor, torch.Tensor], cfg, t0: float
) -> dict:
    vae, unet, text_encoder, sched = (
        models["vae"],
        models["unet"],
        models["text_encoder"],
        models["scheduler"],
    )
    names = [n for _, n in FASHION_CLASSES]
    prompts = [str(cfg.prompt).format(name=n) for n in names] + [str(cfg.null_prompt)]
    ids = tokenizer(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    ac = sched.alphas_cumprod.float()
    scale = float(vae.config.scaling_factor)
    params = [
        {"params": unet.parameters(), "lr": float(cfg.unet.lr)},
        {"params": text_encoder.parameters(), "lr": float(cfg.text.lr)},
    ]
    opt = torch.optim.AdamW(params, weight_decay=0.01)
    steps, warm = int(cfg.unet.steps), int(cfg.unet.warmup)
    sched_lr = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    decay = float(cfg.unet.ema)
    rng = torch.Generator().manual_seed(int(cfg.seed) + 11)
    unet.train()
    text_encoder.train()
    losses, step = [], 0
    for step in range(1, steps + 1):
        pick = torch.randint(0, len(pool[0]), (int(cfg.unet.batch),), generator=rng)
        z, y = pool[0][pick] * scale, pool[1][pick]
        null = torch.rand(len(y), generator=rng) < float(cfg.null_prob)
        prompt_idx = torch.where(null, torch.full_like(y, len(names)), y)
        # Eleven prompts in all: encode them once per step, then index (same gradients).
        emb = text_encoder(ids)[0][prompt_idx]
        t = torch.randint(0, len(ac), (len(y),), generator=rng)
        eps = torch.randn(z.shape, generator=rng)
        a = ac[t].view(-1, 1, 1, 1)
        pred = unet(a.sqrt() * z + (1 - a).sqrt() * eps, t, encoder_hidden_states=emb).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched_lr.step()
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    ema[k].copy_(v)
        losses.append(float(loss.detach()))
        if step % int(cfg.log_every) == 0:
            log.info(
                "unet step %d: loss %.4f (%.0f s)",
                step,
                float(np.mean(losses[-cfg.log_every :])),
                time.perf_counter() - t0,
            )
        if not _budget_left(t0, cfg.time_budget_min):
            log.warning("unet: time budget reached at step %d", step)
            break
    unet.load_state_dict(ema)
    unet.eval()
    text_encoder.eval()
    return {
        "steps": step,
        "final_loss": float(np.mean(losses[-100:])),
        "first_loss": float(np.mean(losses[:20])),
    }


def save_model(models: dict, tokenizer, out_dir: Path, card: str, fp16: bool = True) -> Path:
    """Write the SD folder layout atomically (a temp folder renamed into place)."""
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        parts = {k: (v.half() if fp16 and k != "scheduler" else v) for k, v in models.items()}
        save_components({**parts, "tokenizer": tokenizer}, tmp)
        (tmp / "README.md").write_text(card)
        # mkdtemp and safetensors create owner-only files; a committed model is for everyone.
        for p in [tmp, *tmp.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def model_card(cfg, stats: dict, argv: list[str]) -> str:
    p = stats["params"]
    return f"""# fashion-ldm: a small text-to-image latent diffusion model for Fashion-MNIST

Trained by this project (`distill.train_diffusion`) so that the pipeline has a real diffusion
model on machines where Stable Diffusion v1.5 cannot be downloaded. Stable Diffusion folder
layout: load it with `diffusion.model=models/fashion-ldm` (or diffusers' `from_pretrained`).

| | |
| --- | --- |
| data | Fashion-MNIST training split (60,000 images, Debian `dataset-fashion-mnist`), drawn as 64x64 canvases: {cfg.scene_fraction:.0%} scenes (one labelled item, {list(SCENE_DEFAULTS["item_scale"])} px, among 1-2 smaller distractors of other classes), the rest single items |
| prompts | "{cfg.prompt}" with the class name; null prompt "{cfg.null_prompt}" with probability {cfg.null_prob} |
| VAE | `AutoencoderKL`, channels {list(cfg.vae.channels)}, f = {2 ** (len(cfg.vae.channels) - 1)}, {cfg.vae.latent_channels} latent channels, {p["vae"]:,} parameters; {stats["vae"]["steps"]} steps of batch {cfg.vae.batch} ({cfg.vae.crop} px crops); reconstruction MSE (pixels in [-1, 1]) {stats["vae"]["first_mse"]:.4f} -> {stats["vae"]["final_mse"]:.4f} |
| latent scale | {stats["scaling_factor"]:.4f} (1 / std of the posterior means of {cfg.pool:,} canvases, the U-Net's training pool) |
| U-Net | `UNet2DConditionModel`, channels {list(cfg.unet.channels)}, cross-attention, {p["unet"]:,} parameters; {stats["unet"]["steps"]} steps of batch {cfg.unet.batch}, AdamW lr {cfg.unet.lr} (warm-up, cosine), EMA {cfg.unet.ema}; epsilon loss {stats["unet"]["first_loss"]:.4f} -> {stats["unet"]["final_loss"]:.4f} |
| text encoder | `CLIPTextModel`, {cfg.text.layers} layers, width {cfg.text.hidden}, {p["text_encoder"]:,} parameters, trained with the U-Net; the real CLIP BPE tokenizer (49,408 tokens) |
| schedule | DDPM, SD v1.5's scaled-linear betas (0.00085 to 0.012), 1000 steps, epsilon prediction |
| weights | fp16 safetensors |
| trained on | {stats["machine"]}, {stats["threads"]} threads, {stats["minutes"]:.1f} minutes, torch {torch.__version__} |

Reproduce (deterministic up to floating-point thread effects):

```bash
{" ".join(["python -m distill.train_diffusion", *argv]).strip()}
```
"""


def train(cfg) -> Path:
    """Run all three phases and save the model; returns its folder."""
    from transformers import CLIPTokenizer

    from distill.diffusion.tokenizer import write_clip_tokenizer

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))
    t0 = time.perf_counter()
    items, labels, _ = fashion_arrays(OmegaConf.create({"root": cfg.data_root}), "train")
    sample = CanvasSampler(items, labels, int(cfg.canvas), float(cfg.scene_fraction), int(cfg.seed))
    models = build_models(cfg)
    with tempfile.TemporaryDirectory() as d:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(d))
    stats: dict = {
        "params": {
            k: sum(p.numel() for p in m.parameters())
            for k, m in models.items()
            if hasattr(m, "parameters")
        }
    }
    log.info("parameters: %s", stats["params"])
    stats["vae"] = train_vae(models["vae"], sample, cfg, t0)
    pool = encode_pool(models["vae"], sample, int(cfg.pool))
    scale = latent_scale(pool[0])
    models["vae"].register_to_config(scaling_factor=scale)
    stats["scaling_factor"] = scale
    log.info(
        "latent pool of %d canvases encoded; scaling factor %.4f (%.0f s)",
        len(pool[0]),
        scale,
        time.perf_counter() - t0,
    )
    stats["unet"] = train_unet(models, tokenizer, pool, cfg, t0)
    stats["minutes"] = (time.perf_counter() - t0) / 60
    stats["threads"] = torch.get_num_threads()
    stats["machine"] = machine_name()
    out = save_model(
        models, tokenizer, Path(cfg.out_dir), model_card(cfg, stats, list(cfg.get("_argv", [])))
    )
    (out / "training_stats.json").write_text(json.dumps(stats, indent=2))
    log.info("model written to %s (%.1f min)", out, stats["minutes"])
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )
    argv = sys.argv[1:] if argv is None else argv
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(argv))
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        print(
            f"error: unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}", file=sys.stderr
        )
        return 2
    cfg._argv = argv
    try:
        out = train(cfg)
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
