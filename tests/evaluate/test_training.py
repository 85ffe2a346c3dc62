"""Training mechanics on tiny models: resume is exact, 2-rank DDP splits the global batch,
the frozen teacher stays frozen, stored soft labels are the teacher's on the replayed batch."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from distill.runtime import EndSpawnedGroup
from evaluate.augment import BatchAugment, normalize
from evaluate.data import EpochBatches, ImageStore, StoreDataset
from evaluate.losses import kd_kl_loss
from evaluate.models import ConvNet
from evaluate.module import Classifier
from evaluate.training import SaveLast, fit

OPTIM = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.01}
NORM = ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])


def tiny_store(n: int, seed: int, classes: int = 3, size: int = 16) -> StoreDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    images[:, labels.numpy() % 3] = images[:, labels.numpy() % 3] // 2 + 128  # a class cue
    return StoreDataset(ImageStore(images, labels))


def make_module(targets="online", teacher=None, epochs=4, seed=0, **kw) -> Classifier:
    torch.manual_seed(seed)
    student = ConvNet(3, depth=2, width=8, image_size=16)
    if targets != "hard" and teacher is None:
        torch.manual_seed(123)
        teacher = ConvNet(3, depth=2, width=8, image_size=16)
    args = dict(
        epochs=epochs,
        global_batch=4,
        val_batch=8,
        norm=NORM,
        aug=BatchAugment(16, scale=(0.5, 1.0), shuffle_patches=2),
        optimizer=OPTIM,
        schedule={"name": "cosine"},
        plan_seed=seed,
        targets=targets,
        teacher=teacher,
        teacher_norm=([0.4, 0.4, 0.4], [0.3, 0.3, 0.3]),
        temperature=4.0,
        cutmix_beta=1.0,
        best_from=2,
    )
    args.update(kw)
    return Classifier(student, tiny_store(10, 0), tiny_store(9, 1), **args)


def trainer(tmp_path: Path, epochs: int, callbacks=(), **kw) -> L.Trainer:
    return L.Trainer(
        default_root_dir=str(tmp_path),
        max_epochs=epochs,
        accelerator="cpu",
        devices=kw.pop("devices", 1),
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=[*callbacks, EndSpawnedGroup()],
        **kw,
    )


class Interrupt(Callback):
    """Kill the run after ``after`` epochs, once that epoch's checkpoint is on disk."""

    def __init__(self, after: int):
        self.after = after

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 == self.after:
            raise RuntimeError("simulated kill")


def test_resume_is_exact(tmp_path):
    epochs = 4
    a = make_module(epochs=epochs)
    res_a = fit(a, trainer(tmp_path / "a", epochs), tmp_path / "a.ckpt", resume=True)

    ckpt = tmp_path / "b" / "last.ckpt"
    b = make_module(epochs=epochs)
    t = trainer(tmp_path / "b", epochs, [SaveLast(ckpt), Interrupt(2)])
    with pytest.raises(RuntimeError, match="simulated kill"):
        t.fit(b)
    assert ckpt.is_file() and t.global_step == 2 * 3  # 10 images / batch 4 = 3 steps
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] == 6
    assert not any(k.startswith("teacher.") for k in state["state_dict"])  # kept out

    c = make_module(epochs=epochs)  # a fresh process: new module, new trainer
    t2 = trainer(tmp_path / "b", epochs, [SaveLast(ckpt)])
    res_c = fit(c, t2, ckpt, resume=True)
    assert t2.global_step == epochs * 3
    for (k, va), (_, vc) in zip(
        a.model.state_dict().items(), c.model.state_dict().items(), strict=True
    ):
        assert torch.equal(va, vc), f"{k} differs after resume"
    assert res_a == res_c
    assert res_a["final_epoch"] == epochs and res_a["best_epoch"] >= 2


def test_frozen_teacher_and_lr_schedule(tmp_path):
    m = make_module(epochs=3)
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    lrs = []

    class LR(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
            assert not pl_module.teacher.training and pl_module.model.training

    t = trainer(tmp_path, 3, [LR()])
    t.fit(m)
    for k, v in m.teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher {k} changed"  # BN stats included
    expect = [1e-3 * 0.5 * (1 + np.cos(np.pi * e / 3)) for e in range(3)]
    assert np.allclose(lrs, expect)
    # No weight decay on biases and norm parameters (RDED's parameter groups).
    groups = t.optimizers[0].param_groups
    assert groups[1]["weight_decay"] == 0.0 and all(p.ndim == 1 for p in groups[1]["params"])
    assert all(p.ndim > 1 for p in groups[0]["params"])


def test_online_loss_uses_teacher_on_mixed_batch():
    m = make_module()
    m._plan = EpochBatches(10, 4, seed=0)
    images, _ = m.train_set[[0, 1, 2, 3]]
    x, mix = m.augment_batch(images, epoch=0, step=0)
    x2, mix2 = m.augment_batch(images, epoch=0, step=0)
    assert torch.equal(x, x2) and mix.box == mix2.box  # the same draw, from the step's seed
    assert mix is not None and (mix.perm != torch.arange(4)).any()
    t_logits = m.teacher(normalize(x, torch.tensor([0.4] * 3), torch.tensor([0.3] * 3)))
    s_logits = m.model(normalize(x, torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)))
    want = kd_kl_loss(s_logits, t_logits, 4.0)

    m.log = lambda *a, **k: None  # no trainer attached
    got = m.training_step((images, torch.zeros(4, dtype=torch.long)), 0)
    assert torch.allclose(got, want, atol=1e-6)


def test_hard_labels_mix_with_the_box():
    m = make_module(targets="hard", label_smoothing=0.0)
    m._plan = EpochBatches(10, 4, seed=0)
    m.log = lambda *a, **k: None
    images, labels = m.train_set[[0, 1, 2, 3]]
    x, mix = m.augment_batch(images, epoch=0, step=0)
    logits = m.model(normalize(x, torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)))
    logp = torch.log_softmax(logits, 1)
    want = -(
        mix.lam * logp[torch.arange(4), labels]
        + (1 - mix.lam) * logp[torch.arange(4), labels[mix.perm]]
    ).mean()
    assert torch.allclose(m.training_step((images, labels), 0), want, atol=1e-5)


def test_stored_labels_replay_teacher(tmp_path):
    m = make_module(targets="stored", epochs=3, stored_epochs=2, stored_dir=str(tmp_path / "sl"))
    t = trainer(tmp_path, 3)
    t.fit(m)
    stored = m._stored
    assert stored.shape == (2, 3, 4, 3) and stored.dtype == torch.half  # (epochs, steps, b, C)
    plan = EpochBatches(10, 4, seed=0, cycle=2)
    m.teacher.eval()
    for e in range(2):
        for s in range(3):
            idx = plan.batch(e, s)
            images, _ = m.train_set[idx]
            x, _ = m.augment_batch(images, e, s)
            want = m.teacher_logits(x)
            assert torch.allclose(stored[e, s, : len(idx)].float(), want, atol=2e-2, rtol=1e-2)
    # Epoch 2 replays epoch 0's batches (cycle=2), and a second student reuses the file.
    assert plan.batch(2, 1) == plan.batch(0, 1)
    files = list((tmp_path / "sl").glob("*.pt"))
    assert len(files) == 1
    m2 = make_module(
        targets="stored", epochs=3, stored_epochs=2, stored_dir=str(tmp_path / "sl"), seed=1
    )
    m2.plan_seed = 0
    t2 = trainer(tmp_path / "2", 3)
    t2.fit(m2)
    assert torch.equal(m2._stored.cpu(), stored.cpu())
