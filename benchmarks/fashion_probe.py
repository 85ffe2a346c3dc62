"""Why Stage I selects what it selects: probes of the embedded model on held-out scenes.

    python benchmarks/fashion_probe.py                 # 30 test scenes per class, ~6 min on 2 cores
    python benchmarks/fashion_probe.py per_class=10    # a quick look

Issue 6 asks, when ours does not beat random, to find out why: the sign of the relevance map,
the timestep range, the conditioning strength and the model's quality. The timestep grid is in
`fashion_quality.py`; this script measures the rest on scenes of the Fashion-MNIST *test*
split (items the model never saw), with the noise and timesteps Stage I uses:

- **conditioning strength**: how much the true class prompt lowers the denoising loss against
  the null prompt and against the other nine class prompts, per timestep bin;
- **model quality as a classifier**: the diffusion classifier's top-1 (the class prompt with
  the lowest loss, Li et al. 2023) on whole scenes, on the labelled item's box alone, and on
  single items; if the model cannot tell the classes apart, its relevance map cannot either;
- **the sign**: localisation (IoU with the item's box, centre hits) of the patch with the
  highest mean D (the method, NOTES.md's sign), of the lowest (the paper's Eq. 6 read
  literally), and a random patch's exact expectation; plus a contrastive map (the mean loss
  of the other class prompts instead of the null prompt) as an alternative reference.

Writes ``results/fashion_probe.json`` and ``results/fashion_probe.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.data import build_source  # noqa: E402
from distill.data.scenes import single_item  # noqa: E402
from distill.data.sources import fashion_arrays  # noqa: E402
from distill.diffusion.backend import DiffusionBackend  # noqa: E402
from distill.io import atomic_write_json, atomic_write_text  # noqa: E402
from distill.localization import box_iou, contains_centre, random_patch_expectation  # noqa: E402
from distill.runtime import machine_name  # noqa: E402
from distill.scoring.relevance import (  # noqa: E402
    draw_noise,
    pick_windows,
    pool_scores,
    timestep_bounds,
)

DEFAULTS = {
    "model": str(ROOT / "models" / "fashion-ldm"),
    "root": "/usr/share/datasets/fashion-mnist",
    "per_class": 30,
    "seed": 0,
    "num_draws": 8,
    "t_range": [0.1, 0.7],
    "t_sampling": "iid",
    "patch": 32,
    "stride": 4,
    "batch": 16,
    "prompt": "An image of {name}",
    "null_prompt": "An image of .",
    "out": "results",
}


def prompt_losses(backend, pixels, sources, embs, a, t_lo, t_hi):
    """Per-pixel losses (B, P, N, h, w) of every prompt in ``embs`` (P, L, D), and timesteps.

    Each image's draws are Stage I's (``draw_noise`` from the seed and the image's id), shared
    by every prompt, so differences between prompts are not noise.
    """
    z = backend.encode_images(pixels)
    b, c, h, w = z.shape
    ts, eps = zip(
        *(
            draw_noise(a.seed, s, a.num_draws, (c, h, w), t_lo, t_hi, a.get("t_sampling", "iid"))
            for s in sources
        ),
        strict=True,
    )
    t, eps = torch.stack(ts), torch.stack(eps)  # (B, N), (B, N, C, h, w)
    n, p = t.shape[1], len(embs)
    z_t = backend.add_noise(
        z.unsqueeze(1).expand(b, n, c, h, w).reshape(-1, c, h, w),
        eps.reshape(-1, c, h, w),
        t.reshape(-1),
    )
    out = torch.empty(b, p, n, h, w)
    for k in range(p):
        pred = backend.predict_eps(z_t, t.reshape(-1), embs[k].expand(b * n, *embs.shape[1:]))
        loss = (pred.float() - eps.reshape(-1, c, h, w).float()).pow(2).mean(dim=1)
        out[:, k] = loss.view(b, n, h, w)
    return out, t


def best_box(d: torch.Tensor, kernel: int, stride: int, factor: int) -> tuple:
    """The pixel box of the best ``kernel`` window of map ``d`` (h, w)."""
    pooled = pool_scores(d.unsqueeze(0), kernel, stride)[0].numpy()
    win = pick_windows(pooled, 1, kernel, stride)[0]
    return (
        win.col * factor,
        win.row * factor,
        (win.col + kernel) * factor,
        (win.row + kernel) * factor,
    )


def main(argv: list[str] | None = None) -> int:
    a = OmegaConf.merge(
        OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
    )
    torch.manual_seed(0)
    t0 = time.perf_counter()
    backend = DiffusionBackend.load(str(a.model), dtype="fp32")
    f = backend.vae_factor
    t_lo, t_hi = timestep_bounds(a.t_range, backend.num_train_timesteps)
    data_cfg = OmegaConf.create(
        {
            "name": "fashion_scenes",
            "kind": "fashion_scenes",
            "root": a.root,
            "split": "test",
            "classes": None,
            "class_names": None,
            "class_names_file": None,
            "images_per_class": int(a.per_class),
            "subsample_seed": int(a.seed),
            "seed": int(a.seed),
            "short_edge": 64,
            "min_side": 8,
            "strict_classes": True,
        }
    )
    source = build_source(data_cfg)
    names = [c.name for c in source.classes]
    k = len(names)
    embs = backend.embed_prompts(
        [str(a.prompt).format(name=n) for n in names] + [str(a.null_prompt)]
    )
    items, _, _ = fashion_arrays(data_cfg, "test")
    kernel, stride = int(a.patch) // f, max(1, int(a.stride) // f)

    rec = {key: [] for key in ("label", "t", "scene", "box", "single")}
    loc = {key: [] for key in ("max_d", "min_d", "contrast", "random")}
    order = list(range(len(source.items)))
    for s in tqdm(range(0, len(order), int(a.batch)), desc="probe", unit="batch"):
        idx = order[s : s + int(a.batch)]
        its = [source.items[i] for i in idx]
        scenes = [np.asarray(source.load(i).convert("RGB")) for i in idx]
        boxes = [tuple(source.boxes[i]) for i in idx]
        labels = torch.tensor([it.label for it in its])
        ids = [it.source for it in its]
        # Whole scene: losses of all prompts (the class prompts then the null prompt).
        px = torch.from_numpy(np.stack(scenes)).permute(0, 3, 1, 2)
        scene_l, t = prompt_losses(backend, px, ids, embs, a, t_lo, t_hi)
        # The labelled item alone, and the single item as the model saw it in training.
        crop = (
            torch.stack(
                [
                    torch.nn.functional.interpolate(
                        p[:, b[1] : b[3], b[0] : b[2]].unsqueeze(0).float(),
                        size=(64, 64),
                        mode="bilinear",
                    )[0]
                    for p, b in zip(px, boxes, strict=True)
                ]
            )
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
        )
        box_l, _ = prompt_losses(backend, crop, ids, embs, a, t_lo, t_hi)
        index = [int(s.split("/")[1]) for s in ids]
        single = torch.from_numpy(np.stack([single_item(items, i) for i in index])).permute(
            0, 3, 1, 2
        )
        single_l, _ = prompt_losses(backend, single, ids, embs, a, t_lo, t_hi)
        rec["label"].append(labels)
        rec["t"].append(t)
        for key, arr in (("scene", scene_l), ("box", box_l), ("single", single_l)):
            rec[key].append(arr.mean(dim=(3, 4)))  # (B, P, N): per-draw image losses
        # Localisation under each reading of the map.
        for j, (lab, box) in enumerate(zip(labels.tolist(), boxes, strict=True)):
            per_pixel = scene_l[j].mean(dim=1)  # (P, h, w), mean over draws
            d = per_pixel[k] - per_pixel[lab]  # NOTES.md: L_null - L_class
            others = torch.cat([per_pixel[:lab], per_pixel[lab + 1 : k]]).mean(dim=0)
            for key, m in (("max_d", d), ("min_d", -d), ("contrast", others - per_pixel[lab])):
                pb = best_box(m, kernel, stride, f)
                loc[key].append((box_iou(pb, box), contains_centre(pb, box)))
            loc["random"].append(random_patch_expectation(box, 64, 64, int(a.patch), int(a.stride)))

    labels = torch.cat(rec["label"]).numpy()
    t = torch.cat(rec["t"]).numpy()
    report = {
        "machine": machine_name(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "settings": OmegaConf.to_container(a),
        "images": int(len(labels)),
        "minutes": None,
        "classifier": {},
        "conditioning": {},
        "localisation": {
            key: {
                "mean_iou": float(np.mean([v[0] for v in vals])),
                "centre_hit": float(np.mean([v[1] for v in vals])),
            }
            for key, vals in loc.items()
        },
    }
    rows = np.arange(len(labels))
    bins = np.linspace(t_lo, t_hi + 1, 4)
    for key in ("scene", "box", "single"):
        per_draw = torch.cat(rec[key]).numpy()  # (I, P, N)
        mean = per_draw.mean(axis=2)  # (I, P)
        cls = mean[:, :k]
        report["classifier"][key] = float(np.mean(cls.argmin(axis=1) == labels))
        true = cls[rows, labels]
        other = (cls.sum(axis=1) - true) / (k - 1)
        null = mean[:, k]
        by_t = []
        for lo, hi in zip(bins[:-1], bins[1:], strict=True):
            sel = (t >= lo) & (t < hi)  # (I, N) draws in this timestep bin
            tr = per_draw[rows, labels][sel]
            nu = per_draw[:, k][sel]
            ot = ((per_draw[:, :k].sum(axis=1) - per_draw[rows, labels]) / (k - 1))[sel]
            by_t.append(
                {
                    "t": [int(lo), int(hi) - 1],
                    "draws": int(sel.sum()),
                    "gain_vs_null": float(np.mean(nu - tr) / np.mean(nu)),
                    "gain_vs_other": float(np.mean(ot - tr) / np.mean(ot)),
                }
            )
        report["conditioning"][key] = {
            "loss_true": float(true.mean()),
            "loss_null": float(null.mean()),
            "loss_other": float(other.mean()),
            "gain_vs_null": float((null - true).mean() / null.mean()),
            "gain_vs_other": float((other - true).mean() / other.mean()),
            "true_beats_null": float(np.mean(true < null)),
            "by_timestep": by_t,
        }
    report["minutes"] = (time.perf_counter() - t0) / 60
    out = ROOT / str(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "fashion_probe.json", report)
    atomic_write_text(out / "fashion_probe.md", markdown(report))
    print((out / "fashion_probe.md").read_text())
    return 0


def markdown(rep: dict) -> str:
    s = rep["settings"]
    lines = [
        "# Fashion-MNIST: probing the embedded model",
        "",
        f"Measured on {rep['machine']}, {rep['date']}, in {rep['minutes']:.1f} min by "
        f"`python benchmarks/fashion_probe.py` ({rep['images']} test-split scenes, "
        f"{s['per_class']} per class, {s['num_draws']} draws at t in {list(s['t_range'])}, "
        f"Stage I's noise). Raw figures in `fashion_probe.json`.",
        "",
        "## Conditioning strength and the diffusion classifier",
        "",
        "Loss = mean squared noise error; gain = relative loss reduction of the true class "
        "prompt against the null prompt and against the mean of the other class prompts; "
        "classifier = top-1 of the class prompt with the lowest loss (chance 10%).",
        "",
        "| input | loss, true class | gain vs null | gain vs other classes | true < null | "
        "classifier top-1 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    label = {
        "scene": "whole scene",
        "box": "the item's box, resized",
        "single": "single item (as trained)",
    }
    for key, c in rep["conditioning"].items():
        lines.append(
            f"| {label[key]} | {c['loss_true']:.4f} | {c['gain_vs_null']:.2%} | "
            f"{c['gain_vs_other']:.2%} | {c['true_beats_null']:.1%} | "
            f"{rep['classifier'][key]:.1%} |"
        )
    lines += ["", "By timestep (whole scenes):", "", "| t | draws | gain vs null | gain vs other |"]
    lines.append("| --- | --- | --- | --- |")
    for b in rep["conditioning"]["scene"]["by_timestep"]:
        lines.append(
            f"| {b['t'][0]}-{b['t'][1]} | {b['draws']} | {b['gain_vs_null']:.2%} | "
            f"{b['gain_vs_other']:.2%} |"
        )
    what = {
        "max_d": "highest mean D = L_null - L_class (the method)",
        "min_d": "lowest mean D (the opposite sign)",
        "contrast": "highest mean (L_other classes - L_class)",
        "random": "random patch (exact expectation)",
    }
    lines += [
        "",
        f"## The sign: which {s['patch']} px patch of each scene holds the item",
        "",
        "| patch | mean IoU with the item's box | contains the item's centre |",
        "| --- | --- | --- |",
    ]
    for key, v in rep["localisation"].items():
        lines.append(f"| {what[key]} | {v['mean_iou']:.3f} | {v['centre_hit']:.1%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
