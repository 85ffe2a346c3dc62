"""The LightningModule that trains one classifier: a student on a distilled set (soft labels
from a frozen teacher, online or stored, or hard labels) or a teacher on the real training
split (hard labels). Paper §3.5 (FKD-style label calibration), RDED's training loop.

Batches arrive as uint8; augmentation, CutMix, normalisation and the teacher's forward all
run batched on the training device. Every random draw of a step is seeded by
(plan seed, epoch, step, rank), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from distill.errors import ConfigError
from evaluate.augment import BatchAugment, normalize
from evaluate.cutmix import apply_cutmix, mix_targets, sample_cutmix
from evaluate.data import EpochBatches, ShardBatches, batch_loader
from evaluate.losses import kd_kl_loss
from evaluate.schedule import schedule_factor

log = logging.getLogger(__name__)

TARGETS = ("hard", "online", "stored")


class Classifier(L.LightningModule):
    """Train ``model`` for ``epochs`` on ``train_set`` and track validation top-1.

    Args:
        model: the network being trained.
        train_set / val_set: batch datasets (``dataset[list_of_indices]`` -> uint8 images,
            labels), see `evaluate.data`.
        confusion_classes: with C > 0, validation also counts a C x C confusion matrix
            (``self.confusion``: label x prediction), for the teacher's class-order probe.
        targets: ``hard`` (cross-entropy on CutMix-mixed labels), ``online`` (KL to the
            teacher on each augmented batch, RDED) or ``stored`` (KL to teacher outputs
            computed once for fixed augmentation seeds, FKD/SRe2L).
        teacher: frozen teacher for ``online``/``stored``.
        norm / teacher_norm: (mean, std) of each network's input, kept apart (timm's
            distillation task does the same): a teacher trained on other statistics still
            sees what it was trained on.
        teacher_size: the teacher's input side when it differs from the student's.
        aug: batched augmentation; ``size`` is the trained model's input side.
        optimizer: a Hydra node with ``_target_`` and ``_partial_: true``.
        schedule: ``{name, warmup_epochs, warmup_start, step_epochs, gamma}`` for
            `evaluate.schedule.lr_factor`.
        plan_seed: seeds batch order and augmentation (the student seed, or the fixed
            ``labels.seed`` with stored labels, whose batches must repeat).
        best_from: validations after fewer epochs do not count for ``acc_best`` (RDED takes
            the best over the last 20% of epochs).
        stored_epochs: with ``stored``, how many epochs of augmentation are labelled and
            cycled (None = every epoch).
        stored_dir: where stored soft labels are cached and reused across seeds.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set,
        val_set,
        *,
        epochs: int,
        global_batch: int,
        val_batch: int,
        norm: tuple[list[float], list[float]],
        aug: BatchAugment,
        optimizer: Any,
        schedule: dict,
        plan_seed: int,
        targets: str = "hard",
        teacher: nn.Module | None = None,
        teacher_norm: tuple[list[float], list[float]] | None = None,
        teacher_size: int | None = None,
        temperature: float = 20.0,
        t2_scale: bool = False,
        cutmix_beta: float = 0.0,
        label_smoothing: float = 0.0,
        best_from: int = 0,
        stored_epochs: int | None = None,
        stored_dir: str | None = None,
        stored_key: dict | None = None,
        workers: int = 0,
        confusion_classes: int = 0,
    ):
        super().__init__()
        if targets not in TARGETS:
            raise ConfigError(f"labels.kind={targets!r}: use one of {TARGETS}")
        if targets != "hard" and teacher is None:
            raise ConfigError(f"labels.kind={targets!r} needs a teacher")
        if epochs:  # fail on a bad schedule name now, not after the first epoch
            schedule_factor(dict(schedule), 0, epochs)
        self.model = model
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.train_set, self.val_set = train_set, val_set
        self.epochs, self.global_batch, self.val_batch = epochs, global_batch, val_batch
        self.aug, self.optimizer_cfg, self.schedule = aug, optimizer, dict(schedule)
        self.plan_seed, self.targets = int(plan_seed), targets
        self.temperature, self.t2_scale = float(temperature), bool(t2_scale)
        self.cutmix_beta, self.label_smoothing = float(cutmix_beta), float(label_smoothing)
        self.best_from = int(best_from)
        self.stored_epochs = stored_epochs if targets == "stored" else None
        self.stored_dir, self.stored_key = stored_dir, dict(stored_key or {})
        self.teacher_size, self.workers = teacher_size, workers
        self.register_buffer("mean", torch.tensor(norm[0]), persistent=False)
        self.register_buffer("std", torch.tensor(norm[1]), persistent=False)
        tn = teacher_norm or norm
        self.register_buffer("t_mean", torch.tensor(tn[0]), persistent=False)
        self.register_buffer("t_std", torch.tensor(tn[1]), persistent=False)
        # Validation state as buffers: saved in checkpoints (resume) and copied back to the
        # main process by ddp_spawn together with the weights.
        for name in ("best_acc", "best_epoch", "last_acc", "last_epoch"):
            self.register_buffer(name, torch.tensor(-1.0, dtype=torch.float64))
        self._correct = self._total = None
        # Validation confusion counts (label x prediction) over this many outputs, for the
        # teacher probe; 0 = not tracked.
        self.confusion_classes, self.confusion = int(confusion_classes), None
        self._stored: torch.Tensor | None = None
        self._plan: EpochBatches | None = None

    # ------------------------------------------------------------------ modes

    def train(self, mode: bool = True):
        """Lightning puts the whole module in train mode each epoch; the teacher stays frozen
        (its BatchNorm statistics must not drift, and dropout must not fire)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # ------------------------------------------------------------------ data

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_set or ()) / self.global_batch)

    def train_dataloader(self):
        self._plan = EpochBatches(
            len(self.train_set),
            self.global_batch,
            self.plan_seed,
            rank=self.global_rank,
            world=self.trainer.world_size,
            cycle=self.stored_epochs,
        )
        return batch_loader(self.train_set, self._plan, self.workers)

    def val_dataloader(self):
        world = self.trainer.world_size
        sampler = ShardBatches(len(self.val_set), self.val_batch, self.global_rank, world)
        return batch_loader(self.val_set, sampler, self.workers)

    # ------------------------------------------------------------------ batches

    def _rng(self, epoch: int, step: int) -> np.random.Generator:
        plan_epoch = self._plan.plan_epoch(epoch) if self._plan else epoch
        return np.random.default_rng([self.plan_seed, plan_epoch, step, self.global_rank, 7])

    def augment_batch(self, images: torch.Tensor, epoch: int, step: int):
        """uint8 batch -> augmented, CutMix-ed float batch in [0, 1], and the CutMix draw."""
        rng = self._rng(epoch, step)
        x = images.float().div_(255.0)
        x = self.aug.apply(x, self.aug.sample(x.shape[0], x.shape[2], x.shape[3], rng))
        mix = sample_cutmix(x.shape[0], x.shape[2], x.shape[3], self.cutmix_beta, rng)
        return apply_cutmix(x, mix), mix

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.teacher_size and self.teacher_size != x.shape[-1]:
            x = F.interpolate(x, size=self.teacher_size, mode="bilinear", antialias=True)
        with torch.no_grad():
            return self.teacher(normalize(x, self.t_mean, self.t_std)).float()

    # ------------------------------------------------------------------ training

    def on_fit_start(self):
        if self.teacher is not None:
            # Lightning warns about modules in eval mode at the start of training: the
            # frozen teacher is, on purpose (see `train`).
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

    def on_train_start(self):
        # After the train loader exists (the plan lives there); also runs on resume.
        if self.targets == "stored":
            self._stored = self._stored_labels().to(self.device)

    def on_train_epoch_start(self):
        f = schedule_factor(self.schedule, self.current_epoch, self.epochs)
        for opt in self.trainer.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * f
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_epoch=True)

    def on_train_batch_start(self, batch, batch_idx):
        # Dropout and stochastic depth draw from the global generator: seed it per step so a
        # resumed run is the same run.
        key = (self.plan_seed, self.current_epoch, batch_idx, self.global_rank)
        torch.manual_seed(int(np.random.default_rng(key).integers(2**62)))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        x, mix = self.augment_batch(images, self.current_epoch, batch_idx)
        logits = self.model(normalize(x, self.mean, self.std))
        if self.targets == "hard":
            onehot = F.one_hot(labels, logits.shape[1]).float()
            loss = F.cross_entropy(
                logits.float(), mix_targets(onehot, mix), label_smoothing=self.label_smoothing
            )
        else:
            if self.targets == "online":
                t_logits = self.teacher_logits(x)
            else:
                plan_epoch = self._plan.plan_epoch(self.current_epoch)
                t_logits = self._stored[plan_epoch, batch_idx, : x.shape[0]].float()
            loss = kd_kl_loss(logits, t_logits, self.temperature, self.t2_scale)
            agree = (logits.argmax(1) == t_logits.argmax(1)).float().mean()
            self.log("train/teacher_agreement", agree, on_step=False, on_epoch=True)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    # ------------------------------------------------------------------ stored labels

    def _stored_labels(self) -> torch.Tensor:
        """Teacher logits for every (plan epoch, step) of this rank, computed once.

        FKD/SRe2L store soft labels for fixed augmentation seeds and replay them; here the
        plan and augmentation are seeded by ``plan_seed`` (fixed, independent of the student
        seed), so one file serves all students. Shape (epochs, steps, local batch, classes),
        fp16 logits (the temperature is applied at use).
        """
        plan, steps = self._plan, self.steps_per_epoch
        n_epochs = self.stored_epochs or self.epochs
        key = dict(
            self.stored_key,
            plan_seed=self.plan_seed,
            epochs=n_epochs,
            steps=steps,
            global_batch=self.global_batch,
            n=len(self.train_set),
            world=plan.world,
        )
        path = None
        if self.stored_dir:
            path = Path(self.stored_dir) / f"ws{plan.world}_rank{plan.rank}.pt"
            if path.is_file():
                blob = torch.load(path, map_location="cpu", weights_only=True)
                if blob.get("key") == key:
                    log.info("stored soft labels: reusing %s", path)
                    return blob["logits"]
                log.info("stored soft labels in %s were made for another plan; recomputing", path)
        local = max(len(b) for b in np.array_split(np.arange(self.global_batch), plan.world))
        out = None
        was = self.teacher.training
        self.teacher.eval()
        for e in range(n_epochs):
            for s in range(steps):
                images, _ = self.train_set[plan.batch(e, s)]
                x, _ = self.augment_batch(images.to(self.device), e, s)
                logits = self.teacher_logits(x).half().cpu()
                if out is None:
                    out = torch.zeros(n_epochs, steps, local, logits.shape[1], dtype=torch.half)
                out[e, s, : logits.shape[0]] = logits
        self.teacher.train(was)
        mb = out.numel() * 2 / 2**20
        log.info("stored soft labels: %d epochs x %d steps, %.1f MiB", n_epochs, steps, mb)
        if path is not None:
            from distill.io import atomic_path

            with atomic_path(path) as tmp:
                torch.save({"key": key, "logits": out}, tmp)
        return out

    # ------------------------------------------------------------------ validation

    def on_validation_epoch_start(self):
        self._correct = torch.zeros((), dtype=torch.long, device=self.device)
        self._total = torch.zeros((), dtype=torch.long, device=self.device)
        c = self.confusion_classes
        self._confusion = torch.zeros((c, c), dtype=torch.long, device=self.device) if c else None

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        x = images.float().div_(255.0)
        if x.shape[-1] != self.aug.size:
            x = F.interpolate(x, size=self.aug.size, mode="bilinear", antialias=True)
        logits = self.model(normalize(x, self.mean, self.std))
        pred = logits.argmax(1)
        self._correct += (pred == labels).sum()
        self._total += labels.numel()
        if self._confusion is not None:
            c = self.confusion_classes
            self._confusion += torch.bincount(labels * c + pred, minlength=c * c).view(c, c)

    def on_validation_epoch_end(self):
        correct = self.trainer.strategy.reduce(self._correct, reduce_op="sum")
        total = self.trainer.strategy.reduce(self._total, reduce_op="sum")
        acc = 100.0 * float(correct) / max(1, int(total))
        if self._confusion is not None:
            self.confusion = (
                self.trainer.strategy.reduce(self._confusion, reduce_op="sum").cpu().long()
            )
        # Epochs behind this validation, from the step count: right both inside fit and in
        # the validate() that follows it.
        done = self.global_step // max(1, self.steps_per_epoch)
        self.last_acc.fill_(acc)
        self.last_epoch.fill_(done)
        if done >= self.best_from and acc > float(self.best_acc):
            self.best_acc.fill_(acc)
            self.best_epoch.fill_(done)
        self.log("val/acc", acc, sync_dist=True)
        self.log("val/acc_best", max(float(self.best_acc), 0.0), sync_dist=True)
        self.log("val/epoch", float(done), sync_dist=True)

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        """RDED's parameter groups: weight decay on weight matrices and kernels only, not on
        biases or normalisation parameters (`validation/utils.py: get_parameters`)."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (decay if "weight" in name and p.ndim > 1 else no_decay).append(p)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = instantiate(self.optimizer_cfg)(groups)
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
        return opt

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint):
        # The teacher is frozen and reloaded from its own file: keep it out of every
        # student checkpoint (a ResNet-50 teacher would double each file).
        sd = checkpoint["state_dict"]
        for k in [k for k in sd if k.startswith("teacher.")]:
            del sd[k]

    def on_load_checkpoint(self, checkpoint):
        if self.teacher is not None:
            checkpoint["state_dict"].update(
                {f"teacher.{k}": v for k, v in self.teacher.state_dict().items()}
            )

    def results(self) -> dict:
        """Final and best top-1 (%) with the epochs they were measured after."""
        return {
            "acc_final": float(self.last_acc),
            "final_epoch": int(self.last_epoch),
            "acc_best": float(self.best_acc) if float(self.best_acc) >= 0 else float(self.last_acc),
            "best_epoch": int(self.best_epoch)
            if float(self.best_acc) >= 0
            else int(self.last_epoch),
        }
