"""Stage I: diffusion patch-relevance scoring (paper §3.2, Algorithm 1)."""
