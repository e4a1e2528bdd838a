"""The VAE objectives: likelihoods, analytic KL, ELBO and the importance-weighted bound (Burda et al. 2015).

Everything is in nats and summed over pixels; functions return per-example values so callers choose the
reduction. Pure tensor code, no model state, so it can be tested against Monte-Carlo estimates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.config import Likelihood

LOG_2PI = math.log(2.0 * math.pi)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per latent dimension, shape of `mu`."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def log_likelihood(
    x: torch.Tensor, logits: torch.Tensor, likelihood: Likelihood, log_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(x|z) summed over all but the leading dims of `logits` ([..., C, H, W] -> [...]).

    Bernoulli: `logits` are the pixel log-odds. Gaussian: the mean is sigmoid(logits) and `log_scale` is the
    learned per-channel log standard deviation.
    """
    if likelihood == "bernoulli":
        x = x.expand_as(logits)
        ll = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    else:
        if log_scale is None:
            raise ValueError("the Gaussian likelihood needs log_scale")
        scale = log_scale.view(-1, 1, 1)
        mean = torch.sigmoid(logits)
        ll = -0.5 * (LOG_2PI + 2.0 * scale + (x - mean).pow(2) * torch.exp(-2.0 * scale))
    return ll.flatten(start_dim=-3).sum(-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, samples: int = 1) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I); shape [samples, *mu.shape] so gradients reach mu and logvar."""
    eps = torch.randn((samples, *mu.shape), dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def free_bits_kl(kl_per_dim: torch.Tensor, free_bits: float) -> torch.Tensor:
    """KL summed over dims, where a dim whose batch-mean KL is below `free_bits` nats counts as exactly
    `free_bits` and gets no gradient (Kingma et al. 2016), so the encoder is not pushed to collapse it."""
    if free_bits <= 0.0:
        return kl_per_dim.sum(-1)
    below = kl_per_dim.detach().mean(0, keepdim=True) < free_bits
    return torch.where(below, torch.full_like(kl_per_dim, free_bits), kl_per_dim).sum(-1)


def log_importance_weights(
    x: torch.Tensor,
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    logits: torch.Tensor,
    likelihood: Likelihood,
    log_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) for z of shape [K, B, D]; returns [K, B]."""
    return (
        log_likelihood(x, logits, likelihood, log_scale)
        + standard_normal_log_density(z)
        - gaussian_log_density(z, mu, logvar)
    )


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k w_k over the leading sample axis, computed stably: the IWAE bound per example."""
    k = log_weights.shape[0]
    return torch.logsumexp(log_weights, dim=0) - math.log(k)
