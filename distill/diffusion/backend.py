"""The diffusion backend: a Stable-Diffusion-layout model and the few operations the method needs.

Everything Stage I and Stage II ask of the model lives here, written out rather than hidden in
a pipeline (as diffusers separates schedulers from models): images to latents, prompts to
embeddings, the DDPM forward process at integer timesteps, and the U-Net's noise prediction.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from distill.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SUBFOLDERS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
BUILTIN = ("tiny", "random-sd15")


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 dot-product instructions (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def resolve_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    """``auto``: bf16 on a CUDA device or CPU with native bf16 arithmetic, else fp32."""
    if name == "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if dev.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"diffusion.dtype={name!r} must be one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


class DiffusionBackend(nn.Module):
    """VAE, U-Net, text encoder, tokenizer and noise schedule of a latent diffusion model."""

    def __init__(
        self,
        vae,
        unet,
        text_encoder,
        tokenizer,
        scheduler,
        name: str = "",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.unet = unet.eval().requires_grad_(False)
        self.text_encoder = (
            text_encoder.eval().requires_grad_(False) if text_encoder is not None else None
        )
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.name = name
        self.dtype = dtype
        # fp16 SD VAEs can overflow to NaN in the encoder's mid block; bf16 and fp32 are safe.
        self.vae_dtype = torch.float32 if dtype == torch.float16 else dtype
        for module, want in (
            (self.vae, self.vae_dtype),
            (self.unet, dtype),
            (self.text_encoder, dtype),
        ):
            if module is not None and next(module.parameters()).dtype != want:
                module.to(want)
        # Convolutions run faster in NHWC on CPUs (oneDNN) and GPUs (tensor cores). Either way
        # one layout is used for every call, which keeps results batch-size invariant.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.vae.to(memory_format=torch.channels_last)
            self.unet.to(memory_format=torch.channels_last)
        ac = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
        self.register_buffer("alphas_cumprod", ac, persistent=False)
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._weights_digest: str | None = None

    # ------------------------------------------------------------------ model facts
    @property
    def vae_factor(self) -> int:
        """Pixels per latent pixel, from the VAE config (8 for SD), never hard-coded."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def prediction_type(self) -> str:
        return str(getattr(self.scheduler.config, "prediction_type", "epsilon"))

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def weights_digest(self) -> str:
        """A digest of the VAE, U-Net and text-encoder weights (a strided sample of every
        tensor): retrained weights at the same path are a different model."""
        if self._weights_digest is None:
            h = hashlib.sha256()
            for module in (self.vae, self.unet, self.text_encoder):
                if module is None:
                    continue
                for name, p in module.state_dict().items():
                    flat = p.detach().reshape(-1)
                    sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy()
                    h.update(name.encode())
                    h.update(sample.tobytes())
            self._weights_digest = h.hexdigest()
        return self._weights_digest

    def fingerprint(self) -> dict:
        """What identifies this model in a bank's config hash."""
        return {
            "name": self.name,
            "weights": self.weights_digest(),
            "unet_params": sum(p.numel() for p in self.unet.parameters()),
            "vae_factor": self.vae_factor,
            "scaling_factor": self.scaling_factor,
            "prediction_type": self.prediction_type,
            "num_train_timesteps": self.num_train_timesteps,
            "dtype": str(self.dtype).replace("torch.", ""),
            "channels_last": self.memory_format == torch.channels_last,
        }

    # ------------------------------------------------------------------ operations
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images to latents: the VAE posterior *mean* times the scaling factor.

        Args:
            pixels: uint8 (B, 3, H, W) in [0, 255], or float in [0, 1].
        """
        x = pixels.to(self.device)
        x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float() * 2.0 - 1.0
        posterior = self.vae.encode(
            x.to(self.vae_dtype).contiguous(memory_format=self.memory_format)
        ).latent_dist
        z = posterior.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((z - shift) * self.scaling_factor).to(self.dtype).contiguous()

    @torch.no_grad()
    def embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Prompts to text-encoder hidden states (P, L, D), cached per prompt string.

        Matches the SD pipelines: pad to the tokenizer's max length, truncate, no attention
        mask, last hidden state.
        """
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            if self.text_encoder is None:
                raise ModelError("this backend was built without a text encoder")
            ids = self.tokenizer(
                missing,
                padding="max_length",
                truncation=True,
                max_length=self.tokenizer.model_max_length,
                return_tensors="pt",
            ).input_ids.to(self.device)
            hidden = self.text_encoder(ids)[0].to(self.dtype)
            for p, h in zip(missing, hidden, strict=True):
                self._prompt_cache[p] = h
        return torch.stack([self._prompt_cache[p].to(self.device) for p in prompts])

    def clear_prompt_cache(self) -> None:
        self._prompt_cache.clear()

    def _alpha(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(t.device)[t.long()]
        return a.view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, z: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """DDPM forward process ``sqrt(a_t) z + sqrt(1 - a_t) eps`` at integer timesteps.

        The paper's Eq. (1) prints ``(1 - sqrt(a_t))`` for the noise weight, a typo (NOTES.md):
        this is the standard process the model was trained with.
        """
        a = self._alpha(t, z)
        return (a.sqrt() * z.double() + (1 - a).sqrt() * eps.double()).to(z.dtype)

    @torch.no_grad()
    def predict_eps(self, z_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The U-Net's noise prediction; v-prediction models are converted to epsilon."""
        # One memory layout for every call: oneDNN picks its kernel by layout, and a input in
        # another layout (which some VAE outputs propagate) rounds differently.
        z_t = z_t.to(self.dtype).contiguous(memory_format=self.memory_format)
        out = self.unet(z_t, t.to(self.device), encoder_hidden_states=emb.contiguous()).sample
        if self.prediction_type == "v_prediction":
            a = self._alpha(t, z_t)
            out = ((1 - a).sqrt() * z_t.double() + a.sqrt() * out.double()).to(out.dtype)
        elif self.prediction_type != "epsilon":
            raise ModelError(f"unsupported prediction_type {self.prediction_type!r}")
        return out

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_components(
        cls, components: dict, name: str, dtype: torch.dtype, channels_last: bool = False
    ) -> DiffusionBackend:
        return cls(
            components["vae"],
            components["unet"],
            components.get("text_encoder"),
            components["tokenizer"],
            components["scheduler"],
            name=name,
            dtype=dtype,
            channels_last=channels_last,
        )

    @classmethod
    def load(
        cls,
        model: str,
        dtype: str | torch.dtype = "fp32",
        device: str = "cpu",
        cache_dir: str | None = None,
        revision: str | None = None,
        tiny_seed: int = 0,
        channels_last: bool = False,
    ) -> DiffusionBackend:
        """Load a model from a local diffusers folder, a hub id, or a built-in name.

        Args:
            model: a folder with ``vae/ unet/ text_encoder/ tokenizer/ scheduler/``; a hub id
                such as ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (needs the internet or
                a filled hub cache); ``tiny`` (random miniature, built once into
                ``cache_dir``); or ``random-sd15`` (full-size architecture, random weights).
            dtype: ``fp32``, ``bf16``, ``fp16`` or ``auto``.
            channels_last: run the VAE and U-Net in NHWC memory layout (faster convolutions).
        """
        torch_dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, device)
        if model is None or str(model) in ("", "None", "???"):
            raise ModelError(
                "diffusion.model is not set: pass diffusion.model=/path/to/stable-diffusion-v1-5 "
                "(a diffusers folder) or a hub id"
            )
        model = str(model)
        if model == "random-sd15":
            from distill.diffusion.architectures import sd15_components

            return cls.from_components(
                sd15_components(), "random-sd15", torch_dtype, channels_last
            ).to(device)
        if model == "tiny":
            from distill.diffusion.architectures import ensure_tiny_model

            if cache_dir is None:
                raise ConfigError("diffusion.model=tiny needs paths.cache_dir to build into")
            path = ensure_tiny_model(cache_dir, seed=tiny_seed)
            return cls._load_folder(path, "tiny", torch_dtype, channels_last).to(device)
        local = Path(os.path.expanduser(model))
        if local.exists() or model.startswith(("/", "./", "../", "~")) or model.count("/") != 1:
            return cls._load_folder(local, model, torch_dtype, channels_last).to(device)
        return cls._load_hub(model, torch_dtype, revision, channels_last).to(device)

    @classmethod
    def _load_folder(
        cls, path: Path, name: str, dtype: torch.dtype, channels_last: bool = False
    ) -> DiffusionBackend:
        if not path.is_dir():
            raise ModelError(
                f"diffusion.model={path}: no such folder. Point it at a Stable Diffusion folder in "
                f"the diffusers layout ({', '.join(s + '/' for s in SUBFOLDERS)}), e.g. from "
                "`huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 "
                "--local-dir DIR` on a machine with internet."
            )
        missing = [s for s in SUBFOLDERS if not (path / s).is_dir()]
        if missing:
            raise ModelError(f"diffusion.model={path} lacks the subfolders {missing}")
        return cls._from_pretrained(str(path), name, dtype, channels_last, local_files_only=True)

    @classmethod
    def _load_hub(
        cls, repo: str, dtype: torch.dtype, revision: str | None, channels_last: bool = False
    ) -> DiffusionBackend:
        try:
            return cls._from_pretrained(repo, repo, dtype, channels_last, revision=revision)
        except ModelError:
            raise
        except Exception as e:  # hub errors come in many types
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
            raise ModelError(
                f"could not load diffusion.model={repo} from the Hugging Face hub"
                f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: {type(e).__name__}: {e}. "
                "Download it once where there is internet and pass diffusion.model=/path/to/it."
            ) from e

    @classmethod
    def _from_pretrained(
        cls, where: str, name: str, dtype: torch.dtype, channels_last: bool = False, **kw
    ) -> DiffusionBackend:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            vae_dtype = torch.float32 if dtype == torch.float16 else dtype
            vae = AutoencoderKL.from_pretrained(where, subfolder="vae", torch_dtype=vae_dtype, **kw)
            unet = UNet2DConditionModel.from_pretrained(
                where, subfolder="unet", torch_dtype=dtype, **kw
            )
            text_encoder = CLIPTextModel.from_pretrained(where, subfolder="text_encoder", **kw)
            tokenizer = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", **kw)
            scheduler = DDPMScheduler.from_pretrained(where, subfolder="scheduler", **kw)
        except (OSError, ValueError) as e:
            if kw.get("local_files_only"):
                raise ModelError(f"diffusion.model={where} failed to load: {e}") from e
            raise
        log.info("loaded diffusion model %s (%s)", name, str(dtype).replace("torch.", ""))
        return cls(
            vae,
            unet,
            text_encoder,
            tokenizer,
            scheduler,
            name=name,
            dtype=dtype,
            channels_last=channels_last,
        )
