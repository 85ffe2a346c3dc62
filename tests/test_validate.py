"""Config errors arrive before the work, in one line naming the key, its value and the valid
range; nothing is quietly changed (issue 15, case 5)."""

import subprocess
import sys

import pytest

import distill.pipeline as pipeline
from distill.errors import ConfigError
from distill.validate import check_config, check_reuse, schedule_length
from tests.conftest import ROOT, compose


@pytest.fixture
def no_stages(monkeypatch):
    """Fail the test if any stage starts: validation must come first."""
    ran = []

    def registry():
        return {
            s: (lambda cfg, s=s: ran.append(s))
            for s in ("score", "features", "cluster", "assemble")
        }

    monkeypatch.setattr(pipeline, "stage_registry", registry)
    return ran


def smoke(*overrides, tmp_path=None):
    extra = (
        [f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache"] if tmp_path else []
    )
    return compose("distill", ["experiment=smoke", *extra, *overrides])


BAD = [
    ("ipc=0", "ipc=0", ">= 1"),
    ("ipc=-1", "ipc=-1", ">= 1"),
    ("ipc=[]", "ipc=[]", "at least one"),
    ("ipc=[10,abc]", "ipc=", ">= 1"),
    ("cluster.num_centers=0", "cluster.num_centers=0", ">= 1"),
    ("cluster.top_clusters=0", "cluster.top_clusters=0", "cluster=none"),
    ("assemble.tiles=0", "assemble.tiles=0", ">= 1"),
    ("scoring.shard_size=0", "scoring.shard_size=0", ">= 1"),
    ("scoring.num_draws=many", "scoring.num_draws='many'", "integer"),
    ("scoring.topk=0", "scoring.topk=0", ">= 1"),
    ("features.ensemble=0", "features.ensemble=0", ">= 1"),
    ("features.timestep=1000", "features.timestep=1000", "[0, 999]"),
    ("features.timestep=-5", "features.timestep=-5", "[0, 999]"),
    ("data.images_per_class=0", "data.images_per_class=0", "null = every image"),
    ("scoring.t_range=[0.7,0.1]", "scoring.t_range=[0.7, 0.1]", "t_min <= t_max"),
    ("scoring.t_sampling=sobol", "scoring.t_sampling='sobol'", "stratified"),
    ("assemble.max_reuse=0", "assemble.max_reuse=0", "null = no limit"),
]


@pytest.mark.parametrize("override,names,valid", BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_refused_before_any_stage(override, names, valid, no_stages, tmp_path):
    cfg = smoke(override, tmp_path=tmp_path)
    with pytest.raises(ConfigError) as e:
        pipeline.run(cfg)
    msg = str(e.value)
    assert names in msg and valid in msg
    assert "\n" not in msg
    assert no_stages == []
    assert not tmp_path.joinpath("bank").exists()


def test_scalar_ipc_is_a_list_of_one(no_stages, tmp_path):
    cfg = smoke("ipc=10", tmp_path=tmp_path)
    pipeline.run(cfg)
    assert list(cfg.ipc) == [10]
    assert no_stages == ["score", "features", "cluster", "assemble"]


def test_every_preset_passes_validation():
    from tests.conftest import CONF

    for preset in sorted((CONF / "experiment").glob("*.yaml")):
        cfg = compose("distill", [f"experiment={preset.stem}"])
        check_config(cfg)


def test_no_clustering_is_spelled_cluster_none():
    check_config(smoke("cluster=none"))


def test_timestep_range_comes_from_the_models_scheduler(tmp_path):
    (tmp_path / "m" / "scheduler").mkdir(parents=True)
    (tmp_path / "m" / "scheduler" / "scheduler_config.json").write_text(
        '{"num_train_timesteps": 200}'
    )
    from omegaconf import OmegaConf

    diff = OmegaConf.create({"model": str(tmp_path / "m")})
    assert schedule_length(diff) == 200
    cfg = smoke(f"diffusion.model={tmp_path / 'm'}", "features.timestep=160")
    check_config(cfg)
    cfg = smoke(f"diffusion.model={tmp_path / 'm'}", "features.timestep=200")
    with pytest.raises(ConfigError, match=r"features.timestep=200.*\[0, 199\]"):
        check_config(cfg)
    # A hub id not in the cache: unknown until the model loads (checked there).
    assert schedule_length(OmegaConf.create({"model": "nobody/no-such-model"})) is None


def test_cli_prints_one_line_and_exits_2(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill",
            "experiment=smoke",
            "ipc=0",
            f"paths.output_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "error: ipc=0: images per class must be integers >= 1" in r.stderr
    # paths.output_dir=X is Hydra's run folder too: provenance and log beside the results.
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert (tmp_path / "distill.log").is_file()


def test_output_dir_routes_hydra_run_dir():
    from distill.cli import route_output_dir

    assert route_output_dir(["x", "paths.output_dir=/r"]) == [
        "x",
        "paths.output_dir=/r",
        "hydra.run.dir=/r",
    ]
    assert (
        route_output_dir(["x", "paths.output_dir=/r", "hydra.run.dir=/h"])[-1] == "hydra.run.dir=/h"
    )
    assert route_output_dir(["-m", "paths.output_dir=/r"]) == ["-m", "paths.output_dir=/r"]
    assert route_output_dir(["x"]) == ["x"]


# ----------------------------------------------------------------------------- reuse


def test_reuse_within_the_limit_passes_and_beyond_is_refused():
    check_reuse("class 0 (a)", 35, 70, 2)
    with pytest.raises(ConfigError, match=r"class 0 \(a\): 100000 patches needed but only 35"):
        check_reuse("class 0 (a)", 35, 100000, 2)
    check_reuse("class 0 (a)", 35, 100000, None)


def test_huge_ipc_is_refused_after_listing_before_the_model_loads(tmp_path, monkeypatch):
    """16 images x topk 4 = at most 64 candidates per class: IPC 1000 cannot be filled."""
    import distill.scoring.stage as stage

    def no_model(cfg):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(stage, "load_backend", no_model)
    cfg = smoke("ipc=[1000]", tmp_path=tmp_path)
    with pytest.raises(ConfigError, match="1000 patches needed but only 64 candidates"):
        pipeline.run(cfg)
