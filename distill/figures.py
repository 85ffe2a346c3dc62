"""The figures a person looks at after Stage II: a grid per class of its distilled images
with an overview of the first classes, and a sheet per class of its top clusters' patches
(paper Fig. 3).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from distill.assembly import PatchRef, load_crops
from distill.io import atomic_path


def _save(im: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as t:
        im.save(t, format="PNG")
    return path


def grid(
    images: list[Image.Image],
    cols: int,
    thumb: int,
    labels: list[str] | None = None,
    title: str = "",
) -> Image.Image:
    """A simple contact sheet: thumbnails in rows of ``cols`` with optional labels."""
    rows = max(1, (len(images) + cols - 1) // cols)
    top = 16 if title else 0
    canvas = Image.new("RGB", (cols * (thumb + 2), top + rows * (thumb + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((3, 2), title, fill=(0, 0, 0))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas.paste(im.resize((thumb, thumb)), (c * (thumb + 2), top + r * (thumb + 2)))
        if labels:
            draw.text(
                (c * (thumb + 2) + 2, top + r * (thumb + 2) + 2), labels[i], fill=(255, 255, 0)
            )
    return canvas


def class_grids(
    set_dir: Path, classes: list[dict], fig_dir: Path, thumb: int = 112, overview_classes: int = 10
) -> list[Path]:
    """A PNG per class of its distilled images, and an overview of the first classes."""
    paths = []
    rows = []
    for c in classes:
        files = sorted((set_dir / c["key"]).glob("*.*"))
        ims = [Image.open(f).convert("RGB") for f in files]
        if not ims:
            continue
        cols = min(10, len(ims))
        paths.append(
            _save(
                grid(ims, cols, thumb, title=f"{c['index']}: {c['name']}"),
                fig_dir / f"{c['key']}.png",
            )
        )
        if len(rows) < overview_classes:
            rows.append((c, ims[:10]))
    if rows:
        cols = max(len(ims) for _, ims in rows)
        flat, labels = [], []
        for c, ims in rows:
            flat.extend(
                ims + [Image.new("RGB", (thumb, thumb), (255, 255, 255))] * (cols - len(ims))
            )
            labels.extend([c["name"][:14]] + [""] * (cols - 1))
        paths.insert(0, _save(grid(flat, cols, thumb, labels), fig_dir / "overview.png"))
    return paths


def cluster_sheet(
    source,
    refs_by_cluster: list[tuple[int, float, list[PatchRef]]],
    path: Path,
    per_cluster: int = 8,
    thumb: int = 96,
    title: str = "",
) -> Path:
    """Paper Fig. 3: one row per top cluster (rank order), its patches nearest the centroid."""
    flat: list[Image.Image] = []
    labels: list[str] = []
    blank = Image.new("RGB", (thumb, thumb), (255, 255, 255))
    for cid, median, refs in refs_by_cluster:
        crops = load_crops(source, refs[:per_cluster], thumb) if refs else []
        flat.extend(crops + [blank] * (per_cluster - len(crops)))
        labels.extend([f"c{cid} {median:+.3g}"] + [""] * (per_cluster - 1))
    return _save(grid(flat, per_cluster, thumb, labels, title), path)
