"""The figures a person looks at after Stage II: a grid per class of its distilled images
(each labelled with its patches' relevance and clusters) with an overview of the first
classes, and a sheet per class of its top clusters' patches (paper Fig. 3).

Every label sits on a dark band, so it reads on white garments and on black backgrounds
alike; every title says which run, method and IPC the figure shows, and what share of the set
it samples.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from distill.assembly import PatchRef, load_crops
from distill.io import atomic_path
from distill.png import save_rgb

BAND = (0, 0, 0)
INK = (255, 255, 255)


@lru_cache(maxsize=8)
def font(size: int = 11) -> ImageFont.ImageFont:
    """PIL's bundled font at ``size`` pixels (the bitmap default if FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, size: int = 11) -> None:
    """White text on a black band: readable on any image."""
    if not text:
        return
    f = font(size)
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=f)
    draw.rectangle((x0 - 2, y0 - 1, x1 + 2, y1 + 1), fill=BAND)
    draw.text(xy, text, fill=INK, font=f)


def _save(im: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as t:
        if im.mode == "RGB":
            save_rgb(im, t)  # `distill.png`: 3x faster than PIL's encoder
        else:
            im.save(t, format="PNG")
    return path


def grid(
    images: list[Image.Image],
    cols: int,
    thumb: int,
    labels: list[str] | None = None,
    title: str = "",
) -> Image.Image:
    """A contact sheet: thumbnails in rows of ``cols``, optional labels, a title line."""
    rows = max(1, (len(images) + cols - 1) // cols)
    lines = title.split("\n") if title else []
    top = 4 + 15 * len(lines) if lines else 0
    width = max(cols * (thumb + 2), 8 + 7 * max((len(t) for t in lines), default=0))
    canvas = Image.new("RGB", (width, top + rows * (thumb + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((3, 2 + 15 * k), line, fill=(0, 0, 0), font=font(12))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        x, y = c * (thumb + 2), top + r * (thumb + 2)
        canvas.paste(im.resize((thumb, thumb)), (x, y))
        if labels and labels[i]:
            label(draw, (x + 3, y + 2), labels[i], size=max(9, min(12, thumb // 9)))
    return canvas


def manifest_labels(set_dir: Path) -> dict[str, str]:
    """Per distilled file: the relevance of its patches and their clusters (``manifest.csv``).

    A single patch reads ``c3 +0.0021``; a 2x2 image the mean of its four scores and its
    clusters, ``+0.0019 c3,5``. Random and teacher picks carry no score and get no label.
    """
    rows: dict[str, list[dict]] = defaultdict(list)
    try:
        with open(set_dir / "manifest.csv", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                rows[row["file"]].append(row)
    except OSError:
        return {}
    out = {}
    for file, rs in rows.items():
        scores = [float(r["score"]) for r in rs if r.get("score") not in ("", None)]
        clusters = sorted(
            {int(r["cluster"]) for r in rs if r.get("cluster") not in ("", None, "-1")}
        )
        cl = f"c{','.join(map(str, clusters))}" if clusters else ""
        if not scores:
            out[file] = cl
        elif len(rs) == 1:
            out[file] = f"{cl} {scores[0]:+.4f}".strip()
        else:
            out[file] = f"{sum(scores) / len(scores):+.4f} {cl}".strip()
    return out


def class_grids(
    set_dir: Path,
    classes: list[dict],
    fig_dir: Path,
    thumb: int = 112,
    overview_classes: int = 10,
    title: str = "",
) -> list[Path]:
    """A PNG per class of its distilled images, and an overview of the first classes.

    ``title`` names the run, method and IPC; the overview states what it samples. With one
    image per class the overview is a grid of classes (up to 50, ten to a row), not a
    one-column strip.
    """
    paths = []
    per_class: list[tuple[dict, list[Image.Image], list[str]]] = []
    names = manifest_labels(set_dir)
    head = f"{title} - " if title else ""
    for c in classes:
        files = sorted((set_dir / c["key"]).glob("*.*"))
        ims = [Image.open(f).convert("RGB") for f in files]
        if not ims:
            continue
        labels = [names.get(f"{c['key']}/{f.name}", "") for f in files]
        paths.append(
            _save(
                grid(
                    ims,
                    min(10, len(ims)),
                    thumb,
                    labels,
                    title=f"{head}{c['index']}: {c['name']} ({len(ims)} images; mean relevance and clusters per image)",
                ),
                fig_dir / f"{c['key']}.png",
            )
        )
        per_class.append((c, ims, labels))
    if not per_class:
        return paths
    most = max(len(ims) for _, ims, _ in per_class)
    if most == 1:
        shown = per_class[:50]
        flat = [ims[0] for _, ims, _ in shown]
        labels = [f"{c['index']}: {c['name']}"[:18] for c, _, _ in shown]
        note = f"the image of each class ({len(shown)} of {len(per_class)} classes)"
        overview = grid(flat, min(10, len(flat)), thumb, labels, f"{head}overview: {note}")
    else:
        shown = per_class[:overview_classes]
        cols = min(10, most)
        blank = Image.new("RGB", (thumb, thumb), (255, 255, 255))
        flat, labels = [], []
        for c, ims, _ in shown:
            flat.extend(ims[:cols] + [blank] * (cols - len(ims[:cols])))
            labels.extend([f"{c['index']}: {c['name']}"[:18]] + [""] * (cols - 1))
        sample = f"first {cols} of {most} images" if most > cols else f"all {most} images"
        classes_note = (
            f"first {len(shown)} of {len(per_class)} classes"
            if len(per_class) > len(shown)
            else f"all {len(shown)} classes"
        )
        overview = grid(
            flat, cols, thumb, labels, f"{head}overview: {sample} per class, {classes_note}"
        )
    paths.insert(0, _save(overview, fig_dir / "overview.png"))
    return paths


def cluster_sheet(
    source,
    refs_by_cluster: list[tuple[int, float, list[PatchRef]]],
    path: Path,
    per_cluster: int = 8,
    thumb: int = 96,
    title: str = "",
) -> Path:
    """Paper Fig. 3: one row per top cluster (rank order), its patches nearest the centroid;
    each row is labelled with its rank, cluster id and median relevance."""
    flat: list[Image.Image] = []
    labels: list[str] = []
    blank = Image.new("RGB", (thumb, thumb), (255, 255, 255))
    for rank, (cid, median, refs) in enumerate(refs_by_cluster, start=1):
        # Thumbnails: JPEGs decoded at a reduced scale whatever the bank's decoder (a figure
        # is not data; its 80 decodes per class were most of a sample's figure time).
        crops = load_crops(source, refs[:per_cluster], thumb, decoder="fast") if refs else []
        flat.extend(crops + [blank] * (per_cluster - len(crops)))
        labels.extend([f"#{rank} c{cid} {median:+.4f}"] + [""] * (per_cluster - 1))
    return _save(grid(flat, per_cluster, thumb, labels, title), path)
