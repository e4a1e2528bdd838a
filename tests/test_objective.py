"""vaecore.objective, the one home of the VAE maths, against closed forms, direct sums, torch.distributions and the
numpy formulas the service used before it (kept here as references), in float64 and float32."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from service import operations
from service.latent import posterior_kl
from vaecore import objective
from vaecore.repository import ModelSpec, decoder_spec, encoder_spec

LOG_2PI = math.log(2.0 * math.pi)


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_kl_closed_form_matches_monte_carlo() -> None:
    g = _generator()
    mu, logvar = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g).double() * 0.5
    analytic = objective.kl_to_standard_normal(mu, logvar).sum(-1)
    n = 400_000
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    z = q.sample((n,))
    samples = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(-1)
    estimate, stderr = samples.mean(0), samples.std(0) / math.sqrt(n)
    assert torch.all((estimate - analytic).abs() < 5 * stderr), (estimate, analytic, stderr)
    assert analytic.dtype == torch.float64


def test_the_service_latent_health_kl_is_the_same_kl() -> None:
    """service.latent.posterior_kl (numpy, for the latent-health histogram) agrees with the shared formula."""
    rng = np.random.default_rng(0)
    mu, logvar = rng.standard_normal((64, 8)).astype(np.float32), rng.standard_normal((64, 8)).astype(np.float32)
    shared = objective.kl_to_standard_normal(torch.from_numpy(mu).double(), torch.from_numpy(logvar).double())
    np.testing.assert_allclose(posterior_kl(mu, logvar), shared.sum(-1).numpy(), rtol=1e-12)


def test_bernoulli_log_likelihood_is_the_direct_sum() -> None:
    g = _generator()
    logits = torch.randn(3, 2, 1, 4, 4, generator=g, dtype=torch.float64)  # [K, B, C, H, W]
    x = torch.bernoulli(torch.full((2, 1, 4, 4), 0.4, dtype=torch.float64), generator=g)  # broadcast over K
    p = torch.sigmoid(logits)
    direct = (x * p.log() + (1 - x) * (1 - p).log()).flatten(2).sum(-1)
    got = objective.log_likelihood(x, logits, "bernoulli")
    assert got.shape == (3, 2)
    torch.testing.assert_close(got, direct, rtol=1e-12, atol=1e-12)


def test_gaussian_log_likelihood_is_a_normal_around_sigmoid_with_per_channel_scales() -> None:
    g = _generator()
    logits, x = torch.randn(2, 3, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g)
    log_scale = torch.tensor([-1.3, -0.2, 0.4])  # one per channel: a mix-up of channels would show
    sigma = log_scale.exp().view(3, 1, 1)
    expected = torch.distributions.Normal(torch.sigmoid(logits), sigma).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(objective.log_likelihood(x, logits, "gaussian", log_scale), expected)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_the_service_score_terms_match_its_old_numpy_formulas(likelihood: str) -> None:
    """The service's per-row terms (now vaecore, float64) equal what operations.py computed in numpy before."""
    rng = np.random.default_rng(1)
    rows, d = 10, 4
    x = (rng.random((rows, 1, 6, 6)) < 0.3).astype(np.float32)
    logits = rng.standard_normal((rows, 1, 6, 6)).astype(np.float32) * 3
    mu, logvar = rng.standard_normal((rows, d)).astype(np.float32), rng.standard_normal((rows, d)).astype(np.float32)
    eps = rng.standard_normal((rows, d)).astype(np.float32)
    z = operations._posterior_draws(mu, logvar, eps)
    scale = np.array([-1.1], np.float32) if likelihood == "gaussian" else None
    shape = (1, 6, 6)
    spec = ModelSpec("m", d, shape, likelihood, encoder_spec("m", shape, d), decoder_spec("m", shape, d), Path("."),
                     gaussian_log_scale=scale)  # fmt: skip
    log_px_z, log_w = operations._log_weights(spec, x, logits, z, mu, logvar)

    x64, l64 = x.astype(np.float64), logits.astype(np.float64)
    if likelihood == "bernoulli":
        per_pixel = x64 * l64 - np.logaddexp(0.0, l64)
    else:
        s = np.float64(scale[0])  # type: ignore[index]
        per_pixel = -0.5 * (LOG_2PI + 2 * s + (x64 - 1 / (1 + np.exp(-l64))) ** 2 * np.exp(-2 * s))
    old_px_z = per_pixel.reshape(rows, -1).sum(-1)
    old_pz = -0.5 * (LOG_2PI + z.astype(np.float64) ** 2).sum(-1)
    old_qz = -0.5 * (LOG_2PI + logvar.astype(np.float64) + eps.astype(np.float64) ** 2).sum(-1)
    np.testing.assert_allclose(z, mu + np.exp(0.5 * logvar) * eps, rtol=1e-6)
    np.testing.assert_allclose(log_px_z, old_px_z, rtol=1e-12)
    np.testing.assert_allclose(log_w, old_px_z + old_pz - old_qz, rtol=1e-5)  # z rounded to float32 vs exact eps


