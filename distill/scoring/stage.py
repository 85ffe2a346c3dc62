"""The ``score`` stage: build the patch bank from the source images (resumable, any devices).

Every rank builds the same work plan; unfinished shards are dealt round-robin; each rank
writes its shards; rank 0 merges them into ``bank/scores.jsonl``, writes ``skipped.csv`` and
the figures. A complete bank under the same config is reused, not recomputed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from distill.bank import (
    config_hash,
    items_digest,
    mark_complete,
    merge_shards,
    prepare_stage,
    read_jsonl,
    read_meta,
    releases_bank_locks,
    shard_done,
    write_jsonl,
    write_meta,
)
from distill.data import ResizedImages, build_source, write_skipped_csv
from distill.data.classes import write_classes_csv
from distill.data.images import check_decoder, decode_rules
from distill.data.records import SkipRecord, read_skipped_csv
from distill.diffusion import DiffusionBackend, resolve_dtype
from distill.errors import DataError
from distill.runtime import (
    device_type,
    get_loggers,
    is_launch_rank_zero,
    numerics,
    predict_then_merge,
    prepare_on_zero_first,
    quiet_third_party,
    resolve_workers,
)
from distill.scoring.module import ScoringData, ScoringModule, patch_geometry
from distill.scoring.plan import make_shards, pending
from distill.scoring.relevance import check_t_sampling
from distill.validate import check_candidates

log = logging.getLogger(__name__)

# Scoring settings that change the numbers (batch size, workers and devices do not).
SCORING_KEYS = (
    "t_range",
    "num_draws",
    "seed",
    "prompt",
    "null_prompt",
    "patch",
    "stride",
    "topk",
    "shard_size",
)
# Hashed only when not the default, so a bank made before the key existed (always iid) keeps
# its hash under t_sampling=iid.
SCORING_KEYS_IF_SET = {"t_sampling": "iid"}
# Data settings that do not change which pixels are scored (where the files live, the
# evaluation split) or are hashed in resolved form (the class order: the spec's "classes";
# the pixel limit: the items it lets through are in the items digest); every other data
# setting is part of the hash.
# The decoder is hashed under "decode" (decode_rules), where a default leaves old hashes alone.
DATA_IGNORED = ("root", "val_split", "class_order", "class_orders", "max_pixels", "decoder")
HOLDOUT_KEYS = ("holdout_per_class", "holdout_seed")


def hashed_data(data: dict) -> dict:
    """The data settings a bank's scores depend on. Without a held-out part its keys stay out,
    so banks made before ``holdout_per_class`` existed keep their hash."""
    ignored = DATA_IGNORED + (() if data.get("holdout_per_class") else HOLDOUT_KEYS)
    return {k: v for k, v in sorted(data.items()) if k not in ignored}


def score_spec(cfg: DictConfig, source, backend) -> dict:
    """What the score stage's numbers depend on; its hash guards the bank."""
    scoring = OmegaConf.to_container(cfg.scoring, resolve=True)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    hashed = {k: scoring.get(k) for k in SCORING_KEYS}
    for k, default in SCORING_KEYS_IF_SET.items():
        if scoring.get(k, default) != default:
            hashed[k] = scoring[k]
    return {
        "scoring": hashed,
        "data": hashed_data(data),
        "classes": [[c.key, c.name] for c in source.classes],
        "items": {"count": len(source.items), "digest": items_digest(source)},
        # How files become pixels (EXIF orientation, alpha, frames): another rule, other scores.
        "decode": decode_rules(str(data.get("decoder") or "pil")),
        "model": backend.fingerprint(),
    }


