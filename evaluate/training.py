"""One training run of a `Classifier` under Lightning: trainer, loggers, the last-epoch
checkpoint a killed run resumes from, and the validation after the last epoch. Students
(one run per seed) and teachers (`mode=teacher`) both train through `fit`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from distill import runtime
from evaluate.module import Classifier

log = logging.getLogger(__name__)


class SaveLast(Callback):
    """Write ``path`` at the end of every epoch, after that epoch's validation, and keep the
    epoch before it as ``prev.ckpt`` beside it.

    The new checkpoint is written to a temporary name first, then the old ``path`` becomes
    ``prev.ckpt`` and the new file becomes ``path``, each by one atomic rename. A run killed
    at any moment therefore leaves at least one complete checkpoint, and a checkpoint that is
    damaged anyway (a full disk, a copy cut short) still has its predecessor to fall back to
    (`resume_point`). The learning rate is a function of the epoch and the batch plan and
    augmentation are seeded per step, so a resumed run continues exactly where the killed one
    stood, from either file.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)

    def on_train_epoch_end(self, trainer, pl_module):
        last = Path(self.path)
        tmp = last.with_name(f".{last.name}.partial")
        trainer.save_checkpoint(tmp, weights_only=False)  # rank 0 writes; all ranks wait
        if trainer.is_global_zero:
            if last.is_file():
                os.replace(last, prev_checkpoint(last))
            os.replace(tmp, last)


def prev_checkpoint(ckpt: Path) -> Path:
    """Where `SaveLast` keeps the epoch before ``ckpt``."""
    return Path(ckpt).with_name("prev.ckpt")


# What a Lightning checkpoint of a fit needs to restore weights, optimiser and loop state.
CHECKPOINT_KEYS = ("state_dict", "epoch", "global_step", "loops", "optimizer_states")


def checkpoint_problem(path: Path, module: Classifier) -> str | None:
    """Why ``path`` cannot resume ``module`` (unreadable, truncated, keys or shapes missing
    or different), or None when it can. Teacher weights are never stored (see
    `Classifier.on_save_checkpoint`), so they are not expected."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, garbage, unpickling errors: all mean damaged
        return f"cannot be loaded ({type(e).__name__}: {str(e)[:200]})"
    if not isinstance(ckpt, dict):
        return f"holds a {type(ckpt).__name__}, not a Lightning checkpoint"
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        return f"lacks {missing}"
    want = {k: v.shape for k, v in module.state_dict().items() if not k.startswith("teacher.")}
    have = ckpt["state_dict"]
    if not isinstance(have, dict):
        return f"holds a {type(have).__name__} as its state_dict"
    absent = sorted(set(want) - set(have))
    if absent:
        return f"lacks {len(absent)} weights ({', '.join(absent[:3])}, ...)"
    wrong = [k for k, shape in want.items() if tuple(getattr(have[k], "shape", ())) != shape]
    if wrong:
        return f"has weights of other shapes ({', '.join(wrong[:3])})"
    return None


def resume_point(ckpt: Path, module: Classifier) -> Path | None:
    """The checkpoint to resume from: ``ckpt`` if it is sound, else `prev_checkpoint`, else
    None (start from scratch).

    A damaged file is never used and never silently skipped: each gets one warning naming it,
    why, and what happens instead, and is renamed to ``<name>.damaged`` (kept for a look, and
    out of the way of the next epoch's rotation).
    """
    damaged, good = [], None
    for path in (Path(ckpt), prev_checkpoint(ckpt)):
        if path.is_file():
            why = checkpoint_problem(path, module)
            if why is None:
                good = path
                break
            damaged.append((path, why))
    for path, why in damaged:
        log.warning(
            "checkpoint %s is damaged: it %s; %s",
            path,
            why,
            f"resuming from {good} instead" if good else "training this run from scratch",
        )
        with contextlib.suppress(OSError):  # another rank moved it first
            os.replace(path, path.with_name(path.name + ".damaged"))
    return good


def build_loggers(cfg, save_dir: Path, run_name: str, group: str) -> list:
    """The ``logger`` group's loggers for one run, writing under ``save_dir``."""
    loggers = []
    for key, node in (cfg.get("logger") or {}).items():
        if node is None or "_target_" not in node:
            continue
        kw = {}
        if "save_dir" in node:
            kw["save_dir"] = str(save_dir)
        if str(node._target_).endswith("WandbLogger"):
            kw["name"] = run_name
            if node.get("group") is None:
                kw["group"] = group
        log.debug("logger %s: %s", key, node._target_)
        loggers.append(instantiate(node, **kw))
    return loggers


def build_trainer(
    cfg, run_dir: Path, epochs: int, val_every: int, loggers: list, callbacks: list
) -> L.Trainer:
    """The ``trainer`` group's Trainer (`distill.runtime.build_trainer`) with what every
    evaluation run needs on top."""
    return runtime.build_trainer(
        cfg,
        callbacks,
        loggers,
        default_root_dir=str(run_dir),
        max_epochs=epochs,
        check_val_every_n_epoch=max(1, val_every),
        num_sanity_val_steps=0,
        # Our samplers shard batches themselves (evaluate.data.EpochBatches/ShardBatches).
        use_distributed_sampler=False,
        # SaveLast writes the one checkpoint resume needs; no Lightning default folders.
        enable_checkpointing=False,
        log_every_n_steps=1,
    )


def fit(module: Classifier, trainer: L.Trainer, ckpt: Path, resume: bool) -> dict:
    """Train (with ``resume``, from ``ckpt`` or the epoch before it, `resume_point`), make
    sure the final epoch is validated, and return `Classifier.results`.

    Lightning validates every ``check_val_every_n_epoch`` epochs; when that does not
    divide the epoch count, the last epoch is validated here, on the same trainer.
    """
    point = resume_point(Path(ckpt), module) if resume else None
    if point is not None:
        log.info("resuming from %s", point)
    else:
        # A fresh start (resume=false, or nothing sound to resume): older files belong to
        # another run and must not become this run's fallback through the rotation.
        for old in (Path(ckpt), prev_checkpoint(ckpt)):
            old.unlink(missing_ok=True)
    trainer.fit(module, ckpt_path=str(point) if point else None)
    if int(module.last_epoch) != module.epochs:
        trainer.validate(module, verbose=False)
    return module.results()


@rank_zero_only
def close_loggers(loggers: list) -> None:
    """Close W&B runs so the next seed starts its own run."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger" and getattr(lg, "_experiment", None) is not None:
            lg.experiment.finish()
