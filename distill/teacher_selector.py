"""Baseline: crops chosen by a classifier's confidence, as RDED does (Sun et al. 2024).

For every real image, ``crops_per_image`` random patch-size crops are scored by a trained
classifier's log-probability of the image's own class; each image keeps its best crop and
each class takes its most confident ones. The paper's method replaces exactly this teacher
with the diffusion model (no classifier to train), so this is the comparison that isolates
the selector.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from distill.assembly import PatchRef, crop_patch
from distill.data.images import resized_size
from distill.errors import ConfigError, ModelError
from distill.scoring.relevance import box_to_original, stable_seed
from distill.selection import patches_needed

log = logging.getLogger(__name__)


def load_classifier(path: str, class_keys: list[str]):
    """A ``teacher.pt`` of ``python -m evaluate mode=teacher``: (model, input size, mean, std)."""
    from evaluate.models import create_model, fit_state, read_checkpoint

    state, meta = read_checkpoint(path)
    if not meta.get("arch"):
        raise ModelError(
            f"{path} is not a teacher.pt (no 'arch' in its meta); train one with "
            "python -m evaluate mode=teacher"
        )
    if meta.get("classes") and list(meta["classes"]) != list(class_keys):
        raise ConfigError(
            f"teacher {path} was trained on classes {meta['classes'][:5]}..., the data "
            f"has {class_keys[:5]}...; the orders must match"
        )
    size = int(meta.get("input_size", 32))
    model = create_model(
        meta["arch"], len(class_keys), image_size=size, **(meta.get("kwargs") or {})
    )
    fit_state(model, state, path, "teacher", meta["arch"], num_classes=len(class_keys))
    norm = meta.get("normalize") or {"mean": [0.5] * 3, "std": [0.5] * 3}
    return (
        model.eval(),
        size,
        torch.tensor(norm["mean"]).view(1, 3, 1, 1),
        torch.tensor(norm["std"]).view(1, 3, 1, 1),
    )


@torch.no_grad()
def teacher_refs(
    source,
    classes: list[dict],
    ipc: int,
    concat_max_ipc: int,
    tiles: int,
    patch: int,
    short_edge: int,
    checkpoint: str,
    crops_per_image: int = 5,
    seed: int = 0,
    batch: int = 256,
) -> dict:
    """Per distilled label, the most confident crops (as `PatchRef`), best first."""
    if not checkpoint:
        raise ConfigError("selector=teacher needs selector.checkpoint=PATH (a teacher.pt)")
    model, size, mean, std = load_classifier(checkpoint, [c.key for c in source.classes])
    need = patches_needed(ipc, concat_max_ipc, tiles)
    by_class = source.indices_by_class()
    out = {}
    for c in classes:
        rng = random.Random(stable_seed("teacher-selector", seed, c["key"]))
        cands: list[tuple[int, tuple]] = []
        for i in by_class.get(c["source_index"], []):
            w, h = source.items[i].size
            rw, rh = resized_size(w, h, short_edge, 1)
            for _ in range(crops_per_image):
                x0, y0 = rng.randint(0, max(0, rw - patch)), rng.randint(0, max(0, rh - patch))
                cands.append(
                    (i, box_to_original((x0, y0, x0 + patch, y0 + patch), (rw, rh), (w, h)))
                )
        scores = np.empty(len(cands))
        last, im = None, None
        for s in range(0, len(cands), batch):
            chunk = cands[s : s + batch]
            crops = []
            for i, box in chunk:  # an image's crops are consecutive: decode it once
                if i != last:
                    last, im = i, source.load(i)
                crops.append(np.asarray(crop_patch(im, box, size), dtype=np.float32))
            x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2) / 255.0
            logp = torch.log_softmax(model((x - mean) / std), dim=1)[:, c["source_index"]]
            scores[s : s + len(chunk)] = logp.numpy()
        best: dict[int, tuple[float, tuple]] = {}
        for (i, box), sc in zip(cands, scores, strict=True):
            if i not in best or sc > best[i][0]:
                best[i] = (float(sc), box)
        ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))
        refs = [
            PatchRef(i, source.items[i].source, box, sc, -1, -1) for i, (sc, box) in ranked[:need]
        ]
        if len(refs) < need and refs:
            log.warning("class %s: %d images for %d patches; reusing", c["name"], len(refs), need)
            refs += [
                PatchRef(r.item, r.source, r.box, r.score, -1, -1, "reused")
                for r in (refs * need)[: need - len(refs)]
            ]
        out[c["index"]] = refs
    return out
