"""Decoded, resized images as a torch Dataset; failures travel with the batch, not as crashes.

Each item is resized so its short edge is ``short_edge`` (aspect kept, long edge rounded to the
VAE factor). An image that fails to decode comes back as a record with an ``error`` and is
listed in ``skipped.csv`` by whoever consumes the batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.data.images import UnreadableImage, load_resized, resize_rgb, resized_size
from distill.data.item_table import compact_items
from distill.data.sources import Source


def load_item_resized(source: Source, i: int, size_of, decoder: str = "pil", item=None):
    """Item ``i`` as (H, W, 3) uint8 pixels at ``size_of((w, h))``, and its displayed size.

    Files of a plain file source go through ``data.decoder`` (`distill.data.images`); items a
    source makes itself (arrays, scenes) are decoded by the source and resized as ``pil``.
    ``item`` is ``source.items[i]`` when the caller has it (from an `ItemTable`: a worker
    then never touches the source's list).
    """
    item = source.items[i] if item is None else item
    if item.path is not None and type(source).load is Source.load:
        return load_resized(item.path, size_of, decoder)
    im = source.load(i)
    return np.asarray(resize_rgb(im, tuple(size_of(im.size))), dtype=np.uint8), im.size


class ResizedImages(Dataset):
    """Items of a `Source`, decoded to uint8 RGB tensors at the pipeline's resolution."""

    def __init__(self, source: Source, short_edge: int, multiple: int = 8, decoder: str = "pil"):
        self.source = source
        # The items as arrays (`ItemTable`): DataLoader workers index these, not the list.
        self.items = compact_items(source.items)
        self.short_edge = int(short_edge)
        self.multiple = int(multiple)
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.items)

    def target_size(self, i: int) -> tuple[int, int]:
        """(width, height) item ``i`` will have, known without decoding it."""
        w, h = self.items.size(i)
        return resized_size(w, h, self.short_edge, self.multiple)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        out = {"index": i, "source": item.source, "label": item.label, "orig_size": item.size}
        size = self.target_size(i)
        try:
            arr, shown = load_item_resized(self.source, i, lambda _: size, self.decoder, item)
        except UnreadableImage as e:
            out["error"] = str(e)
            return out
        if tuple(shown) != tuple(item.size):
            out["error"] = f"decoded size {tuple(shown)} differs from header size {item.size}"
            return out
        arr = arr if arr.flags.writeable and arr.flags.c_contiguous else arr.copy()
        out["pixels"] = torch.from_numpy(arr).permute(2, 0, 1)
        out["size"] = size
        return out


def collate_images(batch: list[dict]) -> dict:
    """Stack a batch of equal-size images; failed items go to ``batch["failed"]``."""
    ok = [b for b in batch if "error" not in b]
    failed = [b for b in batch if "error" in b]
    sizes = {b["size"] for b in ok}
    if len(sizes) > 1:
        raise ValueError(f"a batch mixes image sizes {sorted(sizes)}; use the bucketed sampler")
    out: dict = {
        "index": torch.tensor([b["index"] for b in ok], dtype=torch.long),
        "label": torch.tensor([b["label"] for b in ok], dtype=torch.long),
        "source": [b["source"] for b in ok],
        "orig_size": [tuple(b["orig_size"]) for b in ok],
        "size": next(iter(sizes)) if sizes else None,
        "failed": [
            {"index": b["index"], "source": b["source"], "label": b["label"], "error": b["error"]}
            for b in failed
        ],
    }
    out["pixels"] = (
        torch.stack([b["pixels"] for b in ok]) if ok else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    )
    return out
