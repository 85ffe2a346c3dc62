"""Stage II features: DIFT ("Emergent correspondence from image diffusion") of every bank patch.

For each patch: crop it from the resized image, encode it, noise it at one timestep
(``features.timestep``, 160: the paper's "t = 1.60", NOTES.md), run the U-Net once with the
class prompt and keep the output of ``unet.up_blocks[up_ft_index]``; average an ensemble of
noise draws and pool spatially to one vector. Runs as a Lightning predict stage with the same
sharding, resume and determinism guarantees as scoring.

``features.crop_from`` offers two cheaper approximations of that exact path (issue 16; measured
against it by ``benchmarks/dift_sources.py``): ``image_latent`` encodes the whole resized image
once and crops each patch's latent from it (one VAE call per image instead of one per patch),
``image_map`` also runs the U-Net once on the whole latent and pools each patch's window of the
up block's map (one U-Net pass per draw per image instead of per patch). The default stays
``patch``: the paper's features.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from distill.bank import (
    check_items_unchanged,
    config_hash,
    drop_merged_shards,
    load_bank,
    mark_complete,
    merge_shards,
    prepare_stage,
    releases_bank_locks,
    shard_done,
    shard_path,
    write_npy,
)
from distill.clustering import uses_clusters
from distill.data import build_source
from distill.data.dataset import load_item_resized
from distill.data.images import UnreadableImage, bank_decoder
from distill.data.item_table import compact_items
from distill.errors import ConfigError, DataError
from distill.io import atomic_path, fsync_file
from distill.runtime import (
    predict_then_merge,
    prepare_on_zero_first,
    quiet_third_party,
    resolve_workers,
    set_cpu_threads,
)
from distill.scoring.plan import PlanSampler, Shard, assign, make_shards, pending
from distill.scoring.relevance import encode_fixed, fixed_chunks, stable_seed
from distill.validate import CROP_FROM

log = logging.getLogger(__name__)

FEATURE_KEYS = ("timestep", "up_ft_index", "ensemble", "prompt", "seed", "pool")


def crop_from(features) -> str:
    mode = str(features.get("crop_from", "patch"))
    if mode not in CROP_FROM:
        raise ConfigError(f"features.crop_from={mode!r} must be one of {', '.join(CROP_FROM)}")
    return mode


def window(box, scale_x: float, scale_y: float, w: int, h: int) -> tuple[int, int, int, int]:
    """The cells (x0, y0, x1, y1) of a grid ``w`` x ``h`` that a pixel box covers, at least one.

    ``scale_*`` = grid cells per pixel. Edges that fall inside a cell take the whole cell
    (floor the start, ceil the end), so no covered pixel is left out of the pooled window.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    cx0 = min(max(int(np.floor(x0 * scale_x + 1e-6)), 0), w - 1)
    cy0 = min(max(int(np.floor(y0 * scale_y + 1e-6)), 0), h - 1)
    cx1 = max(min(int(np.ceil(x1 * scale_x - 1e-6)), w), cx0 + 1)
    cy1 = max(min(int(np.ceil(y1 * scale_y - 1e-6)), h), cy0 + 1)
    return cx0, cy0, cx1, cy1


def feature_size(bank_spec: dict) -> int:
    """Side of the square each patch is fed to the U-Net at: the patch, or the short edge."""
    patch = bank_spec["scoring"].get("patch")
    return int(patch) if patch is not None else int(bank_spec["data"]["short_edge"])