def test_log_importance_weights_are_the_three_densities() -> None:
    g = _generator()
    k, b, d = 5, 3, 4
    mu, logvar = torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g).double()
    z = objective.posterior_sample(mu, logvar, torch.randn(k, b, d, generator=g, dtype=torch.float64))
    logits, x = torch.randn(k, b, 1, 3, 3, generator=g).double(), torch.rand(b, 1, 3, 3, generator=g).double().round()
    log_px_z, log_w = objective.importance_terms(x, z, mu, logvar, logits, "bernoulli")
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    expected = objective.log_likelihood(x, logits, "bernoulli") + log_pz - log_qz
    torch.testing.assert_close(log_w, expected)
    torch.testing.assert_close(log_px_z, objective.log_likelihood(x, logits, "bernoulli"))
    torch.testing.assert_close(objective.log_importance_weights(x, z, mu, logvar, logits, "bernoulli"), log_w)


def test_log_mean_exp_is_stable_and_exact() -> None:
    values = torch.tensor([[0.0, math.log(3.0)], [-1000.0, -1000.0], [-1000.0, -1001.0]], dtype=torch.float64)
    got = objective.log_mean_exp(values, dim=1)
    expected = [math.log(2.0), -1000.0, -1000.0 + math.log((1 + math.exp(-1.0)) / 2)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    assert torch.isfinite(got).all()  # the naive log(mean(exp)) gives -inf for the last two rows


def test_image_scores_split_the_elbo_from_the_same_samples() -> None:
    g = _generator()
    log_px_z, log_w = torch.randn(4, 7, generator=g) - 100, torch.randn(4, 7, generator=g) - 90
    mu, logvar = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    scores = objective.image_scores(log_px_z, log_w, mu, logvar, sample_dim=0)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
    torch.testing.assert_close(scores.reconstruction, log_px_z.mean(0))
    torch.testing.assert_close(scores.kl, kl)
    torch.testing.assert_close(scores.elbo, log_px_z.mean(0) - kl)
    torch.testing.assert_close(scores.log_likelihood, torch.log(torch.exp(log_w.double()).mean(0)).float())
    transposed = objective.image_scores(log_px_z.T, log_w.T, mu, logvar, sample_dim=1)
    for a, b in zip(scores, transposed, strict=True):
        torch.testing.assert_close(a, b)


def test_bad_likelihoods_are_refused() -> None:
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="log_scale"):
        objective.log_likelihood(x, x, "gaussian")
    with pytest.raises(ValueError, match="unknown likelihood"):
        objective.log_likelihood(x, x, "poisson")


def test_float32_inputs_stay_float32() -> None:
    """The evaluation keeps float32 on the card: nothing in the maths promotes it to float64."""
    x, logits = torch.zeros(2, 1, 2, 2), torch.randn(3, 2, 1, 2, 2)
    mu, logvar, eps = torch.zeros(2, 4), torch.zeros(2, 4), torch.randn(3, 2, 4)
    z = objective.posterior_sample(mu, logvar, eps)
    terms = objective.importance_terms(x, z, mu, logvar, logits, "gaussian", torch.tensor([-1.0]))
    scores = objective.image_scores(*terms, mu, logvar, sample_dim=0)
    assert {t.dtype for t in (z, *terms, *scores)} == {torch.float32}
