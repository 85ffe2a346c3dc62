"""Dataset distillation by diffusion-driven patch selection.

Stage I scores the class relevance of every patch of real images with a text-to-image latent
diffusion model (`distill.scoring`); Stage II clusters the best patches with diffusion
features and assembles a tiny distilled dataset. `python -m distill` runs the pipeline.
"""

__version__ = "0.1.0"

from pathlib import Path as _Path

from omegaconf import OmegaConf as _OmegaConf

# The repository root, for configs that point at files shipped with the checkout (the
# committed Fashion-MNIST diffusion model): ${repo:}/models/fashion-ldm.
REPO_ROOT = _Path(__file__).resolve().parents[1]
_OmegaConf.register_new_resolver("repo", lambda: str(REPO_ROOT), replace=True)
