"""The page a person reads when a distill run ends: ``<run>/summary.md`` (and the log).

It says where everything is (bank, sets, figures, config, log), the settings that decide the
result, per class how many images were scored, how many candidate patches and clusters there
were and how many patches a set had to reuse, and the commands that come next. It is built
from the run's own files only (the bank's ``meta.json``, each set's ``set.json`` and
``manifest.csv``), so it describes what was written, not what was asked for.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path

from distill.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def read_json(path: Path) -> dict:
    """A JSON file's object, or {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def bank_records(bank: Path) -> list[dict]:
    """The scored records of ``scores.jsonl`` (failed images left out); none when the bank
    has no readable scores (a summary reports, it never fails a finished run)."""
    from distill.bank import read_jsonl
    from distill.errors import DataError

    try:
        return [r for r in read_jsonl(bank / "scores.jsonl") if "error" not in r]
    except (OSError, DataError):
        return []


def _per_class_candidates(records: list[dict]) -> tuple[Counter, Counter]:
    """Images scored and candidate patches per bank label."""
    images, patches = Counter(), Counter()
    for r in records:
        images[int(r["label"])] += 1
        patches[int(r["label"])] += len(r.get("scores", []))
    return images, patches


def _sets(distilled: Path) -> list[tuple[str, Path, dict]]:
    """(name, folder, set.json) of every set under ``distilled/`` (subsets included)."""
    out = []
    for info in sorted(distilled.glob("**/set.json")):
        rel = info.parent.relative_to(distilled).as_posix()
        out.append((rel, info.parent, read_json(info)))
    return out


