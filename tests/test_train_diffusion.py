"""The diffusion training recipe runs (a few steps, on fake IDX files) and its output loads
through the normal loading path; the committed model loads offline and behaves."""

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from distill.diffusion import DiffusionBackend
from distill.train_diffusion import DEFAULTS, train
from tests.conftest import ROOT

COMMITTED = ROOT / "models" / "fashion-ldm"


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fake_fashion(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    items = np.zeros((60, 28, 28), np.uint8)
    for i in range(60):  # a class-dependent bright block on black
        c = i % 10
        items[i, 2 + c : 14 + c, 4:24] = rng.integers(150, 256, size=(12, 20))
    write_idx(d / "train-images-idx3-ubyte.gz", items)
    write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(60) % 10)
    return d


def tiny_cfg(data_root: Path, out: Path, **kw):
    cfg = OmegaConf.merge(
        OmegaConf.create(DEFAULTS),
        OmegaConf.create(
            {
                "out_dir": str(out),
                "data_root": str(data_root),
                "pool": 64,
                "log_every": 10,
                "time_budget_min": None,
                "work_dir": str(out.parent / f"{out.name}.work"),
                "held_out": 10,
                "ckpt_every": 2,
                "probe": {"every": 2, "images": 10, "draws": 2},
                "vae": {"steps": 30, "batch": 8, "channels": [8, 16, 16]},
                "unet": {"steps": 4, "batch": 8, "channels": [16, 32, 32], "warmup": 2},
                "text": {"hidden": 32, "intermediate": 64},
            }
        ),
    )
    return OmegaConf.merge(cfg, OmegaConf.create(kw))


