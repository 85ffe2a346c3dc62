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
from distill.runtime import numerics
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


FORMATS = ("auto", "rded")


def rded_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RDED's observer checkpoints in our parameter names.

    RDED's torchvision models (resnet18, resnet18_modified = our resnet18_cifar) already use
    torchvision's names, their heads cut to the subset's classes. Its ConvNet
    (synthesize/models.py) keeps ``layers.conv.{d}`` and ``layers.norm.{d}``; ours is one
    ``features`` sequence of conv, norm, ReLU, pool per block: ``features.{4d}`` and
    ``features.{4d + 1}``. The classifier is ``classifier`` in both.
    """
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if len(parts) >= 4 and parts[0] == "layers" and parts[1] in ("conv", "norm"):
            d = int(parts[2])
            k = ".".join(["features", str(4 * d + (parts[1] == "norm")), *parts[3:]])
        out[k] = v
    return out


def check_class_order(declared: str | None, data_order: str, name: str, ckpt, dataset: str) -> None:
    """Refuse a teacher whose outputs are declared (``teacher.class_order``) in another order
    than the data's labels: it would teach the wrong names (students near chance)."""
    if declared is not None and str(declared) != str(data_order):
        raise ModelError(
            f"teacher {name} ({ckpt or 'pretrained'}) predicts classes in the order "
            f"{declared!r} (teacher.class_order), but data={dataset} labels them in the order "
            f"{data_order!r}: set data.class_order={declared} so that label i means the same "
            "class for both."
        )


def load_teacher(
    cfg, classes: list[ClassInfo], checkpoint: str | None, class_order: str | None = None
) -> Teacher:
    """Build ``cfg.teacher``, fill it from ``checkpoint`` (or pretrained weights) and check
    that its outputs are the data's classes, in the data's order (``class_order`` names it)."""
    spec, dataset = cfg.teacher, cfg.data.name
    fmt = str(spec.get("format") or "auto")
    if fmt not in FORMATS:
        raise ConfigError(f"teacher.format={fmt!r}: use one of {list(FORMATS)}")
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
    if state is not None and fmt == "rded":
        state = rded_state_dict(state)
    # A teacher.pt says what it is: a wrong architecture or class order is named as such,
    # before any shape mismatch could hide it; its input size builds the right head.
    _check_meta(meta, spec, name, keys, checkpoint, dataset, class_order)
    # A file that lists its classes was checked key by key above; for one that does not (RDED's,
    # a state dict) the declared order is all there is. 1000-way outputs are picked by WordNet ID.
    if meta.get("classes") is None and not spec.get("imagenet_outputs"):
        check_class_order(
            spec.get("class_order"), class_order or "native", name, checkpoint, dataset
        )
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
    _note_numerics(meta.get("numerics"), checkpoint)
    meta_norm = meta.get("normalize")
    fallback = (meta_norm["mean"], meta_norm["std"]) if meta_norm else None
    norm = stats(spec.get("normalize"), fallback)
    model.requires_grad_(False).eval()
    return Teacher(model, name, str(checkpoint) if checkpoint else None, norm, size)


def _note_numerics(theirs: dict | None, ckpt) -> None:
    """Say so when a teacher was trained under other numerics (thread count, CPU ISA, torch)
    than this run has: a cached teacher then gives other soft labels than one trained here,
    and the students' table differs although every setting is the same."""
    if not theirs:
        return
    ours = numerics()
    keys = ("threads", "cpu_capability", "torch", "cuda")
    diff = {k: (theirs.get(k), ours.get(k)) for k in keys if theirs.get(k) != ours.get(k)}
    if diff:
        # Between CPU runs this is what makes two "same" demo tables differ; with a GPU in
        # the picture the numerics differ anyway and it is only worth a note.
        level = logging.INFO if theirs.get("cuda") or ours.get("cuda") else logging.WARNING
        log.log(
            level,
            "teacher %s was trained under other numerics than this run has (%s): its outputs "
            "are the same network's, but a teacher retrained here would differ in the last "
            "digits, and so would the students trained from it",
            ckpt,
            ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items()),
        )


