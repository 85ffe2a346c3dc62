"""The patch bank: everything the diffusion model said about the source images, on disk.

One scoring pass writes the bank; every IPC and every class subset is then materialised from
it without the model (the method's selling point). Layout::

    bank/
      meta.json            per stage: config hash, the config that produced it, completeness,
                           and each merged file's byte length and sha256 (``files``);
                           the classes, the dataset config, the assembly settings
      lock                 held (flock) by the run writing the bank; names its pid
      classes.csv          the class order (index, key, name)
      skipped.csv          every file or class left out, with the reason
      shards/score-000000.jsonl, features-000000.npz ...   per-rank shards, written atomically;
                           each carries its stage's config hash and record count
      scores.jsonl         the merged Stage I records, one per source image, by item index
      features.npy         DIFT features of every patch (float16); feature_owners.npy: (record, k)
      clusters.json        per class: k-means assignments, distances, clusters by median relevance

A stage's hash covers what changes its numbers (model weights, data, stage settings), not
batch size or device count. A bank made under another config is never silently reused, and
a bank is trusted only when it proves itself:

* a shard is reused only when its header names the stage's current hash and holds the
  records it says (so deleting ``meta.json`` cannot smuggle in shards of another config);
* a merged file is reused or read only when its byte length and sha256 match what
  ``meta.json`` recorded when it was written (a cut, garbled or swapped file is named, then
  rebuilt from the shards with ``<stage>.on_mismatch=rebuild`` or refused with that command);
* two runs on one bank take turns (`lock_bank`); temporary files of a killed run are swept.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import BankMismatchError, ConfigError, DataError
from distill.io import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    fsync_file,
    remove_stale_temps,
)
from distill.record_table import (
    CACHE_NAME,
    NotCompact,
    RecordTable,
    group_by_label,
    load_cache,
    save_cache,
)

log = logging.getLogger(__name__)

# 2: shards carry their config hash, meta.json records each merged file's length and sha256,
# and the image digest covers each file's size and modification time. A version-1 bank is a
# mismatch (its shards cannot prove which config made them).
BANK_VERSION = 2
# Stages whose results are derived from another's and must be redone when it changes.
DEPENDENTS = {"score": ("features", "cluster"), "features": ("cluster",)}
# The merged files each stage writes (recorded in meta.json by `mark_complete`).
STAGE_FILES = {
    "score": ("scores.jsonl", "skipped.csv"),
    "features": ("features.npy", "feature_owners.npy"),
    "cluster": ("clusters.json",),
}
LOCK_NAME = "lock"
LOCK_POLL_S = 1.0  # how often a run waiting for a bank's lock tries again
LOCK_LOG_S = 600.0  # how often it says it is still waiting
SHARD_HEADER = "_shard"  # key of a JSON-lines shard's first line


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
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{p} is not valid JSON ({e}); move the bank aside to rebuild it") from e


def write_meta(bank_dir: str | Path, meta: dict) -> None:
    atomic_write_json(Path(bank_dir) / "meta.json", meta)


# ----------------------------------------------------------------------------- the lock

# Bank folder (real path: a symbolic link and its target are one bank) -> the open lock
# file this process holds it with.
_HELD: dict[str, int] = {}


def _key(bank_dir: str | Path) -> str:
    return os.path.realpath(bank_dir)


def _holder(fd: int) -> str:
    text = os.pread(fd, 300, 0).decode("utf-8", "replace").strip()
    return text or "another process"


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _acquire(bank: Path) -> int:
    """Open ``bank/lock`` and take its exclusive flock, waiting (with a log line naming the
    holder) while another run has it. The kernel drops a flock when its process dies, so a
    killed run never leaves the bank locked."""
    bank.mkdir(parents=True, exist_ok=True)
    fd = os.open(bank / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    said = None
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, bank / LOCK_NAME):
                    break
                # The holder moved the bank aside (scoring.on_mismatch=rebuild) with this
                # lock file in it: lock the file at the bank's path instead.
                os.close(fd)
                fd = -1
                bank.mkdir(parents=True, exist_ok=True)
                fd = os.open(bank / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
                continue
            except BlockingIOError:
                pass
            except OSError as e:  # a file system without locks (some NFS mounts)
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                log.warning("bank %s cannot be locked (%s): runs on it are not serialised", bank, e)
                break
            now = time.monotonic()
            if said is None or now - said >= LOCK_LOG_S:
                log.warning(
                    "bank %s is in use by %s: waiting for it to finish (stop that run, or "
                    "use another paths.bank_dir, to go on now)",
                    bank,
                    _holder(fd),
                )
                said = now
            time.sleep(LOCK_POLL_S)
    except BaseException:  # Ctrl-C while waiting
        if fd >= 0:
            os.close(fd)
        raise
    if said is not None:
        log.info("bank %s is free again: going on", bank)
    os.ftruncate(fd, 0)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
    return fd


def lock_bank(bank_dir: str | Path) -> None:
    """Hold ``bank_dir``'s lock in this process (a no-op when it already does).

    Called by `prepare_stage` on rank 0 only (``write=True``): the other ranks of a run never
    write the bank's meta or merged files and must not wait on their own rank 0. Released by
    `release_bank` (stage entry points use `releases_bank_locks`) or when the process ends.
    """
    key = _key(bank_dir)
    if key not in _HELD:
        _HELD[key] = _acquire(Path(key))


def release_bank(bank_dir: str | Path) -> None:
    fd = _HELD.pop(_key(bank_dir), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor drops the flock


def releases_bank_locks(fn):
    """Decorator for a stage's entry point: the bank locks taken while it runs are released
    when it returns or raises, so the next stage, or another run, may take them."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = set(_HELD)
        try:
            return fn(*args, **kwargs)
        finally:
            for key in set(_HELD) - before:
                release_bank(key)

    return wrapper