class PatchCrops(Dataset):
    """Every bank record's patches as uint8 (k, 3, P, P) crops of its resized image.

    With ``whole=True`` (``features.crop_from`` other than ``patch``) an item is instead the
    whole resized image (3, H, W) and its patch boxes: the module crops them after encoding.
    """

    def __init__(
        self, source, records: list[dict], size: int, decoder: str = "pil", whole: bool = False
    ):
        self.source, self.records, self.size = source, records, size
        self.decoder, self.whole = decoder, whole
        # Arrays, not a million-entry dict and list, for the DataLoader workers to index.
        self.items = compact_items(source.items)
        index_of = {it.source: i for i, it in enumerate(source.items)}
        self.item_of = np.fromiter(
            (index_of.get(r["source"], -1) for r in records), dtype=np.int64, count=len(records)
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        out = {"index": i, "source": r["source"], "label": r["label"]}
        try:
            j = int(self.item_of[i])
            if j < 0:
                raise KeyError(f"{r['source']!r} is not in the source's listing")
            arr, _ = load_item_resized(
                self.source, j, lambda _: tuple(r["size"]), self.decoder, self.items[j]
            )
            im = Image.fromarray(arr)
        except (UnreadableImage, KeyError) as e:
            out["error"] = f"cannot reload for features: {e}"
            return out
        if self.whole:
            out["image"] = torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1)
            out["boxes"] = [list(b) for b in r["boxes_resized"]]
            return out
        crops = []
        for box in r["boxes_resized"]:
            crop = im.crop(tuple(box))
            if crop.size != (self.size, self.size):
                crop = crop.resize((self.size, self.size), resample=3)  # bicubic
            crops.append(torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1))
        out["crops"] = torch.stack(crops)
        return out


def collate_crops(batch: list[dict]) -> dict:
    ok = [b for b in batch if "error" not in b]
    if any("image" in b for b in ok):  # whole images (crop_from != patch): sizes differ
        return {
            "images": [b["image"] for b in ok],
            "boxes": [b["boxes"] for b in ok],
            "owner": [(b["index"], len(b["boxes"]), b["source"], b["label"]) for b in ok],
            "failed": [{"index": b["index"], "error": b["error"]} for b in batch if "error" in b],
            "source": [b["source"] for b in ok],
        }
    return {
        "crops": torch.cat([b["crops"] for b in ok])
        if ok
        else torch.empty(0, 3, 0, 0, dtype=torch.uint8),
        "owner": [
            (b["index"], k, b["source"], b["label"]) for b in ok for k in range(len(b["crops"]))
        ],
        "failed": [{"index": b["index"], "error": b["error"]} for b in batch if "error" in b],
        "source": [b["source"] for b in ok],
    }


class _Stop(Exception):
    """Raised by the up-block hook: DIFT needs nothing after ``up_blocks[up_ft_index]``."""

    def __init__(self, output: torch.Tensor):
        self.output = output


