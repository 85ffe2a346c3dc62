"""A bank is trusted only when it proves itself (issue 15, items 4 and 6).

Shards carry their config hash, merged files are checked against the length and sha256
meta.json recorded, images edited in place are a mismatch, a full disk is one line, a killed
run's temporary files are swept, files respect the umask, and two runs take turns on a bank.
Unit tests on hand-made banks first, then the stages on the tiny model.
"""

import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distill import bank as bank_mod
from distill import io as io_mod
from distill.bank import (
    file_record,
    load_bank,
    load_clusters,
    load_features,
    mark_complete,
    merge_shards,
    prepare_stage,
    read_jsonl,
    read_shard_with_header,
    release_bank,
    releases_bank_locks,
    shard_done,
    shard_header,
    shard_path,
    write_jsonl,
    write_npy,
    write_shard,
)
from distill.errors import BankMismatchError, ConfigError, DataError
from distill.io import atomic_write_json, atomic_write_text, remove_stale_temps
from tests.conftest import compose, random_rgb, save_image, smoke_cfg


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def spec(t: float = 0.1) -> dict:
    return {"scoring": {"t_range": [t, 0.7]}}


RECS = [{"index": i, "source": f"s{i}", "label": 0} for i in range(20)]


def complete_score_stage(bank: Path, recs=RECS) -> dict:
    """A hand-made complete score stage: meta entry, scores.jsonl, skipped.csv."""
    entry = prepare_stage(bank, "score", spec())
    write_jsonl(bank / "scores.jsonl", recs)
    atomic_write_text(bank / "skipped.csv", "source,path,class_index,stage,reason\n")
    mark_complete(bank, "score", num_images=len(recs))
    return entry


