"""The training objectives: the VAE's maths (likelihoods, analytic KL, importance weights, the IWAE bound) comes
from `vaecore.objective`, shared with the service's Score; this module adds what only training needs (drawing the
reparameterized noise, free bits) and keeps the names the training code and tests call.

Everything is in nats and summed over pixels; functions return per-example values so callers choose the reduction.
"""

from __future__ import annotations

import torch

from vaecore.objective import (
    LOG_2PI,
    gaussian_log_density,
    importance_terms,
    kl_to_standard_normal,
    log_importance_weights,
    log_likelihood,
    log_mean_exp,
    posterior_sample,
    standard_normal_log_density,
)

__all__ = [
    "LOG_2PI",
    "free_bits_kl",
    "gaussian_log_density",
    "importance_terms",
    "iwae_bound",
    "kl_to_standard_normal",
    "log_importance_weights",
    "log_likelihood",
    "reparameterize",
    "standard_normal_log_density",
]


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, samples: int = 1) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I); shape [samples, *mu.shape] so gradients reach mu and logvar."""
    eps = torch.randn((samples, *mu.shape), dtype=mu.dtype, device=mu.device)
    return posterior_sample(mu, logvar, eps)


def free_bits_kl(kl_per_dim: torch.Tensor, free_bits: float) -> torch.Tensor:
    """KL summed over dims, where a dim whose batch-mean KL is below `free_bits` nats counts as exactly
    `free_bits` and gets no gradient (Kingma et al. 2016), so the encoder is not pushed to collapse it."""
    if free_bits <= 0.0:
        return kl_per_dim.sum(-1)
    below = kl_per_dim.detach().mean(0, keepdim=True) < free_bits
    return torch.where(below, torch.full_like(kl_per_dim, free_bits), kl_per_dim).sum(-1)


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k w_k over the leading sample axis, computed stably: the IWAE bound per example."""
    return log_mean_exp(log_weights, dim=0)
