"""`python -m evaluate`: train students on a distilled set against a frozen teacher.

python -m evaluate experiment=smoke                       # under a minute, no files needed
python -m evaluate mode=teacher experiment=fashion_mnist_teacher
python -m evaluate experiment=imagewoof_ipc10 distilled=RUN_DIR data.root=/data/imagenet \
    teacher.checkpoint=/models/imagewoof_resnet18/teacher.pt
python -m evaluate -m teacher=resnet18,mobilenet_v2 student=resnet18,resnet50 ...
python -m evaluate ... trainer=ddp trainer.devices=4      # DDP, global batch unchanged
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

import evaluate  # noqa: F401  (sets DPD_CONF_DIR, the shared config groups' folder)
from distill.errors import DistillError

log = logging.getLogger("evaluate")


@hydra.main(version_base="1.3", config_path="../conf/evaluate", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from distill.cli import log_to_files, warn_added_keys
    from evaluate.run import run

    warn_added_keys(cfg, list(HydraConfig.get().overrides.task), log)
    try:
        run(cfg)
    except DistillError as e:
        log_to_files(log, f"error: {e}")
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from distill.cli import maybe_help, prepare_argv

    maybe_help("evaluate", __doc__, sys.argv)
    sys.argv = prepare_argv(sys.argv)
    main()
