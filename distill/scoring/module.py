"""Stage I as a Lightning predict step: encode, noise, predict under both prompts, compare, pool.

`ScoringModule.predict_step` returns one record per image (best boxes in original-image
pixels, their scores, the image score); `ScoringData` feeds each rank its own shards in
aspect buckets. Records reach disk through `distill.writer.ShardWriter`.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader

from distill.data.classes import ClassInfo
from distill.data.dataset import ResizedImages, collate_images
from distill.errors import ConfigError
from distill.runtime import set_cpu_threads
from distill.scoring.plan import PlanSampler, Shard, assign
from distill.scoring.relevance import (
    box_to_original,
    check_t_sampling,
    draw_noise,
    encode_fixed,
    pick_windows,
    pool_scores,
    relevance_maps,
    timestep_bounds,
)

log = logging.getLogger(__name__)


def patch_geometry(scoring, vae_factor: int, short_edge: int) -> tuple[int | None, int | None]:
    """Kernel and stride of the patch pooling in latent pixels; (None, None) = whole image.

    Raises `ConfigError` when the patch or stride is not a multiple of the VAE factor, or the
    patch is larger than the resized short edge.
    """
    if int(short_edge) % vae_factor:
        raise ConfigError(
            f"data.short_edge={short_edge} must be a multiple of the VAE factor {vae_factor} "
            "(the latent grid must be whole)"
        )
    patch = scoring.get("patch")
    if patch is None:
        return None, None
    patch, stride = int(patch), int(scoring.get("stride", vae_factor))
    for name, v in (("scoring.patch", patch), ("scoring.stride", stride)):
        if v <= 0 or v % vae_factor:
            raise ConfigError(
                f"{name}={v} must be a positive multiple of the VAE factor {vae_factor}"
            )
    if patch > short_edge:
        raise ConfigError(
            f"scoring.patch={patch} is larger than data.short_edge={short_edge}: no patch fits. "
            "Use scoring.patch=null to score whole images (low-resolution datasets)."
        )
    return patch // vae_factor, stride // vae_factor


class ScoringModule(L.LightningModule):
    """Scores every image of a batch for its own class with a frozen diffusion model."""

    def __init__(self, backend, classes: list[ClassInfo], scoring, short_edge: int):
        super().__init__()
        self.backend = backend
        self.prompts = [str(scoring.prompt).format(name=c.name) for c in classes]
        self.null_prompt = str(scoring.null_prompt)
        self.num_draws = int(scoring.num_draws)
        if self.num_draws < 1:
            raise ConfigError("scoring.num_draws must be >= 1")
        self.seed = int(scoring.seed)
        self.topk = int(scoring.get("topk", 1))  # >= 1: distill.validate
        self.unet_batch = int(scoring.get("unet_batch", 64))
        self.vae_batch = int(scoring.get("vae_batch", 8))
        self.fixed_shapes = bool(scoring.get("fixed_shapes", True))
        self.num_threads = scoring.get("num_threads")
        batch = int(scoring.get("batch_size", self.vae_batch))
        per_batch = 2 * self.num_draws * batch
        if self.fixed_shapes and (self.vae_batch > batch or per_batch % self.unet_batch):
            log.warning(
                "scoring.fixed_shapes pads every VAE call to vae_batch=%d images and every U-Net call "
                "to unet_batch=%d samples; with batch_size=%d (%d U-Net samples per batch) part of "
                "each call is padding. Use vae_batch <= batch_size and a unet_batch dividing %d.",
                self.vae_batch,
                self.unet_batch,
                batch,
                per_batch,
                per_batch,
            )
        self.t_lo, self.t_hi = timestep_bounds(scoring.t_range, backend.num_train_timesteps)
        self.t_sampling = check_t_sampling(scoring.get("t_sampling", "iid"))
        self.f = backend.vae_factor
        self.kernel, self.stride = patch_geometry(scoring, self.f, short_edge)
        self.patch_px = None if self.kernel is None else self.kernel * self.f
        self.class_emb: torch.Tensor | None = None
        self.null_emb: torch.Tensor | None = None

    def on_predict_start(self) -> None:
        set_cpu_threads(self._trainer, self.num_threads)
        # Every class prompt once, on the device (paper: c = T(Y) per class, Algorithm 1).
        emb = self.backend.embed_prompts([*self.prompts, self.null_prompt])
        self.class_emb, self.null_emb = emb[:-1], emb[-1]

    def draws(self, sources: list[str], latent_shape) -> tuple[torch.Tensor, torch.Tensor]:
        ts, eps = zip(
            *(
                draw_noise(
                    self.seed,
                    s,
                    self.num_draws,
                    latent_shape,
                    self.t_lo,
                    self.t_hi,
                    self.t_sampling,
                )
                for s in sources
            ),
            strict=True,
        )
        return torch.stack(ts), torch.stack(eps)

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, labels: torch.Tensor, sources: list[str]) -> torch.Tensor:
        """Relevance maps (B, h, w) of a batch of same-size uint8 images."""
        if self.class_emb is None:
            self.on_predict_start()
        z = encode_fixed(self.backend, pixels, self.vae_batch, self.fixed_shapes)
        t, eps = self.draws(sources, tuple(z.shape[1:]))
        return relevance_maps(
            self.backend,
            z,
            self.class_emb[labels.to(self.class_emb.device)],
            self.null_emb,
            t,
            eps,
            self.unet_batch,
            self.fixed_shapes,
        )

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        records = [
            {"index": f["index"], "source": f["source"], "label": f["label"], "error": f["error"]}
            for f in batch["failed"]
        ]
        if not batch["source"]:
            return records
        d = self.score(batch["pixels"], batch["label"], batch["source"])
        image_scores = d.mean(dim=(1, 2)).cpu().tolist()
        rw, rh = batch["size"]
        if self.kernel is None or (self.patch_px >= rw and self.patch_px >= rh):
            picks = [[(0, 0, rw, rh, s)] for s in image_scores]
        else:
            pooled = pool_scores(d, self.kernel, self.stride).cpu().numpy()
            picks = []
            for p in pooled:
                wins = pick_windows(p, self.topk, self.kernel, self.stride)
                picks.append(
                    [
                        (
                            w.col * self.f,
                            w.row * self.f,
                            w.col * self.f + self.patch_px,
                            w.row * self.f + self.patch_px,
                            w.score,
                        )
                        for w in wins
                    ]
                )
        for i, src in enumerate(batch["source"]):
            orig = tuple(batch["orig_size"][i])
            boxes_r = [list(p[:4]) for p in picks[i]]
            records.append(
                {
                    "index": int(batch["index"][i]),
                    "source": src,
                    "label": int(batch["label"][i]),
                    "orig_size": list(orig),
                    "size": [rw, rh],
                    "image_score": float(image_scores[i]),
                    "boxes": [list(box_to_original(b, (rw, rh), orig)) for b in boxes_r],
                    "boxes_resized": boxes_r,
                    "scores": [float(p[4]) for p in picks[i]],
                }
            )
        return records


class ScoringData(L.LightningDataModule):
    """Feeds each rank the batches of its shards (aspect-bucketed, never duplicated)."""

    def __init__(
        self,
        dataset: ResizedImages,
        shards: list[Shard],
        sizes: list[tuple[int, int]],
        batch_size: int,
        num_workers: int = 0,
    ):
        super().__init__()
        self.dataset, self.shards, self.sizes = dataset, shards, sizes
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)

    def predict_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        sampler = PlanSampler(assign(self.shards, rank, world), self.sizes, self.batch_size)
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=collate_images,
            num_workers=self.num_workers,
            persistent_workers=False,
        )
