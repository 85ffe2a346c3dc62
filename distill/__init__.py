"""Dataset distillation by diffusion-driven patch selection.

Stage I scores the class relevance of every patch of real images with a text-to-image latent
diffusion model (`distill.scoring`); Stage II clusters the best patches with diffusion
features and assembles a tiny distilled dataset. `python -m distill` runs the pipeline.
"""

__version__ = "0.1.0"