def _reused(set_dir: Path) -> Counter:
    n = Counter()
    try:
        with open(set_dir / "manifest.csv", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                if row.get("note") == "reused":
                    n[row["class_name"]] += 1
    except OSError:
        pass
    return n


def _setting_lines(cfg) -> list[str]:
    sel = str(cfg.selector.get("kind", "diffusion"))
    lines = [f"- selector: `{sel}`" + (f" ({cfg.selector.get('mode')})" if sel == "random" else "")]
    if sel == "diffusion":
        s, f, c = cfg.scoring, cfg.features, cfg.cluster
        lines += [
            f"- model: `{cfg.diffusion.model}` (dtype {cfg.diffusion.get('dtype')})",
            f"- Stage I: t_range {list(s.t_range)}, {s.num_draws} draws ({s.get('t_sampling', 'iid')}), "
            f"patch {s.patch}, stride {s.stride}, top-{s.topk} per image",
        ]
        if c.get("kind") != "none":
            feats = (
                f"CLIP {f.clip.model} ({f.clip.pretrained})"
                if f.get("kind", "dift") == "clip"
                else f"DIFT t={f.timestep}, ensemble {f.ensemble}"
            )
            lines.append(
                f"- Stage II: {feats}; k-means {c.num_centers} centres, top {c.top_clusters} clusters"
            )
        else:
            lines.append("- Stage II: no clustering (relevance only)")
    a = cfg.assemble
    lines.append(
        f"- assembly: 2x2 tiles up to IPC {a.concat_max_ipc} (never below {a.get('tile_min_size')} px), "
        f"image size {a.get('image_size') or 'the patch size'}"
    )
    lines.append(
        f"- data: `{cfg.data.name}` ({cfg.data.get('class_order') or 'native'} class order)"
    )
    return lines


def run_localisation(cfg, meta: dict, records: list[dict]):
    """Stage I's best patch against the labelled item's box, where the data knows it (scene
    and synthetic data), beside a uniformly random patch of the same size; None elsewhere."""
    if cfg.data.get("kind") not in ("fashion_scenes", "synthetic") or not meta.get("data_cfg"):
        return None
    from omegaconf import OmegaConf

    from distill.data import build_source
    from distill.localization import localisation

    source = build_source(OmegaConf.create(meta["data_cfg"]))
    truth = dict(zip((it.source for it in source.items), source.boxes, strict=True))
    recs = [r for r in records if r["source"] in truth]
    patch = meta["stages"]["score"]["spec"]["scoring"].get("patch")
    if not recs or patch is None:
        return None
    w, h = recs[0]["orig_size"]
    side = round(int(patch) * min(w, h) / int(cfg.data.short_edge))  # in original pixels
    return localisation(recs, truth, side, step=max(1, side // 8))


def _localisation_lines(loc) -> list[str]:
    return [
        "## Localisation (the labelled item's box is known)",
        "",
        "| patch | mean IoU with the item | contains the item's centre |",
        "| --- | --- | --- |",
        f"| best patch (ours, {loc.images} images) | {loc.mean_iou:.3f} | {loc.centre_hit:.1%} |",
        f"| random patch of the same size | {loc.random_mean_iou:.3f} | {loc.random_centre_hit:.1%} |",
        "",
    ]


def write_summary(cfg) -> Path | None:
    """Write ``<output_dir>/summary.md`` and log its short form; returns the path."""
    out = Path(cfg.paths.output_dir)
    bank = Path(cfg.paths.bank_dir)
    meta = read_json(bank / "meta.json")
    classes = meta.get("classes") or []
    records = bank_records(bank) if meta else []
    images, patches = _per_class_candidates(records)
    clusters = read_json(bank / "clusters.json").get("classes", {})
    sets = _sets(out / "distilled")
    lines = [f"# Distill run `{out.name}`", ""]
    lines += [
        "| what | where |",
        "| --- | --- |",
        f"| config, log | `{out}/.hydra/config.yaml`, `{out}/distill.log` |",
    ]
    if meta:
        score = meta.get("stages", {}).get("score", {})
        lines.append(
            f"| bank | `{bank}` ({score.get('num_images', '?')} images scored, "
            f"hash {str(score.get('hash', '?'))[:12]}) |"
        )
    for name, folder, info in sets:
        lines.append(
            f"| set {name} | `{folder}` ({info.get('images', '?')} images, "
            f"{info.get('tiles', '?')}x{info.get('tiles', '?')} tiles of {info.get('image_size', '?')} px) |"
        )
    if (out / "figures").is_dir():
        lines.append(f"| figures | `{out}/figures/` (ipc*/overview.png, clusters/) |")
    lines += ["", "## Settings", "", *_setting_lines(cfg), ""]
    reused = {name: _reused(folder) for name, folder, _ in sets}
    if classes:
        head = ["class", "images scored", "candidate patches", "clusters"]
        head += [f"reused in {n}" for n in reused]
        lines += ["## Per class", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for c in classes:
            i = int(c["index"])
            cl = clusters.get(str(i), {})
            n_cl = len(cl.get("ranked", [])) if cl else "-"
            row = [f"{i}: {c['name']}", str(images.get(i, 0)), str(patches.get(i, 0)), str(n_cl)]
            row += [str(r.get(c["name"], 0)) for r in reused.values()]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    loc = None
    if meta and str(cfg.selector.get("kind", "diffusion")) == "diffusion":
        loc = run_localisation(cfg, meta, records)
    if loc is not None:
        lines += _localisation_lines(loc)
    ipcs = [info.get("ipc") for _, _, info in sets if info.get("ipc")]
    first = f"{out}/distilled/ipc{ipcs[0]}" if ipcs else f"{out}/distilled/ipcK"
    lines += [
        "## Next",
        "",
        "```bash",
        f"python -m distill.materialize bank_dir={out} 'ipc=[20]'        # another IPC, no model",
        f"python -m evaluate distilled={first} data={cfg.data.name} ...   # students vs a teacher",
        f"python -m distill.export {out} format=rded                     # for the peers' tools",
        "```",
        "",
    ]
    path = out / "summary.md"
    atomic_write_text(path, "\n".join(lines))
    # The figures a sweep summary compares, machine-readable (distill.sweep reads them).
    atomic_write_json(
        out / "summary.json",
        {
            "localisation": loc.as_dict() if loc is not None else None,
            "sets": [n for n, _, _ in sets],
        },
    )
    total_reused = sum(sum(r.values()) for r in reused.values())
    log.info(
        "run summary: %d set(s) %s, %d reused patches; bank %s; details in %s",
        len(sets),
        ", ".join(n for n, _, _ in sets) or "-",
        total_reused,
        bank if meta else "(none)",
        path,
    )
    return path
