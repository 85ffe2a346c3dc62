"""The patch bank: everything the diffusion model said about the source images, on disk.

One scoring pass writes the bank; every IPC and every class subset is then materialised from
it without the model (the method's selling point). Layout::

    bank/
      meta.json            per stage: config hash, the config that produced it, completeness;
                           the classes, the dataset config, the assembly settings
      classes.csv          the class order (index, key, name)
      skipped.csv          every file or class left out, with the reason
      shards/score-000000.jsonl, features-000000.npz ...   per-rank shards, written atomically
      scores.jsonl         the merged Stage I records, one per source image, by item index
      features.npy         DIFT features of every patch (float16); feature_owners.npy: (record, k)
      clusters.json        per class: k-means assignments, distances, clusters by median relevance

A stage's hash covers what changes its numbers (model weights, data, stage settings), not
batch size or device count. A bank made under another config is never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import BankMismatchError, ConfigError, DataError
from distill.io import atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

BANK_VERSION = 1
# Stages whose results are derived from another's and must be redone when it changes.
DEPENDENTS = {"score": ("features", "cluster"), "features": ("cluster",)}


def config_hash(spec: dict) -> str:
    """SHA-256 of the canonical JSON of ``spec`` (sorted keys)."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def spec_diff(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two stage specs (``key: old -> new``)."""
    a, b = _flatten(old), _flatten(new)
    return [
        f"{k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def read_meta(bank_dir: str | Path) -> dict:
    p = Path(bank_dir) / "meta.json"
    if not p.is_file():
        return {"version": BANK_VERSION, "stages": {}}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{p} is not valid JSON ({e}); move the bank aside to rebuild it") from e


def write_meta(bank_dir: str | Path, meta: dict) -> None:
    atomic_write_json(Path(bank_dir) / "meta.json", meta)


def prepare_stage(
    bank_dir: str | Path, stage: str, spec: dict, on_mismatch: str = "error", write: bool = True
) -> dict:
    """Check (and on rank 0 record) that ``bank_dir`` may hold ``stage`` under ``spec``.

    Returns the stage's meta entry. A different hash raises `BankMismatchError` listing the
    differences, or with ``on_mismatch=rebuild`` recomputes: for ``score`` the old bank moves
    to ``<bank_dir>.stale-<old hash>`` (replacing an older copy of that same hash); a derived
    stage (features, cluster) is dropped with the stages that depend on it.

    Args:
        write: False on ranks other than 0: they only verify.
    """
    bank = Path(bank_dir)
    if on_mismatch not in ("error", "rebuild"):
        raise ConfigError(f"on_mismatch={on_mismatch!r} must be 'error' or 'rebuild'")
    h = config_hash(spec)
    meta = read_meta(bank)
    entry = meta.get("stages", {}).get(stage)
    if entry is not None and entry["hash"] != h:
        diff = spec_diff(entry.get("spec", {}), spec)
        if on_mismatch == "error" or not write:
            raise BankMismatchError(
                f"the bank at {bank} holds '{stage}' results made under another config "
                f"(hash {entry['hash'][:12]}, now {h[:12]}). Differences:\n  "
                + "\n  ".join(diff or ["(unknown)"])
                + f"\nUse another paths.bank_dir, or pass {stage_setting(stage)}.on_mismatch=rebuild "
                "to move the old bank aside and recompute."
            )
        if stage == "score":
            stale = bank.with_name(f"{bank.name}.stale-{entry['hash'][:12]}")
            log.warning(
                "bank %s was made under another scoring config; moving it to %s", bank, stale
            )
            if stale.exists():
                shutil.rmtree(stale)
            os.replace(bank, stale)
            meta, entry = {"version": BANK_VERSION, "stages": {}}, None
        else:
            # A derived stage is recomputed in place; what depends on it goes with it.
            log.warning("bank %s: '%s' was made under another config; recomputing it", bank, stage)
            for gone in (stage, *DEPENDENTS.get(stage, ())):
                meta["stages"].pop(gone, None)
                for p in (bank / "shards").glob(f"{gone}-*"):
                    p.unlink()
            write_meta(bank, meta)
            entry = None
    if entry is None:
        entry = {
            "hash": h,
            "spec": spec,
            "complete": False,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if write:
            meta.setdefault("stages", {})[stage] = entry
            meta["version"] = BANK_VERSION
            write_meta(bank, meta)
    return entry


def stage_setting(stage: str) -> str:
    return {"score": "scoring"}.get(stage, stage)


def mark_complete(bank_dir: str | Path, stage: str, **info) -> None:
    meta = read_meta(bank_dir)
    entry = meta["stages"][stage]
    entry.update(info, complete=True, completed=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_meta(bank_dir, meta)


# ----------------------------------------------------------------------------- shards


SHARD_EXT = {"score": "jsonl", "features": "npz"}


def shard_path(bank_dir: str | Path, stage: str, shard_id: int) -> Path:
    return Path(bank_dir) / "shards" / f"{stage}-{shard_id:06d}.{SHARD_EXT.get(stage, 'jsonl')}"


def write_npz_records(path: str | Path, records: list[dict]) -> None:
    """Feature records ({index, k, feature} or {index, error}) as one .npz, atomically."""
    import numpy as np

    ok = [r for r in records if "error" not in r]
    arrays = {
        "index": np.array([r["index"] for r in ok], dtype=np.int64),
        "k": np.array([r["k"] for r in ok], dtype=np.int64),
        "feature": (
            np.stack([r["feature"] for r in ok]).astype(np.float32)
            if ok
            else np.zeros((0, 0), np.float32)
        ),
        "failed_index": np.array([r["index"] for r in records if "error" in r], dtype=np.int64),
        "failed_error": np.array([r["error"] for r in records if "error" in r], dtype=str),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_npz_records(path: str | Path) -> list[dict]:
    import numpy as np

    with np.load(path) as z:
        recs = [
            {"index": int(i), "k": int(k), "feature": f}
            for i, k, f in zip(z["index"], z["k"], z["feature"], strict=True)
        ]
        recs += [
            {"index": int(i), "error": str(e)}
            for i, e in zip(z["failed_index"], z["failed_error"], strict=True)
        ]
    return recs


def write_shard(path: str | Path, records: list[dict]) -> None:
    (write_npz_records if str(path).endswith(".npz") else write_jsonl)(path, records)


def read_shard(path: str | Path) -> list[dict]:
    return (read_npz_records if str(path).endswith(".npz") else read_jsonl)(path)


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    """Write records as JSON lines, atomically (a killed run leaves no partial shard)."""
    atomic_write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def shard_done(bank_dir: str | Path, stage: str, shard_id: int, expected: int) -> bool:
    """A shard counts as done when its file exists and covers the expected number of images."""
    p = shard_path(bank_dir, stage, shard_id)
    if not p.is_file():
        return False
    try:
        return len({r["index"] for r in read_shard(p)}) == expected
    except Exception:  # a torn or foreign file: recompute it
        return False


def merge_shards(bank_dir: str | Path, stage: str, shard_ids: list[int]) -> list[dict]:
    """Read every shard of a stage; return all records sorted by dataset index."""
    records: list[dict] = []
    for k in shard_ids:
        p = shard_path(bank_dir, stage, k)
        if not p.is_file():
            raise DataError(f"shard {p} is missing after the predict stage; re-run to resume")
        records.extend(read_shard(p))
    records.sort(key=lambda r: (r["index"], r.get("k", 0)))
    idx = [(r["index"], r.get("k", 0)) for r in records]
    if len(set(idx)) != len(idx):
        raise DataError(f"{stage} shards in {bank_dir} hold an image twice; the bank is corrupt")
    return records


# ----------------------------------------------------------------------------- reading a bank


@dataclass
class Bank:
    """A loaded bank: meta, classes and the Stage I records of usable images."""

    path: Path
    meta: dict
    classes: list[dict]
    records: list[dict]

    @property
    def spec(self) -> dict:
        return self.meta["stages"]["score"]["spec"]

    def by_class(self) -> dict[int, list[dict]]:
        return {
            label: [self.records[i] for i in pos]
            for label, pos in self.positions_by_class().items()
        }

    def positions_by_class(self) -> dict[int, list[int]]:
        """Per label, the positions of its records in ``records`` (one pass over the bank)."""
        out: dict[int, list[int]] = {c["index"]: [] for c in self.classes}
        for i, r in enumerate(self.records):
            out[r["label"]].append(i)
        return out


def load_bank(bank_dir: str | Path) -> Bank:
    """Load a complete Stage I bank (no model needed)."""
    bank = Path(bank_dir)
    meta = read_meta(bank)
    entry = meta.get("stages", {}).get("score")
    if entry is None or not entry.get("complete"):
        raise DataError(
            f"{bank} holds no complete scoring bank (meta.json {'lacks a score stage' if entry is None else 'says incomplete'}); "
            "run `python -m distill` with stages including score first"
        )
    records = read_jsonl(bank / "scores.jsonl")
    classes = meta.get("classes") or []
    return Bank(bank, meta, classes, records)


def load_features(bank_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(features (P, C) float32, owners (P, 2) = (record position, patch k)) of a bank."""
    bank = Path(bank_dir)
    if not (bank / "features.npy").is_file():
        raise DataError(f"{bank} has no features.npy: run the features stage first")
    return np.load(bank / "features.npy").astype(np.float32), np.load(bank / "feature_owners.npy")
