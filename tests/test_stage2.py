"""Stage II end to end on the tiny model: DIFT against a reference, the full pipeline, several
IPCs in one run, materialising new IPCs and class subsets without the model, baselines."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from distill.assembly import crop_patch
from distill.bank import read_jsonl
from distill.data import build_source
from distill.data.classes import ClassInfo
from distill.dift import DiftModule
from distill.materialize import main as materialize_main
from distill.pipeline import run
from distill.scoring.relevance import stable_seed
from tests.conftest import ROOT, smoke_cfg


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def feature_cfg(**kw):
    base = dict(
        timestep=160,
        up_ft_index=1,
        ensemble=3,
        prompt="An image of {name}",
        seed=0,
        pool="mean",
        unet_batch=4,
        vae_batch=2,
        num_threads=None,
    )
    base.update(kw)
    return OmegaConf.create(base)


@torch.no_grad()
def test_dift_matches_reference(tiny_backend):
    classes = [ClassInfo(0, "a", "beagle"), ClassInfo(1, "b", "dingo")]
    module = DiftModule(tiny_backend, classes, feature_cfg())
    crops = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    labels, keys = [0, 1, 1], [("x", 0), ("x", 1), ("y", 0)]
    got = module.features(crops, labels, keys)
    # Reference: one crop, one draw at a time, full U-Net, the up block's output captured.
    block = tiny_backend.unet.up_blocks[1]
    captured = []
    handle = block.register_forward_hook(lambda m, i, o: captured.append(o))
    want = []
    for c in range(3):
        x = crops[c : c + 1].float() / 127.5 - 1
        z = tiny_backend.vae.encode(x).latent_dist.mean * 0.18215
        a = float(tiny_backend.scheduler.alphas_cumprod[160])
        ids = tiny_backend.tokenizer(
            [f"An image of {classes[labels[c]].name}"],
            padding="max_length",
            max_length=77,
            return_tensors="pt",
        ).input_ids
        emb = tiny_backend.text_encoder(ids)[0]
        acc = 0
        for i in range(3):
            g = torch.Generator().manual_seed(stable_seed("dift", 0, *keys[c], i))
            eps = torch.randn(z.shape[1:], generator=g)[None]
            captured.clear()
            tiny_backend.unet(
                a**0.5 * z + (1 - a) ** 0.5 * eps, torch.tensor([160]), encoder_hidden_states=emb
            )
            acc = acc + captured[0]
        want.append((acc / 3).mean(dim=(2, 3))[0])
    handle.remove()
    want = torch.stack(want)
    assert got.shape == (3, block.resnets[-1].conv2.out_channels)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (got[1] - got[2]).abs().max() > 1e-4  # different crops, different features


smoke = smoke_cfg


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    cfg = smoke(out, "ipc=[1,10,20]")
    run(cfg)
    return out, cfg


def check_set(set_dir: Path, ipc: int, classes: list[str], source):
    """Exactly classes x IPC images, manifest consistent with the files and the sources."""
    rows = read_csv(set_dir / "manifest.csv")
    per_image = 4 if ipc <= 10 else 1
    files = sorted(str(p.relative_to(set_dir)) for p in set_dir.glob("*/*.png"))
    assert len(files) == len(classes) * ipc
    for key in classes:
        assert len(list((set_dir / key).glob("*.png"))) == ipc
    assert sorted({r["file"] for r in rows}) == files
    assert len(rows) == len(files) * per_image
    info = json.loads((set_dir / "set.json").read_text())
    assert info["tiles"] == (2 if per_image == 4 else 1) and info["ipc"] == ipc
    assert info["class_order"] == source.class_order and info["images"] == len(files)
    for f in files:
        slots = sorted(int(r["slot"]) for r in rows if r["file"] == f)
        assert slots == list(range(per_image))
    sizes = {it.source: it.size for it in source.items}
    for r in rows:
        w, h = sizes[r["source"]]
        x0, y0, x1, y1 = (int(r[k]) for k in ("x0", "y0", "x1", "y1"))
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert r["file"].split("/")[0] == classes[int(r["class_index"])]
    return rows


def test_pipeline_writes_every_ipc(pipeline_run):
    out, cfg = pipeline_run
    source = build_source(cfg.data)
    keys = [c.key for c in source.classes]
    for ipc in (1, 10, 20):
        rows = check_set(out / "distilled" / f"ipc{ipc}", ipc, keys, source)
        assert all(r["cluster"] != "-1" for r in rows)
    # A tile is the resized patch of its source, pixel for pixel.
    r = read_csv(out / "distilled" / "ipc10" / "manifest.csv")[5]
    img = np.asarray(Image.open(out / "distilled" / "ipc10" / r["file"]))
    src_i = next(i for i, it in enumerate(source.items) if it.source == r["source"])
    box = tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1"))
    y, x = divmod(int(r["slot"]), 2)
    want = np.asarray(crop_patch(source.load(src_i), box, 16))
    assert np.array_equal(img[y * 16 : y * 16 + 16, x * 16 : x * 16 + 16], want)
    # Figures a person opens.
    for p in ("figures/ipc10/overview.png", f"figures/clusters/{keys[0]}.png", "best_patches.png"):
        assert Image.open(out / p).size[0] > 100
    meta = json.loads((out / "bank" / "meta.json").read_text())
    assert all(meta["stages"][s]["complete"] for s in ("score", "features", "cluster"))
    clusters = json.loads((out / "bank" / "clusters.json").read_text())
    assert {c["num_centers"] for c in clusters["classes"].values()} == {4}


def test_sets_and_their_files_respect_the_umask(pipeline_run):
    """A distilled set is for colleagues too: folders 0777 and files 0666 less the umask
    (tempfile.mkdtemp's 0700 made every set private)."""
    import os
    import stat

    out, _ = pipeline_run
    mask = os.umask(0)
    os.umask(mask)
    for p in (out / "distilled" / "ipc10", *(out / "distilled" / "ipc10").iterdir()):
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(p.stat().st_mode) == want, p


def test_run_ends_with_a_summary(pipeline_run):
    out, cfg = pipeline_run
    text = (out / "summary.md").read_text()
    keys = [c.key for c in build_source(cfg.data).classes]
    assert f"`{out}/bank`" in text and "| set ipc10 |" in text and "| set ipc20 |" in text
    # Per class: 16 images scored, their candidate patches, the clusters k-means made.
    clusters = json.loads((out / "bank" / "clusters.json").read_text())["classes"]
    recs = read_jsonl(out / "bank" / "scores.jsonl")
    for i in range(len(keys)):
        n_cl = len(clusters[str(i)]["ranked"])
        n_p = sum(len(r["scores"]) for r in recs if r["label"] == i)
        want = f"| 16 | {n_p} | {n_cl} |"
        assert any(ln.startswith(f"| {i}: ") and want in ln for ln in text.splitlines())
    assert "python -m distill.materialize bank_dir=" in text
    # Synthetic shapes have known boxes: the best patch's IoU beside a random patch's.
    loc = text[text.index("## Localisation") :].splitlines()
    ours = float(loc[4].split("|")[2])
    rand = float(loc[5].split("|")[2])
    assert 0 <= rand <= 1 and 0 <= ours <= 1
    loc = json.loads((out / "summary.json").read_text())["localisation"]
    assert (round(loc["mean_iou"], 3), round(loc["random_mean_iou"], 3)) == (ours, rand)
    # Figures say which run, method and IPC they show.
    assert "run " in text and (out / "figures" / "ipc10" / "overview.png").is_file()


def test_rerun_reuses_bank(pipeline_run, tmp_path, caplog):
    out, _ = pipeline_run
    before = (out / "bank" / "features.npy").stat().st_mtime_ns
    caplog.set_level("INFO")
    run(smoke(out, "ipc=[1,10,20]"))
    assert (out / "bank" / "features.npy").stat().st_mtime_ns == before
    assert "reusing" in caplog.text


def test_materialize_new_ipc_and_subset_without_model(pipeline_run, tmp_path, monkeypatch, capsys):
    out, cfg = pipeline_run
    from distill.diffusion import DiffusionBackend

    def no_model(*a, **k):
        raise AssertionError("materialize must not load the diffusion model")

    monkeypatch.setattr(DiffusionBackend, "load", no_model)
    source = build_source(cfg.data)
    keys = [c.key for c in source.classes]
    t0 = time.perf_counter()
    assert materialize_main([f"bank_dir={out}", "ipc=[5,30]", f"out_dir={tmp_path}/new"]) == 0
    assert time.perf_counter() - t0 < 30
    check_set(tmp_path / "new" / "ipc5", 5, keys, source)
    check_set(tmp_path / "new" / "ipc30", 30, keys, source)
    # A class subset by index and by name, in the order given; labels renumbered, recorded.
    assert (
        materialize_main(
            [f"bank_dir={out}/bank", "ipc=[10]", "classes=[2,ellipse]", f"out_dir={tmp_path}/sub"]
        )
        == 0
    )
    sub = tmp_path / "sub" / f"classes-{keys[2]}+{keys[0]}" / "ipc10"
    assert read_csv(sub / "classes.csv") == [
        {"index": "0", "key": keys[2], "name": "triangle", "source_index": "2"},
        {"index": "1", "key": keys[0], "name": "ellipse", "source_index": "0"},
    ]
    rows = check_set(sub, 10, [keys[2], keys[0]], source)
    # The subset's images are the full set's images of those classes: clustering is per class.
    full = {
        (r["file"], r["slot"], r["source"], r["x0"])
        for r in read_csv(out / "distilled" / "ipc10" / "manifest.csv")
    }
    assert {(r["file"], r["slot"], r["source"], r["x0"]) for r in rows} <= full
    # Errors are clear and exit 2.
    assert materialize_main([f"bank_dir={out}", "classes=[zebra]"]) == 2
    assert "zebra" in capsys.readouterr().err


def test_materialize_cli_with_model_pointing_nowhere(pipeline_run, tmp_path):
    out, _ = pipeline_run
    env = dict(os.environ, DISTILL_CACHE=str(tmp_path / "empty-cache"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.materialize",
            f"bank_dir={out}",
            "ipc=[20]",
            "classes=[0,2]",
            f"out_dir={tmp_path}/cli",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = [read_csv(out / "classes.csv")[i]["key"] for i in (0, 2)]
    set_dir = tmp_path / "cli" / f"classes-{keys[0]}+{keys[1]}" / "ipc20"
    assert sorted(p.name for p in set_dir.iterdir() if p.is_dir()) == sorted(keys)
    assert not (tmp_path / "empty-cache").exists()


def test_subset_never_replaces_the_full_set(pipeline_run, tmp_path):
    """Materialising a class subset into the run folder leaves the full ipc10 set (and its
    figures) as they were; the subset lands in its own classes-... folder."""
    out, cfg = pipeline_run
    full = out / "distilled" / "ipc10"
    before = {p: p.read_bytes() for p in sorted(full.rglob("*")) if p.is_file()}
    figs_before = sorted((out / "figures" / "ipc10").iterdir())
    assert materialize_main([f"bank_dir={out}", "ipc=[10]", "classes=[0,2]"]) == 0
    assert {p: p.read_bytes() for p in sorted(full.rglob("*")) if p.is_file()} == before
    assert sorted((out / "figures" / "ipc10").iterdir()) == figs_before
    keys = [c.key for c in build_source(cfg.data).classes]
    sub = out / "distilled" / f"classes-{keys[0]}+{keys[2]}" / "ipc10"
    info = json.loads((sub / "set.json").read_text())
    assert info["class_subset"] is True and info["settings"]["classes"] == [keys[0], keys[2]]
    assert (out / "figures" / f"classes-{keys[0]}+{keys[2]}" / "ipc10").is_dir()


def test_existing_set_with_other_settings_needs_overwrite(pipeline_run, tmp_path, capsys):
    out, _ = pipeline_run
    dest = f"out_dir={tmp_path}/sets"
    assert materialize_main([f"bank_dir={out}", "ipc=[5]", dest]) == 0
    first = (tmp_path / "sets" / "ipc5" / "manifest.csv").read_text()
    # The same settings again: rewritten, identical.
    assert materialize_main([f"bank_dir={out}", "ipc=[5]", dest]) == 0
    assert (tmp_path / "sets" / "ipc5" / "manifest.csv").read_text() == first
    # Other settings: refused, naming what differs; the set is untouched.
    assert materialize_main([f"bank_dir={out}", "ipc=[5]", "cluster=none", dest]) == 2
    err = capsys.readouterr().err
    assert "already holds a distilled set" in err and "use_clusters: True -> False" in err
    assert (tmp_path / "sets" / "ipc5" / "manifest.csv").read_text() == first
    # overwrite=true replaces it, and its figures with it.
    stale = tmp_path / "sets" / "figures" / "ipc5" / "stale.png"
    stale.write_bytes(b"x")
    assert (
        materialize_main([f"bank_dir={out}", "ipc=[5]", "cluster=none", dest, "overwrite=true"])
        == 0
    )
    assert (tmp_path / "sets" / "ipc5" / "manifest.csv").read_text() != first
    assert not stale.exists()


def test_an_unsorted_class_order_is_loud(pipeline_run, tmp_path, caplog):
    """Folders that an ImageFolder reader would re-sort: a warning and a flag in set.json."""
    out, _ = pipeline_run
    assert json.loads((out / "distilled" / "ipc10" / "set.json").read_text())[
        "folder_order_is_label_order"
    ]
    caplog.set_level("WARNING")
    assert (
        materialize_main([f"bank_dir={out}", "ipc=[1]", "classes=[2,0]", f"out_dir={tmp_path}"])
        == 0
    )
    sub = next(tmp_path.glob("classes-*/ipc1"))
    assert json.loads((sub / "set.json").read_text())["folder_order_is_label_order"] is False
    assert "format=imagefolder" in caplog.text


def test_export_stage_writes_every_ipc_in_each_format(pipeline_run, tmp_path):
    """stages=[..., export]: the run's sets in RDED's and the label-prefixed ImageFolder
    layout; a repeated or resumed run replaces its own exports."""
    from distill.export import run_export

    out, cfg = pipeline_run
    for _ in range(2):
        run_export(cfg)
    for fmt in ("rded", "imagefolder"):
        for ipc in (1, 10, 20):
            info = json.loads((out / "export" / fmt / f"ipc{ipc}" / "export.json").read_text())
            assert info["export_format"] == fmt and info["ipc"] == ipc
    assert sorted(p.name for p in (out / "export" / "rded" / "ipc10").iterdir() if p.is_dir()) == [
        "00000", "00001", "00002",
    ]  # fmt: skip


def test_materialize_help_prints_usage(capsys):
    assert materialize_main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "bank_dir" in text and "overwrite" in text and "python -m distill.materialize" in text


def test_cluster_none_ablation(tmp_path):
    run(smoke(tmp_path, "cluster=none", "ipc=[1]"))
    assert not (tmp_path / "bank" / "features.npy").exists()
    rows = read_csv(tmp_path / "distilled" / "ipc1" / "manifest.csv")
    assert {r["cluster"] for r in rows} == {"-1"}
    # Relevance only: each class's 4 patches are its 4 best.
    recs = read_jsonl(tmp_path / "bank" / "scores.jsonl")
    for label in range(3):
        best = sorted((s for r in recs if r["label"] == label for s in r["scores"]), reverse=True)[
            :4
        ]
        got = [float(r["score"]) for r in rows if r["class_index"] == str(label)]
        assert got == pytest.approx(best)


def test_random_selector_baseline(tmp_path):
    run(smoke(tmp_path, "selector=random", "ipc=[1,10]"))
    assert not (tmp_path / "bank").exists(), "the random baseline needs no diffusion model"
    source = build_source(smoke(tmp_path).data)
    keys = [c.key for c in source.classes]
    rows = check_set(tmp_path / "distilled" / "ipc10", 10, keys, source)
    assert {r["score"] for r in rows} == {""}
    # Seeded: the same picks again.
    run(smoke(tmp_path / "again", "selector=random", "ipc=[10]"))
    again = read_csv(tmp_path / "again" / "distilled" / "ipc10" / "manifest.csv")
    assert [(r["source"], r["x0"], r["y0"]) for r in again] == [
        (r["source"], r["x0"], r["y0"]) for r in rows
    ]


def test_smoke_on_two_cpu_ranks_under_two_minutes(pipeline_run, tmp_path):
    out, cfg = pipeline_run
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill",
            "experiment=smoke",
            "trainer.devices=2",
            "logger=none",
            "ipc=[1,10,20]",
            "scoring.num_threads=1",
            "features.num_threads=1",
            f"paths.output_dir={tmp_path}/ddp",
            f"hydra.run.dir={tmp_path}/hydra",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert elapsed < 120, f"took {elapsed:.0f}s"
    source = build_source(cfg.data)
    keys = [c.key for c in source.classes]
    for ipc in (1, 10, 20):
        rows = check_set(tmp_path / "ddp" / "distilled" / f"ipc{ipc}", ipc, keys, source)
        single = read_csv(out / "distilled" / f"ipc{ipc}" / "manifest.csv")
        key = lambda r: (r["file"], r["slot"], r["source"], r["x0"], r["y0"], r["cluster"])
        assert [key(r) for r in rows] == [key(r) for r in single], (
            "2 ranks must pick what 1 rank picks"
        )


def test_wandb_offline_gets_images_and_table(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()  # W&B caches its settings per process; an earlier test may have set them
    try:
        run(smoke(tmp_path, "logger=wandb", "ipc=[1]"))
    finally:
        wandb.teardown()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "one W&B run per pipeline, shared by every stage"
    media = {
        p.relative_to(runs[0] / "files" / "media").as_posix().rsplit("_", 2)[0]
        for p in (runs[0] / "files" / "media").rglob("*.*")
    }
    assert {
        "images/score/histograms",
        "images/score/best_patches",
        "table/score/top_patches",
        "images/distilled/ipc1",
        "images/clusters",
    } <= media, media
    assert (tmp_path / "csv" / "metrics.csv").is_file()  # the CSV logger runs alongside


def test_features_resume_after_a_kill(pipeline_run, tmp_path, monkeypatch):
    """Kill the DIFT stage after one shard; the re-run computes only the rest and ends with
    the features of an uninterrupted run."""
    import shutil

    from distill.writer import ShardWriter

    out, _ = pipeline_run
    shutil.copytree(
        out / "bank", tmp_path / "bank", ignore=shutil.ignore_patterns("features*", "clusters*")
    )
    meta = json.loads((tmp_path / "bank" / "meta.json").read_text())
    for stage in ("features", "cluster"):
        meta["stages"].pop(stage, None)
    (tmp_path / "bank" / "meta.json").write_text(json.dumps(meta))
    for p in (tmp_path / "bank" / "shards").glob("features-*"):
        p.unlink()

    class Killed(Exception):
        pass

    original = ShardWriter.write_on_batch_end

    def dying(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.written:
            raise Killed

    cfg = smoke(tmp_path, "ipc=[1,10,20]", "stages=[features]")
    monkeypatch.setattr(ShardWriter, "write_on_batch_end", dying)
    with pytest.raises(Killed):
        run(cfg)
    done = sorted((tmp_path / "bank" / "shards").glob("features-*.npz"))
    assert len(done) == 1 and not (tmp_path / "bank" / "features.npy").exists()
    monkeypatch.setattr(ShardWriter, "write_on_batch_end", original)
    run(cfg)
    np.testing.assert_array_equal(
        np.load(tmp_path / "bank" / "features.npy"), np.load(out / "bank" / "features.npy")
    )
    np.testing.assert_array_equal(
        np.load(tmp_path / "bank" / "feature_owners.npy"),
        np.load(out / "bank" / "feature_owners.npy"),
    )
