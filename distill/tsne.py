"""Paper Figure 10: where distilled sets lie among the real data, seen by the teacher.

    python -m distill.tsne teacher=teacher.pt 'sets=[RUN_OURS/distilled/ipc10,RUN_RANDOM/distilled/ipc10]' \
        'names=[ours,random]' out=figures/tsne_ipc10.png

Every image (a sample of the real training images per class, and every distilled image of
each set) goes through the teacher (a ``teacher.pt`` of ``python -m evaluate mode=teacher``);
its penultimate features (the head's input) are embedded in 2-D by one t-SNE over all of them
together, so the panels share one map. One panel per set: the real images as small faint dots,
the set's images as large outlined markers, both coloured by class. The real data comes from
the first set's distill run (its ``.hydra/config.yaml`` data, or its bank's record of it).
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from distill.errors import ConfigError, DataError, DistillError
from distill.io import atomic_path

log = logging.getLogger(__name__)

DEFAULTS = dict(
    teacher=None, sets=[], names=None, out="tsne.png", real_per_class=100, seed=0, perplexity=30.0
)


def _run_dir(set_dir: Path) -> Path:
    """The distill run a set folder belongs to: ``RUN/distilled/[classes-.../]ipc{K}``."""
    for parent in set_dir.parents:
        if parent.name == "distilled":
            return parent.parent
    return set_dir.parent


def real_data_cfg(set_dir: Path):
    """The data config the set was distilled from."""
    run = _run_dir(set_dir)
    hydra_cfg = run / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        return OmegaConf.load(hydra_cfg).data
    meta = run / "bank" / "meta.json"
    if meta.is_file():
        import json

        data = json.loads(meta.read_text()).get("data_cfg")
        if data:
            return OmegaConf.create(data)
    raise DataError(
        f"{set_dir}: no .hydra/config.yaml or bank/meta.json in {run} to find its real data"
    )


def read_set(set_dir: Path) -> tuple[list[Image.Image], list[int], list[str]]:
    """The set's images, their labels (classes.csv order) and the class keys."""
    path = set_dir / "classes.csv"
    if not path.is_file():
        raise DataError(f"{set_dir} holds no classes.csv: not a distilled set")
    with open(path, newline="", encoding="utf-8") as f:
        classes = list(csv.DictReader(f))
    images, labels = [], []
    for c in classes:
        for p in sorted((set_dir / c["key"]).glob("*.*")):
            images.append(Image.open(p).convert("RGB"))
            labels.append(int(c["index"]))
    if not images:
        raise DataError(f"{set_dir} holds no images")
    return images, labels, [c["key"] for c in classes]


def teacher_features(
    images: list[Image.Image], model, size: int, mean, std, batch: int = 256
) -> np.ndarray:
    """Penultimate features of whole images resized to the teacher's input."""
    from distill.coreset import head_inputs

    sized = [im.resize((size, size), Image.Resampling.BICUBIC) for im in images]
    return head_inputs(sized, model, mean, std, batch)


def embed_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """One t-SNE (scikit-learn, PCA init, seeded) over every point."""
    from sklearn.manifold import TSNE

    perplexity = float(min(perplexity, max(2.0, (len(features) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def tsne_figure(
    teacher: str,
    sets: list[Path],
    names: list[str],
    out: Path,
    real_per_class: int = 100,
    seed: int = 0,
    perplexity: float = 30.0,
) -> Path:
    """Write the figure; returns its path."""
    from distill.data import build_source
    from distill.teacher_selector import load_classifier

    if not sets:
        raise ConfigError("sets=[...] lists no distilled set")
    if len(names) != len(sets):
        raise ConfigError(f"names lists {len(names)} names for {len(sets)} sets")
    read = [read_set(Path(s)) for s in sets]
    keys = read[0][2]
    for (_, _, k), s in zip(read[1:], sets[1:], strict=True):
        if k != keys:
            raise DataError(
                f"{s} has classes {k[:5]}..., the first set {keys[:5]}...: compare sets of one class order"
            )
    data = real_data_cfg(Path(sets[0]))
    OmegaConf.set_struct(data, False)
    data.images_per_class = int(real_per_class)
    data.subsample_seed = int(seed)
    source = build_source(data)
    by_key = {c.key: c.index for c in source.classes}
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise DataError(f"the real data has no classes {missing[:5]} of the sets")
    model, size, mean, std = load_classifier(str(teacher), [c.key for c in source.classes])
    real_idx = [i for i, it in enumerate(source.items) if source.classes[it.label].key in keys]
    real_images = [source.load(i) for i in real_idx]
    real_labels = [keys.index(source.classes[source.items[i].label].key) for i in real_idx]
    parts = [teacher_features(real_images, model, size, mean, std)]
    parts += [teacher_features(ims, model, size, mean, std) for ims, _, _ in read]
    xy = embed_2d(np.concatenate(parts), seed, perplexity)
    n_real = len(real_images)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
    colour = lambda labels: [cmap(lab % cmap.N) for lab in labels]  # noqa: E731
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 4.4), squeeze=False)
    start = n_real
    for ax, name, (ims, labels, _) in zip(axes[0], names, read, strict=True):
        pts = xy[start : start + len(ims)]
        start += len(ims)
        ax.scatter(
            xy[:n_real, 0], xy[:n_real, 1], s=9, c=colour(real_labels), alpha=0.45, linewidths=0
        )
        ax.scatter(pts[:, 0], pts[:, 1], s=46, c=colour(labels), edgecolors="black", linewidths=0.8)
        ax.set_title(f"{name}: {len(ims)} distilled images", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    names_by_key = {c.key: c.name for c in source.classes}
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=cmap(i % cmap.N), label=names_by_key[k])
        for i, k in enumerate(keys[:20])
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=min(10, len(handles)), fontsize=7, frameon=False
    )
    fig.suptitle(
        f"t-SNE of the teacher's penultimate features: {real_per_class} real images per class (dots) "
        "and each distilled set (outlined)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    log.info("t-SNE figure: %s", out)
    return out


def main(argv: list[str] | None = None) -> int:
    from distill.cli import read_kv_args, setup_logging, wants_help

    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        print(__doc__.strip())
        return 0
    setup_logging()
    try:
        args = read_kv_args(argv, DEFAULTS)
        if not args.teacher:
            raise ConfigError("teacher=PATH (a teacher.pt) is required")
        sets = [Path(s) for s in args.sets]
        names = list(args.names) if args.names is not None else [_run_dir(s).name for s in sets]
        path = tsne_figure(
            str(args.teacher),
            sets,
            names,
            Path(args.out),
            int(args.real_per_class),
            int(args.seed),
            float(args.perplexity),
        )
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
