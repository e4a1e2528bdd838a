"""The VAE's maths, in one place: training, its evaluation and the service's Score all call these functions.

log p(x|z) (Bernoulli, or Gaussian around sigmoid(logits) with a learned per-channel log sigma), the analytic
KL of q(z|x) to N(0, I), the log importance weights log p(x|z) + log p(z) - log q(z|x), and the log-mean-exp
over samples that turns them into the IWAE estimate of log p(x) (Burda et al. 2015). Everything is in nats and
summed over pixels or latent dimensions. Pure torch, no model state: each function computes in the dtype and
on the device of its inputs, so training keeps float32 tensors on the card and the service passes float64
views of its numpy arrays; only the precision differs, never the formula.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)
LIKELIHOODS = ("bernoulli", "gaussian")


class ImageScores(NamedTuple):
    """Per image, in nats: ELBO = reconstruction - KL, E_q[log p(x|z)], KL(q(z|x) || p(z)), IWAE log p(x)."""

    elbo: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    log_likelihood: torch.Tensor


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per latent dimension, shape of `mu`."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def posterior_sample(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps: the reparameterized draw of q(z|x) for given standard-normal noise `eps`."""
    return mu + torch.exp(0.5 * logvar) * eps


def log_likelihood(
    x: torch.Tensor, logits: torch.Tensor, likelihood: str, log_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(x|z) summed over the last three dims of `logits` ([..., C, H, W] -> [...]); `x` broadcasts.

    Bernoulli: `logits` are the pixel log-odds. Gaussian: the mean is sigmoid(logits) and `log_scale` [C] is the
    per-channel log standard deviation (the model's `decoder_log_scale()`, exported as `gaussian_log_scale`).
    """
    if likelihood == "bernoulli":
        per_pixel = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    elif likelihood == "gaussian":
        if log_scale is None:
            raise ValueError("the Gaussian likelihood needs log_scale")
        scale = log_scale.to(logits.dtype).view(-1, 1, 1)
        mean = torch.sigmoid(logits)
        per_pixel = -0.5 * (LOG_2PI + 2.0 * scale + (x - mean).pow(2) * torch.exp(-2.0 * scale))
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")
    return per_pixel.flatten(start_dim=-3).sum(-1)


def importance_terms(
    x: torch.Tensor,
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    logits: torch.Tensor,
    likelihood: str,
    log_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x|z), log p(x|z) + log p(z) - log q(z|x)) for each z; the leading dims of `z` minus its last."""
    log_px_z = log_likelihood(x, logits, likelihood, log_scale)
    return log_px_z, log_px_z + standard_normal_log_density(z) - gaussian_log_density(z, mu, logvar)


def log_importance_weights(
    x: torch.Tensor,
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    logits: torch.Tensor,
    likelihood: str,
    log_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x): for z of shape [K, B, D] returns [K, B]."""
    return importance_terms(x, z, mu, logvar, logits, likelihood, log_scale)[1]


def log_mean_exp(values: torch.Tensor, dim: int) -> torch.Tensor:
    """log (1/K) sum_k exp(values_k) along `dim`, computed stably: the IWAE estimate from K log weights."""
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])


def image_scores(
    log_px_z: torch.Tensor, log_w: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, sample_dim: int
) -> ImageScores:
    """Score's four numbers per image from the same K samples (along `sample_dim` of `log_px_z` and `log_w`):
    the reconstruction is their mean log p(x|z), the KL analytic, log p(x) their log-mean-exp weight."""
    reconstruction = log_px_z.mean(sample_dim)
    kl = kl_to_standard_normal(mu, logvar).sum(-1)
    return ImageScores(reconstruction - kl, reconstruction, kl, log_mean_exp(log_w, sample_dim))