# ----------------------------------------------------------------------------- merged files


def file_record(path: str | Path) -> dict:
    """Byte length and sha256 of a file (and its line count for JSON lines), read in 1 MiB
    chunks. sha256 runs at about 1-2 GB/s: a second for most banks, ~10 s for the float16
    features of ImageNet-1k, paid when a stage reuses or reads the file."""
    h, n, lines = hashlib.sha256(), 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
            lines += chunk.count(b"\n")
    rec = {"bytes": n, "sha256": h.hexdigest()}
    if str(path).endswith(".jsonl"):
        rec["lines"] = lines
    return rec


def file_problem(path: Path, rec: dict | None) -> str | None:
    """What is wrong with ``path`` against its record in meta.json, or None when it matches."""
    if not path.is_file():
        return "missing"
    if rec is None:
        return None  # nothing recorded to check against
    got = file_record(path)
    if got["bytes"] != rec["bytes"]:
        lost = ""
        if "lines" in rec and got.get("lines", 0) < rec["lines"]:
            n, want = got["lines"], rec["lines"]
            lost = f", {n} of {want} lines: {want - n} records lost"
        return f"{got['bytes']} bytes where meta.json recorded {rec['bytes']}{lost}"
    if got["sha256"] != rec["sha256"]:
        return "its content is not what was written (sha256 differs from meta.json's)"
    return None


def damaged_files(bank_dir: str | Path, stage: str, entry: dict) -> list[str]:
    """``"<file>: <what is wrong>"`` for each of a complete stage's merged files that is
    missing or differs from what ``meta.json`` recorded."""
    bank, recorded = Path(bank_dir), entry.get("files", {})
    out = []
    for name in STAGE_FILES.get(stage, ()):
        problem = file_problem(bank / name, recorded.get(name))
        if problem:
            out.append(f"{name}: {problem}")
    return out


def rebuild_hint(stage: str) -> str:
    """The command that rebuilds a stage's merged files."""
    setting = stage_setting(stage)
    how = (
        "it is recomputed (seconds)"
        if stage == "cluster"
        else "its shards in shards/ are reused and only lost ones are recomputed"
    )
    return (
        f"rebuild it with `python -m distill <this bank's settings> stages=[...,{stage}] "
        f"{setting}.on_mismatch=rebuild`: {how}"
    )


