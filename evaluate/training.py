"""One training run of a `Classifier` under Lightning: trainer, loggers, the last-epoch
checkpoint a killed run resumes from, and the validation after the last epoch. Students
(one run per seed) and teachers (`mode=teacher`) both train through `fit`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from distill import runtime
from evaluate.module import Classifier

log = logging.getLogger(__name__)


class SaveLast(Callback):
    """Write ``path`` at the end of every epoch, after that epoch's validation.

    Lightning's writes are atomic (a temporary file moved into place), so a run killed at
    any moment leaves either the previous or the new checkpoint. The learning rate is a
    function of the epoch and the batch plan and augmentation are seeded per step, so the
    resumed run continues exactly where the killed one stood.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path, weights_only=False)


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
    """Train (resuming from ``ckpt`` if it exists and ``resume``), make sure the final
    epoch is validated, and return `Classifier.results`.

    Lightning validates every ``check_val_every_n_epoch`` epochs; when that does not
    divide the epoch count, the last epoch is validated here, on the same trainer.
    """
    ckpt_path = str(ckpt) if resume and ckpt.is_file() else None
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    trainer.fit(module, ckpt_path=ckpt_path)
    if int(module.last_epoch) != module.epochs:
        trainer.validate(module, verbose=False)
    return module.results()


@rank_zero_only
def close_loggers(loggers: list) -> None:
    """Close W&B runs so the next seed starts its own run."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger" and getattr(lg, "_experiment", None) is not None:
            lg.experiment.finish()