def data_record(cfg: DictConfig) -> dict:
    """The resolved data config, root made absolute: enough to rebuild the source later
    (``python -m distill.materialize`` reads it) from any working directory."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if data.get("root"):
        data["root"] = str(Path(os.path.expanduser(str(data["root"]))).resolve())
    return data


def load_backend(cfg: DictConfig) -> DiffusionBackend:
    dtype = resolve_dtype(str(cfg.diffusion.dtype), device_type(cfg.trainer))
    return DiffusionBackend.load(
        cfg.diffusion.model,
        dtype=dtype,
        device="cpu",
        cache_dir=cfg.paths.cache_dir,
        revision=cfg.diffusion.get("revision"),
        channels_last=bool(cfg.diffusion.get("channels_last", False)),
    )


@releases_bank_locks
def run_score(cfg: DictConfig) -> None:
    """Score every source image into ``cfg.paths.bank_dir`` (the ``score`` stage)."""
    quiet_third_party()
    if cfg.selector.get("kind", "diffusion") != "diffusion":
        log.info("score: not needed (selector=%s)", cfg.selector.kind)
        return
    out_dir, bank_dir = Path(cfg.paths.output_dir), Path(cfg.paths.bank_dir)
    check_t_sampling(cfg.scoring.get("t_sampling", "iid"))
    zero = is_launch_rank_zero()
    source = build_source(cfg.data, index_dir=bank_dir / "listing")
    check_candidates(
        source,
        list(cfg.ipc),
        int(cfg.scoring.get("topk", 1)),
        cfg.get("assemble", {}).get("max_reuse", 2),
    )
    backend = load_backend(cfg)
    patch_geometry(cfg.scoring, backend.vae_factor, int(cfg.data.short_edge))  # fail fast
    dataset = ResizedImages(
        source,
        int(cfg.data.short_edge),
        backend.vae_factor,
        check_decoder(str(cfg.data.get("decoder") or "pil")),
    )
    sizes = [dataset.target_size(i) for i in range(len(dataset))]
    spec = score_spec(cfg, source, backend)
    classes = [c.to_dict() for c in source.classes]

    def prepare(write: bool) -> dict:
        entry = prepare_stage(
            bank_dir, "score", spec, str(cfg.scoring.get("on_mismatch", "error")), write=write
        )
        if write:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_classes_csv(source.classes, out_dir / "classes.csv")
            write_classes_csv(source.classes, bank_dir / "classes.csv")
            meta = read_meta(bank_dir)
            meta["classes"] = classes
            meta["class_order"] = source.class_order
            meta["numerics"] = numerics()
            meta["data_cfg"] = data_record(cfg)
            write_meta(bank_dir, meta)
        return entry

    entry = prepare_on_zero_first(prepare)
    shards = make_shards(sizes, int(cfg.scoring.shard_size))
    if entry.get("complete") and (bank_dir / "scores.jsonl").is_file():
        log.info(
            "bank %s already holds a complete scoring pass (hash %s): reusing it",
            bank_dir,
            entry["hash"][:12],
        )
        if zero:
            skipped_csv = bank_dir / "skipped.csv"
            skipped = (
                read_skipped_csv(skipped_csv) if skipped_csv.is_file() else list(source.skipped)
            )
            _outputs(
                cfg,
                source,
                read_jsonl(bank_dir / "scores.jsonl"),
                skipped,
                bank_dir,
                out_dir,
                classes,
                get_loggers(cfg),
                None,
            )
        return
    todo = pending(
        shards, lambda s: shard_done(bank_dir, "score", s.id, len(s.items), entry["hash"])
    )
    n_todo = sum(len(s.items) for s in todo)
    log.info(
        "scoring %d of %d images (%d of %d shards left; hash %s)",
        n_todo,
        len(sizes),
        len(todo),
        len(shards),
        config_hash(spec)[:12],
    )
    loggers = get_loggers(cfg) if zero else []

    def inputs():
        module = ScoringModule(backend, source.classes, cfg.scoring, int(cfg.data.short_edge))
        data = ScoringData(
            dataset,
            todo,
            sizes,
            int(cfg.scoring.batch_size),
            resolve_workers(cfg.scoring.get("num_workers", 0), cfg.trainer),
        )
        return module, data

    predict_then_merge(
        cfg,
        "score",
        bank_dir,
        todo,
        n_todo,
        inputs,
        lambda stats: _finish(cfg, source, bank_dir, out_dir, shards, classes, loggers, stats),
        loggers,
    )


def _finish(cfg, source, bank_dir: Path, out_dir: Path, shards, classes, loggers, stats) -> None:
    """Rank 0: merge shards into the bank, record failures, then write the run's outputs."""
    records = merge_shards(bank_dir, "score", [s.id for s in shards])
    ok = [r for r in records if "error" not in r]
    failed = [r for r in records if "error" in r]
    if len(records) != len(source.items):
        raise DataError(
            f"the score shards in {bank_dir} hold {len(records)} records for "
            f"{len(source.items)} images; move the bank aside and re-run"
        )
    write_jsonl(bank_dir / "scores.jsonl", ok)
    by_source = {it.source: it for it in source.items}
    skipped = list(source.skipped) + [
        SkipRecord(r["source"], by_source[r["source"]].path or "", r["label"], "decode", r["error"])
        for r in failed
    ]
    for r in failed:
        log.warning("skipped %s: %s", by_source[r["source"]].path or r["source"], r["error"])
    write_skipped_csv(skipped, bank_dir / "skipped.csv")
    mark_complete(
        bank_dir, "score", num_images=len(ok), num_failed=len(failed), num_skipped=len(skipped)
    )
    _outputs(cfg, source, ok, skipped, bank_dir, out_dir, classes, loggers, stats)


def _outputs(
    cfg,
    source,
    ok: list[dict],
    skipped: list,
    bank_dir: Path,
    out_dir: Path,
    classes,
    loggers,
    stats,
) -> None:
    """The run folder's view of the bank: skipped.csv, figures, per-class table, metrics."""
    from distill.scoring import visualize

    write_skipped_csv(skipped, out_dir / "skipped.csv")
    figures = {
        "histograms": visualize.score_histograms(ok, classes, out_dir / "score_histograms.png"),
        "best_patches": visualize.best_patch_grid(
            ok, classes, source, out_dir / "best_patches.png", title=f"run {out_dir.name}"
        ),
    }
    visualize.write_class_summary(ok, classes, out_dir / "class_scores.csv")
    log.info("bank: %d images scored, %d skipped -> %s", len(ok), len(skipped), bank_dir)
    log.info("figures: %s", ", ".join(str(p) for p in figures.values()))
    if loggers and stats:
        rate = stats["images"] / max(stats["seconds"], 1e-9)
        log.info("scoring throughput: %.2f images/s over %d images", rate, stats["images"])
        for lg in loggers:
            lg.log_metrics(
                {
                    "score/images_per_s": rate,
                    "score/images": stats["images"],
                    "score/seconds": stats["seconds"],
                    "score/skipped": len(skipped),
                }
            )
            lg.save()
    if loggers:
        visualize.log_to_wandb(loggers, figures, ok, classes, source)