class DiftModule(L.LightningModule):
    """DIFT feature of each patch: one U-Net pass per noise draw, cut at an up block."""

    def __init__(self, backend, classes, features: DictConfig, size: int | None = None):
        super().__init__()
        self.backend = backend
        self.size = size  # the patch side the exact path feeds (image_latent resizes to it)
        self.prompts = [str(features.prompt).format(name=c.name) for c in classes]
        self.timestep = int(features.timestep)
        if not 0 <= self.timestep < backend.num_train_timesteps:
            raise ConfigError(
                f"features.timestep={self.timestep} must lie in [0, {backend.num_train_timesteps})"
            )
        self.up_ft_index = int(features.up_ft_index)
        n_up = len(backend.unet.up_blocks)
        if not 0 <= self.up_ft_index < n_up:
            raise ConfigError(
                f"features.up_ft_index={self.up_ft_index}: the U-Net has {n_up} up blocks"
            )
        self.ensemble = int(features.ensemble)  # >= 1: distill.validate
        self.seed = int(features.seed)
        self.pool = str(features.get("pool", "mean"))
        if self.pool not in ("mean", "max"):
            raise ConfigError(f"features.pool={self.pool!r} must be 'mean' or 'max'")
        self.unet_batch = int(features.get("unet_batch", 32))
        self.vae_batch = int(features.get("vae_batch", 8))
        self.crop_from = crop_from(features)
        self.num_threads = features.get("num_threads")
        self.class_emb: torch.Tensor | None = None

    def on_predict_start(self) -> None:
        set_cpu_threads(self._trainer, self.num_threads)
        self.class_emb = self.backend.embed_prompts(self.prompts)

    @torch.no_grad()
    def up_features(self, z_t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Output of ``unet.up_blocks[up_ft_index]`` for noisy latents (cut short by a hook)."""
        block = self.backend.unet.up_blocks[self.up_ft_index]

        def hook(module, inputs, output):
            raise _Stop(output[0] if isinstance(output, tuple) else output)

        handle = block.register_forward_hook(hook)
        try:
            self.backend.predict_eps(
                z_t, torch.full((len(z_t),), self.timestep, device=z_t.device), emb
            )
        except _Stop as stop:
            return stop.output
        finally:
            handle.remove()
        raise RuntimeError("the U-Net finished without reaching the DIFT up block")

    @torch.no_grad()
    def features(self, crops: torch.Tensor, labels: list[int], keys: list[tuple]) -> torch.Tensor:
        """(M, C) features of M crops; ``keys`` seed each crop's noise ensemble."""
        if self.class_emb is None:
            self.on_predict_start()
        z = encode_fixed(self.backend, crops, self.vae_batch)
        return self.pool_map(self.noised_maps(z, labels, keys))

    def pool_map(self, maps: torch.Tensor) -> torch.Tensor:
        if self.pool == "mean":
            return maps.mean(dim=(-2, -1))
        if self.pool == "max":
            return maps.amax(dim=(-2, -1))
        raise ConfigError(f"features.pool={self.pool!r} must be 'mean' or 'max'")

    @torch.no_grad()
    def noised_maps(self, z: torch.Tensor, labels: list[int], keys: list[tuple]) -> torch.Tensor:
        """(M, C, h', w') up-block maps of latents ``z``, averaged over the noise ensemble."""
        m, e = len(z), self.ensemble
        eps = torch.stack(
            [
                torch.randn(
                    z.shape[1:],
                    generator=torch.Generator().manual_seed(
                        stable_seed("dift", self.seed, *key, i)
                    ),
                )
                for key in keys
                for i in range(e)
            ]
        ).to(z.device, z.dtype)
        z_rep = z.repeat_interleave(e, dim=0)
        t = torch.full((m * e,), self.timestep, device=z.device, dtype=torch.long)
        z_t = self.backend.add_noise(z_rep, eps, t)
        emb = self.class_emb[torch.tensor(labels, device=self.class_emb.device)].repeat_interleave(
            e, dim=0
        )
        outs = []
        for idx, n in fixed_chunks(m * e, self.unet_batch, pad=True):
            idx = idx.to(z.device)
            outs.append(self.up_features(z_t[idx], emb[idx])[:n].float())
        return torch.cat(outs).view(m, e, *outs[0].shape[1:]).mean(dim=1)

    @torch.no_grad()
    def images_features(
        self, images: list[torch.Tensor], boxes: list[list], labels: list[int], sources: list[str]
    ) -> list[torch.Tensor]:
        """Per image, the (k, C) features of its patch boxes, cropped after encoding the image.

        ``image_latent``: each box's window of the image latent (resized to the patch's latent
        side when the box is not the patch's size), then the exact path's noise and U-Net.
        ``image_map``: one noisy U-Net pass per draw on the whole latent (the noise drawn from
        the first patch's key), each box's window of the map pooled. A box that is the whole
        image gives the exact path's feature in both modes (tested). Images of one size share
        their VAE and U-Net calls.
        """
        if self.class_emb is None:
            self.on_predict_start()
        out: list[torch.Tensor] = [torch.zeros(0)] * len(images)  # every entry is set below
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape), []).append(i)
        for shape, members in groups.items():
            img_h, img_w = shape[-2:]
            z = encode_fixed(
                self.backend, torch.stack([images[i] for i in members]), self.vae_batch
            )
            h, w = z.shape[-2:]
            if self.crop_from == "image_latent":
                side = max(1, round(self.size * h / img_h)) if self.size else None
                crops, keys, labs = [], [], []
                for j, i in enumerate(members):
                    for k, box in enumerate(boxes[i]):
                        x0, y0, x1, y1 = window(box, w / img_w, h / img_h, w, h)
                        zc = z[j : j + 1, :, y0:y1, x0:x1]
                        if side and zc.shape[-2:] != (side, side):
                            zc = torch.nn.functional.interpolate(
                                zc, size=(side, side), mode="bilinear", align_corners=False
                            )
                        crops.append(zc)
                        keys.append((sources[i], k))
                        labs.append(labels[i])
                feats = (
                    self.pool_map(self.noised_maps(torch.cat(crops), labs, keys))
                    if crops
                    else torch.zeros(0)
                )
                start = 0  # the crops are in member order, each image's boxes in a row
                for i in members:
                    out[i] = feats[start : start + len(boxes[i])]
                    start += len(boxes[i])
                continue
            maps = self.noised_maps(
                z, [labels[i] for i in members], [(sources[i], 0) for i in members]
            )
            fh, fw = maps.shape[-2:]
            for j, i in enumerate(members):
                cells = [window(box, fw / img_w, fh / img_h, fw, fh) for box in boxes[i]]
                pooled = [self.pool_map(maps[j][:, y0:y1, x0:x1]) for x0, y0, x1, y1 in cells]
                out[i] = torch.stack(pooled) if pooled else torch.zeros(0, maps.shape[1])
        return out

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        records = [dict(f) for f in batch["failed"]]
        if not batch["owner"]:
            return records
        if "images" in batch:
            owners = batch["owner"]
            feats = self.images_features(
                batch["images"], batch["boxes"], [o[3] for o in owners], [o[2] for o in owners]
            )
            for (index, *_), f in zip(owners, feats, strict=True):
                records += [{"index": index, "k": k, "feature": v} for k, v in enumerate(f.numpy())]
            return records
        keys = [(src, k) for _, k, src, _ in batch["owner"]]
        feats = (
            self.features(batch["crops"], [lab for *_, lab in batch["owner"]], keys).cpu().numpy()
        )
        for (index, k, _, _), f in zip(batch["owner"], feats, strict=True):
            records.append({"index": index, "k": k, "feature": f})
        return records


