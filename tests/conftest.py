"""Shared fixtures. The environment is fixed before anything imports transformers or diffusers:
set later, hub look-ups retry for a minute instead of failing at once."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# One cache for the whole session (the tiny model is built once); subprocesses inherit it.
os.environ.setdefault("DISTILL_CACHE", tempfile.mkdtemp(prefix="distill-test-cache-"))

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import distill  # noqa: E402, F401  (registers the ${repo:} config resolver)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def _repo_outputs() -> set[str]:
    """Run folders under the repository's own outputs/ (what a test must never create)."""
    root = ROOT / "outputs"
    return {str(p.relative_to(ROOT)) for p in root.glob("*/*/*")} if root.is_dir() else set()


@pytest.fixture(scope="session", autouse=True)
def no_outputs_in_repo():
    """Tests write under tmp_path: a run folder appearing in the repository's outputs/ is a
    test that forgot hydra.run.dir (or paths.output_dir), and fails the session."""
    before = _repo_outputs()
    yield
    new = sorted(_repo_outputs() - before)
    assert not new, f"tests wrote run folders into the repository: {new[:5]}"


@pytest.fixture(autouse=True)
def fresh_listings():
    """Each test lists its datasets anew: build_source's per-process cache must not carry a
    listing from one test into the next (tests rewrite trees in place)."""
    from distill.data.catalog import clear_source_cache

    clear_source_cache()
    yield


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ["DISTILL_CACHE"])


@pytest.fixture(scope="session")
def tiny_model_dir(cache_dir) -> Path:
    from distill.diffusion.architectures import ensure_tiny_model

    return ensure_tiny_model(cache_dir)


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir):
    from distill.diffusion import DiffusionBackend

    return DiffusionBackend.load(str(tiny_model_dir), dtype="fp32")


def scoring_cfg(**kw):
    """A Stage I ``scoring`` node for unit tests (32-px patches, 2 draws, fixed shapes)."""
    from omegaconf import OmegaConf

    base = dict(
        t_range=[0.1, 0.7],
        num_draws=2,
        seed=0,
        prompt="An image of {name}",
        null_prompt="An image of .",
        patch=32,
        stride=8,
        topk=1,
        unet_batch=16,
        vae_batch=4,
        batch_size=4,
        fixed_shapes=True,
        num_threads=None,
    )
    base.update(kw)
    return OmegaConf.create(base)


def load_benchmark(name: str):
    """A script from benchmarks/ (not a package) as a module, for testing its pieces."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_image(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path, **kw) if mode else Image.fromarray(arr).save(path, **kw)
    return path


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def compose(
    config_name: str = "distill",
    overrides: list[str] | None = None,
    return_hydra_config: bool = False,
):
    """Compose a config the way the CLI does (Hydra's compose API)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hcompose(
            config_name=config_name,
            overrides=overrides or [],
            return_hydra_config=return_hydra_config,
        )


def smoke_cfg(out: Path, *overrides: str):
    """The smoke preset's config for a run in ``out``: no loggers, no progress bars, one CPU
    thread per stage (so runs compare bit for bit), then ``overrides``."""
    return compose(
        "distill",
        [
            "experiment=smoke",
            f"paths.output_dir={out}",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "scoring.num_threads=1",
            "features.num_threads=1",
            *overrides,
        ],
    )
