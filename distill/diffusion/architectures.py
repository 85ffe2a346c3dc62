"""Stable-Diffusion-layout models built in code: a random miniature for tests and the
smoke preset, and the full-size SD v1.5 architecture (random weights) for timing.

Weights do not change speed, so the full-size architecture with random weights measures the
real cost of scoring without downloading 4 GB; the miniature exercises every code path in
well under a second.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from distill.io import temp_dir

# SD v1.5's DDPM schedule (its scheduler/scheduler_config.json).
SD15_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
)

TINY_VERSION = "tiny-sd-v1"


def _scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SD15_SCHEDULE)


def tiny_components(seed: int = 0) -> dict:
    """A random miniature SD: same classes, layout and conventions as SD v1.5 (f = 8)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from distill.diffusion.tokenizer import write_clip_tokenizer

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="quick_gelu",
        )
    )
    with tempfile.TemporaryDirectory() as d:
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(d))
    return dict(
        vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=_scheduler()
    )


def sd15_components(seed: int = 0, with_text_encoder: bool = True) -> dict:
    """SD v1.5's public architecture (VAE, U-Net, CLIP ViT-L/14 text tower), random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    text_encoder = None
    if with_text_encoder:
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                projection_dim=768,
                hidden_act="quick_gelu",
            )
        )
    with tempfile.TemporaryDirectory() as d:
        from transformers import CLIPTokenizer

        from distill.diffusion.tokenizer import write_clip_tokenizer

        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(d))
    return dict(
        vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=_scheduler()
    )


def save_components(components: dict, out_dir: str | Path) -> Path:
    """Save components in the diffusers folder layout (``model_index.json`` + subfolders)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.27.0"}
    for name, obj in components.items():
        obj.save_pretrained(out / name)
        lib = "transformers" if type(obj).__module__.startswith("transformers") else "diffusers"
        index[name] = [lib, type(obj).__name__]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def ensure_tiny_model(cache_dir: str | Path, seed: int = 0) -> Path:
    """Path of the miniature model on disk, building it once (atomically) if absent.

    Loading it back through ``from_pretrained`` means tests and the smoke preset go through
    the same loading path as real SD v1.5 weights.
    """
    cache = Path(os.path.expanduser(str(cache_dir)))
    path = cache / f"{TINY_VERSION}-seed{seed}"
    if (path / "model_index.json").is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path)
    try:
        save_components(tiny_components(seed), tmp)
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "model_index.json").is_file():  # another process won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