class CropData(L.LightningDataModule):
    def __init__(self, dataset: PatchCrops, shards: list[Shard], batch_size: int, num_workers: int):
        super().__init__()
        self.dataset, self.shards = dataset, shards
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)

    def predict_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        sizes = [(1, 1)] * len(self.dataset)  # every crop has the same size: one bucket
        sampler = PlanSampler(assign(self.shards, rank, world), sizes, self.batch_size)
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=collate_crops,
            num_workers=self.num_workers,
        )


def features_spec(cfg: DictConfig, bank, backend) -> dict:
    """What the features depend on. ``backend`` is the diffusion backend (DIFT) or the CLIP
    fingerprint dict (``features=clip``, whose hashed settings are its own)."""
    f = OmegaConf.to_container(cfg.features, resolve=True)
    if feature_kind(cfg) == "clip":
        if crop_from(cfg.features) != "patch":
            raise ConfigError(
                "features.crop_from applies to DIFT features only (features.kind=dift)"
            )
        hashed = {"kind": "clip", "clip": f.get("clip")}
        model = backend
    else:
        hashed, model = {k: f.get(k) for k in FEATURE_KEYS}, backend.fingerprint()
        if crop_from(cfg.features) != "patch":
            # Only when set: the banks made before the option keep their hash.
            hashed["crop_from"] = crop_from(cfg.features)
    return {
        "score_hash": bank.meta["stages"]["score"]["hash"],
        "features": hashed,
        "size": feature_size(bank.spec),
        "shard_size": int(f.get("shard_size", 256)),
        "model": model,
    }


