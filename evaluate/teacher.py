"""The frozen teacher whose soft labels students learn from (paper §3.5): trained here on the
real training split (`mode=teacher`, or once on demand with ``teacher.train_if_missing``),
or loaded from a checkpoint or pretrained weights, and checked against the data's classes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf
from torch import nn

from distill.data import ClassInfo
from distill.data.classes import imagenet_by_wnid, write_classes_csv
from distill.errors import ConfigError, ModelError
from distill.io import atomic_path, atomic_write_json
from evaluate.augment import BatchAugment
from evaluate.data import RealData
from evaluate.models import SelectOutputs, build_model, count_outputs, fit_state, read_checkpoint
from evaluate.module import Classifier
from evaluate.protocol import input_size, stats
from evaluate.training import SaveLast, build_loggers, build_trainer, close_loggers, fit

log = logging.getLogger(__name__)

TEACHER_FORMAT = "dpd-teacher-v1"


@dataclass
class Teacher:
    """A loaded, frozen teacher and how to feed it."""

    model: nn.Module
    name: str
    checkpoint: str | None
    norm: tuple[list[float], list[float]]
    size: int


def model_label(spec) -> str:
    """The name a model goes by in results and tables (its ``_target_`` if custom)."""
    target = spec.get("model")
    if target is not None and target.get("_target_"):
        return str(spec.get("name") or target._target_)
    return str(spec.name)


def _kwargs(spec) -> dict:
    return OmegaConf.to_container(spec.get("kwargs") or {}, resolve=True)


def load_teacher(cfg, classes: list[ClassInfo], checkpoint: str | None) -> Teacher:
    """Build ``cfg.teacher``, fill it from ``checkpoint`` (or pretrained weights) and check
    that its outputs are the data's classes, in the data's order."""
    spec, dataset = cfg.teacher, cfg.data.name
    name = model_label(spec)
    keys = [c.key for c in classes]
    student_size = input_size(cfg)
    if not checkpoint and not spec.get("pretrained"):
        raise ConfigError(
            f"teacher={name} has no weights: set teacher.checkpoint=PATH (the teacher.pt of a "
            "`python -m evaluate mode=teacher` run, a Lightning .ckpt or a state dict), "
            "teacher.train_if_missing=true to train it here first, or teacher.pretrained=true "
            "(online); labels=hard trains without a teacher."
        )
    outputs = 1000 if spec.get("imagenet_outputs") else len(classes)
    state, meta = read_checkpoint(checkpoint) if checkpoint else (None, {})
    # A teacher.pt says what it is: a wrong architecture or class order is named as such,
    # before any shape mismatch could hide it; its input size builds the right head.
    _check_meta(meta, spec, name, keys, checkpoint, dataset)
    size = int(spec.get("input_size") or meta.get("input_size") or student_size)
    model = build_model(spec, outputs, size, "teacher")
    if state is not None:
        fit_state(model, state, checkpoint, "teacher", name, num_classes=outputs)
    got = count_outputs(model, size)
    if got != outputs:
        raise ModelError(
            f"teacher {name} ({checkpoint or 'pretrained'}) has {got} outputs but data={dataset} "
            f"has {len(classes)} classes"
            + (
                " (teacher.imagenet_outputs=true expects 1000)"
                if spec.get("imagenet_outputs")
                else ""
            )
        )
    if spec.get("imagenet_outputs"):
        table = imagenet_by_wnid()
        bad = [k for k in keys if k not in table]
        if bad:
            raise ConfigError(
                f"teacher.imagenet_outputs=true maps classes by WordNet ID, but data={dataset} "
                f"has keys that are not ImageNet-1K WordNet IDs: {bad[:5]}"
            )
        model = SelectOutputs(model, [table[k].index for k in keys])
    meta_norm = meta.get("normalize")
    fallback = (meta_norm["mean"], meta_norm["std"]) if meta_norm else None
    norm = stats(spec.get("normalize"), fallback)
    model.requires_grad_(False).eval()
    return Teacher(model, name, str(checkpoint) if checkpoint else None, norm, size)


def _check_meta(meta: dict, spec, name: str, keys: list[str], ckpt, dataset: str) -> None:
    """A teacher.pt knows its architecture and classes: refuse a mismatch with the config."""
    if not meta:
        return
    arch = meta.get("arch")
    if arch and arch != name:
        raise ModelError(
            f"checkpoint {ckpt} holds a {arch} teacher but teacher={name}; use teacher={arch}"
        )
    kw = meta.get("kwargs")
    if kw is not None and kw != _kwargs(spec):
        raise ModelError(
            f"checkpoint {ckpt} was trained as {arch} with kwargs {kw}, but teacher.kwargs="
            f"{_kwargs(spec)}"
        )
    theirs = meta.get("classes")
    if theirs is not None and list(theirs) != keys:
        raise ModelError(
            f"class order differs: teacher checkpoint {ckpt} was trained on {len(theirs)} classes "
            f"{theirs[:6]}{' ...' if len(theirs) > 6 else ''}; data={dataset} has {len(keys)} "
            f"{keys[:6]}{' ...' if len(keys) > 6 else ''}. Label i must mean the same class for "
            "both: set data.classes to the teacher's order (or retrain the teacher)."
        )


def train_teacher(cfg, real: RealData, out_dir: Path, save_to: Path | None = None) -> dict:
    """Train ``cfg.teacher`` with cross-entropy on the real training split (``teacher_fit``
    recipe), validate on the real validation split, and write ``teacher.pt``.

    Returns:
        The results dict also written to ``out_dir/results.json``.
    """
    tf, spec = cfg.teacher_fit, cfg.teacher
    name = model_label(spec)
    size = input_size(cfg)
    classes = real.classes
    train_set = real.train_set()
    torch.manual_seed(int(cfg.seed))
    model = build_model(spec, len(classes), size, "teacher")
    got = count_outputs(model, size)
    if got != len(classes):
        raise ModelError(
            f"teacher {name} has {got} outputs but data={cfg.data.name} has {len(classes)} classes"
        )
    norm = stats(spec.get("normalize"))
    aug = BatchAugment(
        size,
        scale=tf.aug.scale,
        ratio=tf.aug.ratio,
        flip=tf.aug.flip,
        shuffle_patches=tf.aug.shuffle_patches,
        pad=tf.aug.pad,
    )
    module = Classifier(
        model,
        train_set,
        real.val_set,
        epochs=int(tf.epochs),
        global_batch=min(int(tf.batch_size), len(train_set)),
        val_batch=int(cfg.val.batch_size),
        norm=norm,
        aug=aug,
        optimizer=tf.optim,
        schedule=tf.schedule,
        plan_seed=int(cfg.seed),
        targets="hard",
        cutmix_beta=float(tf.aug.cutmix_beta),
        label_smoothing=float(tf.label_smoothing),
        workers=int(cfg.num_workers),
    )
    loggers = build_loggers(cfg, out_dir, f"teacher-{name}-{cfg.data.name}", out_dir.name)
    ckpt = out_dir / "checkpoints" / "last.ckpt"
    trainer = build_trainer(
        cfg, out_dir, int(tf.epochs), int(tf.val_every), loggers, [SaveLast(ckpt)]
    )
    t0 = time.time()
    res = fit(module, trainer, ckpt, bool(cfg.resume))
    close_loggers(loggers)
    meta = {
        "format": TEACHER_FORMAT,
        "arch": name,
        "kwargs": _kwargs(spec),
        "classes": [c.key for c in classes],
        "class_names": [c.name for c in classes],
        "dataset": str(cfg.data.name),
        "input_size": size,
        "normalize": {"mean": norm[0], "std": norm[1]},
        "val_acc": res["acc_final"],
        "val_acc_best": res["acc_best"],
        "epochs": int(tf.epochs),
        "recipe": OmegaConf.to_container(tf, resolve=True),
    }
    results = {
        "mode": "teacher",
        "teacher": name,
        "dataset": str(cfg.data.name),
        "acc_final": res["acc_final"],
        "acc_best": res["acc_best"],
        "best_epoch": res["best_epoch"],
        "epochs": int(tf.epochs),
        "train_time_s": round(time.time() - t0, 2),
        "checkpoint": str(save_to or out_dir / "teacher.pt"),
        "classes": [c.key for c in classes],
    }
    _write_teacher(model, meta, results, classes, out_dir, save_to)
    trainer.strategy.barrier("teacher written")
    log.info("teacher %s: val top-1 %.2f%% (best %.2f%%)", name, res["acc_final"], res["acc_best"])
    return results


@rank_zero_only
def _write_teacher(model, meta, results, classes, out_dir: Path, save_to: Path | None) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for path in {out_dir / "teacher.pt", *([Path(save_to)] if save_to else [])}:
        with atomic_path(path) as tmp:
            torch.save({"state_dict": state, "meta": meta}, tmp)
    write_classes_csv(classes, out_dir / "classes.csv")
    atomic_write_json(out_dir / "results.json", results)
