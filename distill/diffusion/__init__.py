"""The diffusion backend (`DiffusionBackend`) and models built in code."""

from distill.diffusion.backend import DTYPES, DiffusionBackend, resolve_dtype

__all__ = ["DTYPES", "DiffusionBackend", "resolve_dtype"]