def feature_kind(cfg: DictConfig) -> str:
    """``dift`` (the paper's features) or ``clip`` (Table 5's CLIP image features)."""
    kind = str(cfg.features.get("kind", "dift"))
    if kind not in ("dift", "clip"):
        raise ConfigError(f"features.kind={kind!r} must be 'dift' or 'clip'")
    return kind


@releases_bank_locks
def run_features(cfg: DictConfig) -> None:
    """Compute DIFT features for every patch in the bank (the ``features`` stage)."""
    quiet_third_party()
    if not uses_clusters(cfg, "features"):
        return
    from distill.scoring.stage import load_backend

    bank_dir = Path(cfg.paths.bank_dir)
    bank = load_bank(bank_dir)
    kind = feature_kind(cfg)
    if kind == "clip":
        from distill.clip_features import ClipFeatures, load_clip

        clip = load_clip(cfg.features.clip, cfg.paths.get("cache_dir"))
        backend = clip[4]
    else:
        backend = load_backend(cfg)
    spec = features_spec(cfg, bank, backend)
    mismatch = str(cfg.features.get("on_mismatch", "error"))
    entry = prepare_on_zero_first(
        lambda write: prepare_stage(bank_dir, "features", spec, mismatch, write=write)
    )
    shards = make_shards([(1, 1)] * len(bank.records), spec["shard_size"])
    if entry.get("complete") and (bank_dir / "features.npy").is_file():
        log.info(
            "bank %s already holds features (hash %s): reusing them", bank_dir, entry["hash"][:12]
        )
        return
    todo = pending(
        shards, lambda s: shard_done(bank_dir, "features", s.id, len(s.items), entry["hash"])
    )
    n_todo = sum(len(s.items) for s in todo)
    log.info(
        "%s features for %d of %d images (%d of %d shards left; hash %s)",
        kind.upper(),
        n_todo,
        len(bank.records),
        len(todo),
        len(shards),
        config_hash(spec)[:12],
    )
    source = (
        build_source(OmegaConf.create(bank.meta["data_cfg"]), index_dir=bank_dir / "listing")
        if "data_cfg" in bank.meta
        else build_source(cfg.data, index_dir=bank_dir / "listing")
    )
    check_items_unchanged(bank_dir, bank.spec, source)  # the boxes are of the scored pixels

    def inputs():
        if kind == "clip":
            module = ClipFeatures(
                *clip[:4],
                batch=int(cfg.features.get("unet_batch", 64)),
                num_threads=cfg.features.get("num_threads"),
            )
        else:
            module = DiftModule(
                backend, [_Cls(c) for c in bank.classes], cfg.features, size=spec["size"]
            )
        whole = kind == "dift" and crop_from(cfg.features) != "patch"
        crops = PatchCrops(source, bank.records, spec["size"], bank_decoder(bank.spec), whole)
        data = CropData(
            crops,
            todo,
            int(cfg.features.batch_size),
            resolve_workers(cfg.features.get("num_workers", 0), cfg.trainer),
        )
        return module, data

    def merge(stats):
        if stats:
            log.info("features: %.2f images/s", stats["images"] / max(stats["seconds"], 1e-9))
        _merge_features(bank_dir, bank, shards)
        if not bool(cfg.features.get("keep_shards", False)):
            freed = drop_merged_shards(bank_dir, "features")
            log.info("features: merged; %.1f MB of shards removed", freed / 1e6)

    predict_then_merge(cfg, "features", bank_dir, todo, n_todo, inputs, merge)


class _Cls:
    """A class record from the bank's meta with the attributes the modules read."""

    def __init__(self, d: dict):
        self.index, self.key, self.name = d["index"], d["key"], d["name"]


