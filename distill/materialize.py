"""Distilled sets for any IPC or class subset from an existing bank, without the diffusion model.

    python -m distill.materialize bank_dir=RUN_DIR ipc=[20]
    python -m distill.materialize bank_dir=RUN_DIR ipc=[10,50] classes=[0,2] out_dir=outputs/subset
    python -m distill.materialize bank_dir=RUN_DIR ipc=[10] classes=[beagle,n02099601] cluster=none
    python -m distill.materialize bank_dir=RUN_DIR ipc=[10] figures=all workers=4

The bank's scores, features and clusters do not depend on IPC or on which classes are
distilled together; this is where that pays off: a new setting costs seconds. ``classes``
takes bank label indices, class keys (WordNet IDs, folder names) or names. Output goes to
``RUN_DIR/distilled/ipc{K}/`` unless ``out_dir`` is given. The pipeline's ``assemble`` stage
calls `materialize` too.

Figures are drawn for an evenly spread sample of ``figure_classes`` classes by default
(``figures=all`` for every class, ``none`` for no figures): at ImageNet-1K scale a figure per
class costs more than the set. The classes are written by ``workers`` forked processes
(``auto``: one per available core); a set's files are the same bytes whatever the figures
and workers settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import random
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from distill.assembly import PatchRef, centre_square, write_distilled_set
from distill.bank import check_items_unchanged, load_bank, load_clusters, load_owners, read_meta
from distill.cli import kv_usage, read_kv_args, setup_logging, wants_help
from distill.cpu import available_cores
from distill.data import build_source
from distill.data.images import bank_decoder, check_decoder, resized_size
from distill.errors import ConfigError, DataError, DistillError
from distill.figures import class_grids, cluster_sheet
from distill.io import atomic_dir, atomic_write_json, atomic_write_text
from distill.record_table import patch_scores, record_scores
from distill.scoring.relevance import box_to_original, stable_seed
from distill.selection import (
    Patch,
    patches_needed,
    patches_per_image,
    select_by_relevance,
    select_clustered,
)
from distill.validate import check_reuse, normalize_ipc

log = logging.getLogger(__name__)


def resolve_bank_dir(path: str | Path) -> tuple[Path, Path]:
    """(bank folder, default output folder) for a run folder or a bank folder."""
    p = Path(path).expanduser()
    if (p / "bank" / "meta.json").is_file():
        return p / "bank", p / "distilled"
    if (p / "meta.json").is_file():
        return p, p / "distilled"
    raise DataError(f"bank_dir={p}: no bank here (expected {p}/bank/meta.json or {p}/meta.json)")


def choose_classes(all_classes: list[dict], wanted) -> list[dict]:
    """The distilled set's classes: ``wanted`` by index, key or name, in the order given."""
    if wanted is None:
        chosen = list(all_classes)
    else:
        by_key = {c["key"]: c for c in all_classes}
        by_name = {c["name"]: c for c in all_classes}
        chosen = []
        for w in wanted:
            if isinstance(w, int) or (isinstance(w, str) and w.isdigit()):
                i = int(w)
                if not 0 <= i < len(all_classes):
                    raise ConfigError(
                        f"classes: index {i} out of range (the bank has {len(all_classes)} classes)"
                    )
                chosen.append(all_classes[i])
            elif w in by_key:
                chosen.append(by_key[w])
            elif w in by_name:
                chosen.append(by_name[w])
            else:
                raise ConfigError(
                    f"classes: {w!r} is neither an index, a key nor a name of the bank's classes"
                )
        if len({c["index"] for c in chosen}) != len(chosen):
            raise ConfigError(f"classes lists a class twice: {list(wanted)}")
    return [
        {"index": i, "key": c["key"], "name": c["name"], "source_index": c["index"]}
        for i, c in enumerate(chosen)
    ]


def method_label(selector: str, selector_mode: str = "crop", use_clusters: bool = True) -> str:
    """The method's name in figure titles (the tables' names: ours, random crops, ...)."""
    if selector == "diffusion":
        return "ours" if use_clusters else "ours w/o clustering"
    if selector == "random":
        return "random real images" if selector_mode == "image" else "random real crops"
    if selector in ("herding", "kcenter"):
        return {"herding": "herding", "kcenter": "k-center greedy"}[selector] + " (real images)"
    return "teacher crops (RDED-style)"


