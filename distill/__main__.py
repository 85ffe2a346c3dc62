"""`python -m distill`: distil a dataset with diffusion-driven patch selection.

python -m distill experiment=smoke                         # a minute, no files needed
python -m distill experiment=imagewoof_ipc10 data.root=/data/imagenet
python -m distill experiment=imagewoof_ipc10 trainer=ddp trainer.devices=4
python -m distill -m 'scoring.t_range=[0.1,0.3],[0.1,0.7]' experiment=smoke
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from distill.errors import DistillError

log = logging.getLogger("distill")


@hydra.main(version_base="1.3", config_path="../conf", config_name="distill")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from distill.cli import log_to_files, warn_added_keys
    from distill.pipeline import run

    warn_added_keys(cfg, list(HydraConfig.get().overrides.task), log)
    try:
        run(cfg)
    except DistillError as e:
        log_to_files(log, f"error: {e}")
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from distill.cli import maybe_help, prepare_argv

    maybe_help("distill", __doc__, sys.argv)
    sys.argv = prepare_argv(sys.argv)
    main()