def damage_error(bank_dir: str | Path, stage: str, problems: list[str]) -> DataError:
    return DataError(f"bank {bank_dir}: {'; '.join(problems)}; {rebuild_hint(stage)}")


def verified(bank_dir: str | Path, stage: str, name: str, meta: dict | None = None) -> Path:
    """``bank_dir/name`` after checking it against meta.json's record; `DataError` naming the
    file, what is wrong and the command that fixes it otherwise."""
    bank = Path(bank_dir)
    meta = read_meta(bank) if meta is None else meta
    entry = meta.get("stages", {}).get(stage) or {}
    problem = file_problem(bank / name, entry.get("files", {}).get(name))
    if problem:
        raise damage_error(bank, stage, [f"{name}: {problem}"])
    return bank / name


def write_npy(path: str | Path, arr: np.ndarray) -> None:
    """One array as .npy, atomically and synced."""
    with atomic_path(path, size_hint=arr.nbytes + 128) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)
        fsync_file(f)


# ----------------------------------------------------------------------------- stages


def _mismatch_message(bank: Path, stage: str, old: str, new: str, diff: list[str]) -> str:
    return (
        f"the bank at {bank} holds '{stage}' results made under another config "
        f"(hash {old[:12]}, now {new[:12]}). Differences:\n  "
        + "\n  ".join(diff or ["(unknown)"])
        + f"\nUse another paths.bank_dir, or pass {stage_setting(stage)}.on_mismatch=rebuild "
        "to move the old bank aside and recompute."
    )


def prepare_stage(
    bank_dir: str | Path, stage: str, spec: dict, on_mismatch: str = "error", write: bool = True
) -> dict:
    """Check (and on rank 0 record) that ``bank_dir`` may hold ``stage`` under ``spec``.

    Returns the stage's meta entry. A different hash (or bank version), or shards of another
    config that meta.json does not record, raises `BankMismatchError` listing the
    differences, or with ``on_mismatch=rebuild`` recomputes: for ``score`` the old bank moves
    to ``<bank_dir>.stale-<old hash>`` (replacing an older copy of that same hash); a derived
    stage (features, cluster) is dropped with the stages that depend on it. A complete stage
    whose merged files are missing or damaged raises `DataError` naming them, or with
    ``rebuild`` is marked incomplete, so the stage merges its shards again.

    On rank 0 (``write=True``) this first takes the bank's lock (a second run on the same
    bank waits here) and removes temporary files left by a killed run.

    Args:
        write: False on ranks other than 0: they only verify (and take no lock).
    """
    bank = Path(bank_dir)
    if on_mismatch not in ("error", "rebuild"):
        raise ConfigError(f"on_mismatch={on_mismatch!r} must be 'error' or 'rebuild'")
    if write:
        lock_bank(bank)
        for folder in (bank, bank / "shards"):
            remove_stale_temps(folder)
    h = config_hash(spec)
    meta = read_meta(bank)
    entry = meta.get("stages", {}).get(stage)
    old, diff = None, []
    if entry is not None and (entry["hash"] != h or meta.get("version") != BANK_VERSION):
        old = entry["hash"]
        if meta.get("version") != BANK_VERSION:
            diff.append(f"bank version: {meta.get('version')} -> {BANK_VERSION}")
        diff += spec_diff(entry.get("spec", {}), spec)
    elif entry is None and write:
        foreign = foreign_shards(bank, stage, h)
        if foreign:
            old = sorted(foreign.values())[0]
            diff = [
                f"{len(foreign)} shard(s) in {bank / 'shards'} ({sorted(foreign)[0]}, ...) carry "
                f"config hash {old[:12]}, of which meta.json has no record (was it deleted?)"
            ]
    if old is not None:
        if on_mismatch == "error" or not write:
            raise BankMismatchError(_mismatch_message(bank, stage, old, h, diff))
        if stage == "score":
            stale = bank.with_name(f"{bank.name}.stale-{old[:12]}")
            log.warning(
                "bank %s was made under another scoring config; moving it to %s", bank, stale
            )
            if stale.exists():
                shutil.rmtree(stale)
            # The lock file moves with the old bank: lock the new one before letting go of
            # it, so a run waiting on the old file finds the new one taken.
            moved = _HELD.pop(_key(bank))
            os.replace(bank, stale)
            lock_bank(bank)
            os.close(moved)
            meta, entry = {"version": BANK_VERSION, "stages": {}}, None
        else:
            # A derived stage is recomputed in place; what depends on it goes with it.
            log.warning("bank %s: '%s' was made under another config; recomputing it", bank, stage)
            _drop(bank, meta, (stage, *DEPENDENTS.get(stage, ())))
            entry = None
    elif entry is not None and entry.get("complete") and write:
        problems = damaged_files(bank, stage, entry)
        if problems:
            if on_mismatch == "error":
                raise damage_error(bank, stage, problems)
            log.warning("bank %s: %s; rebuilding it from its shards", bank, "; ".join(problems))
            entry["complete"] = False
            write_meta(bank, meta)
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