def test_recipe_trains_and_saves_a_loadable_model(fake_fashion, tmp_path):
    out = train(tiny_cfg(fake_fashion, tmp_path / "m"))
    stats = json.loads((out / "training_stats.json").read_text())
    assert stats["vae"]["steps"] == 30 and stats["unet"]["steps"] == 4
    assert [p["step"] for p in stats["unet"]["probes"]] == [2, 4]
    assert (
        stats["unet"]["probes"][0]["single"]["n"] == 5 == stats["unet"]["probes"][0]["scene"]["n"]
    )
    assert stats["held_out"] == 10
    assert stats["vae"]["final_mse"] < stats["vae"]["first_mse"], "the VAE must learn something"
    for sub in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        assert (out / sub).is_dir()
    card = (out / "README.md").read_text()
    assert "python -m distill.train_diffusion" in card and "Fashion-MNIST" in card
    assert "## Probe during training" in card and "| 4 |" in card
    backend = DiffusionBackend.load(str(out), dtype="fp32")
    assert backend.vae_factor == 4
    assert backend.scaling_factor == pytest.approx(stats["scaling_factor"], rel=1e-3)
    assert next(backend.unet.parameters()).dtype == torch.float32  # stored fp16, loaded fp32
    z = backend.encode_images(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert z.shape == (1, 4, 16, 16)
    emb = backend.embed_prompts(["An image of bag"])
    assert backend.predict_eps(z, torch.tensor([300]), emb).shape == z.shape


@pytest.mark.skipif(not (COMMITTED / "model_index.json").is_file(), reason="no committed model")
def test_committed_model_loads_offline():
    backend = DiffusionBackend.load(str(COMMITTED), dtype="fp32")
    assert backend.vae_factor == 4 and backend.name == str(COMMITTED)
    size = sum(p.stat().st_size for p in COMMITTED.rglob("*") if p.is_file())
    assert size < 25 * 2**20, f"committed model is {size / 2**20:.1f} MB"
    ids = backend.tokenizer("An image of ankle boot").input_ids
    assert ids[0] == 49406 and ids[-1] == 49407


@pytest.mark.skipif(not (COMMITTED / "model_index.json").is_file(), reason="no committed model")
@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="no Fashion-MNIST"
)
def test_sign_on_the_trained_model():
    """NOTES.md asks a trained model to confirm the sign: with s = E[L_null - L_class], the
    highest-s patch of a scene overlaps the labelled item more than a random patch does, and
    the lowest-s patch less."""
    from distill.data import ResizedImages, build_source, collate_images
    from distill.localization import box_iou, random_patch_expectation
    from distill.scoring.module import ScoringModule
    from distill.scoring.relevance import pool_scores
    from tests.conftest import compose

    cfg = compose("distill", ["experiment=demo", "data.images_per_class=5"])
    source = build_source(cfg.data)
    backend = DiffusionBackend.load(str(COMMITTED), dtype="fp32")
    module = ScoringModule(backend, source.classes, cfg.scoring, 64)
    ds = ResizedImages(source, 64, backend.vae_factor)
    batch = collate_images([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        pooled = pool_scores(module.score(batch["pixels"], batch["label"], batch["source"]), 8, 1)
    best, worst, rand = [], [], []
    for i, p in enumerate(pooled):
        obj = source.boxes[i]
        for store, flat in ((best, int(p.argmax())), (worst, int(p.argmin()))):
            r, c = divmod(flat, p.shape[1])
            store.append(box_iou((4 * c, 4 * r, 4 * c + 32, 4 * r + 32), obj))
        rand.append(random_patch_expectation(obj, 64, 64, 32, 4)[0])
    assert np.mean(best) > np.mean(rand) + 0.05 > np.mean(worst) + 0.1, (
        np.mean(best),
        np.mean(rand),
        np.mean(worst),
    )


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {
        f"{sub}/{k}": v
        for sub in ("unet", "text_encoder", "vae")
        for f in (folder / sub).glob("*.safetensors")
        for k, v in load_file(f).items()
    }


def test_a_killed_run_resumes_to_the_same_model(fake_fashion, tmp_path, monkeypatch):
    """Stopped after its third U-Net step (a checkpoint at step 2), the same command continues
    from the checkpoint and writes the model an uninterrupted run writes, bit for bit."""
    import distill.train_diffusion as td

    cfg = tiny_cfg(fake_fashion, tmp_path / "whole")
    whole = _weights(train(cfg))

    cut = tiny_cfg(fake_fashion, tmp_path / "cut")
    real = td.F.mse_loss
    calls = {"n": 0}

    def dies_on_third_unet_step(pred, target):
        if pred.shape[1] == 4:  # the U-Net's epsilon loss (the VAE's has 3 channels)
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
        return real(pred, target)

    monkeypatch.setattr(td.F, "mse_loss", dies_on_third_unet_step)
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    monkeypatch.setattr(td.F, "mse_loss", real)
    work = Path(cut.work_dir)
    assert torch.load(work / "unet.ckpt", weights_only=False)["step"] == 2
    resumed = _weights(train(cut))
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k


def test_resume_refuses_other_settings(fake_fashion, tmp_path):
    from distill.errors import DistillError

    cfg = tiny_cfg(fake_fashion, tmp_path / "m")
    train(cfg)
    with pytest.raises(DistillError, match=r"other settings \(null_prob\).*resume=false"):
        train(OmegaConf.merge(cfg, {"null_prob": 0.3}))
    # resume=false starts afresh in the same folder
    train(OmegaConf.merge(cfg, {"null_prob": 0.3, "resume": False}))


def test_probe_matches_a_per_image_loop():
    """The batched probe equals a plain loop: one image, one draw, one prompt at a time."""
    from diffusers import UNet2DConditionModel

    from distill.diffusion.probe import prompt_losses, stratified_draws, summarize

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=8,
    ).eval()
    ac = torch.linspace(0.99, 0.01, 1000)
    z = torch.randn(3, 4, 8, 8)
    embs = torch.randn(4, 5, 8)  # 3 classes and the null prompt
    t, eps = stratified_draws(3, 4, (4, 8, 8), 100, 700, seed=1)
    # one draw per quarter of [100, 700]
    assert ((t - 100) // 151 == torch.arange(4)).all() and t.min() >= 100 and t.max() <= 700
    fast = prompt_losses(unet, z, embs, ac, t, eps, batch=5)
    slow = torch.empty(3, 4, 4)
    with torch.no_grad():
        for b in range(3):
            for p in range(4):
                for n in range(4):
                    a = ac[t[b, n]]
                    x = a.sqrt() * z[b] + (1 - a).sqrt() * eps[b, n]
                    pred = unet(x[None], t[b, n][None], encoder_hidden_states=embs[p][None]).sample
                    slow[b, p, n] = (pred[0] - eps[b, n]).pow(2).mean()
    assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-6)
    labels = torch.tensor([0, 1, 2])
    r = summarize(fast, labels)
    m = slow.mean(dim=2)
    assert r["top1"] == pytest.approx(float((m[:, :3].argmin(1) == labels).float().mean()))
    gain = [(m[i, 3] - m[i, labels[i]]) / m[i, 3] for i in range(3)]
    assert r["gain_vs_null"] == pytest.approx(float(sum(gain) / 3), abs=1e-6)


def test_focused_timesteps_and_card_notes(fake_fashion, tmp_path):
    notes = tmp_path / "tried.md"
    notes.write_text("## Settings tried\n\n| run | top-1 |\n| --- | --- |\n| base | 1% |\n")
    cfg = tiny_cfg(
        fake_fashion,
        tmp_path / "m",
        unet={"steps": 2, "t_focus": [0.1, 0.7], "t_focus_prob": 1.0},
        card_notes=str(notes),
    )
    card = (train(cfg) / "README.md").read_text()
    assert "100% in [0.1, 0.7] of the schedule" in card and "| base | 1% |" in card