def can_lock(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- (a) shards


def test_shards_carry_their_config_hash(tmp_path):
    bank = tmp_path / "bank"
    entry = prepare_stage(bank, "score", spec())
    p = shard_path(bank, "score", 0)
    write_shard(p, RECS[:2])  # the hash comes from meta.json, as for ShardWriter
    assert shard_header(p) == {"stage": "score", "hash": entry["hash"], "records": 2, "version": 2}
    assert read_jsonl(p) == RECS[:2], "a shard reads like any JSON-lines file"
    assert shard_done(bank, "score", 0, 2, entry["hash"])
    assert not shard_done(bank, "score", 0, 2, "0" * 64)
    # A shard cut at a line boundary (not by our writes) no longer matches its header.
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(DataError, match="holds 1 records, its header says 2"):
        read_shard_with_header(p)
    assert not shard_done(bank, "score", 0, 2, entry["hash"])
    # Feature shards carry theirs as an npz member.
    q = shard_path(bank, "features", 0)
    write_shard(q, [{"index": 0, "k": 0, "feature": np.ones(3)}], config_hash="f" * 64)
    header, recs = read_shard_with_header(q)
    assert header["hash"] == "f" * 64 and recs[0]["index"] == 0
    q.write_bytes(q.read_bytes()[:100])
    with pytest.raises(DataError, match="cannot be read"):
        read_shard_with_header(q)


def test_with_meta_deleted_shards_of_another_config_are_not_reused(tmp_path):
    bank = tmp_path / "bank"
    old = prepare_stage(bank, "score", spec(0.1))
    write_shard(shard_path(bank, "score", 0), RECS[:4])
    (bank / "meta.json").unlink()
    with pytest.raises(BankMismatchError, match="of which meta.json has no record") as e:
        prepare_stage(bank, "score", spec(0.2))
    assert "scoring.on_mismatch=rebuild" in str(e.value)
    new = prepare_stage(bank, "score", spec(0.2), "rebuild")
    stale = tmp_path / f"bank.stale-{old['hash'][:12]}"
    assert (stale / "shards" / "score-000000.jsonl").is_file()
    assert not shard_path(bank, "score", 0).exists() and new["spec"] == spec(0.2)
    # The same config's shards are still reused after meta.json is lost.
    write_shard(shard_path(bank, "score", 0), RECS[:4])
    (bank / "meta.json").unlink()
    again = prepare_stage(bank, "score", spec(0.2))
    assert shard_done(bank, "score", 0, 4, again["hash"])
    # A derived stage drops foreign shards in place.
    write_shard(shard_path(bank, "features", 0), [], config_hash="e" * 64)
    with pytest.raises(BankMismatchError, match="features.on_mismatch=rebuild"):
        prepare_stage(bank, "features", {"f": 1})
    prepare_stage(bank, "features", {"f": 1}, "rebuild")
    assert not shard_path(bank, "features", 0).exists()
    release_bank(bank)


def test_merge_refuses_a_shard_of_another_config(tmp_path):
    bank = tmp_path / "bank"
    entry = prepare_stage(bank, "score", spec())
    write_shard(shard_path(bank, "score", 0), RECS[:2])
    write_shard(shard_path(bank, "score", 1), RECS[2:4], config_hash="a" * 64)
    with pytest.raises(DataError, match=r"score-000001\.jsonl was made under another config"):
        merge_shards(bank, "score", [0, 1])
    assert merge_shards(bank, "score", [0], entry["hash"]) == RECS[:2]
    release_bank(bank)


def test_old_version_bank_is_a_mismatch(tmp_path):
    bank = tmp_path / "bank"
    complete_score_stage(bank)
    meta = json.loads((bank / "meta.json").read_text())
    meta["version"] = 1
    (bank / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BankMismatchError, match="bank version: 1 -> 2"):
        prepare_stage(bank, "score", spec())
    with pytest.raises(BankMismatchError, match="version-1 bank"):
        load_bank(bank)
    release_bank(bank)


# ----------------------------------------------------------------------------- (b) merged files


def test_lost_records_are_named_then_rebuilt_or_refused(tmp_path):
    bank = tmp_path / "bank"
    complete_score_stage(bank)
    assert load_bank(bank).records == RECS
    full = (bank / "scores.jsonl").read_bytes()
    (bank / "scores.jsonl").write_bytes(b"".join(full.splitlines(keepends=True)[:10]))
    with pytest.raises(DataError, match=r"scores\.jsonl: .*10 of 20 lines: 10 records lost"):
        load_bank(bank)
    with pytest.raises(DataError, match=r"scoring\.on_mismatch=rebuild") as e:
        prepare_stage(bank, "score", spec())
    assert "\n" not in str(e.value)
    entry = prepare_stage(bank, "score", spec(), "rebuild")
    assert not entry["complete"], "rebuild: the stage merges its shards again"
    release_bank(bank)


@pytest.mark.parametrize(
    "damage, what",
    [
        (lambda b: b[:-1] + bytes([b[-2] ^ 1]), "sha256 differs"),  # same length
        (lambda b: b"\xff\xfe" * (len(b) // 2) + b"\xff" * (len(b) % 2), "sha256 differs"),
        (lambda b: b[: len(b) // 2], "bytes where meta.json recorded"),
    ],
)
def test_damaged_scores_are_a_clear_error_not_a_traceback(tmp_path, damage, what):
    bank = tmp_path / "bank"
    complete_score_stage(bank)
    p = bank / "scores.jsonl"
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(DataError, match=what):
        load_bank(bank)
    release_bank(bank)


def test_feature_and_cluster_files_are_checked(tmp_path):
    bank = tmp_path / "bank"
    complete_score_stage(bank)
    prepare_stage(bank, "features", {"f": 1})
    feats = np.arange(12, dtype=np.float16).reshape(4, 3)
    write_npy(bank / "features.npy", feats)
    write_npy(bank / "feature_owners.npy", np.zeros((4, 2), np.int64))
    mark_complete(bank, "features", num_patches=4)
    assert np.array_equal(load_features(bank)[0], feats)
    (bank / "feature_owners.npy").unlink()
    with pytest.raises(DataError, match=r"feature_owners\.npy: missing.*features\.on_mismatch"):
        load_features(bank)
    (bank / "features.npy").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"features\.npy: 4 bytes where meta.json recorded"):
        load_features(bank)
    prepare_stage(bank, "cluster", {"c": 1}, "rebuild")
    atomic_write_json(bank / "clusters.json", {"classes": {}, "hash": "x"})
    mark_complete(bank, "cluster")
    assert load_clusters(bank)["hash"] == "x"
    (bank / "clusters.json").write_text('{"classes": {')
    with pytest.raises(DataError, match=r"clusters\.json: "):
        load_clusters(bank)
    release_bank(bank)


def test_a_rebuilt_stage_with_other_bytes_drops_what_was_made_from_it(tmp_path):
    bank = tmp_path / "bank"
    complete_score_stage(bank)
    prepare_stage(bank, "features", {"f": 1})
    mark_complete(bank, "features")
    prepare_stage(bank, "score", spec())  # the score stage is rebuilt ...
    write_jsonl(bank / "scores.jsonl", RECS[:5])  # ... and comes out different
    mark_complete(bank, "score", num_images=5)
    meta = json.loads((bank / "meta.json").read_text())
    assert "features" not in meta["stages"] and meta["stages"]["score"]["complete"]
    release_bank(bank)


# ----------------------------------------------------------------------------- (c) items digest


def test_items_digest_sees_a_file_edited_in_place(tmp_path):
    from types import SimpleNamespace

    from distill.scoring.stage import items_digest

    p = save_image(tmp_path / "a" / "0.png", random_rgb(16, 16, 0))
    src = SimpleNamespace(items=[SimpleNamespace(source="a/0.png", label=0, size=(16, 16), path=p)])
    d0 = items_digest(src)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched: same bytes, new time
    d1 = items_digest(src)
    save_image(p, random_rgb(16, 16, 1))  # new pixels
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 2))
    assert len({d0, d1, items_digest(src)}) == 3
    # Array-backed items (no file) keep the digest banks had before.
    import hashlib

    arr = SimpleNamespace(items=[SimpleNamespace(source="train/000000", label=1, size=(8, 8))])
    old = hashlib.sha256(b"train/000000\x1f1\x1f8x8\n").hexdigest()
    assert items_digest(arr) == old


# ----------------------------------------------------------------------------- (d), (e), (f) io


def test_full_disk_is_one_line_naming_the_file_and_the_space(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "d" / "scores.jsonl"
    with pytest.raises(DataError) as e:
        atomic_write_text(target, "x" * 2500)
    msg = str(e.value)
    assert "\n" not in msg and "no space left" in msg and "scores.jsonl" in msg
    assert "needs about 2.5 kB" in msg and " free" in msg
    assert not target.exists() and not list(target.parent.iterdir()), "no temporary file left"


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_respect_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        write_npy(tmp_path / "b.npy", np.zeros(2))
        entry = prepare_stage(tmp_path / "bank", "score", spec())
        write_shard(shard_path(tmp_path / "bank", "score", 0), RECS[:1], entry["hash"])
    finally:
        os.umask(old)
        release_bank(tmp_path / "bank")
    for p in (
        tmp_path / "a.txt",
        tmp_path / "b.npy",
        tmp_path / "bank" / "meta.json",
        tmp_path / "bank" / "lock",
        shard_path(tmp_path / "bank", "score", 0),
    ):
        assert stat.S_IMODE(p.stat().st_mode) == mode, p


def test_a_killed_runs_temporary_files_are_swept(tmp_path):
    bank = tmp_path / "bank"
    (bank / "shards").mkdir(parents=True)
    old = [bank / ".meta.json.1a2b3c4d.tmp", bank / "shards" / ".score-000000.jsonl.9f8e.tmp"]
    for p in old:
        p.write_text("half a file")
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    fresh = bank / ".meta.json.ffff0000.tmp"  # another process's write in flight: kept
    fresh.write_text("x")
    assert remove_stale_temps(tmp_path / "nowhere") == []
    prepare_stage(bank, "score", spec())  # a stage starting on the bank sweeps it
    assert not any(p.exists() for p in old) and fresh.exists()
    release_bank(bank)


# ----------------------------------------------------------------------------- (f) the lock


def test_a_second_run_waits_for_the_lock_and_names_its_holder(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(bank_mod, "LOCK_POLL_S", 0.02)
    bank = tmp_path / "bank"
    bank.mkdir()
    holder = os.open(bank / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    os.write(holder, b"pid 4242 on elsewhere since 2026-01-01T00:00:00\n")
    got: dict = {}
    waiter = threading.Thread(target=lambda: got.update(entry=prepare_stage(bank, "score", spec())))
    with caplog.at_level(logging.INFO, logger="distill.bank"):
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not (bank / "meta.json").exists()
        assert "in use by pid 4242 on elsewhere" in caplog.text
        # The other ranks of a run only verify: they never wait on the lock.
        assert prepare_stage(bank, "score", spec(), write=False)["hash"]
        os.close(holder)  # the first run ends
        waiter.join(10)
    assert not waiter.is_alive() and got["entry"]["complete"] is False
    assert f"pid {os.getpid()} " in (bank / "lock").read_text()
    assert not can_lock(bank / "lock")
    release_bank(bank)
    assert can_lock(bank / "lock")


def test_a_run_in_another_process_holds_the_bank_until_it_ends(tmp_path, monkeypatch, caplog):
    """The holder is a real second process running `prepare_stage`; this one waits, names
    that process's pid, and goes on once it exits, finding what it recorded."""
    import subprocess
    import sys

    monkeypatch.setattr(bank_mod, "LOCK_POLL_S", 0.05)
    bank = tmp_path / "bank"
    code = (
        "import sys; from distill.bank import prepare_stage; "
        f"prepare_stage({str(bank)!r}, 'score', {spec()!r}); print('locked', flush=True); "
        "sys.stdin.read()"  # hold the lock until the test closes stdin
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout.readline().strip() == "locked"
        got: dict = {}
        waiter = threading.Thread(
            target=lambda: got.update(entry=prepare_stage(bank, "score", spec()))
        )
        with caplog.at_level(logging.INFO, logger="distill.bank"):
            waiter.start()
            time.sleep(0.5)
            assert waiter.is_alive() and f"in use by pid {first.pid} " in caplog.text
            first.stdin.close()  # the first run ends
            first.wait(30)
            waiter.join(30)
        assert not waiter.is_alive() and "is free again" in caplog.text
        meta = json.loads((bank / "meta.json").read_text())
        assert got["entry"]["created"] == meta["stages"]["score"]["created"], "its entry, reused"
    finally:
        first.kill()
        release_bank(bank)


def test_stage_entry_points_release_their_locks(tmp_path):
    bank = tmp_path / "bank"
    inside = {}

    @releases_bank_locks
    def stage(s):
        prepare_stage(bank, "score", s, "rebuild")
        prepare_stage(bank, "score", s, "rebuild")  # again in the same process: no wait
        inside["locked"] = not can_lock(bank / "lock")

    stage(spec(0.1))
    assert inside["locked"] and can_lock(bank / "lock")
    old_hash = json.loads((bank / "meta.json").read_text())["stages"]["score"]["hash"]
    # A rebuild moves the bank (and its lock file) aside; the new bank is locked at once.
    stage(spec(0.2))
    assert inside["locked"] and can_lock(bank / "lock")
    assert can_lock(tmp_path / f"bank.stale-{old_hash[:12]}" / "lock")


# ----------------------------------------------------------------------------- the stages


def cfg_for(out: Path, *overrides: str):
    """12 images in 3 shards per stage."""
    return smoke_cfg(
        out,
        "data.images_per_class=4",
        "scoring.shard_size=4",
        "features.shard_size=4",
        "ipc=[1]",
        *overrides,
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A complete score + features + cluster bank of 12 images in 3 shards per stage."""
    from distill.clustering import run_cluster
    from distill.dift import run_features
    from distill.scoring.stage import run_score

    out = tmp_path_factory.mktemp("made")
    cfg = cfg_for(out)
    run_score(cfg)
    run_features(cfg)
    run_cluster(cfg)
    return out / "bank"


def copy_bank(made: Path, out: Path) -> Path:
    shutil.copytree(made, out / "bank")
    return out / "bank"


def count_scored(monkeypatch) -> list[str]:
    from distill.scoring import module as scoring_module

    seen: list[str] = []
    step = scoring_module.ScoringModule.predict_step
    monkeypatch.setattr(
        scoring_module.ScoringModule,
        "predict_step",
        lambda self, batch, i: seen.extend(batch["source"]) or step(self, batch, i),
    )
    return seen


def test_meta_deleted_then_another_t_range_is_refused_then_recomputed(made, tmp_path, monkeypatch):
    from distill.scoring.stage import run_score

    bank = copy_bank(made, tmp_path)
    (bank / "meta.json").unlink()
    with pytest.raises(BankMismatchError, match="meta.json has no record"):
        run_score(cfg_for(tmp_path, "scoring.t_range=[0.2,0.4]"))
    seen = count_scored(monkeypatch)
    run_score(cfg_for(tmp_path, "scoring.t_range=[0.2,0.4]", "scoring.on_mismatch=rebuild"))
    assert len(seen) == 12, "no shard of the old range may be reused"
    meta = json.loads((bank / "meta.json").read_text())
    assert meta["stages"]["score"]["spec"]["scoring"]["t_range"] == [0.2, 0.4]
    assert (bank / "scores.jsonl").read_bytes() != (made / "scores.jsonl").read_bytes()


def test_meta_deleted_same_config_reuses_its_shards(made, tmp_path, monkeypatch):
    from distill.scoring.stage import run_score

    bank = copy_bank(made, tmp_path)
    (bank / "meta.json").unlink()
    seen = count_scored(monkeypatch)
    run_score(cfg_for(tmp_path))
    assert (
        seen == [] and (bank / "scores.jsonl").read_bytes() == (made / "scores.jsonl").read_bytes()
    )


def test_records_cut_from_scores_are_noticed_and_rebuilt(made, tmp_path, monkeypatch):
    from distill.dift import run_features
    from distill.scoring.stage import run_score

    bank = copy_bank(made, tmp_path)
    full = (bank / "scores.jsonl").read_bytes()
    (bank / "scores.jsonl").write_bytes(b"".join(full.splitlines(keepends=True)[:-3]))
    with pytest.raises(DataError, match=r"scores\.jsonl: .*3 records lost"):
        run_features(cfg_for(tmp_path, "features.on_mismatch=rebuild"))
    with pytest.raises(DataError, match=r"scoring\.on_mismatch=rebuild"):
        run_score(cfg_for(tmp_path))
    seen = count_scored(monkeypatch)
    run_score(cfg_for(tmp_path, "scoring.on_mismatch=rebuild"))
    assert seen == [], "re-merged from the shards, nothing rescored"
    assert (bank / "scores.jsonl").read_bytes() == full
    meta = json.loads((bank / "meta.json").read_text())
    assert meta["stages"]["features"]["complete"], "same bytes: the later stages stand"


def test_garbled_features_are_refused_then_rebuilt(made, tmp_path):
    from distill.dift import run_features

    bank = copy_bank(made, tmp_path)
    good = (bank / "features.npy").read_bytes()
    bad = bytearray(good)
    bad[-40:] = bytes(b ^ 0xFF for b in bad[-40:])
    (bank / "features.npy").write_bytes(bytes(bad))
    with pytest.raises(DataError, match=r"features\.npy: its content .*features\.on_mismatch"):
        run_features(cfg_for(tmp_path))
    run_features(cfg_for(tmp_path, "features.on_mismatch=rebuild"))
    assert (bank / "features.npy").read_bytes() == good


def test_damaged_cluster_and_owner_files_are_named_by_materialize(made, tmp_path, capsys):
    from distill.clustering import run_cluster
    from distill.materialize import main as materialize_main

    bank = copy_bank(made, tmp_path)
    args = [f"bank_dir={bank}", "ipc=[1]", f"out_dir={tmp_path}/out", "figures=false"]
    good = (bank / "clusters.json").read_text()
    (bank / "clusters.json").write_text(good[: len(good) // 2])
    assert materialize_main(args) == 2
    err = capsys.readouterr().err
    assert "clusters.json" in err and "Traceback" not in err
    run_cluster(cfg_for(tmp_path))  # cluster.on_mismatch=rebuild is the default
    assert json.loads((bank / "clusters.json").read_text()) == json.loads(good)
    (bank / "feature_owners.npy").unlink()
    assert materialize_main(args) == 2
    assert "feature_owners.npy: missing" in capsys.readouterr().err
    assert materialize_main([*args[:-1], "figures=false", "cluster=none"]) == 0


def test_an_image_edited_in_place_is_a_mismatch(tmp_path):
    from distill.dift import run_features
    from distill.materialize import materialize
    from distill.scoring.stage import run_score

    root = tmp_path / "imgs"
    for c in ("cat", "dog"):
        for j in range(3):
            save_image(root / c / f"{j}.png", random_rgb(48, 64, j))
    cfg = compose(
        "distill",
        [
            "experiment=smoke",
            f"paths.output_dir={tmp_path / 'run'}",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "scoring.num_threads=1",
            "features.num_threads=1",
            "data=folder",
            f"data.root={root}",
            "data.short_edge=64",
            "ipc=[1]",
        ],
    )
    run_score(cfg)
    p = root / "dog" / "1.png"
    st = p.stat()
    save_image(p, random_rgb(48, 64, 99))  # new pixels, same size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(BankMismatchError, match=r"items\.digest"):
        run_score(cfg)
    with pytest.raises(BankMismatchError, match="source images changed"):
        run_features(cfg)
    with pytest.raises(BankMismatchError, match="source images changed"):
        materialize(tmp_path / "run" / "bank", [1], tmp_path / "out", use_clusters=False)


def test_full_disk_mid_run_is_one_line_and_the_resume_is_byte_identical(
    made, tmp_path, monkeypatch
):
    from distill.scoring.stage import run_score

    real = os.fsync

    def fsync(fd):
        if "score-000001" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DataError) as e:
        run_score(cfg_for(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "score-000001.jsonl" in msg and "free" in msg
    shards = tmp_path / "bank" / "shards"
    assert not [p for p in shards.iterdir() if p.name.endswith(".tmp")]
    assert not (shards / "score-000001.jsonl").exists()
    monkeypatch.setattr(os, "fsync", real)
    run_score(cfg_for(tmp_path))
    assert (tmp_path / "bank" / "scores.jsonl").read_bytes() == (made / "scores.jsonl").read_bytes()


def test_a_killed_runs_temporary_shard_is_never_trusted(made, tmp_path, monkeypatch):
    from distill.scoring.stage import run_score

    bank = copy_bank(made, tmp_path)
    shard = bank / "shards" / "score-000001.jsonl"
    tmp = bank / "shards" / ".score-000001.jsonl.dead0001.tmp"
    shutil.move(shard, tmp)  # killed between the write and the rename
    os.utime(tmp, (io_mod.STARTED - 60, io_mod.STARTED - 60))  # from before this run
    meta = json.loads((bank / "meta.json").read_text())
    meta["stages"]["score"]["complete"] = False
    (bank / "meta.json").write_text(json.dumps(meta))
    seen = count_scored(monkeypatch)
    run_score(cfg_for(tmp_path))
    assert len(seen) == 4 and not tmp.exists()
    assert (bank / "scores.jsonl").read_bytes() == (made / "scores.jsonl").read_bytes()
    assert file_record(shard)["bytes"] == file_record(made / "shards" / shard.name)["bytes"]


def test_feature_shards_are_removed_once_merged_unless_kept(made, tmp_path):
    """The features stage drops its shards after the merge (at ImageNet-1K they are as large
    as features.npy); with features.keep_shards they stay for a re-merge."""
    from omegaconf import OmegaConf

    from distill.dift import run_features
    from distill.validate import check_features

    assert not list((made / "shards").glob("features-*"))
    assert list((made / "shards").glob("score-*")), "the score shards stay"
    bank = copy_bank(made, tmp_path)
    good = (bank / "features.npy").read_bytes()
    (bank / "features.npy").write_bytes(b"junk")
    run_features(cfg_for(tmp_path, "features.on_mismatch=rebuild", "features.keep_shards=true"))
    assert (bank / "features.npy").read_bytes() == good, "recomputed to the same bytes"
    assert len(list((bank / "shards").glob("features-*"))) == 3
    with pytest.raises(ConfigError, match="features.keep_shards='yes' must be true or false"):
        check_features(OmegaConf.create({"kind": "dift", "keep_shards": "yes"}), None)