def _drop(bank: Path, meta: dict, stages) -> None:
    """Forget ``stages`` (entries and shards) in meta.json."""
    for gone in stages:
        meta["stages"].pop(gone, None)
        for p in (bank / "shards").glob(f"{gone}-*"):
            p.unlink()
    write_meta(bank, meta)


def drop_merged_shards(bank_dir: str | Path, stage: str) -> int:
    """Remove a complete stage's shards once its merged file is on disk; returns the bytes freed.

    They are only needed to rebuild a damaged merged file without recomputing it: at
    ImageNet-1K the feature shards are as large as ``features.npy`` itself (3.4 GB), so the
    features stage drops them unless ``features.keep_shards`` is set. A damaged file is then
    recomputed, to the same bytes, instead of re-merged.
    """
    bank = Path(bank_dir)
    entry = read_meta(bank).get("stages", {}).get(stage, {})
    if not entry.get("complete"):
        raise RuntimeError(f"{bank}: '{stage}' is not complete; its shards are still needed")
    freed = 0
    for p in (bank / "shards").glob(f"{stage}-*"):
        freed += p.stat().st_size
        p.unlink()
    return freed


def stage_setting(stage: str) -> str:
    return {"score": "scoring"}.get(stage, stage)


def mark_complete(bank_dir: str | Path, stage: str, **info) -> None:
    """Record a stage as complete, with the length and sha256 of each merged file it wrote.

    A stage rebuilt after damage normally writes the same bytes again; if its files now
    differ from what the stages after it were made from, those stages are dropped.
    """
    bank = Path(bank_dir)
    meta = read_meta(bank)
    entry = meta["stages"][stage]
    before = entry.get("files")
    files = {n: file_record(bank / n) for n in STAGE_FILES.get(stage, ()) if (bank / n).is_file()}
    entry.update(info, files=files, complete=True, completed=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if before is not None and before != files:
        later = [s for s in DEPENDENTS.get(stage, ()) if s in meta["stages"]]
        if later:
            log.warning(
                "bank %s: '%s' was rebuilt with other bytes than before; dropping %s",
                bank,
                stage,
                ", ".join(later),
            )
            _drop(bank, meta, later)
            return
    write_meta(bank, meta)


# ----------------------------------------------------------------------------- shards


SHARD_EXT = {"score": "jsonl", "features": "npz"}


def shard_path(bank_dir: str | Path, stage: str, shard_id: int) -> Path:
    return Path(bank_dir) / "shards" / f"{stage}-{shard_id:06d}.{SHARD_EXT.get(stage, 'jsonl')}"


def _stage_hash(path: Path) -> str:
    """The current config hash of the stage a shard path belongs to (from meta.json).

    `distill.writer.ShardWriter` knows only the shard's path; rank 0 records the stage in
    meta.json (`prepare_stage`) before any rank writes a shard.
    """
    bank, stage = path.parent.parent, path.name.split("-")[0]
    entry = read_meta(bank).get("stages", {}).get(stage)
    if entry is None:
        raise DataError(f"cannot write {path}: {bank}/meta.json has no '{stage}' stage")
    return entry["hash"]


def write_npz_records(path: str | Path, records: list[dict], header: dict) -> None:
    """Feature records ({index, k, feature} or {index, error}) as one .npz, atomically."""
    ok = [r for r in records if "error" not in r]
    arrays = {
        "index": np.array([r["index"] for r in ok], dtype=np.int64),
        "k": np.array([r["k"] for r in ok], dtype=np.int64),
        # float16, the merged features.npy's own type: the cast happens once either way (the
        # merged bytes are the same), and the shards kept for resume take half the disk.
        "feature": (
            np.stack([r["feature"] for r in ok]).astype(np.float16)
            if ok
            else np.zeros((0, 0), np.float16)
        ),
        "failed_index": np.array([r["index"] for r in records if "error" in r], dtype=np.int64),
        "failed_error": np.array([r["error"] for r in records if "error" in r], dtype=str),
        "header": np.array(json.dumps(header)),
    }
    size = sum(a.nbytes for a in arrays.values()) + 4096
    with atomic_path(path, size_hint=size) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
        fsync_file(f)


def read_npz_records(path: str | Path) -> tuple[dict | None, list[dict]]:
    with np.load(path) as z:
        header = json.loads(str(z["header"])) if "header" in z.files else None
        recs = [
            {"index": int(i), "k": int(k), "feature": f}
            for i, k, f in zip(z["index"], z["k"], z["feature"], strict=True)
        ]
        recs += [
            {"index": int(i), "error": str(e)}
            for i, e in zip(z["failed_index"], z["failed_error"], strict=True)
        ]
    return header, recs


def write_shard(path: str | Path, records: list[dict], config_hash: str | None = None) -> None:
    """Write a shard with its header: stage, config hash (default: the stage's in meta.json)
    and record count, so a later run can tell whose shard it is and whether it is whole."""
    path = Path(path)
    header = {
        "stage": path.name.split("-")[0],
        "hash": config_hash or _stage_hash(path),
        "records": len(records),
        "version": BANK_VERSION,
    }
    if path.name.endswith(".npz"):
        write_npz_records(path, records, header)
    else:
        write_jsonl(path, records, header)


def npz_shard_index(
    path: str | Path,
) -> tuple[dict | None, np.ndarray, np.ndarray, list[dict], int]:
    """(header, index, k, failed records, feature dim) of a feature shard, without reading its
    features (npz members load one by one): what a streaming merge needs to plan the output."""
    path = Path(path)
    try:
        with np.load(path) as z:
            header = json.loads(str(z["header"])) if "header" in z.files else None
            index, k = np.asarray(z["index"]), np.asarray(z["k"])
            failed = [
                {"index": int(i), "error": str(e)}
                for i, e in zip(z["failed_index"], z["failed_error"], strict=True)
            ]
            with z.zip.open("feature.npy") as f:  # the shape from the member's .npy header
                version = np.lib.format.read_magic(f)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape = read(f)[0]
    except Exception as e:  # a torn npz: zipfile, pickle or value errors
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {e})") from e
    if header is not None and header.get("records") != len(index) + len(failed):
        n = len(index) + len(failed)
        raise DataError(f"{path} holds {n} records, its header says {header.get('records')}")
    return header, index, k, failed, int(shape[1]) if len(shape) == 2 else 0