def _merge_features(bank_dir: Path, bank, shards: list[Shard]) -> None:
    """Merge the feature shards into ``features.npy`` (float16) and ``feature_owners.npy``.

    Streaming, so memory stays at one shard whatever the bank's size (ImageNet-1K: 1.3M
    patches x 1280 dims): a first pass reads only each shard's header and indices, the output
    is preallocated as a memory-mapped .npy, and a second pass copies one shard's features at
    a time into their rows. The rows are in (image index, patch) order, as before; should the
    shards ever not cover increasing index ranges, the in-memory merge below takes over.
    """
    from distill.bank import npz_shard_index, read_meta

    want = read_meta(bank_dir)["stages"]["features"]["hash"]
    ids = sorted(s.id for s in shards)
    plan, n_ok, failed_recs, dim, last = [], 0, [], 0, (-1, -1)
    monotone = True
    for sid in ids:
        path = shard_path(bank_dir, "features", sid)
        if not path.is_file():
            raise DataError(f"shard {path} is missing after the predict stage; re-run to resume")
        header, index, k, failed, d = npz_shard_index(path)
        if header is None or header.get("hash") != want:
            raise DataError(
                f"shard {path} was made under another config than the features stage's "
                f"(hash {want[:12]}); delete it and re-run to recompute it"
            )
        order = np.lexsort((k, index))
        keys = list(zip(index[order].tolist(), k[order].tolist(), strict=True))
        if keys and keys[0] <= last:
            monotone = False
        if keys:
            last = keys[-1]
            dim = dim or d
        plan.append((path, order, len(keys)))
        n_ok += len(keys)
        failed_recs += failed
    if not monotone:
        return _merge_features_in_memory(bank_dir, bank, shards)
    for r in failed_recs:
        log.warning("no features for %s: %s", bank.records[r["index"]]["source"], r["error"])
    if not n_ok:
        raise DataError(f"no patch in {bank_dir} yielded DIFT features; see the warnings above")
    owners = np.empty((n_ok, 2), dtype=np.int64)
    target = bank_dir / "features.npy"
    with atomic_path(target, size_hint=n_ok * dim * 2 + 128) as tmp, open(tmp, "wb") as f:
        # Plain writes after the .npy header, not a writable memory map: the map's dirty
        # pages counted in the merge's resident set (4.2 GiB projected at ImageNet-1K).
        header = {"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": (n_ok, dim)}
        np.lib.format.write_array_header_1_0(f, header)
        row = 0
        for path, order, n in plan:
            if not n:
                continue
            with np.load(path) as z:
                block = np.asarray(z["feature"])[order].astype(np.float16)
                if block.shape != (n, dim):
                    raise DataError(f"shard {path}: features of shape {block.shape}, not {n}x{dim}")
                f.write(np.ascontiguousarray(block).tobytes())
                owners[row : row + n, 0] = np.asarray(z["index"])[order]
                owners[row : row + n, 1] = np.asarray(z["k"])[order]
            row += n
        fsync_file(f)
    write_npy(bank_dir / "feature_owners.npy", owners)
    _finish_features(bank_dir, n_ok, dim, len(failed_recs))


def _finish_features(bank_dir: Path, n_ok: int, dim: int, n_failed: int) -> None:
    mark_complete(bank_dir, "features", num_patches=n_ok, dim=int(dim), num_failed=n_failed)
    log.info("features: %d patches x %d dims -> %s", n_ok, dim, bank_dir / "features.npy")


def _merge_features_in_memory(bank_dir: Path, bank, shards: list[Shard]) -> None:
    """Every shard's records at once, sorted: the reference the streaming merge equals."""
    recs = merge_shards(bank_dir, "features", [s.id for s in shards])
    ok = [r for r in recs if "error" not in r]
    for r in recs:
        if "error" in r:
            log.warning("no features for %s: %s", bank.records[r["index"]]["source"], r["error"])
    if not ok:
        raise DataError(f"no patch in {bank_dir} yielded DIFT features; see the warnings above")
    feats = np.stack([r["feature"] for r in ok]).astype(np.float16)
    owners = np.array([[r["index"], r["k"]] for r in ok], dtype=np.int64)
    for name, arr in (("features.npy", feats), ("feature_owners.npy", owners)):
        write_npy(bank_dir / name, arr)
    _finish_features(bank_dir, len(ok), feats.shape[1], len(recs) - len(ok))
