"""The score stage end to end on the tiny model: bank contents, determinism, resume, refusal,
bad input, DDP on two CPU processes and a multirun sweep."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from distill.bank import read_jsonl, shard_path
from distill.errors import BankMismatchError
from distill.scoring.stage import run_score
from distill.writer import ShardWriter
from tests.conftest import ROOT, compose, random_rgb, save_image

N37 = "data.images_per_class=[13,12,12]"  # 37 images: not divisible by 2 ranks or by shards


@pytest.fixture(autouse=True)
def restore_threads():
    """The stage sets torch's thread count for the process; give it back after each test."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def smoke_cfg(out: Path, *overrides: str):
    return compose(
        "distill",
        [
            "experiment=smoke",
            f"paths.output_dir={out}",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "scoring.num_threads=1",
            *overrides,
        ],
    )


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def bank_records(out: Path) -> list[dict]:
    return read_jsonl(out / "bank" / "scores.jsonl")


def assert_same_bank(a: list[dict], b: list[dict], rel: float = 1e-5):
    assert [r["source"] for r in a] == [r["source"] for r in b]
    assert [r["boxes"] for r in a] == [r["boxes"] for r in b], "picks must be identical"
    for ra, rb in zip(a, b, strict=True):
        for x, y in zip(
            [ra["image_score"], *ra["scores"]], [rb["image_score"], *rb["scores"]], strict=True
        ):
            assert abs(x - y) <= rel * max(abs(x), abs(y)), (ra["source"], x, y)


@pytest.fixture(scope="module")
def reference_bank(tmp_path_factory):
    """An uninterrupted single-process run over the 37-image dataset."""
    out = tmp_path_factory.mktemp("ref")
    run_score(smoke_cfg(out, N37))
    return out


def test_bank_has_every_image_once(reference_bank):
    recs = bank_records(reference_bank)
    assert [r["index"] for r in recs] == list(range(37))
    assert len({r["source"] for r in recs}) == 37
    for r in recs:
        w, h = r["orig_size"]
        assert 1 <= len(r["boxes"]) <= 4 and len(r["scores"]) == len(r["boxes"])
        assert r["scores"] == sorted(r["scores"], reverse=True)
        for x0, y0, x1, y1 in r["boxes"]:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    meta = json.loads((reference_bank / "bank" / "meta.json").read_text())
    assert meta["stages"]["score"]["complete"] and meta["stages"]["score"]["num_images"] == 37
    assert [c["key"] for c in meta["classes"]] == ["ellipse_0", "rectangle_1", "triangle_2"]
    rows = read_csv(reference_bank / "classes.csv")
    assert [r["name"] for r in rows] == ["ellipse", "rectangle", "triangle"]


def test_figures_and_tables_are_written(reference_bank):
    for name in ("score_histograms.png", "best_patches.png"):
        with Image.open(reference_bank / name) as im:
            assert im.size[0] > 200 and im.size[1] > 100
    rows = read_csv(reference_bank / "class_scores.csv")
    assert [int(r["images"]) for r in rows] == [13, 12, 12]
    assert (reference_bank / "skipped.csv").read_text().startswith("source,path,class_index")


def test_batch_size_does_not_change_the_bank(reference_bank, tmp_path):
    run_score(smoke_cfg(tmp_path, N37, "scoring.batch_size=1", "scoring.shard_size=5"))
    assert_same_bank(bank_records(reference_bank), bank_records(tmp_path), rel=0.0)


def test_thread_count_changes_no_pick(reference_bank, tmp_path):
    run_score(smoke_cfg(tmp_path, N37, "scoring.num_threads=2"))
    a, b = bank_records(reference_bank), bank_records(tmp_path)
    assert [r["boxes"] for r in a] == [r["boxes"] for r in b]
    diffs = [
        abs(x - y)
        for ra, rb in zip(a, b, strict=True)
        for x, y in zip(ra["scores"], rb["scores"], strict=True)
    ]
    assert max(diffs) < 1e-6  # last-bit differences from oneDNN's thread split, nothing more


