"""Pure latent-space math for the service: interpolation paths, weighted sums, prior draws, noise.

numpy only, no model, no grpc. Interpolation lives in `vaecore.latent` (the training plots use it too).
"""

from __future__ import annotations

import numpy as np

from vaecore.latent import lerp, slerp

__all__ = ["interpolate", "lerp", "posterior_kl", "prior_latents", "slerp", "weighted_sum"]


def interpolate(a: np.ndarray, b: np.ndarray, steps: int, spherical: bool) -> np.ndarray:
    return slerp(a, b, steps) if spherical else lerp(a, b, steps)


def weighted_sum(weights: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """sum_i w_i v_i for vectors [T, D] -> [D] (float64 accumulation, float32 out)."""
    return (weights.astype(np.float64) @ vectors.astype(np.float64)).astype(np.float32)


def prior_latents(rng: np.random.Generator, n: int, latent_dim: int, temperature: float) -> np.ndarray:
    """n draws of N(0, temperature^2 I); the same generator state gives the same latents."""
    return (rng.standard_normal((n, latent_dim), dtype=np.float32) * np.float32(temperature)).astype(np.float32)


def posterior_kl(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per row, in nats (float64): Score's KL and the latent-health KL."""
    mu64, lv64 = mu.astype(np.float64), logvar.astype(np.float64)
    return 0.5 * (mu64**2 + np.exp(lv64) - 1.0 - lv64).sum(-1)  # type: ignore[no-any-return]