def read_shard_with_header(path: str | Path) -> tuple[dict | None, list[dict]]:
    """(header or None for a shard written before headers, records); `DataError` when the
    file cannot be read or holds fewer or more records than its header says."""
    path = Path(path)
    try:
        if path.name.endswith(".npz"):
            header, recs = read_npz_records(path)
        else:
            header, recs = _read_jsonl(path)
    except DataError:
        raise
    except Exception as e:  # a torn npz: zipfile, pickle or value errors
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {e})") from e
    if header is not None and header.get("records") != len(recs):
        raise DataError(
            f"{path} holds {len(recs)} records, its header says {header.get('records')}"
        )
    return header, recs


def read_shard(path: str | Path) -> list[dict]:
    return read_shard_with_header(path)[1]


def write_jsonl(path: str | Path, records: list[dict], header: dict | None = None) -> None:
    """Write records as JSON lines, atomically (a killed run leaves no partial shard); a
    shard's ``header`` goes first, as ``{"_shard": header}``."""
    lines = [json.dumps({SHARD_HEADER: header}, separators=(",", ":"))] if header else []
    lines += [json.dumps(r, separators=(",", ":")) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _read_jsonl(path: str | Path) -> tuple[dict | None, list[dict]]:
    header, out = None, []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{path} line {n} is not a JSON record ({e})") from e
            if n == 1 and isinstance(rec, dict) and SHARD_HEADER in rec:
                header = rec[SHARD_HEADER]
            else:
                out.append(rec)
    return header, out


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file (a shard's header line left out); `DataError` naming
    the file and line for a line that is not JSON."""
    return _read_jsonl(path)[1]


def read_records(path: str | Path, sha256: str | None = None) -> Sequence[dict]:
    """A merged ``scores.jsonl`` as a compact `RecordTable` (about 10x less memory than a
    list of dicts: ImageNet-1K's 1.3M records in 0.3 GB, not 2.2); the plain list of
    `read_jsonl`, with its errors naming the line, for any file the table cannot hold.

    ``sha256``: the file's, as meta.json recorded it and the caller has just checked. The
    table is then cached beside the file (`distill.record_table.CACHE_NAME`, keyed by it) and
    read from there next time, after checking its own digest.
    """
    cache = Path(path).with_name(CACHE_NAME)
    if sha256 is not None:
        table = load_cache(cache, sha256)
        if table is not None:
            return table
    try:
        with open(path, "rb") as f:
            table = RecordTable.from_lines(f)
    except (NotCompact, ValueError):  # json's and utf-8's errors are ValueErrors
        return read_jsonl(path)
    if sha256 is not None:
        try:
            save_cache(cache, table, sha256)
        except OSError as e:  # a read-only bank still loads; it parses again next time
            log.debug("cannot cache the records table %s: %s", cache, e)
    return table


def shard_header(path: Path) -> dict | None:
    """A shard's header alone (one line, or one npz member), None when it has none or is
    unreadable."""
    try:
        if path.name.endswith(".npz"):
            with np.load(path) as z:
                return json.loads(str(z["header"])) if "header" in z.files else None
        with open(path, "rb") as f:
            rec = json.loads(f.readline().decode("utf-8"))
        return rec.get(SHARD_HEADER) if isinstance(rec, dict) else None
    except Exception:
        return None


def foreign_shards(bank_dir: str | Path, stage: str, config_hash: str) -> dict[str, str]:
    """Shards of ``stage`` whose header names another config hash: {file name: hash}."""
    out = {}
    for p in sorted((Path(bank_dir) / "shards").glob(f"{stage}-*")):
        header = shard_header(p)
        if header is not None and header.get("hash") not in (None, config_hash):
            out[p.name] = str(header["hash"])
    return out


def shard_done(
    bank_dir: str | Path, stage: str, shard_id: int, expected: int, config_hash: str
) -> bool:
    """A shard counts as done when its file exists, carries ``config_hash`` and covers the
    expected number of images; anything else is recomputed (said in a warning)."""
    p = shard_path(bank_dir, stage, shard_id)
    if not p.is_file():
        return False
    try:
        header, recs = read_shard_with_header(p)
    except DataError as e:
        log.warning("%s; recomputing it", e)
        return False
    if header is None or header.get("hash") != config_hash:
        made = "no config hash" if header is None else f"config hash {header.get('hash')}"
        log.warning("%s carries %s, not %s: recomputing it", p, made, config_hash[:12])
        return False
    return len({r["index"] for r in recs}) == expected


def merge_shards(
    bank_dir: str | Path, stage: str, shard_ids: list[int], config_hash: str | None = None
) -> list[dict]:
    """Read every shard of a stage; return all records sorted by dataset index.

    Every shard must carry ``config_hash`` (default: the stage's in meta.json)."""
    bank = Path(bank_dir)
    want = config_hash or read_meta(bank)["stages"][stage]["hash"]
    records: list[dict] = []
    for k in shard_ids:
        p = shard_path(bank, stage, k)
        if not p.is_file():
            raise DataError(f"shard {p} is missing after the predict stage; re-run to resume")
        header, recs = read_shard_with_header(p)
        if header is None or header.get("hash") != want:
            raise DataError(
                f"shard {p} was made under another config than the {stage} stage's "
                f"(hash {want[:12]}); delete it and re-run to recompute it"
            )
        records.extend(recs)
    records.sort(key=lambda r: (r["index"], r.get("k", 0)))
    idx = [(r["index"], r.get("k", 0)) for r in records]
    if len(set(idx)) != len(idx):
        raise DataError(f"{stage} shards in {bank_dir} hold an image twice; the bank is corrupt")
    return records


# ----------------------------------------------------------------------------- source images
# Here rather than in the score stage, which hashes it into its spec, so that materialise can
# check it without importing the model stack.


def items_digest(source) -> str:
    """A digest of the exact image list: a changed folder, or a file edited in place, is a
    new bank.

    Each item adds its id, label and size; a file-backed item also its byte length and
    modification time (``st_mtime_ns``), so an image replaced or edited after a run makes the
    next run a mismatch instead of cutting the new pixels with the old boxes. Not a content
    hash: reading every file (1.3M, ~140 GB for ImageNet-1k) would cost each run about what
    scoring a few thousand images does, a stat a few microseconds per file. So an edit that
    keeps the byte length and resets the time (``touch -r``) goes unnoticed, and a copy that
    does not keep times (``cp`` without ``-p``; ``cp -a`` and ``rsync -a`` keep them) reads as
    an edit. Array-backed items (CIFAR, Fashion-MNIST) have no file: id, label and size only.
    """
    h = hashlib.sha256()
    for it in source.items:
        line = f"{it.source}\x1f{it.label}\x1f{it.size[0]}x{it.size[1]}"
        path = getattr(it, "path", None)
        if path is not None:
            try:
                st = os.stat(path)
                line += f"\x1f{st.st_size}\x1f{st.st_mtime_ns}"
            except OSError:
                line += "\x1fmissing"
        h.update(f"{line}\n".encode())
    return h.hexdigest()


def check_items_unchanged(bank_dir, bank_spec: dict, source) -> None:
    """Refuse to cut patches from source images that changed since the bank scored them
    (stages that reread pixels with the bank's boxes: features, assembly)."""
    want = bank_spec.get("items", {})
    got = {"count": len(source.items), "digest": items_digest(source)}
    if got != want:
        raise BankMismatchError(
            f"the source images changed since {bank_dir} scored them (the file list, or a "
            f"file's size or modification time: {want.get('count')} -> {got['count']} "
            f"images, digest {str(want.get('digest'))[:12]} -> {got['digest'][:12]}); "
            "re-run the score stage with scoring.on_mismatch=rebuild"
        )


# ----------------------------------------------------------------------------- reading a bank


@dataclass
class Bank:
    """A loaded bank: meta, classes and the Stage I records of usable images."""

    path: Path
    meta: dict
    classes: list[dict]
    records: Sequence[dict]  # a `distill.record_table.RecordTable` when loaded from disk

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
        if isinstance(self.records, RecordTable):  # no dict built
            for label, pos in group_by_label(self.records.labels).items():
                out[label].extend(pos.tolist())
            return out
        for i, r in enumerate(self.records):
            out[r["label"]].append(i)
        return out


def load_bank(bank_dir: str | Path) -> Bank:
    """Load a complete Stage I bank (no model needed), checked against its meta.json."""
    bank = Path(bank_dir)
    meta = read_meta(bank)
    entry = meta.get("stages", {}).get("score")
    if entry is None or not entry.get("complete"):
        raise DataError(
            f"{bank} holds no complete scoring bank (meta.json {'lacks a score stage' if entry is None else 'says incomplete'}); "
            "run `python -m distill` with stages including score first"
        )
    if meta.get("version") != BANK_VERSION:
        raise BankMismatchError(
            f"{bank} is a version-{meta.get('version')} bank; this code reads version "
            f"{BANK_VERSION} (its shards and files carry no checks): re-run the score stage "
            "with scoring.on_mismatch=rebuild"
        )
    path = verified(bank, "score", "scores.jsonl", meta)
    records = read_records(path, (entry.get("files") or {}).get("scores.jsonl", {}).get("sha256"))
    if len(records) != entry.get("num_images", len(records)):
        raise damage_error(
            bank,
            "score",
            [f"scores.jsonl: {len(records)} records, meta.json says {entry['num_images']}"],
        )
    classes = meta.get("classes") or []
    return Bank(bank, meta, classes, records)


def _load_npy(path: Path, stage: str, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:
        raise damage_error(path.parent, stage, [f"{path.name}: unreadable ({e})"]) from e


def load_owners(bank_dir: str | Path, meta: dict | None = None) -> np.ndarray:
    """(P, 2) = (record position, patch k) of every featured patch, checked."""
    bank = Path(bank_dir)
    if not (bank / "feature_owners.npy").is_file() and not (bank / "features.npy").is_file():
        raise DataError(f"{bank} has no features.npy: run the features stage first")
    return _load_npy(verified(bank, "features", "feature_owners.npy", meta), "features")


def load_features(bank_dir: str | Path, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(features (P, C), owners (P, 2) = (record position, patch k)) of a bank.

    The features come as float32 in memory, or with ``mmap`` as the float16 file itself,
    memory-mapped, so that a caller taking one class's rows at a time (clustering) holds one
    class in memory instead of an upcast copy of the whole matrix (ImageNet-1K: 1.3M x 1280).
    """
    bank = Path(bank_dir)
    if not (bank / "features.npy").is_file():
        raise DataError(f"{bank} has no features.npy: run the features stage first")
    meta = read_meta(bank)
    feats = _load_npy(verified(bank, "features", "features.npy", meta), "features", mmap)
    owners = load_owners(bank, meta)
    if len(feats) != len(owners):
        raise damage_error(
            bank,
            "features",
            [f"features.npy has {len(feats)} rows, feature_owners.npy {len(owners)}"],
        )
    return (feats if mmap else feats.astype(np.float32)), owners


def feature_rows(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``features[rows]`` upcast to float32, from a memory-mapped ``features`` (`load_features`
    with ``mmap``) without leaving the pages read in this process's memory.

    Pages of a file mapping that a process has read count in its resident set until it
    unmaps them: reading every class's rows of ImageNet-1K's 3.3 GB features.npy through one
    mapping left all of it resident (RSS 4.7 GiB projected, private memory 1.2). Each call
    maps the file afresh and unmaps it on return; the page cache keeps the pages for the next
    reader either way.
    """
    if not isinstance(features, np.memmap) or features.filename is None:
        return np.asarray(features[rows], dtype=np.float32)
    fresh = np.load(features.filename, mmap_mode="r")
    out = np.array(fresh[rows], dtype=np.float32)  # a copy: nothing refers to the mapping
    del fresh  # the last reference: the file is unmapped here
    return out


def load_clusters(bank_dir: str | Path, meta: dict | None = None) -> dict:
    """clusters.json, checked against meta.json."""
    bank = Path(bank_dir)
    p = verified(bank, "cluster", "clusters.json", meta)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise damage_error(bank, "cluster", [f"clusters.json: not valid JSON ({e})"]) from e
