"""Every preset composes, resolves and describes the dataset it claims to."""

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT, compose

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
REQUIRED = (
    [f"imagewoof_ipc{k}" for k in (10, 50, 100)]
    + [f"imagenette_ipc{k}" for k in (10, 50, 100)]
    + [f"imagenet100_ipc{k}" for k in (10, 50, 100)]
    + [f"imagenet1k_ipc{k}" for k in (10, 50, 100)]
    + [f"{d}_ipc{k}" for d in ("cifar10", "cifar100", "tinyimagenet") for k in (10, 50)]
    + ["smoke", "demo", "sweep"]
)


def test_required_presets_exist():
    assert set(REQUIRED) <= set(PRESETS), set(REQUIRED) - set(PRESETS)


def test_presets_are_global_deltas():
    for name in PRESETS:
        text = (CONF / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name
        assert len(text.splitlines()) < 40, f"{name} should be a short delta"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_and_resolves(name, tmp_path):
    cfg = compose(
        "distill", [f"experiment={name}", f"paths.output_dir={tmp_path}", f"paths.root_dir={ROOT}"]
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["paths"]["output_dir"] == str(tmp_path)
    assert resolved["paths"]["bank_dir"] == f"{tmp_path}/bank"
    assert all(isinstance(k, int) and k > 0 for k in resolved["ipc"])
    for group in (
        "data",
        "diffusion",
        "scoring",
        "features",
        "cluster",
        "assemble",
        "trainer",
        "selector",
        "paths",
    ):
        assert group in resolved, group
    if name.startswith(("imagewoof", "imagenette", "imagenet100", "imagenet1k")):
        assert resolved["data"]["kind"] == "imagenet"
        assert resolved["scoring"]["patch"] == 224 and resolved["data"]["short_edge"] == 256
        assert resolved["diffusion"]["model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    if name.startswith(("cifar", "tinyimagenet")):
        assert resolved["scoring"]["patch"] is None
    if name.startswith("imagenet1k"):
        assert resolved["data"]["images_per_class"] == 300
    if "_ipc" in name:
        assert resolved["ipc"] == [int(name.rsplit("ipc", 1)[1])]


def test_dataset_class_counts():
    expect = {"imagewoof": 10, "imagenette": 10, "imagenet100": 100}
    for data, n in expect.items():
        cfg = compose("distill", [f"data={data}"])
        assert len(cfg.data.classes) == n
        assert len(set(cfg.data.classes)) == n
        assert list(cfg.data.classes) == sorted(cfg.data.classes), "sorted WordNet-ID order"


def test_sweep_preset_is_table7_grid():
    cfg = compose("distill", ["experiment=sweep"], return_hydra_config=True)
    grid = cfg.hydra.sweeper.params["scoring.t_range"]
    ranges = [tuple(float(x) for x in r.strip("[]").split(",")) for r in grid.split("],[")]
    assert len(ranges) == 10 and all(a < b for a, b in ranges)
    assert (0.1, 0.7) in ranges


def test_cli_prints_preset():
    out = subprocess.run(
        [sys.executable, "-m", "distill", "experiment=imagewoof_ipc10", "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.data.name == "imagewoof" and list(cfg.ipc) == [10]
    assert cfg.data.classes[0] == "n02086240"
