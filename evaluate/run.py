"""What `python -m evaluate` does: train the teacher (``mode=teacher``), or train ``seeds``
students on a distilled set against it (``mode=student``) and write ``results.json`` with
final and best top-1 per seed and their mean +- std (paper §4.1: five random students).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from distill import runtime
from distill.data.classes import write_classes_csv
from distill.data.records import write_skipped_csv
from distill.errors import ConfigError, ModelError
from distill.io import atomic_path, atomic_write_json, atomic_write_text
from distill.pipeline import needs_job_subprocess, run_job_subprocess
from evaluate.augment import BatchAugment
from evaluate.data import RealData, StoreDataset, load_distilled, read_distill_config
from evaluate.models import SelectOutputs, build_model, count_outputs
from evaluate.module import Classifier
from evaluate.protocol import (
    best_window_start,
    crop_scale,
    input_size,
    rded_batch_size,
    rded_factor,
    shuffle_factor,
    stats,
)
from evaluate.teacher import (
    Teacher,
    check_order_fit,
    load_teacher,
    model_label,
    train_teacher,
    warn_if_below_expected,
)
from evaluate.training import SaveLast, build_loggers, build_trainer, close_loggers, fit

log = logging.getLogger("evaluate")


def run(cfg) -> None:
    """Dispatch on ``cfg.mode``; a multirun job that would start DDP re-runs as a plain run."""
    if needs_job_subprocess(cfg):
        run_job_subprocess(cfg, module="evaluate")
        return
    runtime.quiet_third_party()
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("generate"):
        _generate(cfg)
    if cfg.mode == "teacher":
        real = RealData(cfg)
        train_teacher(cfg, real, out)
        _write_skipped(real, out)
    elif cfg.mode == "student":
        evaluate_students(cfg, out)
    else:
        raise ConfigError(f"mode={cfg.mode!r}: use mode=student or mode=teacher")


@rank_zero_only
def _generate(cfg) -> None:
    from evaluate.smoke import generate

    g = cfg.generate
    generate(
        Path(cfg.data.root) if cfg.data.get("root") else None,
        Path(g.distill_run) if g.get("distill_run") else None,
        list(g.ipcs),
        num_classes=int(g.num_classes),
        size=int(g.size),
        seed=int(cfg.seed),
    )


@rank_zero_only
def _write_skipped(real: RealData, out: Path) -> None:
    write_skipped_csv(real.skipped, out / "skipped.csv")


def teacher_checkpoint(cfg, real: RealData, out: Path) -> str | None:
    """The teacher's checkpoint, trained first when ``teacher.train_if_missing`` and absent.

    With ``teacher.checkpoint`` set (e.g. under ``paths.cache_dir``) the teacher is trained
    once and every later run reuses the file; unset, it lives in this run's ``teacher/``.
    """
    spec = cfg.teacher
    ckpt = spec.get("checkpoint")
    if ckpt and Path(ckpt).is_file():
        return str(ckpt)
    if not spec.get("train_if_missing"):
        if ckpt:
            raise ModelError(
                f"teacher.checkpoint={ckpt} does not exist (set teacher.train_if_missing=true "
                "to train it there first)"
            )
        return None
    teacher_dir = out / "teacher"
    log.info("training the teacher first (teacher.train_if_missing): %s", teacher_dir)
    res = train_teacher(cfg, real, teacher_dir, save_to=Path(ckpt) if ckpt else None)
    return res["checkpoint"]


def evaluate_students(cfg, out: Path) -> dict:
    """Train ``cfg.seeds`` students on ``cfg.distilled`` and write ``results.json``."""
    if not cfg.get("distilled"):
        raise ConfigError(
            "distilled is not set: pass distilled=<run>/distilled/ipc{K} (Stage II's output), "
            "or the distill run folder with ipc=K"
        )
    if int(cfg.seeds) < 1:
        raise ConfigError(f"seeds={cfg.seeds}: train at least one student")
    real = RealData(cfg)
    classes, size = real.classes, input_size(cfg)
    real_keys = real.keys
    distilled = load_distilled(cfg.distilled, classes, size, cfg.get("ipc"), str(cfg.data.name))
    distill_cfg = read_distill_config(distilled.run_dir)
    kind = str(cfg.labels.kind)
    teacher: Teacher | None = None
    teacher_acc = None
    if kind != "hard":
        teacher = load_teacher(
            cfg, classes, teacher_checkpoint(cfg, real, out), class_order=real.class_order
        )
        if cfg.get("check_teacher", True):
            teacher_acc = probe_teacher(cfg, teacher, real, out)
    subset_acc = None
    if distilled.class_subset:
        # The set holds some of the data's classes: students learn and are measured on
        # those only, and the teacher (trained on all of them) speaks over those only.
        real = real.restricted(distilled.classes)
        classes = distilled.classes
        if teacher is not None:
            teacher = restrict_teacher(teacher, real_keys, [c.key for c in classes])
            if cfg.get("check_teacher", True):
                subset_acc = teacher_top1(cfg, teacher, real, out)
    batch = int(
        cfg.batch_size
        or rded_batch_size(
            distilled.ipc, len(classes), len(distilled.store), str(cfg.data.get("kind", ""))
        )
    )
    # A batch larger than the set is the whole set (as a DataLoader over it would give).
    batch = max(1, min(batch, len(distilled.store)))
    factor = rded_factor(cfg.aug.get("factor"), distilled.tiles, distilled.ipc, size)
    aug = BatchAugment(
        size,
        scale=crop_scale(cfg.aug.scale, factor),
        ratio=cfg.aug.ratio,
        flip=cfg.aug.flip,
        shuffle_patches=shuffle_factor(cfg.aug.shuffle_patches, factor),
        pad=cfg.aug.pad,
    )
    base = {
        "mode": "student",
        "dataset": str(cfg.data.name),
        "ipc": distilled.ipc,
        "method": cfg.get("method") or _method(distill_cfg),
        "student": model_label(cfg.student),
        "teacher": teacher.name if teacher else "none",
        "labels": kind,
        "epochs": int(cfg.epochs),
        "batch_size": batch,
        "input_size": size,
        "temperature": float(cfg.loss.temperature),
        "aug_factor": factor,
        "crop_scale": list(aug.scale) if aug.scale else None,
        "shuffle_patches": aug.shuffle_patches,
        "distilled_tiles": distilled.tiles,
        "teacher_checkpoint": teacher.checkpoint if teacher else None,
        "teacher_acc": teacher_acc,
        "teacher_acc_subset": subset_acc,
        # What the students were validated on: the test split, or data.val_split=holdout's
        # held-out training items (settings chosen there never look at the test split).
        "val_split": cfg.data.get("val_split"),
        "val_images": len(real.val_set),
        "distilled": str(distilled.path),
        "distilled_images": len(distilled.store),
        "distill_run": str(distilled.run_dir) if distilled.run_dir else None,
        "t_range": (distill_cfg.get("scoring") or {}).get("t_range"),
        "classes": [c.key for c in classes],
        # A class-subset set: the classes of data it holds (= classes); null for all of them.
        "class_subset": [c.key for c in classes] if distilled.class_subset else None,
        "class_order": real.class_order,
        "distilled_class_order": distilled.info.get("class_order"),
        "numerics": runtime.numerics(),
    }
    base["headline"] = headline_metric(cfg.val.get("headline", "best"))
    _write_run_files(cfg, out, classes, distilled, real)
    seeds = [int(cfg.seed) + i for i in range(int(cfg.seeds))]
    per_seed: list[dict] = []
    for seed in seeds:
        res, loggers = train_student(cfg, seed, distilled, real, teacher, aug, batch, out, base)
        per_seed.append(res)
        summary = summarize(base, per_seed, seeds)
        _write_json(out / "results.json", summary)
        _log_table(loggers, per_seed)
        close_loggers(loggers)
    log.info(
        "%s <- %s on %s IPC %s: top-1 %% best %.2f +- %.2f, final %.2f +- %.2f over seeds %s "
        "(headline: %s)",
        base["student"],
        base["teacher"],
        base["dataset"],
        base["ipc"],
        summary["best_mean"],
        summary["best_std"],
        summary["mean"],
        summary["std"],
        seeds,
        base["headline"],
    )
    return summary


def headline_metric(name: str) -> str:
    """``val.headline``: which top-1 a run reports first, ``best`` (RDED, the paper) or
    ``final``."""
    if name not in ("best", "final"):
        raise ConfigError(f"val.headline={name!r}: use best (the paper's) or final")
    return name


def train_student(cfg, seed, distilled, real, teacher, aug, batch, out: Path, base: dict):
    """One student: fresh init from ``seed``, trained to the end, resumed if interrupted.

    Returns:
        Its results and its (still open) loggers.
    """
    seed_dir = out / f"seed{seed}"
    done = seed_dir / "result.json"
    key = run_key(cfg, base)
    if cfg.resume and (seed_dir / "run_key.txt").is_file():
        old = (seed_dir / "run_key.txt").read_text().strip()
        if old != key:
            raise ConfigError(
                f"{seed_dir} was trained under another configuration (key {old} vs {key}): "
                "resuming would mix two experiments. Use a new run folder, or resume=false to "
                "retrain it."
            )
        if done.is_file():
            log.info("seed %d already finished: %s", seed, done)
            return json.loads(done.read_text()), []
    _write_text(seed_dir / "run_key.txt", key + "\n")
    L.seed_everything(seed, workers=True, verbose=False)
    num_classes = len(real.classes)
    student = build_model(cfg.student, num_classes, aug.size, "student")
    got = count_outputs(student, aug.size)
    if got != num_classes:
        raise ModelError(
            f"student {model_label(cfg.student)} has {got} outputs but data={cfg.data.name} "
            f"has {num_classes} classes"
        )
    kind = str(cfg.labels.kind)
    optim = cfg.optim
    if cfg.student.get("adamw_lr") and str(optim._target_).endswith("AdamW"):
        # RDED's per-architecture AdamW rate (argument.py): 2.5e-3 for MobileNet-V2 ...
        optim = OmegaConf.merge(optim, {"lr": float(cfg.student.adamw_lr)})
    epochs = int(cfg.epochs)
    module = Classifier(
        student,
        StoreDataset(distilled.store),
        real.val_set,
        epochs=epochs,
        global_batch=batch,
        val_batch=int(cfg.val.batch_size),
        norm=stats(cfg.student.get("normalize")),
        aug=aug,
        optimizer=optim,
        schedule=cfg.schedule,
        plan_seed=int(cfg.labels.seed) if kind == "stored" else seed,
        targets=kind,
        teacher=teacher.model if teacher else None,
        teacher_norm=teacher.norm if teacher else None,
        teacher_size=teacher.size if teacher else None,
        temperature=float(cfg.loss.temperature),
        t2_scale=bool(cfg.loss.t2_scale),
        cutmix_beta=float(cfg.aug.cutmix_beta),
        label_smoothing=float(cfg.labels.get("label_smoothing", 0.0)),
        best_from=best_window_start(epochs, float(cfg.val.best_after)),
        stored_epochs=cfg.labels.get("epochs"),
        stored_dir=str(out / "soft_labels"),
        stored_key={
            "teacher": teacher.checkpoint if teacher else None,
            "distilled": str(distilled.path),
            "aug": [aug.size, aug.scale, aug.ratio, aug.flip, aug.shuffle_patches, aug.pad],
            "cutmix_beta": float(cfg.aug.cutmix_beta),
        },
        workers=int(cfg.num_workers),
    )
    name = f"{base['student']}-{base['teacher']}-{base['dataset']}-ipc{base['ipc']}-seed{seed}"
    loggers = build_loggers(cfg, seed_dir, name, out.name)
    _log_grid(loggers, out)
    ckpt = seed_dir / "checkpoints" / "last.ckpt"
    trainer = build_trainer(
        cfg, seed_dir, epochs, int(cfg.val.every_n_epochs), loggers, [SaveLast(ckpt)]
    )
    t0 = time.time()
    res = fit(module, trainer, ckpt, bool(cfg.resume))
    res = {
        "seed": seed,
        **res,
        "steps": int(trainer.global_step),
        "train_time_s": round(time.time() - t0, 2),
    }
    _write_seed(seed_dir, res, student)
    trainer.strategy.barrier("seed written")
    log.info("seed %d: top-1 final %.2f%%, best %.2f%%", seed, res["acc_final"], res["acc_best"])
    return res, loggers


def run_key(cfg, base: dict) -> str:
    """A digest of everything that shapes a student's training, to refuse resuming a run
    folder under another configuration (seed count, logging and paths may change)."""
    import hashlib

    parts = {
        k: OmegaConf.to_container(cfg[k], resolve=True)
        for k in ("student", "optim", "labels", "schedule", "input", "aug", "loss", "val")
    }
    parts["teacher"] = base["teacher_checkpoint"]
    parts["data"] = [base["dataset"], base["classes"], base["distilled"], base["ipc"]]
    parts["training"] = [cfg.epochs, base["batch_size"]]
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def restrict_teacher(teacher: Teacher, keys: list[str], subset: list[str]) -> Teacher:
    """``teacher`` with only the outputs of ``subset`` (keys of ``keys``, the teacher's
    outputs in order), in ``subset``'s order: any teacher of the full data serves a
    class-subset set, its softmax renormalised over the classes the students have."""
    index = {k: i for i, k in enumerate(keys)}
    model = SelectOutputs(teacher.model, [index[k] for k in subset]).requires_grad_(False)
    return dataclasses.replace(teacher, model=model.eval())


def _probe(cfg, teacher: Teacher, real: RealData, confusion_classes: int = 0):
    """The teacher as a `Classifier` that only validates (no training, no augmentation)."""
    return Classifier(
        teacher.model,
        None,
        real.val_set,
        epochs=0,
        global_batch=1,
        val_batch=int(cfg.val.batch_size),
        norm=teacher.norm,
        aug=BatchAugment(teacher.size),
        optimizer=None,
        schedule={},
        plan_seed=0,
        confusion_classes=confusion_classes,
    )


def teacher_top1(cfg, teacher: Teacher, real: RealData, out: Path) -> float:
    """The teacher's top-1 on ``real``'s validation split (for a class subset: over the
    subset's outputs, on the subset's images)."""
    probe = _probe(cfg, teacher, real)
    build_trainer(cfg, out, 0, 1, [], []).validate(probe, verbose=False)
    acc = float(probe.last_acc)
    log.info(
        "teacher %s: %.2f%% top-1 on the subset's %d classes", teacher.name, acc, len(real.keys)
    )
    return acc


def probe_teacher(cfg, teacher: Teacher, real: RealData, out: Path) -> float:
    """The teacher's own top-1 on the validation split, before any student trains.

    A wrong class order shows up here (NOTES.md: ~10% on ImageWoof): the confusion counts
    tell which of the data's named orders (``data.class_orders``, and sorted) the teacher's
    outputs follow, and a teacher that fits another order far better is refused. A teacher
    far below ``teacher.expected_acc`` gets a loud warning.
    """
    keys = real.keys
    probe = _probe(cfg, teacher, real, confusion_classes=len(keys))
    trainer = build_trainer(cfg, out, 0, 1, [], [])
    trainer.validate(probe, verbose=False)
    acc = float(probe.last_acc)
    chance = 100.0 / len(keys)
    log.info("teacher %s: %.2f%% top-1 on the validation split", teacher.name, acc)
    if not cfg.teacher.get("imagenet_outputs"):  # outputs picked by WordNet ID: order-proof
        orders = cfg.data.get("class_orders")
        named = dict(OmegaConf.to_container(orders, resolve=True) if orders else {})
        named.setdefault("sorted", sorted(keys))
        accs = check_order_fit(
            probe.confusion, keys, real.class_order, named, teacher.name, str(cfg.data.name)
        )
        if len(accs) > 1:
            log.info(
                "teacher %s under each class order: %s",
                teacher.name,
                ", ".join(f"{k} {v:.1f}%" for k, v in accs.items()),
            )
    if acc < 1.5 * chance:
        log.warning(
            "teacher %s scores %.1f%% on %s validation (chance %.1f%%): is its class order the "
            "data's (data.classes)? Its checkpoint: %s",
            teacher.name,
            acc,
            cfg.data.name,
            chance,
            teacher.checkpoint,
        )
    warn_if_below_expected(
        acc,
        cfg.teacher.get("expected_acc"),
        cfg.teacher.get("expected_tolerance"),
        teacher.name,
        str(cfg.data.name),
    )
    return acc


def _method(distill_cfg: dict) -> str:
    """Method label from the distill run that made the set: its selector (paper: ours vs
    the random-real baseline, DD-Ranking's fair reference)."""
    sel = distill_cfg.get("selector") or {}
    kind = sel.get("kind")
    if kind == "random":
        return f"random_{sel.get('mode', 'crop')}"
    return str(kind) if kind else "distilled"


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed)."""
    a = np.asarray(xs, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(base: dict, per_seed: list[dict], seeds: list[int]) -> dict:
    """The ``results.json`` record: per-seed lists plus mean +- std of final (``mean``,
    ``std``) and best (``best_mean``, ``best_std``) top-1, and the headline's pair
    (``headline_mean``, ``headline_std``); ``complete`` once every seed has run."""
    final = [r["acc_final"] for r in per_seed]
    best = [r["acc_best"] for r in per_seed]
    mean, std = _mean_std(final)
    best_mean, best_std = _mean_std(best)
    headline = base.get("headline", "best")
    head = (best_mean, best_std) if headline == "best" else (mean, std)
    return {
        **base,
        "complete": len(per_seed) == len(seeds),
        "seeds": [r["seed"] for r in per_seed],
        "acc_final": final,
        "acc_best": best,
        "best_epoch": [r["best_epoch"] for r in per_seed],
        "steps": [r["steps"] for r in per_seed],
        "train_time_s": [r["train_time_s"] for r in per_seed],
        "mean": round(mean, 4),
        "std": round(std, 4),
        "best_mean": round(best_mean, 4),
        "best_std": round(best_std, 4),
        "headline": headline,
        "headline_mean": round(head[0], 4),
        "headline_std": round(head[1], 4),
    }


@rank_zero_only
def _write_json(path: Path, obj: dict) -> None:
    atomic_write_json(path, obj)


@rank_zero_only
def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


@rank_zero_only
def _write_seed(seed_dir: Path, res: dict, student) -> None:
    with atomic_path(seed_dir / "student.pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in student.state_dict().items()}, tmp)
    atomic_write_json(seed_dir / "result.json", res)


@rank_zero_only
def _write_run_files(cfg, out: Path, classes, distilled, real: RealData) -> None:
    write_classes_csv(classes, out / "classes.csv")
    write_skipped_csv(real.skipped, out / "skipped.csv")
    title = f"{cfg.get('method') or 'distilled'} - IPC {distilled.ipc} - as the students see them"
    im = distilled_grid(distilled.store, [c.name for c in classes], title=title)
    with atomic_path(out / "distilled_grid.png") as tmp:
        im.save(tmp, format="PNG")


def distilled_grid(
    store, class_names: list[str], per_class: int = 10, max_classes: int = 20, title: str = ""
):
    """What the students actually see, labelled by class and sized to the set: a row per class
    (up to ``per_class`` of its images, ``max_classes`` classes), or with one image per class a
    grid of classes ten to a row. Returns a PIL image."""
    from PIL import Image

    from distill.figures import grid

    labels_t = store.labels
    counts = [int((labels_t == c).sum()) for c in range(len(class_names))]
    side = int(store.images.shape[-1])
    thumb = max(64, min(128, side))

    def pil(i: int) -> Image.Image:
        return Image.fromarray(store.images[i].permute(1, 2, 0).numpy())

    firsts = [torch.nonzero(labels_t == c).flatten() for c in range(len(class_names))]
    if max(counts, default=0) <= 1:
        shown = [c for c in range(len(class_names)) if counts[c]][: 5 * max_classes // 2]
        ims = [pil(int(firsts[c][0])) for c in shown]
        names = [f"{c}: {class_names[c]}"[:18] for c in shown]
        note = f"the image of each class ({len(shown)} of {len(class_names)} classes)"
        return grid(
            ims, min(10, max(1, len(ims))), thumb, names, f"{title}: {note}" if title else note
        )
    cols = min(per_class, max(counts))
    blank = Image.new("RGB", (side, side), (255, 255, 255))
    ims, names = [], []
    shown = list(range(min(len(class_names), max_classes)))
    for c in shown:
        row = [pil(int(i)) for i in firsts[c][:cols]]
        ims.extend(row + [blank] * (cols - len(row)))
        names.extend([f"{c}: {class_names[c]}"[:18]] + [""] * (cols - 1))
    note = (
        f"{'first ' + str(cols) + ' of ' if max(counts) > cols else ''}{max(counts)} images per class, "
        f"{len(shown)} of {len(class_names)} classes"
    )
    return grid(ims, cols, thumb, names, f"{title}: {note}" if title else note)


@rank_zero_only
def _log_grid(loggers: list, out: Path) -> None:
    """The distilled images as a W&B image (CSV runs keep distilled_grid.png)."""
    for lg in loggers:
        if hasattr(lg, "log_image") and (out / "distilled_grid.png").is_file():
            from PIL import Image

            lg.log_image(key="distilled", images=[Image.open(out / "distilled_grid.png")])


@rank_zero_only
def _log_table(loggers: list, per_seed: list[dict]) -> None:
    """The per-seed results so far as a W&B table (the last seed's run holds them all)."""
    cols = ["seed", "acc_final", "acc_best", "best_epoch", "steps", "train_time_s"]
    for lg in loggers:
        if hasattr(lg, "log_table"):
            lg.log_table(key="results", columns=cols, data=[[r[c] for c in cols] for r in per_seed])
