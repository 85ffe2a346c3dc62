"""Fixtures of the evaluation tests: evaluate's own config composition, generated folders
(training, validation and distill-run-style distilled sets) and a tiny trained teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import evaluate  # noqa: F401  (sets DPD_CONF_DIR for compose_eval)
from tests.conftest import CONF, ROOT

EVAL_CONF = CONF / "evaluate"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP spinning against
    other processes (up to 30x slower small convolutions here). Restored after each test so
    the rest of the suite keeps its settings."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CLASSES = ["ellipse_0", "rectangle_1", "triangle_2"]


def compose_eval(overrides: list[str] | None = None, return_hydra_config: bool = False):
    """Compose conf/evaluate/evaluate.yaml as `python -m evaluate` does."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(EVAL_CONF), version_base="1.3"):
        return compose(
            config_name="evaluate",
            overrides=overrides or [],
            return_hydra_config=return_hydra_config,
        )


def tiny_overrides(data_root: Path, out: Path, **extra) -> list[str]:
    """A run on the generated folders: ConvNet-3 of width 8 at 32 px, a few epochs."""
    base = {
        "data": "folder",
        "data.name": "smoke",
        "data.root": str(data_root),
        "data.split": "train",
        "data.val_split": "val",
        "data.min_side": 8,
        "student": "convnet3",
        "teacher": "convnet3",
        "student.kwargs.width": 8,
        "teacher.kwargs.width": 8,
        "trainer": "cpu",
        "trainer.enable_progress_bar": False,
        "logger": "csv",
        "input.size": 32,
        "epochs": 2,
        "seeds": 1,
        "val.every_n_epochs": 1,
        "num_workers": 0,
        "paths.output_dir": str(out),
        "paths.root_dir": str(ROOT),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Training/validation folders and two distill-run-style folders (t_range 0.1-0.7 with
    IPC 1 and 2, and 0.3-0.7 with IPC 2), each with .hydra/config.yaml as distill writes it."""
    from omegaconf import OmegaConf

    from evaluate.smoke import generate

    root = tmp_path_factory.mktemp("eval-data")
    generate(root / "data", root / "run_a", [1, 2], train_per_class=12, val_per_class=8)
    generate(None, root / "run_b", [2], seed=5)
    for run, t_range in (("run_a", [0.1, 0.7]), ("run_b", [0.3, 0.7])):
        cfg = {"scoring": {"t_range": t_range}, "selector": {"kind": "diffusion"}}
        (root / run / ".hydra").mkdir()
        OmegaConf.save(OmegaConf.create(cfg), root / run / ".hydra" / "config.yaml")
    return {"data": root / "data", "run_a": root / "run_a", "run_b": root / "run_b", "root": root}


@pytest.fixture(scope="session")
def teacher_ckpt(folders, tmp_path_factory) -> Path:
    """A ConvNet-3 (width 8) teacher trained for 3 epochs on the generated training folder."""
    from evaluate.data import RealData
    from evaluate.teacher import train_teacher

    out = tmp_path_factory.mktemp("teacher")
    cfg = compose_eval(
        tiny_overrides(
            folders["data"],
            out,
            mode="teacher",
            **{
                "teacher_fit.epochs": 3,
                "teacher_fit.batch_size": 12,
                "teacher_fit.optim.lr": 0.05,
                "teacher_fit.schedule.warmup_epochs": 0,
            },
        )
    )
    train_teacher(cfg, RealData(cfg), out)
    return out / "teacher.pt"
