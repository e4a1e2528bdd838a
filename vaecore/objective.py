"""The VAE's maths, in one place: training, its evaluation and the service's Score all call these functions.

log p(x|z) (Bernoulli, or Gaussian around sigmoid(logits) with a learned per-channel log sigma), the analytic
KL of q(z|x) to N(0, I), the log importance weights log p(x|z) + log p(z) - log q(z|x), and the log-mean-exp
over samples that turns them into the IWAE estimate of log p(x) (Burda et al. 2015). Everything is in nats and
summed over pixels or latent dimensions. No model state.

Each function takes torch tensors or numpy arrays and answers in the same kind, dtype and device: training
keeps float32 tensors on the card (with autograd), the service passes float64 numpy arrays. The formulas are
written once, with arithmetic both kinds share; the four elementwise functions they differ in (exp, softplus,
sigmoid, logsumexp) come from `_ops`. So the service, whose `-triton` image carries no PyTorch, runs the very
same code, and torch is imported only when a tensor is passed.
"""

from __future__ import annotations

import math
from functools import cache
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

    Array = TypeVar("Array", np.ndarray, torch.Tensor)
else:
    Array = TypeVar("Array")

LOG_2PI = math.log(2.0 * math.pi)
LIKELIHOODS = ("bernoulli", "gaussian")


class ImageScores(NamedTuple):
    """Per image, in nats: ELBO = reconstruction - KL, E_q[log p(x|z)], KL(q(z|x) || p(z)), IWAE log p(x)."""

    elbo: Any
    reconstruction: Any
    kl: Any
    log_likelihood: Any


def _numpy_logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(values, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(values - top), axis=axis))


NUMPY_OPS = SimpleNamespace(
    exp=np.exp,
    softplus=lambda v: np.logaddexp(0.0, v),
    sigmoid=lambda v: np.exp(-np.logaddexp(0.0, -v)),
    logsumexp=_numpy_logsumexp,
    like=lambda v, other: np.asarray(v, dtype=other.dtype),
)


@cache
def _torch_ops() -> SimpleNamespace:
    import torch
    import torch.nn.functional as F

    return SimpleNamespace(
        exp=torch.exp,
        softplus=F.softplus,
        sigmoid=torch.sigmoid,
        logsumexp=lambda v, axis: torch.logsumexp(v, dim=axis),
        like=lambda v, other: torch.as_tensor(v).to(other.dtype).to(other.device),
    )


def _ops(array: Any) -> SimpleNamespace:
    """The elementwise functions of `array`'s kind: numpy's for an ndarray, else torch's (imported only then)."""
    return NUMPY_OPS if isinstance(array, np.ndarray | np.generic) else _torch_ops()


def kl_to_standard_normal(mu: Array, logvar: Array) -> Array:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per latent dimension, shape of `mu`."""
    return 0.5 * (mu**2 + _ops(logvar).exp(logvar) - 1.0 - logvar)


def gaussian_log_density(z: Array, mu: Array, logvar: Array) -> Array:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * _ops(logvar).exp(-logvar)).sum(-1)


def standard_normal_log_density(z: Array) -> Array:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (LOG_2PI + z**2).sum(-1)


def posterior_sample(mu: Array, logvar: Array, eps: Array) -> Array:
    """z = mu + sigma * eps: the reparameterized draw of q(z|x) for given standard-normal noise `eps`."""
    return mu + _ops(logvar).exp(0.5 * logvar) * eps


def log_likelihood(x: Array, logits: Array, likelihood: str, log_scale: Array | None = None) -> Array:
    """log p(x|z) summed over the last three dims of `logits` ([..., C, H, W] -> [...]); `x` broadcasts.

    Bernoulli: `logits` are the pixel log-odds, log p = x * logits - softplus(logits). Gaussian: the mean is
    sigmoid(logits) and `log_scale` [C] is the per-channel log standard deviation (the model's
    `decoder_log_scale()`, exported as `gaussian_log_scale`).
    """
    ops = _ops(logits)
    if likelihood == "bernoulli":
        per_pixel = x * logits - ops.softplus(logits)
    elif likelihood == "gaussian":
        if log_scale is None:
            raise ValueError("the Gaussian likelihood needs log_scale")
        scale = ops.like(log_scale, logits).reshape(-1, 1, 1)
        per_pixel = -0.5 * (LOG_2PI + 2.0 * scale + (x - ops.sigmoid(logits)) ** 2 * ops.exp(-2.0 * scale))
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")
    return per_pixel.reshape(*per_pixel.shape[:-3], -1).sum(-1)


def importance_terms(
    x: Array,
    z: Array,
    mu: Array,
    logvar: Array,
    logits: Array,
    likelihood: str,
    log_scale: Array | None = None,
) -> tuple[Array, Array]:
    """(log p(x|z), log p(x|z) + log p(z) - log q(z|x)) for each z; the leading dims of `z` minus its last."""
    log_px_z = log_likelihood(x, logits, likelihood, log_scale)
    return log_px_z, log_px_z + standard_normal_log_density(z) - gaussian_log_density(z, mu, logvar)


def log_importance_weights(
    x: Array,
    z: Array,
    mu: Array,
    logvar: Array,
    logits: Array,
    likelihood: str,
    log_scale: Array | None = None,
) -> Array:
    """log p(x|z) + log p(z) - log q(z|x): for z of shape [K, B, D] returns [K, B]."""
    return importance_terms(x, z, mu, logvar, logits, likelihood, log_scale)[1]


def log_mean_exp(values: Array, dim: int) -> Array:
    """log (1/K) sum_k exp(values_k) along `dim`, computed stably: the IWAE estimate from K log weights."""
    return _ops(values).logsumexp(values, dim) - math.log(values.shape[dim])


def image_scores(log_px_z: Array, log_w: Array, mu: Array, logvar: Array, sample_dim: int) -> ImageScores:
    """Score's four numbers per image from the same K samples (along `sample_dim` of `log_px_z` and `log_w`):
    the reconstruction is their mean log p(x|z), the KL analytic, log p(x) their log-mean-exp weight."""
    reconstruction = log_px_z.mean(sample_dim)
    kl = kl_to_standard_normal(mu, logvar).sum(-1)
    return ImageScores(reconstruction - kl, reconstruction, kl, log_mean_exp(log_w, sample_dim))
