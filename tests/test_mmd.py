"""The MMD estimator against the Gaussian closed form, and the MMD-VAE objective (`--objective mmd`) end to end."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_MODEL
from training.__main__ import main
from training.config import TrainConfig
from training.losses import reparameterize
from training.mmd import default_bandwidth, gaussian_kernel, mmd2
from training.model import ConvVAE, load_checkpoint
from training.train import training_loss


def expected_kernel(dim: int, s2: float, shift_sq: float, v: float) -> float:
    """E exp(-||a - b||^2 / (2 s2)) when a - b ~ N(m, v I_dim) with ||m||^2 = shift_sq (a Gaussian integral)."""
    return (s2 / (s2 + v)) ** (dim / 2) * math.exp(-shift_sq / (2 * (s2 + v)))


def exact_terms(s2: float, m1: torch.Tensor, sd1: float, m2: torch.Tensor, sd2: float) -> tuple[float, float, float]:
    """(E k(x, x'), E k(y, y'), E k(x, y)) for x ~ N(m1, sd1^2 I), y ~ N(m2, sd2^2 I)."""
    dim, shift_sq = len(m1), float((m1 - m2).pow(2).sum())
    return (
        expected_kernel(dim, s2, 0.0, 2 * sd1**2),
        expected_kernel(dim, s2, 0.0, 2 * sd2**2),
        expected_kernel(dim, s2, shift_sq, sd1**2 + sd2**2),
    )


def exact_mmd2(s2: float, m1: torch.Tensor, sd1: float, m2: torch.Tensor, sd2: float) -> float:
    kxx, kyy, kxy = exact_terms(s2, m1, sd1, m2, sd2)
    return kxx + kyy - 2 * kxy


def draw(gen: torch.Generator, n: int, mean: torch.Tensor, sd: float) -> torch.Tensor:
    return mean + sd * torch.randn(n, len(mean), generator=gen, dtype=torch.float64)


M1, SD1 = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64), 0.8
M2, SD2 = torch.tensor([0.6, 0.0, -0.3], dtype=torch.float64), 1.2
S2 = default_bandwidth(3)


def test_kernel_and_both_estimators_on_a_hand_worked_example() -> None:
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    expected = torch.exp(-torch.tensor([[0.0, 9.0], [2.0, 5.0]]) / (2 * 2.0))
    assert torch.allclose(gaussian_kernel(a, b, bandwidth=2.0), expected)
    assert default_bandwidth(32) == 32.0

    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])  # bandwidth 1: k = exp(-dist^2 / 2)
    e = math.exp
    cross = (1 + e(-2) + e(-0.5) + e(-0.5)) / 4
    unbiased = e(-0.5) + e(-2) - 2 * cross  # off-diagonal pairs only within each sample
    biased = (2 + 2 * e(-0.5)) / 4 + (2 + 2 * e(-2)) / 4 - 2 * cross
    assert mmd2(x, y, bandwidth=1.0).item() == pytest.approx(unbiased, rel=1e-6)
    assert mmd2(x, y, bandwidth=1.0, unbiased=False).item() == pytest.approx(biased, rel=1e-6)
    with pytest.raises(ValueError):
        mmd2(x, torch.zeros(2, 2))


def test_unbiased_estimate_averages_to_the_closed_form_and_the_biased_one_does_not() -> None:
    gen = torch.Generator().manual_seed(0)
    n, reps = 64, 400
    u, v = [], []
    for _ in range(reps):
        x, y = draw(gen, n, M1, SD1), draw(gen, n, M2, SD2)
        u.append(mmd2(x, y).item())
        v.append(mmd2(x, y, unbiased=False).item())
    exact = exact_mmd2(S2, M1, SD1, M2, SD2)
    kxx, kyy, _ = exact_terms(S2, M1, SD1, M2, SD2)
    bias = (1 - kxx) / n + (1 - kyy) / n  # what the diagonal terms add to the V-statistic's mean
    u_t, v_t = torch.tensor(u), torch.tensor(v)
    u_se, v_se = u_t.std().item() / math.sqrt(reps), v_t.std().item() / math.sqrt(reps)
    assert abs(u_t.mean().item() - exact) < 4 * u_se
    assert abs(v_t.mean().item() - (exact + bias)) < 4 * v_se
    assert v_t.mean().item() - exact > 10 * v_se  # the test can tell a biased estimator from an unbiased one

    # One large sample: the non-degenerate U-statistic's spread shrinks like 1/sqrt(n), so at n = 2000 it is
    # at most the spread at 64 scaled by sqrt(64 / 2000) (an overestimate: the 1/n^2 part is gone too).
    big = 2000
    sd_big = u_t.std().item() * math.sqrt(n / big)
    assert sd_big < exact / 10  # the tolerance below is tight next to the value itself
    estimate = mmd2(draw(gen, big, M1, SD1), draw(gen, big, M2, SD2)).item()
    assert abs(estimate - exact) < 4 * sd_big


def test_identical_distributions_give_zero_and_the_estimate_grows_with_the_mean_shift() -> None:
    gen = torch.Generator().manual_seed(1)
    dim, n, reps = 4, 128, 100
    zero = torch.zeros(dim, dtype=torch.float64)
    means = []
    for shift in (0.0, 0.25, 0.5, 1.0, 2.0):
        moved = zero.clone()
        moved[0] = shift
        estimates = torch.tensor([mmd2(draw(gen, n, zero, 1.0), draw(gen, n, moved, 1.0)).item() for _ in range(reps)])
        mean, se = estimates.mean().item(), estimates.std().item() / math.sqrt(reps)
        assert abs(mean - exact_mmd2(default_bandwidth(dim), zero, 1.0, moved, 1.0)) < 4 * se, shift
        means.append(mean)
    assert abs(means[0]) < 2e-4  # exactly 0 in expectation for identical distributions
    assert all(later > earlier for earlier, later in itertools.pairwise(means)), means
    assert means[1] > 2e-3  # a quarter of a standard deviation is already well above the noise


def test_gradient_of_the_mmd_pulls_samples_onto_the_prior() -> None:
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(128, 2, generator=gen)
    shift = torch.tensor([1.5, -1.0], requires_grad=True)
    optimizer = torch.optim.SGD([shift], lr=1.0)
    path = []
    for _ in range(100):
        optimizer.zero_grad()
        mmd2(base + shift, torch.randn(128, 2, generator=gen)).backward()  # fresh prior draws every step
        optimizer.step()
        path.append(shift.detach().clone())
    settled = torch.stack(path[-50:]).mean(0)
    # Matched when the shifted sample is centred (its own sample mean is not exactly 0): 1.8 away at the start.
    assert (settled + base.mean(0)).norm().item() < 0.15


def _tiny_config(**overrides: object) -> TrainConfig:
    return TrainConfig(model=TINY_MODEL, objective="mmd", **overrides)  # type: ignore[arg-type]


def test_mmd_loss_is_reconstruction_plus_weighted_mmd_and_reports_the_elbo() -> None:
    torch.manual_seed(0)
    model = ConvVAE(TINY_MODEL)
    x = (torch.rand(16, 1, 28, 28) < 0.3).float()

    def run(weight: float, beta: float = 1.0) -> tuple[float, float]:
        torch.manual_seed(5)  # the same posterior and prior draws in every call
        loss, bound = training_loss(model, x, _tiny_config(mmd_weight=weight), beta)
        return loss.item(), bound.item()

    (l0, b0), (l1, b1), (l2, b2) = run(0.0), run(100.0), run(200.0)
    torch.manual_seed(5)
    reconstruction, kl_per_dim, _ = model.elbo_terms(x)  # same first draw: the same z
    assert l0 == pytest.approx(-reconstruction.mean().item(), rel=1e-5)
    assert b0 == b1 == b2 == pytest.approx((reconstruction - kl_per_dim.sum(-1)).mean().item(), rel=1e-5)
    assert l2 - l1 == pytest.approx(l1 - l0, rel=1e-4)  # linear in the weight
    torch.manual_seed(5)  # the posterior draw, then as many prior draws: the weight multiplies MMD^2_u of those
    mu, logvar = model.encoder(x)
    z = reparameterize(mu, logvar)[0]
    divergence = mmd2(z, torch.randn_like(z)).item()
    assert divergence > 0.01 and l1 - l0 == pytest.approx(100.0 * divergence, rel=1e-3)
    assert run(100.0, beta=0.0) == (l1, b1)  # no KL term: beta does not enter


def test_old_train_configs_load_with_the_default_weight() -> None:
    old = TrainConfig().to_dict()
    del old["mmd_weight"]  # what checkpoints from before the mmd objective hold
    assert TrainConfig.from_dict(old).mmd_weight == 1000.0
    assert TrainConfig.from_dict(_tiny_config(mmd_weight=7.0).to_dict()) == _tiny_config(mmd_weight=7.0)


def test_cli_trains_an_mmd_vae_selected_by_validation_elbo(idx_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mmd"
    tiny = ["--latent-dim", "4", "--hidden-channels", "4", "--hidden-units", "16"]
    argv = ["train", "--dataset", "idx", "--data-dir", str(idx_dir), "--out", str(out), "--epochs", "3",
            "--batch-size", "16", "--lr", "3e-3", "--ema-decay", "0.5", "--threads", "1", "--seed", "3",
            "--objective", "mmd", "--mmd-weight", "50", *tiny]  # fmt: skip
    assert main(argv) == 0
    model, last = load_checkpoint(out / "last.pt")
    assert model.config == TINY_MODEL
    assert last["train_config"]["objective"] == "mmd" and last["train_config"]["mmd_weight"] == 50.0
    history = last["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert all(row["valid_bound"] == row["valid_elbo"] for row in history)  # judged by the ELBO
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]  # it learns
    assert all(math.isfinite(row["train_loss"]) and row["train_loss"] != -row["train_elbo"] for row in history)
    _, best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == max(history, key=lambda row: row["valid_elbo"])["epoch"]