def subset_folder(chosen: list[dict]) -> str:
    """Folder name of a class-subset set: ``classes-<key>+<key>`` for up to four short keys,
    else ``classes-<count>-<digest of the keys>``; the set's ``ipc{K}`` folders go inside."""
    keys = [str(c["key"]) for c in chosen]
    joined = "+".join(keys)
    if (
        len(keys) <= 4
        and len(joined) <= 60
        and all(k.replace("_", "").replace("-", "").isalnum() for k in keys)
    ):
        return f"classes-{joined}"
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:8]
    return f"classes-{len(keys)}-{digest}"


def check_overwrite(set_dir: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to replace an existing set made with other settings unless ``overwrite``.

    The same settings again (a resumed or repeated run) rewrite the same set, which is safe;
    anything else would silently swap the set a colleague or an evaluation already uses.
    """
    if overwrite or not set_dir.exists():
        return
    info_path = set_dir / "set.json"
    try:
        old = json.loads(info_path.read_text()).get("settings") if info_path.is_file() else None
    except (OSError, ValueError):
        old = None
    if old == settings:
        return
    if old is None:
        diff = "it records no settings (made by an older version, or not by materialise)"
    else:
        diff = ", ".join(
            f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v
        )
    raise ConfigError(
        f"{set_dir} already holds a distilled set made with other settings ({diff}); pass "
        "overwrite=true (assemble.overwrite=true in a pipeline run) to replace it, or another "
        "out_dir"
    )


def diffusion_refs(
    bank,
    source,
    classes: list[dict],
    ipc: int,
    use_clusters: bool,
    top_clusters: int,
    concat_max_ipc: int,
    tiles: int,
    strict: bool,
    clusters=None,
    owners=None,
    max_reuse: int | None = 2,
) -> dict:
    """Per distilled label, the picked patches (as `PatchRef`) in rank order."""
    index_of = {it.source: i for i, it in enumerate(source.items)}
    need = patches_needed(ipc, concat_max_ipc, tiles)
    positions = bank.positions_by_class()
    out: dict[int, list[PatchRef]] = {}
    for c in classes:
        if use_clusters:
            cl = clusters["classes"][str(c["source_index"])]
            patches = []
            rows = np.asarray(cl["patches"], dtype=np.int64)
            own = np.asarray(owners)[rows].reshape(-1, 2)
            scores = patch_scores(bank.records, own[:, 0], own[:, 1])
            for j, (row, cid, dist) in enumerate(
                zip(cl["patches"], cl["cluster"], cl["distance"], strict=True)
            ):
                patches.append(Patch(int(row), float(scores[j]), int(cid), float(dist)))
            picks = select_clustered(
                patches, cl["ranked"], top_clusters, ipc, concat_max_ipc, tiles
            )
            where = {int(row): tuple(owners[row]) for row in cl["patches"]}
        else:
            patches, where = [], {}
            for ri in positions.get(c["source_index"], []):
                for k, s in enumerate(record_scores(bank.records, ri)):
                    pid = len(where)
                    where[pid] = (ri, k)
                    patches.append(Patch(pid, float(s)))
            picks = select_by_relevance(patches, ipc, concat_max_ipc, tiles)
        check_reuse(f"class {c['source_index']} ({c['name']})", len(patches), need, max_reuse)
        reused = sum(pk.note == "reused" for pk in picks)
        if not picks or reused:
            msg = (
                f"class {c['source_index']} ({c['name']}): {len(patches)} patches for "
                f"{need} needed at IPC {ipc}"
            )
            if strict:
                raise DataError(msg + " (assemble.strict=true)")
            log.warning(
                "%s: %s", msg, "patches reused (manifest note 'reused')" if picks else "no images"
            )
        refs = []
        for pk in picks:
            ri, k = where[pk.patch.id]
            r = bank.records[ri]
            refs.append(
                PatchRef(
                    index_of[r["source"]],
                    r["source"],
                    tuple(r["boxes"][k]),
                    pk.patch.score,
                    pk.patch.cluster,
                    pk.cluster_rank,
                    pk.note,
                )
            )
        out[c["index"]] = refs
    return out


def random_refs(
    source,
    classes: list[dict],
    ipc: int,
    concat_max_ipc: int,
    tiles: int,
    patch: int | None,
    short_edge: int,
    mode: str,
    seed: int,
) -> dict:
    """Baseline: random real images (``mode=image``) or random patch crops (``mode=crop``)."""
    if mode not in ("crop", "image"):
        raise ConfigError(f"selector.mode={mode!r} must be 'crop' or 'image'")
    need = patches_needed(ipc, concat_max_ipc, tiles)
    items_by_class = source.indices_by_class()
    out = {}
    for c in classes:
        rng = random.Random(stable_seed("random-selector", seed, c["key"]))
        items = items_by_class.get(c["source_index"], [])
        if not items:
            out[c["index"]] = []
            log.warning("class %s has no images for the random selector", c["name"])
            continue
        order = rng.sample(items, len(items))
        chosen = [order[j % len(order)] for j in range(need)]
        refs = []
        for j, i in enumerate(chosen):
            w, h = source.items[i].size
            note = "reused" if j >= len(order) else ""
            if mode == "image" or patch is None:
                box = centre_square(w, h)
            else:
                rw, rh = resized_size(w, h, short_edge, 1)
                x0, y0 = rng.randint(0, max(0, rw - patch)), rng.randint(0, max(0, rh - patch))
                box = box_to_original((x0, y0, x0 + patch, y0 + patch), (rw, rh), (w, h))
            refs.append(PatchRef(i, source.items[i].source, box, None, -1, -1, note))
        out[c["index"]] = refs
    return out


def tiling_max_ipc(concat_max_ipc: int, image_size: int, tile_min_size: int) -> int:
    """The largest IPC that is tiled 2x2: ``concat_max_ipc`` for high-resolution sets, 0 (never
    tile) when the distilled images are smaller than ``tile_min_size`` pixels.

    The paper tiles like RDED's ImageNet setting (factor 2) and keeps "the same setting as in
    RDED" at low resolution (§4.2), where RDED's scripts use factor 1: one whole image per
    distilled image. Four 16-px tiles in a 32-px CIFAR image are neither.
    """
    if concat_max_ipc > 0 and image_size < tile_min_size:
        log.info(
            "distilled images of %d px < assemble.tile_min_size=%d: one image per distilled "
            "image, no 2x2 tiles (low resolution, RDED's factor 1)",
            image_size,
            tile_min_size,
        )
        return 0
    return concat_max_ipc


FIGURE_MODES = ("sample", "all", "none")


def figure_mode(value) -> str:
    """``figures`` as one of `FIGURE_MODES`; ``true``/``false`` (the older boolean setting)
    read as ``all``/``none``."""
    if isinstance(value, bool) or value is None:
        return "all" if value else "none"
    mode = str(value).strip().lower()
    mode = {"true": "all", "false": "none", "null": "none"}.get(mode, mode)
    if mode not in FIGURE_MODES:
        raise ConfigError(f"figures={value!r} must be one of {', '.join(FIGURE_MODES)}")
    return mode


def figure_sample(classes: list[dict], mode: str, count: int) -> list[dict]:
    """The classes figures are drawn for: all, none, or ``count`` evenly spread over the set
    (every class when it has no more than ``count``). Deterministic, so a rerun redraws the
    same figures; spread, so the sample is not the first (often related) classes."""
    if mode == "sample" and count < 1:
        raise ConfigError(f"figure_classes={count} must be >= 1 (or figures=none)")
    if mode == "none":
        return []
    if mode == "all" or len(classes) <= count:
        return list(classes)
    return [classes[(i * len(classes)) // count] for i in range(count)]


def resolve_workers(value) -> int:
    """Processes that write a set: an integer as given (1 = in this process), or ``auto``
    (every core this process may use)."""
    if value is None or str(value) == "auto":
        return available_cores()
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(n) != str(value).strip():
        raise ConfigError(f"workers={value!r} must be 'auto' or an integer >= 1")
    return n


def can_fork() -> bool:
    """Forked workers inherit the bank and the listing without pickling them; where fork is
    missing (Windows) or unsafe by default (macOS), sets are written in this process."""
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()


def class_chunks(classes: list[dict], workers: int) -> list[list[dict]]:
    """Runs of consecutive classes, about four per worker: small enough that a slow class
    does not leave the other workers idle, large enough that each run's few extra files
    (a partial manifest, classes.csv and set.json) cost nothing."""
    n = max(1, min(len(classes), 4 * workers))
    bounds = [(i * len(classes)) // n for i in range(n + 1)]
    return [classes[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


# The set being written, inherited by forked workers (fork copies it; nothing is pickled but
# a chunk's number and its result).
_JOB: dict | None = None


def _write_chunk(k: int) -> dict:
    """In a worker: chunk ``k``'s classes as a partial set of their own (the serial writer's
    own code, so every image and manifest row is what the serial path writes)."""
    job = _JOB
    assert job is not None, "_write_chunk runs only in a worker forked by write_set_parallel"
    return write_distilled_set(
        job["parts"] / f"part-{k:05d}",
        job["chunks"][k],
        job["refs"],
        job["source"],
        **job["kwargs"],
    )


def _body(path: Path) -> str:
    """A CSV file without its header line (the writer's csv module ends lines with \\n)."""
    text = path.read_text(encoding="utf-8")
    return text[text.index("\n") + 1 :]


def merge_parts(tmp: Path, parts: Path, chunks: list[list[dict]], results: list[dict]) -> dict:
    """Join the partial sets in class order into ``tmp``: class folders moved, manifest.csv
    and classes.csv concatenated under one header, set.json the first part's with the whole
    set's class and image counts. Equal byte for byte to one serial write."""
    dirs = [parts / f"part-{k:05d}" for k in range(len(chunks))]
    for d, chunk in zip(dirs, chunks, strict=True):
        for c in chunk:
            os.replace(d / c["key"], tmp / c["key"])
    for name in ("manifest.csv", "classes.csv"):
        head = (dirs[0] / name).read_text(encoding="utf-8").split("\n", 1)[0] + "\n"
        atomic_write_text(tmp / name, head + "".join(_body(d / name) for d in dirs))
    per_class = {k: v for r in results for k, v in r["per_class"].items()}
    info = json.loads((dirs[0] / "set.json").read_text(encoding="utf-8"))
    info["num_classes"] = sum(len(c) for c in chunks)
    info["images"] = sum(per_class.values())
    atomic_write_json(tmp / "set.json", info)
    return {
        "images": info["images"],
        "per_class": per_class,
        "patches": sum(r["patches"] for r in results),
    }


def write_set_parallel(
    set_dir: Path, classes: list[dict], refs: dict, source, workers: int, **kwargs
) -> dict:
    """`write_distilled_set` with its classes spread over ``workers`` forked processes.

    Each worker writes runs of classes as partial sets inside the new set's temporary
    folder; `merge_parts` joins them, and the folder replaces ``set_dir`` atomically as in
    the serial path. A worker's error (an unreadable source image) is raised here as is.
    """
    global _JOB
    chunks = class_chunks(classes, workers)
    with atomic_dir(set_dir) as tmp:
        parts = tmp / ".parts"
        parts.mkdir()
        _JOB = {"parts": parts, "chunks": chunks, "refs": refs, "source": source, "kwargs": kwargs}
        try:
            ctx = mp.get_context("fork")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                results = list(pool.map(_write_chunk, range(len(chunks))))
        except BrokenProcessPool as e:
            raise DataError(
                f"a worker process writing {set_dir} died ({e}; out of memory?): rerun with "
                "workers=1 (assemble.workers=1 in a pipeline run) or fewer workers"
            ) from e
        finally:
            _JOB = None
        out = merge_parts(tmp, parts, chunks, results)
        shutil.rmtree(parts)
    return out


def write_set(
    set_dir: Path, classes: list[dict], refs: dict, source, workers: int, **kwargs
) -> dict:
    """One distilled set, in this process (``workers=1``, one class, or no fork) or spread
    over forked workers; the same files either way."""
    workers = min(workers, len(classes))
    if workers <= 1 or not can_fork():
        return write_distilled_set(set_dir, classes, refs, source, **kwargs)
    return write_set_parallel(set_dir, classes, refs, source, workers, **kwargs)


def materialize(
    bank_dir: str | Path | None,
    ipcs: list[int],
    out_dir: str | Path | None = None,
    classes=None,
    selector: str = "diffusion",
    selector_mode: str = "crop",
    use_clusters: bool = True,
    top_clusters: int = 10,
    concat_max_ipc: int = 10,
    tiles: int = 2,
    image_size: int | None = None,
    tile_min_size: int = 128,
    strict: bool = False,
    seed: int = 0,
    source=None,
    data_cfg=None,
    patch: int | None = None,
    short_edge: int | None = None,
    figures: str | bool = "sample",
    figure_classes: int = 10,
    workers: int | str = "auto",
    image_format: str = "png",
    teacher_checkpoint: str | None = None,
    crops_per_image: int = 5,
    set_info: dict | None = None,
    max_reuse: int | None = 2,
    overwrite: bool = False,
) -> dict:
    """Write ``distilled/ipc{K}`` for every K in ``ipcs``; returns a summary per IPC.

    With ``selector=diffusion`` everything comes from the bank; ``selector=random`` and
    ``selector=teacher`` (RDED-style classifier confidence) need only the source images
    (``data_cfg``, or the bank's record of them).

    ``figures`` (`FIGURE_MODES`) and ``figure_classes`` decide which classes get figures,
    ``workers`` how many processes write each set; neither changes a set's files.
    """
    figures = figure_mode(figures)
    n_workers = resolve_workers(workers)
    bank = clusters = owners = None
    default_out = None
    if bank_dir is not None:
        bank_path, default_out = resolve_bank_dir(bank_dir)
        if selector == "diffusion":
            bank = load_bank(bank_path)
    out_root = Path(out_dir) if out_dir is not None else default_out
    if out_root is None:
        raise ConfigError("materialize needs out_dir when there is no bank_dir")
    meta = bank.meta if bank is not None else (read_meta(bank_path) if bank_dir is not None else {})
    if source is None:
        cfg = data_cfg if data_cfg is not None else meta.get("data_cfg")
        if cfg is None:
            raise DataError("the bank does not record its dataset (data_cfg); pass data_cfg")
        source = build_source(
            OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg,
            index_dir=bank_path / "listing" if bank_dir is not None else None,
        )
    if bank is not None:  # the bank's boxes are of the pixels it scored
        check_items_unchanged(bank.path, bank.spec, source)
        decoder = bank_decoder(bank.spec)
    else:
        data = data_cfg if data_cfg is not None else meta.get("data_cfg") or {}
        decoder = check_decoder(str(data.get("decoder", "pil")))
    all_classes = [c.to_dict() for c in source.classes] if bank is None else bank.classes
    chosen = choose_classes(all_classes, classes)
    if bank is not None:
        patch = bank.spec["scoring"].get("patch")
        short_edge = int(bank.spec["data"]["short_edge"])
    if short_edge is None:
        raise ConfigError("materialize needs short_edge for the random selector without a bank")
    size = int(image_size) if image_size else int(patch if patch is not None else short_edge)
    concat_max_ipc = tiling_max_ipc(concat_max_ipc, size, tile_min_size)
    if selector == "diffusion" and use_clusters:
        cpath = bank.path / "clusters.json"
        entry = bank.meta.get("stages", {}).get("cluster", {})
        if not cpath.is_file() or not entry.get("complete"):
            raise DataError(
                f"{bank.path} holds no complete clustering: run the features and cluster stages, "
                "or pass cluster=none"
            )
        clusters = load_clusters(bank.path, bank.meta)
        if clusters.get("hash") != entry.get("hash"):
            raise DataError(
                f"{cpath} is stale (made under another features or cluster config): re-run the "
                "cluster stage, or pass cluster=none"
            )
        owners = load_owners(bank.path, bank.meta)
    # A run's figures sit beside its distilled/ folder; any other out_dir keeps its own.
    fig_root = out_root.parent / "figures" if out_root.name == "distilled" else out_root / "figures"
    run_name = out_root.parent.name if out_root.name == "distilled" else out_root.name
    method = method_label(selector, selector_mode, use_clusters)
    subset = [c["source_index"] for c in chosen] != list(range(len(all_classes)))
    if subset:
        # A class subset never takes the full set's folder (nor its figures' folder).
        name = subset_folder(chosen)
        out_root, fig_root = out_root / name, fig_root / name
    drawn = figure_sample(chosen, figures, int(figure_classes))
    summary = {}
    for ipc in [int(k) for k in ipcs]:
        if ipc < 1:
            raise ConfigError(f"ipc={ipc}: images per class must be >= 1")
        if selector == "diffusion":
            refs = diffusion_refs(
                bank,
                source,
                chosen,
                ipc,
                use_clusters,
                top_clusters,
                concat_max_ipc,
                tiles,
                strict,
                clusters,
                owners,
                max_reuse,
            )
        elif selector == "teacher":
            from distill.teacher_selector import teacher_refs

            refs = teacher_refs(
                source,
                chosen,
                ipc,
                concat_max_ipc,
                tiles,
                patch or short_edge,
                short_edge,
                teacher_checkpoint,
                crops_per_image,
                seed,
            )
        elif selector in ("herding", "kcenter"):
            from distill.coreset import coreset_refs

            refs = coreset_refs(
                source, chosen, ipc, concat_max_ipc, tiles, teacher_checkpoint, selector
            )
        elif selector == "random":
            refs = random_refs(
                source, chosen, ipc, concat_max_ipc, tiles, patch, short_edge, selector_mode, seed
            )
        else:
            raise ConfigError(
                f"selector.kind={selector!r} must be 'diffusion', 'random', 'teacher', "
                "'herding' or 'kcenter'"
            )
        per_image = patches_per_image(ipc, concat_max_ipc, tiles)
        set_dir = out_root / f"ipc{ipc}"
        settings = {
            "classes": [c["key"] for c in chosen],
            "selector": selector,
            "selector_mode": selector_mode if selector == "random" else None,
            "seed": seed if selector != "diffusion" else None,
            "use_clusters": bool(use_clusters),
            "top_clusters": int(top_clusters) if use_clusters else None,
            "tiles": 1 if per_image == 1 else tiles,
            "image_size": size,
        }
        check_overwrite(set_dir, settings, overwrite)
        keys = [c["key"] for c in chosen]
        if keys != sorted(keys) and ipc == min(int(k) for k in ipcs):
            log.warning(
                "%s: the class order (%s) is not the sorted order of the class folders, so an "
                "ImageFolder reader would label them differently: read the labels from its "
                "classes.csv, or export it with `python -m distill.export RUN format=imagefolder` "
                "(label-prefixed folders) or format=rded",
                out_root,
                getattr(source, "class_order", "native"),
            )
        info = write_set(
            set_dir,
            chosen,
            refs,
            source,
            n_workers,
            ipc=ipc,
            tiles=1 if per_image == 1 else tiles,
            image_size=size,
            image_format=image_format,
            decoder=decoder,
            info={
                "selector": selector,
                "dataset": source.name,
                "class_order": getattr(source, "class_order", "native"),
                "class_subset": subset,
                # False: a sorted listing of the folders (any ImageFolder) is not the label order.
                "folder_order_is_label_order": keys == sorted(keys),
                "settings": settings,
                **({"decoder": decoder} if decoder != "pil" else {}),
                **(set_info or {}),
            },
        )
        log.info(
            "distilled IPC %d: %d images of %d classes -> %s",
            ipc,
            info["images"],
            len(chosen),
            set_dir,
        )
        if drawn:
            fig_dir = fig_root / f"ipc{ipc}"
            if fig_dir.is_dir():  # a replaced set's per-class sheets would otherwise linger
                shutil.rmtree(fig_dir)
            title = f"run {run_name} - {method} - IPC {ipc}{sample_note(drawn, chosen)}"
            info["figures"] = [str(p) for p in class_grids(set_dir, drawn, fig_dir, title=title)]
        summary[ipc] = info
    if drawn and clusters is not None:
        summary["cluster_sheets"] = [
            str(p)
            for p in write_cluster_sheets(
                bank,
                source,
                drawn,
                clusters,
                owners,
                top_clusters,
                fig_root / "clusters",
            )
        ]
    return summary


def sample_note(drawn: list[dict], chosen: list[dict]) -> str:
    """What a figure title adds when its figures show a sample of the set's classes."""
    if len(drawn) == len(chosen):
        return ""
    return f" - figures of {len(drawn)} of {len(chosen)} classes, evenly spread (figures=all: all)"


def write_cluster_sheets(
    bank, source, classes, clusters, owners, top_clusters: int, fig_dir: Path
) -> list[Path]:
    index_of = {it.source: i for i, it in enumerate(source.items)}
    paths = []
    for c in classes:
        cl = clusters["classes"][str(c["source_index"])]
        rows = []
        for cid, median in list(zip(cl["ranked"], cl["median"], strict=True))[:top_clusters]:
            members = [
                (d, row)
                for row, k, d in zip(cl["patches"], cl["cluster"], cl["distance"], strict=True)
                if k == cid
            ]
            refs = []
            for _, row in sorted(members):
                ri, k = owners[row]
                r = bank.records[ri]
                refs.append(PatchRef(index_of[r["source"]], r["source"], tuple(r["boxes"][k])))
            rows.append((cid, median, refs))
        paths.append(
            cluster_sheet(
                source,
                rows,
                fig_dir / f"{c['key']}.png",
                title=f"{c['index']}: {c['name']} - top {len(rows)} clusters by median relevance "
                f"(rows: rank, cluster id, median; patches nearest the centre first)",
            )
        )
    return paths


# null: what the run that made the bank used (recorded in the bank), else the paper's value.
DEFAULTS = dict(
    bank_dir=None,
    ipc=[10],
    classes=None,
    out_dir=None,
    cluster="kmeans",
    top_clusters=None,
    concat_max_ipc=None,
    tiles=None,
    image_size=None,
    tile_min_size=None,
    strict=False,
    figures="sample",
    figure_classes=10,
    workers="auto",
    max_reuse=2,
    overwrite=False,
)
ARG_HELP = dict(
    bank_dir="a distill run folder holding bank/, or a bank folder (required)",
    ipc="images per class: 10 or a list [1,10,50]",
    classes="a subset: bank label indices, class keys or names; written to classes-<...>/",
    out_dir="where the ipc{K} folders go (default: RUN_DIR/distilled)",
    cluster="kmeans (the bank's clusters) or none (relevance only, paper Table 5)",
    top_clusters="clusters drawn from (default: the run's setting)",
    concat_max_ipc="tile 2x2 up to this IPC (default: the run's setting)",
    tiles="patches per side of a tiled image (default: the run's setting)",
    image_size="side of a distilled image in pixels (default: the run's setting)",
    tile_min_size="never tile images smaller than this (default: the run's setting)",
    strict="error instead of warning when a class has too few patches",
    figures="per-class figures: sample (figure_classes classes, evenly spread), all or none",
    figure_classes="classes drawn with figures=sample",
    workers="processes writing the images: auto (one per core) or a number (1 = this one)",
    max_reuse="most uses of one patch when a class has too few (null = no limit)",
    overwrite="replace an existing set made with other settings",
)
PAPER = dict(top_clusters=10, concat_max_ipc=10, tiles=2, tile_min_size=128)


def recorded_settings(bank_dir) -> dict:
    """Selection and assembly settings of the run that made a bank (materialise's defaults)."""
    bank, _ = resolve_bank_dir(bank_dir)
    meta = read_meta(bank)
    out = dict(meta.get("assemble", {}))
    if (bank / "clusters.json").is_file():
        try:
            top = json.loads((bank / "clusters.json").read_text(encoding="utf-8"))["top_clusters"]
        except (ValueError, KeyError, TypeError):  # damaged: named by `load_clusters` if used
            top = None
        out.setdefault("top_clusters", top)
    return {k: v for k, v in out.items() if v is not None}


def usage() -> str:
    """``--help``: the module's recipes and every argument with its default."""
    return kv_usage(__doc__, DEFAULTS, ARG_HELP)


def main(argv: list[str] | None = None) -> int:
    """``key=value`` arguments (OmegaConf syntax), e.g. ``bank_dir=RUN ipc=[20] classes=[0,2]``."""
    argv = list(argv if argv is not None else sys.argv[1:])
    if wants_help(argv):
        print(usage())
        return 0
    setup_logging()
    try:
        args = read_kv_args(argv, DEFAULTS)
        if args.bank_dir is None:
            raise ConfigError(
                "bank_dir=RUN_DIR is required (a run folder holding bank/, or a bank folder)"
            )
        ipcs = normalize_ipc(args)
        classes = list(args.classes) if args.classes is not None else None
        recorded = recorded_settings(args.bank_dir)

        def pick(key):
            return args[key] if args[key] is not None else recorded.get(key, PAPER.get(key))

        summary = materialize(
            args.bank_dir,
            ipcs,
            args.out_dir,
            classes,
            "diffusion",
            use_clusters=args.cluster != "none",
            top_clusters=int(pick("top_clusters")),
            concat_max_ipc=int(pick("concat_max_ipc")),
            tiles=int(pick("tiles")),
            image_size=pick("image_size"),
            tile_min_size=int(pick("tile_min_size")),
            strict=bool(args.strict),
            figures=args.figures,
            figure_classes=int(args.figure_classes),
            workers=args.workers,
            max_reuse=args.max_reuse,
            overwrite=bool(args.overwrite),
        )
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for ipc, info in summary.items():
        if isinstance(ipc, int):
            print(f"ipc{ipc}: {info['images']} images, {info['patches']} patches")
    return 0


def run_assemble(cfg) -> None:
    """The pipeline's ``assemble`` stage: every IPC of ``cfg.ipc`` into ``<run>/distilled``."""
    from distill.runtime import get_loggers, is_launch_rank_zero

    if not is_launch_rank_zero():
        return
    selector = str(cfg.selector.kind)
    out = Path(cfg.paths.output_dir) / "distilled"
    common = dict(
        top_clusters=int(cfg.cluster.get("top_clusters", 10)),
        concat_max_ipc=int(cfg.assemble.concat_max_ipc),
        tiles=int(cfg.assemble.get("tiles", 2)),
        image_size=cfg.assemble.get("image_size"),
        tile_min_size=int(cfg.assemble.get("tile_min_size", PAPER["tile_min_size"])),
        strict=bool(cfg.assemble.get("strict", False)),
        image_format=str(cfg.assemble.get("image_format", "png")),
        max_reuse=cfg.assemble.get("max_reuse", 2),
        overwrite=bool(cfg.assemble.get("overwrite", False)),
        figures=cfg.assemble.get("figures", "sample"),
        figure_classes=int(cfg.assemble.get("figure_classes", 10)),
        workers=cfg.assemble.get("workers", "auto"),
    )
    if selector == "diffusion":
        from distill.bank import read_meta, write_meta

        meta = read_meta(cfg.paths.bank_dir)
        meta["assemble"] = {
            k: common[k]
            for k in ("top_clusters", "concat_max_ipc", "tiles", "image_size", "tile_min_size")
        }
        write_meta(cfg.paths.bank_dir, meta)
        summary = materialize(
            cfg.paths.bank_dir,
            list(cfg.ipc),
            out,
            None,
            "diffusion",
            use_clusters=cfg.cluster.get("kind") != "none",
            **common,
        )
    else:
        summary = materialize(
            None,
            list(cfg.ipc),
            out,
            None,
            selector,
            selector_mode=str(cfg.selector.get("mode", "crop")),
            teacher_checkpoint=cfg.selector.get("checkpoint"),
            crops_per_image=int(cfg.selector.get("crops_per_image", 5)),
            seed=int(cfg.selector.seed),
            data_cfg=cfg.data,
            patch=cfg.scoring.get("patch"),
            short_edge=int(cfg.data.short_edge),
            use_clusters=False,
            **common,
        )
    for lg in get_loggers(cfg):
        from lightning.pytorch.loggers import WandbLogger

        if isinstance(lg, WandbLogger):
            for ipc, info in summary.items():
                if isinstance(ipc, int) and info.get("figures"):
                    lg.log_image(key=f"distilled/ipc{ipc}", images=info["figures"][:1])
            if summary.get("cluster_sheets"):
                lg.log_image(key="clusters", images=summary["cluster_sheets"][:8])


if __name__ == "__main__":
    sys.exit(main())
