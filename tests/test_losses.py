"""The objective's maths: closed-form KL against Monte Carlo, and the IWAE bound's ordering in k."""

from __future__ import annotations

import math

import torch

from training import losses
from training.config import ModelConfig
from training.model import ConvVAE


def test_kl_closed_form_matches_monte_carlo() -> None:
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 5, generator=generator)
    logvar = torch.randn(3, 5, generator=generator) * 0.5
    analytic = losses.kl_to_standard_normal(mu, logvar).sum(-1)
    n = 400_000
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, 3, 5, generator=generator)
    samples = losses.gaussian_log_density(z, mu, logvar) - losses.standard_normal_log_density(z)
    estimate, stderr = samples.mean(0), samples.std(0) / math.sqrt(n)
    assert torch.all((estimate - analytic).abs() < 5 * stderr + 1e-3), (estimate, analytic, stderr)


def test_kl_is_zero_only_at_the_prior() -> None:
    zeros = torch.zeros(2, 4)
    assert torch.allclose(losses.kl_to_standard_normal(zeros, zeros), zeros)
    assert torch.all(losses.kl_to_standard_normal(torch.full((2, 4), 0.3), zeros) > 0)


def test_bernoulli_log_likelihood_matches_direct_formula() -> None:
    logits = torch.randn(2, 1, 4, 4)
    x = torch.bernoulli(torch.sigmoid(torch.randn(2, 1, 4, 4)))
    p = torch.sigmoid(logits)
    direct = (x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(-1)
    assert torch.allclose(losses.log_likelihood(x, logits, "bernoulli"), direct, atol=1e-5)


def test_gaussian_log_likelihood_matches_torch_distribution() -> None:
    logits = torch.randn(2, 1, 4, 4)
    x = torch.rand(2, 1, 4, 4)
    log_scale = torch.tensor([-1.3])
    expected = torch.distributions.Normal(torch.sigmoid(logits), log_scale.exp()).log_prob(x).flatten(1).sum(-1)
    assert torch.allclose(losses.log_likelihood(x, logits, "gaussian", log_scale), expected, atol=1e-4)


def test_iwae_bound_is_above_elbo_and_tightens_with_k() -> None:
    """E[IWAE_k] is non-decreasing in k and IWAE_1 = ELBO in expectation (Burda et al. 2015, Theorem 1)."""
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(latent_dim=4, hidden_channels=4, hidden_units=16)).eval()
    with torch.no_grad():  # make p(x|z) depend strongly on z and q(z|x) too wide: a real gap for k to close
        model.decoder.net[0].weight.mul_(8.0)
        model.encoder.head.bias[4:].fill_(1.0)
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.2))
    repeats = 300

    def mean_bound(k: int) -> tuple[float, float]:
        with torch.no_grad():
            values = torch.stack([losses.iwae_bound(model.log_importance_weights(x, k)).mean() for _ in range(repeats)])
        return float(values.mean()), float(values.std() / math.sqrt(repeats))

    with torch.no_grad():
        reconstruction, kl, _ = model.elbo_terms(x.repeat(repeats, 1, 1, 1))
    elbo = float((reconstruction - kl.sum(-1)).mean())
    iwae_1, se_1 = mean_bound(1)
    iwae_10, se_10 = mean_bound(10)
    iwae_100, se_100 = mean_bound(100)
    assert abs(iwae_1 - elbo) < 5 * se_1 + 0.5
    assert iwae_10 - iwae_1 > 5 * math.hypot(se_1, se_10)
    assert iwae_100 - iwae_10 > 5 * math.hypot(se_10, se_100)


def test_iwae_bound_is_log_mean_exp() -> None:
    log_w = torch.tensor([[0.0, -1000.0], [math.log(3.0), -1000.0]])
    assert torch.allclose(losses.iwae_bound(log_w), torch.tensor([math.log(2.0), -1000.0]))


def test_free_bits_floor_removes_gradient_below_threshold() -> None:
    kl = torch.tensor([[0.01, 2.0], [0.03, 4.0]], requires_grad=True)
    value = losses.free_bits_kl(kl, free_bits=0.5).mean()
    value.backward()
    assert torch.allclose(value, torch.tensor(0.5 + 3.0))
    assert kl.grad is not None and torch.all(kl.grad[:, 0] == 0) and torch.all(kl.grad[:, 1] > 0)