def _check_meta(
    meta: dict, spec, name: str, keys: list[str], ckpt, dataset: str, order: str | None = None
) -> None:
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
        same_set = sorted(theirs) == sorted(keys)
        orders = (
            f" (the teacher's order is {meta['class_order']!r}, the data's {order!r})"
            if meta.get("class_order") and order
            else ""
        )
        fix = (
            f"set data.class_order={meta['class_order']}"
            if same_set and meta.get("class_order") not in (None, "listed", "native")
            else "set data.classes to the teacher's order"
        )
        raise ModelError(
            f"class order differs{orders}: teacher checkpoint {ckpt} was trained on "
            f"{len(theirs)} classes {theirs[:6]}{' ...' if len(theirs) > 6 else ''}; "
            f"data={dataset} has {len(keys)} {keys[:6]}{' ...' if len(keys) > 6 else ''}. "
            f"Label i must mean the same class for both: {fix} (or retrain the teacher)."
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
        "class_order": real.class_order,
        "class_names": [c.name for c in classes],
        "dataset": str(cfg.data.name),
        "input_size": size,
        "normalize": {"mean": norm[0], "std": norm[1]},
        "val_acc": res["acc_final"],
        "val_acc_best": res["acc_best"],
        "epochs": int(tf.epochs),
        "recipe": OmegaConf.to_container(tf, resolve=True),
        "numerics": numerics(),
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
        "class_order": real.class_order,
        "expected_acc": spec.get("expected_acc"),
    }
    _write_teacher(model, meta, results, classes, out_dir, save_to)
    trainer.strategy.barrier("teacher written")
    log.info("teacher %s: val top-1 %.2f%% (best %.2f%%)", name, res["acc_final"], res["acc_best"])
    warn_if_below_expected(
        res["acc_final"],
        spec.get("expected_acc"),
        spec.get("expected_tolerance"),
        name,
        str(cfg.data.name),
    )
    return results


def accuracy_under_orders(
    confusion: torch.Tensor, keys: list[str], orders: dict[str, list[str]]
) -> dict[str, float]:
    """Top-1 (%) the teacher would have if its outputs followed each named class order.

    ``confusion[i, j]`` counts validation images of data label ``i`` (class ``keys[i]``) that
    the teacher put in output ``j``. If the teacher was trained in order ``X``, output ``j``
    means class ``X[j]``, whose data label is ``keys.index(X[j])``: the correct predictions
    are ``sum_j confusion[keys.index(X[j]), j]``. One validation pass thus tells which order
    a teacher's outputs follow, without knowing how it was trained.
    """
    total = max(1, int(confusion.sum()))
    label_of = {k: i for i, k in enumerate(keys)}
    out = {}
    for name, order in orders.items():
        if len(order) != confusion.shape[1] or set(order) != set(keys):
            continue
        rows = torch.tensor([label_of[k] for k in order])
        hits = confusion[rows, torch.arange(len(order))].sum()
        out[name] = 100.0 * float(hits) / total
    return out


# A named class order that lets the teacher score this many points more than the data's own
# order means its outputs follow that order: the probe refuses it (students would learn the
# wrong names). Two orders of ten classes agree on few labels, so a right order stands out
# by far more than this.
ORDER_MARGIN = 20.0


def check_order_fit(
    confusion: torch.Tensor,
    keys: list[str],
    data_order: str,
    orders: dict[str, list[str]],
    name: str,
    dataset: str,
) -> dict[str, float]:
    """Raise `ModelError` when another named class order fits the teacher far better than
    the data's; returns the accuracy under every order that could be checked."""
    accs = accuracy_under_orders(confusion, keys, {data_order: list(keys), **orders})
    ours = accs.get(data_order, 0.0)
    best = max(accs, key=accs.get) if accs else data_order
    if best != data_order and accs[best] >= ours + ORDER_MARGIN:
        raise ModelError(
            f"teacher {name} scores {ours:.1f}% on {dataset} validation in the data's class order "
            f"{data_order!r} but {accs[best]:.1f}% if its outputs follow the order {best!r}: it "
            f"was trained in that order. Set data.class_order={best} (and teacher.class_order="
            f"{best} for a file that records none), or use a teacher of the data's order."
        )
    return accs


def warn_if_below_expected(
    acc: float, expected: float | None, tolerance: float | None, name: str, dataset: str
) -> bool:
    """A loud warning when a teacher's top-1 is far below what its preset expects (a short
    recipe, a wrong class order, the wrong data): students would learn from a weak teacher
    and their table would not be the paper's. Returns whether it warned."""
    if expected is None:
        return False
    tol = 10.0 if tolerance is None else float(tolerance)
    if acc >= float(expected) - tol:
        return False
    bar = "!" * 78
    log.warning(
        "\n%s\nteacher %s reaches %.1f%% top-1 on %s validation, %.1f points below the expected "
        "%.1f%% (teacher.expected_acc; tolerance %.0f points). Students trained from it will "
        "not give the paper's numbers: check the recipe, the data and data.class_order.\n%s",
        bar,
        name,
        acc,
        dataset,
        float(expected) - acc,
        float(expected),
        tol,
        bar,
    )
    return True


@rank_zero_only
def _write_teacher(model, meta, results, classes, out_dir: Path, save_to: Path | None) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for path in {out_dir / "teacher.pt", *([Path(save_to)] if save_to else [])}:
        with atomic_path(path) as tmp:
            torch.save({"state_dict": state, "meta": meta}, tmp)
    write_classes_csv(classes, out_dir / "classes.csv")
    atomic_write_json(out_dir / "results.json", results)
