"""What a person looks at after Stage I: score histograms per class, a grid of the best patches
drawn on their images, and a per-class summary table; the same logged to W&B when enabled."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from distill.data.images import UnreadableImage, resize_rgb
from distill.io import atomic_path, write_csv_rows

log = logging.getLogger(__name__)

BOX_COLOURS = [(230, 30, 30), (255, 150, 0), (30, 160, 255), (200, 60, 220)]
TRUTH = (40, 220, 60)  # the labelled item's box, where the data knows it (scenes)


def _save_png(im: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path


def class_summary(records: list[dict], classes: list[dict]) -> list[list]:
    """Per class: count, and mean / median / std of image scores and best-patch scores."""
    groups = by_label(records)
    rows = []
    for c in classes:
        rs = groups.get(c["index"], [])
        img = np.array([r["image_score"] for r in rs], dtype=np.float64)
        best = np.array([r["scores"][0] for r in rs], dtype=np.float64)
        stat = lambda a: (  # noqa: E731
            [float(a.mean()), float(np.median(a)), float(a.std())] if a.size else ["", "", ""]
        )
        rows.append([c["index"], c["key"], c["name"], len(rs), *stat(img), *stat(best)])
    return rows


def by_label(records: list[dict]) -> dict[int, list[dict]]:
    """Records grouped by class in one pass (ImageNet-1K: 1000 classes x 300k records)."""
    out: dict[int, list[dict]] = {}
    for r in records:
        out.setdefault(r["label"], []).append(r)
    return out


def write_class_summary(records, classes, path: Path) -> None:
    header = [
        "index",
        "key",
        "name",
        "images",
        "image_score_mean",
        "image_score_median",
        "image_score_std",
        "best_patch_mean",
        "best_patch_median",
        "best_patch_std",
    ]
    write_csv_rows(path, header, class_summary(records, classes))


def score_histograms(records: list[dict], classes: list[dict], path: Path, max_classes: int = 25):
    """Small multiples: per class, histograms of image scores and best-patch scores."""
    groups = by_label(records)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = classes[:max_classes]
    n = len(shown)
    cols = min(5, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, c in zip(axes.flat, shown, strict=False):
        rs = groups.get(c["index"], [])
        ax.set_visible(True)
        if rs:
            img = [r["image_score"] for r in rs]
            best = [r["scores"][0] for r in rs]
            bins = np.histogram_bin_edges(img + best, bins=min(20, max(5, len(rs) // 2)))
            ax.hist(img, bins=bins, alpha=0.6, label="image")
            ax.hist(best, bins=bins, alpha=0.6, label="best patch")
            ax.axvline(0.0, color="k", lw=0.6)
        ax.set_title(f"{c['index']}: {c['name']}"[:32], fontsize=8)
        ax.set_xlabel("relevance s (loss gain of the class prompt)", fontsize=6)
        ax.set_ylabel("images", fontsize=6)
        ax.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6)
    more = f" (first {max_classes} of {len(classes)} classes)" if len(classes) > max_classes else ""
    fig.suptitle(f"relevance s = E[L_null - L_class] per class{more}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def best_patch_grid(
    records: list[dict],
    classes: list[dict],
    source,
    path: Path,
    per_class: int = 6,
    max_classes: int = 10,
    thumb: int = 128,
    title: str = "",
) -> Path:
    """One row per class: its images with the highest best-patch score, boxes drawn on them.

    The k-th best patch's box has the k-th colour of `BOX_COLOURS` (a legend heads the
    figure); for scene data, whose labelled item's box is known, that box is drawn too, in
    green, beside the chosen patch.
    """
    from distill.figures import font, label

    groups = by_label(records)
    shown = classes[:max_classes]
    tiles: list[list[Image.Image]] = []
    index_of = {it.source: i for i, it in enumerate(source.items)}
    truth = getattr(source, "boxes", None)
    topk = max((len(r["boxes_resized"]) for r in records), default=1)
    for c in shown:
        rs = sorted(groups.get(c["index"], []), key=lambda r: -r["scores"][0])
        row = []
        for r in rs[:per_class]:
            try:
                i = index_of[r["source"]]
                im = resize_rgb(source.load(i), tuple(r["size"]))
            except (UnreadableImage, KeyError):
                continue
            draw = ImageDraw.Draw(im)
            width = max(2, im.size[1] // 64)
            if truth is not None:
                sx, sy = im.size[0] / r["orig_size"][0], im.size[1] / r["orig_size"][1]
                x0, y0, x1, y1 = truth[i]
                draw.rectangle((x0 * sx, y0 * sy, x1 * sx, y1 * sy), outline=TRUTH, width=width)
            for k, b in reversed(list(enumerate(r["boxes_resized"]))):
                draw.rectangle(b, outline=BOX_COLOURS[k % len(BOX_COLOURS)], width=width)
            scale = thumb / im.size[1]
            im = im.resize((max(1, round(im.size[0] * scale)), thumb))
            label(ImageDraw.Draw(im), (3, 2), f"{r['scores'][0]:+.4f}", size=11)
            row.append(im)
        tiles.append(row)
    label_w = 150
    head = 36
    width = label_w + max((sum(t.size[0] + 4 for t in row) for row in tiles), default=thumb)
    canvas = Image.new("RGB", (max(width, 620), head + (thumb + 4) * max(1, len(tiles))), "white")
    draw = ImageDraw.Draw(canvas)
    more = f", first {len(shown)} of {len(classes)} classes" if len(classes) > len(shown) else ""
    draw.text(
        (4, 2),
        f"{title + ' - ' if title else ''}images with the highest best-patch relevance{more}",
        fill=(0, 0, 0),
        font=font(12),
    )
    x = 4
    keys = [(f"patch {k + 1}", BOX_COLOURS[k % len(BOX_COLOURS)]) for k in range(topk)]
    if truth is not None:
        keys.append(("labelled item (truth)", TRUTH))
    for name, colour in keys:
        draw.rectangle((x, 21, x + 14, 31), outline=colour, width=3)
        draw.text((x + 18, 19), name, fill=(0, 0, 0), font=font(11))
        x += 30 + int(draw.textlength(name, font=font(11)))
    for y, (c, row) in enumerate(zip(shown, tiles, strict=True)):
        top = head + y * (thumb + 4)
        draw.text(
            (4, top + thumb // 2 - 6),
            f"{c['index']}: {c['name']}"[:24],
            fill=(0, 0, 0),
            font=font(11),
        )
        x = label_w
        for t in row:
            canvas.paste(t, (x, top))
            x += t.size[0] + 4
    return _save_png(canvas, path)


def log_to_wandb(loggers, figures: dict[str, Path], records, classes, source, per_class: int = 4):
    """Images and a table (image, class, box, score) to every W&B logger, if any."""
    groups = by_label(records)
    from lightning.pytorch.loggers import WandbLogger

    wb = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wb:
        return
    import wandb

    index_of = {it.source: i for i, it in enumerate(source.items)}
    names = {c["index"]: c["name"] for c in classes}
    rows = []
    for c in classes[:20]:
        rs = sorted(groups.get(c["index"], []), key=lambda r: -r["scores"][0])
        for r in rs[:per_class]:
            try:
                im = source.load(index_of[r["source"]])
            except (UnreadableImage, KeyError):
                continue
            crop = im.crop(tuple(r["boxes"][0]))
            rows.append([wandb.Image(crop), names[r["label"]], str(r["boxes"][0]), r["scores"][0]])
    for lg in wb:
        for key, p in figures.items():
            lg.log_image(key=f"score/{key}", images=[str(p)])
        lg.log_table(key="score/top_patches", columns=["image", "class", "box", "score"], data=rows)
