"""The distillation pipeline behind `python -m distill`: set up the run, then run each stage.

Stages (``cfg.stages``) run in order over one patch bank: ``score`` (Stage I relevance),
then Stage II's ``features``, ``cluster`` and ``assemble``. Each is resumable on its own.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from distill.errors import ConfigError

log = logging.getLogger(__name__)

# Set in a job's environment when a multirun job re-executes itself as a plain run.
_JOB_CHILD_ENV = "DISTILL_MULTIRUN_CHILD"


def stage_registry() -> dict[str, Callable[[DictConfig], None]]:
    """Stages by name. Imported lazily so `--cfg job` and tests stay fast."""
    from distill.clustering import run_cluster
    from distill.dift import run_features
    from distill.export import run_export
    from distill.materialize import run_assemble
    from distill.scoring.stage import run_score

    return {
        "score": run_score,
        "features": run_features,
        "cluster": run_cluster,
        "assemble": run_assemble,
        "export": run_export,
    }


def world_size(trainer_cfg) -> int:
    """Processes a trainer config asks for (devices x nodes); 0 when unknown (auto, -1)."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        n = len(devices)
    elif isinstance(devices, str):
        n = (
            len([d for d in devices.split(",") if d.strip()])
            if "," in devices
            else (int(devices) if devices.strip().lstrip("-").isdigit() else 0)
        )
    else:
        n = int(devices)
    if n < 0:
        return 0
    return n * int(trainer_cfg.get("num_nodes", 1))


def needs_job_subprocess(cfg: DictConfig) -> bool:
    """True for a multirun job that would start Lightning's DDP relaunch.

    Lightning's ``ddp`` strategy re-executes ``sys.argv`` for each extra rank; inside a Hydra
    multirun that command is the whole sweep, so every rank would start every job. Such a job
    re-executes itself as a plain single run (its own overrides, its own folder) instead.
    """
    if os.environ.get(_JOB_CHILD_ENV):
        return False
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode != RunMode.MULTIRUN:
            return False
    except ValueError:  # Hydra not initialised (called from Python)
        return False
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if not strategy.startswith("ddp") or strategy in ("ddp_spawn", "ddp_notebook", "ddp_fork"):
        return False
    n = world_size(cfg.trainer)
    return n == 0 or n > 1


def run_job_subprocess(cfg: DictConfig, module: str = "distill") -> None:
    """Run this multirun job as ``python -m <module> <job overrides>`` in its own folder."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    cmd = [
        sys.executable,
        "-m",
        module,
        *overrides,
        "hydra.mode=RUN",
        f"hydra.run.dir={hc.runtime.output_dir}",
        "hydra.output_subdir=null",
    ]
    log.info("multirun job %s with DDP: running as a plain run: %s", hc.job.num, " ".join(cmd))
    env = dict(os.environ, **{_JOB_CHILD_ENV: "1"})
    rc = subprocess.call(cmd, cwd=hc.runtime.cwd, env=env)
    if rc != 0:
        raise RuntimeError(f"multirun job {hc.job.num} failed with exit code {rc}")


def run(cfg: DictConfig) -> None:
    """Check the whole config, then run the stages named in ``cfg.stages``."""
    from distill.validate import check_config

    check_config(cfg)
    if needs_job_subprocess(cfg):
        run_job_subprocess(cfg)
        return
    from distill.runtime import quiet_third_party

    quiet_third_party()
    registry = stage_registry()
    unknown = [s for s in cfg.stages if s not in registry]
    if unknown:
        raise ConfigError(
            f"stages={list(cfg.stages)}: unknown or not available {unknown}; "
            f"available: {list(registry)}"
        )
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    from distill.runtime import finish_loggers

    try:
        for name in cfg.stages:
            log.info("stage %s", name)
            registry[name](cfg)
        from distill.runtime import is_launch_rank_zero

        if is_launch_rank_zero():
            from distill.summary import write_summary

            write_summary(cfg)
    finally:
        finish_loggers()
