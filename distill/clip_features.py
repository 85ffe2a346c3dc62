"""Stage II features from CLIP's image tower instead of DIFT (paper Table 5's "CLIP" row).

``features=clip`` embeds every bank patch with an open_clip image encoder; the features stage
then writes the same ``features.npy`` / ``feature_owners.npy`` as DIFT does, so k-means,
selection and materialise run unchanged. The ablation asks whether the diffusion model's own
features cluster patches better than a contrastive image encoder's.

Weights come from the user's disk or the hub through open_clip: ``features.clip.model`` is an
open_clip model name (``ViT-B-32``) or the path of a model config JSON of one's own (its file
stem becomes the name); ``features.clip.pretrained`` is an open_clip tag (``openai``,
``laion2b_s34b_b79k``: downloaded once into ``paths.cache_dir`` or the hub cache), a local
checkpoint file, or null for random weights (tests, timing).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from distill.errors import ModelError
from distill.runtime import set_cpu_threads

log = logging.getLogger(__name__)


def load_clip(clip_cfg, cache_dir: str | None = None):
    """(model, mean, std, size, fingerprint) of the configured open_clip image tower."""
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - a dependency
        raise ModelError("features=clip needs open_clip_torch (pip install open_clip_torch)") from e
    name = str(clip_cfg.get("model", "ViT-B-32"))
    pretrained = clip_cfg.get("pretrained", "openai")
    if name.endswith(".json"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelError(f"features.clip.model={name}: no such model config file")
        open_clip.add_model_config(str(path))
        name = path.stem
    if name not in open_clip.list_models():
        raise ModelError(
            f"features.clip.model={name!r} is not an open_clip model; e.g. ViT-B-32, or the "
            "path of a model config JSON"
        )
    try:
        # Random weights (pretrained=null) from a fixed seed: the same model on every load.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model(
                name, pretrained=pretrained or None, cache_dir=cache_dir, device="cpu"
            )
    except Exception as e:  # network, a missing or mismatched checkpoint
        raise ModelError(
            f"features.clip: cannot load {name} with pretrained={pretrained!r}: {e}. Offline, "
            "pass features.clip.pretrained=/path/to/open_clip_pytorch_model.bin"
        ) from None
    model.eval()
    pre = getattr(model.visual, "preprocess_cfg", None) or {}
    size = pre.get("size", getattr(model.visual, "image_size", 224))
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = torch.tensor(pre.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1)
    std = torch.tensor(pre.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1)
    h = hashlib.sha256()
    for k, v in list(model.visual.state_dict().items())[:8]:
        h.update(k.encode())
        h.update(v.detach().float().flatten()[:256].numpy().tobytes())
    fingerprint = {"clip": name, "pretrained": str(pretrained), "weights": h.hexdigest()[:16]}
    return model, mean, std, size, fingerprint


class ClipFeatures(L.LightningModule):
    """CLIP image embedding of each patch: resized (bicubic, antialiased) to the tower's
    input, normalised with its statistics, encoded; records as DIFT's module writes them."""

    def __init__(self, model, mean, std, size: int, batch: int = 64, num_threads=None):
        super().__init__()
        self.model, self.size, self.batch = model, int(size), int(batch)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.num_threads = num_threads

    def on_predict_start(self) -> None:
        set_cpu_threads(self._trainer, self.num_threads)

    @torch.no_grad()
    def features(self, crops: torch.Tensor) -> torch.Tensor:
        """(M, D) embeddings of uint8 (M, 3, P, P) crops."""
        x = crops.float() / 255.0
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True
            ).clamp(0, 1)
        x = (x - self.mean) / self.std
        out = [
            self.model.encode_image(x[i : i + self.batch]).float()
            for i in range(0, len(x), self.batch)
        ]
        return torch.cat(out)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        records = [dict(f) for f in batch["failed"]]
        if not batch["owner"]:
            return records
        feats = self.features(batch["crops"]).cpu().numpy()
        for (index, k, _, _), f in zip(batch["owner"], feats, strict=True):
            records.append({"index": index, "k": k, "feature": f})
        return records
