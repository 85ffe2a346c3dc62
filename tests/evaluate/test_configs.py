"""Evaluate's presets compose from conf/evaluate plus the shared groups, are short deltas,
and are evaluate's own (not distill's presets of the same name)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from evaluate.protocol import input_size
from tests.conftest import ROOT
from tests.evaluate.conftest import EVAL_CONF, compose_eval

PRESETS = sorted(p.stem for p in (EVAL_CONF / "experiment").glob("*.yaml"))


def test_presets_are_global_deltas():
    assert {"smoke", "fashion_mnist_teacher", "fashion_mnist", "cross_arch"} <= set(PRESETS)
    for name in PRESETS:
        text = (EVAL_CONF / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name
        assert len(text.splitlines()) < 40, name


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes(name, tmp_path):
    cfg = compose_eval(
        [f"experiment={name}", f"paths.output_dir={tmp_path}", f"paths.root_dir={ROOT}"]
    )
    c = OmegaConf.to_container(cfg, resolve=True)
    assert c["task_name"] == "evaluate" and c["mode"] in ("student", "teacher")
    assert c["student"]["name"] and c["teacher"]["name"]
    assert c["labels"]["kind"] in ("online", "stored", "hard")
    if "_ipc" in name:
        assert c["ipc"] == int(name.rsplit("ipc", 1)[1])
        want = {"cifar10": 32, "cifar100": 32, "tinyimagenet": 64}.get(c["data"]["kind"], 224)
        assert input_size(cfg) == want


def test_smoke_is_evaluates_own():
    cfg = compose_eval(["experiment=smoke", "paths.output_dir=/x"])
    assert cfg.generate.num_classes == 3 and cfg.data.kind == "folder" and cfg.seeds >= 2
    assert "diffusion" not in cfg and "scoring" not in cfg  # not distill's smoke


def test_rded_defaults():
    c = compose_eval([])
    assert (
        c.optim._target_ == "torch.optim.AdamW"
        and c.optim.lr == 1e-3
        and c.optim.weight_decay == 0.01
    )
    assert c.epochs == 300 and c.loss.temperature == 20 and c.aug.cutmix_beta == 1.0
    assert c.aug.scale is None and c.aug.factor is None and c.aug.shuffle_patches is None
    assert c.seeds == 5 and c.schedule.name == "rded_cosine"
    assert c.labels.kind == "online" and c.val.best_after == 0.8
    fm = compose_eval(["experiment=fashion_mnist", "paths.output_dir=/x", "paths.cache_dir=/c"])
    assert fm.mode == "student" and fm.teacher.checkpoint.startswith("/c/teachers/")
    assert fm.teacher.kwargs.width == 32 and fm.teacher_fit.aug.pad == 2


def test_cross_arch_sweeps_the_table4_grid():
    cfg = compose_eval(["experiment=cross_arch"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params.teacher.split(",") == params.student.split(",")
    assert len(params.student.split(",")) == 7 and cfg.hydra.mode.name == "MULTIRUN"


def test_unified_preset_is_dd_rankings_protocol():
    """DD-Ranking's soft-label evaluation: one ResNet-18 teacher, AdamW wd 0.01, its cosine
    (RDED's), 300 epochs, batch 1024, KL at T=1, CutMix, RandomResizedCrop (0.08, 1), no
    ShufflePatches, 5 students; combinable with any dataset preset."""
    from hydra import compose, initialize_config_dir

    import evaluate  # noqa: F401
    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF / "evaluate"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["experiment=unified", "data=imagewoof"])
    assert cfg.teacher.name == cfg.student.name == "resnet18"
    assert (cfg.epochs, cfg.batch_size, cfg.seeds) == (300, 1024, 5)
    assert cfg.schedule.name == "rded_cosine" and cfg.optim.weight_decay == 0.01
    assert "AdamW" in cfg.optim._target_
    assert list(cfg.aug.scale) == [0.08, 1.0] and cfg.aug.shuffle_patches == 1
    assert (
        cfg.aug.cutmix_beta == 1.0 and cfg.loss.temperature == 1.0 and cfg.data.name == "imagewoof"
    )