def test_kill_and_resume_ends_with_the_same_bank(reference_bank, tmp_path, monkeypatch):
    class Killed(Exception):
        pass

    original = ShardWriter.write_on_batch_end

    def dying(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if len(self.written) >= 2:
            raise Killed

    monkeypatch.setattr(ShardWriter, "write_on_batch_end", dying)
    with pytest.raises(Killed):
        run_score(smoke_cfg(tmp_path, N37, "scoring.shard_size=8"))
    shards = sorted((tmp_path / "bank" / "shards").iterdir())
    assert len(shards) == 2 and not [p for p in shards if p.name.endswith(".tmp")]
    assert not (tmp_path / "bank" / "scores.jsonl").exists()
    # A torn shard (as if the disk filled mid-write outside our atomic rename) is recomputed.
    shards[1].write_text(shards[1].read_text()[:50])
    monkeypatch.setattr(ShardWriter, "write_on_batch_end", original)

    from distill.scoring import module as scoring_module

    seen: list[str] = []
    step = scoring_module.ScoringModule.predict_step
    monkeypatch.setattr(
        scoring_module.ScoringModule,
        "predict_step",
        lambda self, batch, i: seen.extend(batch["source"]) or step(self, batch, i),
    )
    run_score(smoke_cfg(tmp_path, N37, "scoring.shard_size=8"))
    first = {r["source"] for r in read_jsonl(shard_path(tmp_path / "bank", "score", 0))}
    assert len(seen) == 37 - 8 and not first & set(seen), "finished shards must not be recomputed"
    assert_same_bank(bank_records(reference_bank), bank_records(tmp_path), rel=0.0)


def test_changed_config_is_refused_then_rebuilt(reference_bank, tmp_path):
    bank = tmp_path / "shared_bank"
    run_score(smoke_cfg(tmp_path / "a", N37, f"paths.bank_dir={bank}"))
    with pytest.raises(BankMismatchError) as e:
        run_score(
            smoke_cfg(tmp_path / "b", N37, f"paths.bank_dir={bank}", "scoring.t_range=[0.2,0.4]")
        )
    assert "scoring.t_range: [0.1, 0.7] -> [0.2, 0.4]" in str(e.value)
    assert "on_mismatch=rebuild" in str(e.value)
    run_score(
        smoke_cfg(
            tmp_path / "b",
            N37,
            f"paths.bank_dir={bank}",
            "scoring.t_range=[0.2,0.4]",
            "scoring.on_mismatch=rebuild",
        )
    )
    stale = list(tmp_path.glob("shared_bank.stale-*"))
    assert len(stale) == 1 and (stale[0] / "scores.jsonl").is_file()
    meta = json.loads((bank / "meta.json").read_text())
    assert meta["stages"]["score"]["spec"]["scoring"]["t_range"] == [0.2, 0.4]
    # The same config again reuses the complete bank: nothing is recomputed.
    mtime = (bank / "scores.jsonl").stat().st_mtime_ns
    shards_before = sorted(p.stat().st_mtime_ns for p in (bank / "shards").iterdir())
    run_score(smoke_cfg(tmp_path / "c", N37, f"paths.bank_dir={bank}", "scoring.t_range=[0.2,0.4]"))
    assert sorted(p.stat().st_mtime_ns for p in (bank / "shards").iterdir()) == shards_before
    assert (bank / "scores.jsonl").stat().st_mtime_ns >= mtime


def test_undecodable_image_is_skipped_and_listed(tmp_path):
    root = tmp_path / "imgs"
    for c in ("cat", "dog"):
        for j in range(3):
            save_image(root / c / f"{j}.png", random_rgb(48, 64, j))
    good = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "broken.png").write_bytes(good[: len(good) // 2])  # header fine, data cut
    (root / "dog" / "readme.txt").write_text("not an image")
    out = tmp_path / "run"
    run_score(smoke_cfg(out, "data=folder", f"data.root={root}", "data.short_edge=64"))
    recs = bank_records(out)
    assert len(recs) == 6 and "dog/broken.png" not in {r["source"] for r in recs}
    rows = {r["source"]: r for r in read_csv(out / "skipped.csv")}
    assert set(rows) == {"dog/broken.png", "dog/readme.txt"}
    assert (
        rows["dog/broken.png"]["stage"] == "decode" and rows["dog/broken.png"]["class_index"] == "1"
    )
    assert rows["dog/readme.txt"]["stage"] == "scan"


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run(
        [sys.executable, "-m", "distill", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def test_two_cpu_ranks_score_each_image_once_and_match_one_rank(reference_bank, tmp_path):
    out = tmp_path / "ddp"
    run_cli(
        [
            "experiment=smoke",
            "stages=[score]",
            N37,
            "trainer.strategy=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "scoring.num_threads=1",
            "logger=none",
            f"paths.output_dir={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        cwd=tmp_path,
    )
    recs = bank_records(out)
    assert sorted(r["index"] for r in recs) == list(range(37))
    shards = sorted((out / "bank" / "shards").glob("score-*.jsonl"))
    per_shard = [len(read_jsonl(p)) for p in shards]
    assert sum(per_shard) == 37  # each image written by exactly one rank
    assert_same_bank(bank_records(reference_bank), recs)


def test_multirun_sweep_with_ddp_runs_each_job_once(tmp_path):
    sweep = tmp_path / "sweep"
    smoke = compose("distill", ["experiment=smoke"])
    n_images = smoke.data.num_classes * smoke.data.images_per_class
    proc = run_cli(
        [
            "-m",
            "experiment=smoke",
            "stages=[score]",
            "scoring.t_range=[0.1,0.3],[0.3,0.7]",
            "trainer.strategy=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "logger=none",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"], proc.stdout[-2000:]
    hashes = set()
    for job, t_range in zip(jobs, ([0.1, 0.3], [0.3, 0.7]), strict=True):
        meta = json.loads((job / "bank" / "meta.json").read_text())
        assert meta["stages"]["score"]["spec"]["scoring"]["t_range"] == t_range
        assert len(bank_records(job)) == n_images
        hashes.add(meta["stages"]["score"]["hash"])
    assert len(hashes) == 2
    # No job started the sweep again: exactly two scoring passes were logged.
    logged = f"bank: {n_images} images scored"
    assert proc.stdout.count(logged) + proc.stderr.count(logged) == 2
    # The sweep ends in one comparison: a row per job, naming only what differs.
    text = (sweep / "sweep_summary.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| 0 |") or ln.startswith("| 1 |")]
    assert len(rows) == 2 and "scoring.t_range=[0.1,0.3]" in rows[0] and "stages" not in rows[0]
    assert f"| {n_images} |" in rows[0] and (sweep / "sweep_summary.csv").is_file()


def test_cli_missing_model_fails_with_path(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill",
            "experiment=smoke",
            f"diffusion.model={tmp_path}/nope",
            f"paths.output_dir={tmp_path}/o",
            f"hydra.run.dir={tmp_path}/o",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert f"diffusion.model={tmp_path}/nope" in out.stderr and "Traceback" not in out.stderr


def test_cli_missing_data_root_fails_with_path(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill",
            "experiment=imagewoof_ipc10",
            f"data.root={tmp_path}/none",
            f"paths.output_dir={tmp_path}/o",
            f"hydra.run.dir={tmp_path}/o",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and f"{tmp_path}/none" in out.stderr
    assert "Traceback" not in out.stderr
