"""Train the project's own small text-to-image latent diffusion model on Fashion-MNIST.

    python -m distill.train_diffusion                       # the committed model: ~1.5 h, 2 CPU cores
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

A run is resumable: the VAE, the encoded pool and every ``ckpt_every`` U-Net steps (weights,
EMA, optimiser, learning-rate schedule, random state, losses) go to ``work_dir``; the same
command continues a killed run from its last checkpoint. ``held_out`` training items are kept
out of training and the *probe* (``distill.diffusion.probe``: the diffusion classifier's top-1
and the class-vs-null loss gain, Stage I's measure of conditioning strength) runs on them every
``probe.every`` steps, so settings are chosen on training data, never on the test split.
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
from distill.io import atomic_path, atomic_write_json
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
    "time_budget_min": 120,
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
        "steps": 9000,
        "batch": 64,
        "lr": 6e-4,
        "warmup": 200,
        "ema": 0.995,
        # Share of training timesteps drawn from t_focus (fractions of the schedule), the
        # rest uniform over all steps; null = uniform (the standard DDPM objective). Stage I
        # and the probe read the loss at t in [0.1, 0.7].
        "t_focus": None,
        "t_focus_prob": 0.75,
        "channels": [32, 64, 64],
        "layers_per_block": 1,
        "heads": 4,
    },
    "text": {"hidden": 64, "layers": 2, "heads": 4, "intermediate": 128, "lr": 3e-4},
    "log_every": 100,
    # A Markdown file appended to the model card (e.g. the table of settings tried).
    "card_notes": None,
    # Checkpoints of a run in progress (null: outputs/train_diffusion/<out_dir's name>).
    "work_dir": None,
    "ckpt_every": 250,
    # Continue from work_dir's checkpoint when its settings match (false: start afresh).
    "resume": True,
    # Reuse the VAE and latent pool of another run's work folder (same VAE settings): trials
    # of U-Net settings then skip phase 1.
    "phase1_from": None,
    # Training items kept out of training for the probe (the test split is never tuned on).
    "held_out": 2000,
    # The probe on held-out items: half single items, half scenes; Stage I's t range.
    "probe": {"every": 1000, "images": 200, "draws": 8, "t_range": [0.1, 0.7], "seed": 0},
}

# Settings that may change between a run and its resumption (they do not change the model).
RESUMABLE_KEYS = (
    "out_dir",
    "work_dir",
    "resume",
    "threads",
    "log_every",
    "ckpt_every",
    "probe",
    "phase1_from",
    "card_notes",
)
# The settings phase 1 (the VAE and its latent pool) depends on.
PHASE1_KEYS = ("data_root", "canvas", "scene_fraction", "seed", "vae", "pool", "held_out")


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


def _budget_left(elapsed_s: float, minutes) -> bool:
    return minutes is None or elapsed_s < float(minutes) * 60


def _progress(total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


def train_vae(vae, sample: CanvasSampler, cfg, clock) -> dict:
    opt = torch.optim.AdamW(vae.parameters(), lr=float(cfg.vae.lr), weight_decay=0.0)
    vae.train()
    losses, step = [], 0
    crop = int(cfg.vae.get("crop") or cfg.canvas)
    rng = np.random.default_rng(int(cfg.seed) + 3)
    bar = _progress(int(cfg.vae.steps), 0, "vae")
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
        bar.update(1)
        if step % int(cfg.log_every) == 0:
            bar.set_postfix(mse=f"{np.mean(losses[-cfg.log_every :]):.4f}")
            log.debug("vae step %d: mse %.5f", step, float(np.mean(losses[-cfg.log_every :])))
        if not _budget_left(clock(), cfg.time_budget_min * 0.15 if cfg.time_budget_min else None):
            log.warning("vae: time budget reached at step %d", step)
            break
    bar.close()
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


def split_held_out(n: int, held_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training items used for training and those kept for the probe."""
    if not 0 <= held_out < n:
        raise DistillError(f"held_out={held_out} must be in [0, {n - 1}] (the split has {n} items)")
    perm = np.random.default_rng([int(seed), 17]).permutation(n)
    return np.sort(perm[held_out:]), np.sort(perm[:held_out])


def probe_canvases(items, labels, idx: np.ndarray, n: int, canvas: int, seed: int):
    """``n`` held-out canvases, the first half single items and the rest scenes, with labels."""
    take = idx[np.random.default_rng([int(seed), 29]).permutation(len(idx))[:n]]
    half = (len(take) + 1) // 2
    out = []
    for k, i in enumerate(take):
        if k < half:
            out.append(single_item(items, int(i), canvas))
        else:
            out.append(make_scene(items, labels, int(i), int(seed) + 101, canvas=canvas)[0])
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.from_numpy(labels[take].astype(np.int64)), half


def prompt_ids(tokenizer, cfg) -> torch.Tensor:
    names = [n for _, n in FASHION_CLASSES]
    prompts = [str(cfg.prompt).format(name=n) for n in names] + [str(cfg.null_prompt)]
    return tokenizer(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def run_probe(unet, text_encoder, ids, z_probe, y_probe, half: int, ac, cfg) -> dict:
    """The diffusion classifier and the class-vs-null gain on the held-out canvases."""
    from distill.diffusion.probe import prompt_losses, stratified_draws, summarize
    from distill.scoring.relevance import timestep_bounds

    was = unet.training, text_encoder.training
    unet.eval()
    text_encoder.eval()
    lo, hi = timestep_bounds(list(cfg.probe.t_range), len(ac))
    t, eps = stratified_draws(
        len(z_probe), int(cfg.probe.draws), tuple(z_probe.shape[1:]), lo, hi, int(cfg.probe.seed)
    )
    losses = prompt_losses(unet, z_probe, text_encoder(ids)[0], ac, t, eps)
    unet.train(was[0])
    text_encoder.train(was[1])
    return {
        "single": summarize(losses[:half], y_probe[:half]),
        "scene": summarize(losses[half:], y_probe[half:]),
    }


def _ema_unet(unet, ema: dict):
    import copy

    m = copy.deepcopy(unet)
    m.load_state_dict(ema)
    return m


def train_unet(models: dict, tokenizer, pool, probe_set, cfg, work: Path, clock) -> dict:
    """The U-Net and text encoder on epsilon prediction, checkpointed and probed as it goes."""
    unet, text_encoder, sched = models["unet"], models["text_encoder"], models["scheduler"]
    ids = prompt_ids(tokenizer, cfg)
    n_classes = len(ids) - 1
    ac = sched.alphas_cumprod.float()
    scale = float(models["vae"].config.scaling_factor)
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
    losses: list[float] = []
    probes: list[dict] = []
    done = 0
    ckpt = work / "unet.ckpt"
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        sched_lr.load_state_dict(state["sched"])
        ema, losses, probes, done = state["ema"], state["losses"], state["probes"], state["step"]
        rng.set_state(state["rng"])
        log.info("resumed the U-Net at step %d of %d from %s", done, steps, ckpt)
    z_probe = probe_set[0] * scale if probe_set is not None else None

    def save(step: int) -> None:
        state = {
            "unet": unet.state_dict(),
            "text_encoder": text_encoder.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched_lr.state_dict(),
            "ema": ema,
            "losses": losses,
            "probes": probes,
            "step": step,
            "rng": rng.get_state(),
            "elapsed_s": clock(),
        }
        with atomic_path(ckpt) as tmp:
            torch.save(state, tmp)

    def probe(step: int) -> None:
        if z_probe is None:
            return
        r = run_probe(
            _ema_unet(unet, ema), text_encoder, ids, z_probe, probe_set[1], probe_set[2], ac, cfg
        )
        r["step"] = step
        r["loss"] = float(np.mean(losses[-int(cfg.log_every) :])) if losses else None
        probes.append(r)
        log.info(
            "probe at step %d: top-1 single %.1f%%, scenes %.1f%%; gain vs null %.2f%% / %.2f%%",
            step,
            100 * r["single"]["top1"],
            100 * r["scene"]["top1"],
            100 * r["single"]["gain_vs_null"],
            100 * r["scene"]["gain_vs_null"],
        )
        with open(work / "probe.jsonl", "a") as f:
            f.write(json.dumps(r) + "\n")

    focus = None
    if cfg.unet.get("t_focus") is not None:
        from distill.scoring.relevance import timestep_bounds

        focus = timestep_bounds(list(cfg.unet.t_focus), len(ac))
    unet.train()
    text_encoder.train()
    every = int(cfg.probe.every) if cfg.probe.every else 0
    step = done
    bar = _progress(steps, done, "unet")
    for step in range(done + 1, steps + 1):
        pick = torch.randint(0, len(pool[0]), (int(cfg.unet.batch),), generator=rng)
        z, y = pool[0][pick] * scale, pool[1][pick]
        null = torch.rand(len(y), generator=rng) < float(cfg.null_prob)
        prompt_idx = torch.where(null, torch.full_like(y, n_classes), y)
        # Eleven prompts in all: encode them once per step, then index (same gradients).
        emb = text_encoder(ids)[0][prompt_idx]
        t = torch.randint(0, len(ac), (len(y),), generator=rng)
        if focus is not None:
            near = torch.randint(focus[0], focus[1] + 1, (len(y),), generator=rng)
            pick_near = torch.rand(len(y), generator=rng) < float(cfg.unet.t_focus_prob)
            t = torch.where(pick_near, near, t)
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
        bar.update(1)
        if step % int(cfg.log_every) == 0:
            mean = float(np.mean(losses[-cfg.log_every :]))
            bar.set_postfix(loss=f"{mean:.4f}")
            with open(work / "losses.csv", "a") as f:
                f.write(f"{step},{mean:.6f},{clock():.1f}\n")
        if every and step % every == 0:
            probe(step)
        stop = not _budget_left(clock(), cfg.time_budget_min)
        if step % int(cfg.ckpt_every) == 0 or step == steps or stop:
            save(step)
        if stop:
            log.warning("unet: time budget reached at step %d", step)
            break
    bar.close()
    if every and (not probes or probes[-1]["step"] != step):
        probe(step)
    unet.load_state_dict(ema)
    unet.eval()
    text_encoder.eval()
    return {
        "steps": step,
        "final_loss": float(np.mean(losses[-100:])),
        "first_loss": float(np.mean(losses[:20])),
        "probes": probes,
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


def _model_args(argv: list[str]) -> list[str]:
    """The arguments that shape the model (not where it runs, resumes or copies phase 1 from)."""
    skip = set(RESUMABLE_KEYS) - {"out_dir"}
    return [a for a in argv if a.split("=", 1)[0].split(".", 1)[0].lstrip("+~") not in skip]


def _t_rule(cfg) -> str:
    f = cfg.unet.get("t_focus")
    if f is None:
        return "uniform"
    return f"{cfg.unet.t_focus_prob:.0%} in [{f[0]}, {f[1]}] of the schedule, the rest uniform"


def probe_table(stats: dict, cfg) -> str:
    """The held-out probe over training, as a Markdown table (empty without probes)."""
    probes = stats.get("unet", {}).get("probes") or []
    if not probes:
        return ""
    lo, hi = (float(v) for v in cfg.probe.t_range)
    n = probes[-1]["single"]["n"] + probes[-1]["scene"]["n"]
    rows = [
        f"| {r['step']} | {r['loss']:.4f} | {100 * r['single']['top1']:.1f}% | "
        f"{100 * r['scene']['top1']:.1f}% | {100 * r['single']['gain_vs_null']:.2f}% | "
        f"{100 * r['scene']['gain_vs_null']:.2f}% |"
        for r in probes
        if r.get("loss") is not None
    ]
    return (
        f"""
## Probe during training (held-out training items)

{stats.get("held_out", 0):,} training items were kept out of training; {n} of them ({probes[-1]["single"]["n"]} single
items, {probes[-1]["scene"]["n"]} scenes) are probed with the EMA weights: the diffusion classifier's top-1 (the
class prompt with the lowest loss over {cfg.probe.draws} shared stratified draws at t in
[{lo}, {hi}], chance 10%) and the class-vs-null loss gain. The test split is probed once, after
training, by `benchmarks/fashion_probe.py`.

| step | loss | top-1 single | top-1 scenes | gain vs null, single | gain vs null, scenes |
| --- | --- | --- | --- | --- | --- |
"""
        + "\n".join(rows)
        + "\n"
    )


def model_card(cfg, stats: dict, argv: list[str]) -> str:
    p = stats["params"]
    notes = ""
    if cfg.get("card_notes"):
        notes = "\n" + Path(cfg.card_notes).read_text()
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
| U-Net | `UNet2DConditionModel`, channels {list(cfg.unet.channels)}, cross-attention, {p["unet"]:,} parameters; {stats["unet"]["steps"]} steps of batch {cfg.unet.batch}, AdamW lr {cfg.unet.lr} (warm-up, cosine), EMA {cfg.unet.ema}, timesteps {_t_rule(cfg)}; epsilon loss {stats["unet"]["first_loss"]:.4f} -> {stats["unet"]["final_loss"]:.4f} |
| text encoder | `CLIPTextModel`, {cfg.text.layers} layers, width {cfg.text.hidden}, {p["text_encoder"]:,} parameters, trained with the U-Net; the real CLIP BPE tokenizer (49,408 tokens) |
| schedule | DDPM, SD v1.5's scaled-linear betas (0.00085 to 0.012), 1000 steps, epsilon prediction |
| weights | fp16 safetensors |
| trained on | {stats["machine"]}, {stats["threads"]} threads, {stats["minutes"]:.1f} minutes, torch {torch.__version__} |

Reproduce (deterministic up to floating-point thread effects; a killed run continues from
its last checkpoint in `work_dir` when the same command is run again):

```bash
{" ".join(["python -m distill.train_diffusion", *_model_args(argv)]).strip()}
```
{probe_table(stats, cfg)}{notes}"""


def work_dir(cfg) -> Path:
    if cfg.get("work_dir"):
        return Path(cfg.work_dir)
    return Path("outputs") / "train_diffusion" / Path(cfg.out_dir).name


def _model_settings(cfg) -> dict:
    """The settings a checkpoint depends on (a resumed run must match them)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in sorted(c.items()) if k not in RESUMABLE_KEYS and not k.startswith("_")}


def _open_work(cfg) -> Path:
    """The run's work folder, emptied unless it holds a resumable run of the same settings."""
    work = work_dir(cfg)
    settings = _model_settings(cfg)
    meta = work / "settings.json"
    if work.exists() and meta.is_file() and cfg.resume:
        old = json.loads(meta.read_text())
        # The time budget may grow on a resume (train longer); nothing else may: even the
        # step count shapes the learning-rate schedule already followed.
        diff = sorted(
            k
            for k in set(old) | set(settings)
            if k != "time_budget_min" and old.get(k) != settings.get(k)
        )
        if diff:
            raise DistillError(
                f"{work} holds a run with other settings ({', '.join(diff)}); "
                "pass resume=false to start afresh, or work_dir=<another folder>"
            )
        log.info("resuming the run in %s", work)
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(meta, settings)
    return work


def _copy_phase1(src: Path, dst: Path, cfg) -> None:
    """Copy another run's phase 1 after checking it was made with the same VAE settings."""
    meta = src / "settings.json"
    if not (src / "phase1.pt").is_file() or not meta.is_file():
        raise DistillError(f"phase1_from={src}: no phase1.pt and settings.json there")
    old, new = json.loads(meta.read_text()), _model_settings(cfg)
    diff = [k for k in PHASE1_KEYS if old.get(k) != new.get(k)]
    if diff:
        raise DistillError(f"phase1_from={src} was made with other settings ({', '.join(diff)})")
    shutil.copyfile(src / "phase1.pt", dst)
    log.info("phase 1 (VAE and latent pool) taken from %s", src)


def train(cfg) -> Path:
    """Run all three phases and save the model; returns its folder.

    Resumes from ``work_dir`` when it holds a checkpoint of the same settings.
    """
    from transformers import CLIPTokenizer

    from distill.diffusion.tokenizer import write_clip_tokenizer

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))
    work = _open_work(cfg)
    if not (work / "phase1.pt").is_file() and cfg.get("phase1_from"):
        _copy_phase1(Path(cfg.phase1_from), work / "phase1.pt", cfg)  # its minutes count too
    t0 = time.perf_counter()
    before = 0.0
    if (work / "unet.ckpt").is_file():
        before = float(torch.load(work / "unet.ckpt", weights_only=False)["elapsed_s"])
    elif (work / "phase1.pt").is_file():
        before = float(torch.load(work / "phase1.pt", weights_only=False)["elapsed_s"])

    def clock() -> float:  # training seconds over every resumption
        return before + time.perf_counter() - t0

    items, labels, _ = fashion_arrays(OmegaConf.create({"root": cfg.data_root}), "train")
    train_idx, held_idx = split_held_out(len(items), int(cfg.held_out), int(cfg.seed))
    sample = CanvasSampler(
        items[train_idx],
        labels[train_idx],
        int(cfg.canvas),
        float(cfg.scene_fraction),
        int(cfg.seed),
    )
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
    phase1 = work / "phase1.pt"
    if phase1.is_file():
        state = torch.load(phase1, map_location="cpu", weights_only=False)
        models["vae"].load_state_dict(state["vae"])
        models["vae"].eval()
        stats["vae"], pool, scale = state["stats"], state["pool"], state["scale"]
        log.info("resumed: the VAE and its latent pool from %s", phase1)
    else:
        stats["vae"] = train_vae(models["vae"], sample, cfg, clock)
        pool = encode_pool(models["vae"], sample, int(cfg.pool))
        scale = latent_scale(pool[0])
        with atomic_path(phase1) as tmp:
            torch.save(
                {
                    "vae": models["vae"].state_dict(),
                    "stats": stats["vae"],
                    "pool": pool,
                    "scale": scale,
                    "elapsed_s": clock(),
                },
                tmp,
            )
    models["vae"].register_to_config(scaling_factor=scale)
    stats["scaling_factor"] = scale
    log.info(
        "latent pool of %d canvases; scaling factor %.4f (%.0f s)", len(pool[0]), scale, clock()
    )
    probe_set = None
    if cfg.probe.every and len(held_idx):
        x, y, half = probe_canvases(
            items, labels, held_idx, int(cfg.probe.images), int(cfg.canvas), int(cfg.probe.seed)
        )
        with torch.no_grad():
            probe_set = (models["vae"].encode(x).latent_dist.mean, y, half)
    stats["unet"] = train_unet(models, tokenizer, pool, probe_set, cfg, work, clock)
    stats["held_out"] = int(len(held_idx))
    stats["minutes"] = clock() / 60
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
