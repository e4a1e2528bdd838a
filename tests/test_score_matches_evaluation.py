"""The service's Score equals training's evaluation: same checkpoint (exported for the service), same images, same
seed, same k -> the same ELBO, reconstruction, KL and log p(x) per image, for a Bernoulli and a Gaussian model.

Score runs over real gRPC on an in-process server (the TorchScript export, float64 maths on numpy's arrays); the
evaluation runs the eager model from the checkpoint (float32 tensors). Both use `vaecore.objective` and draw the
noise with `vaecore.rng`, so only rounding separates them: TorchScript vs eager convolutions on different batch
shapes (last-bit differences in mu, logvar and the logits), and float32 vs float64 sums over 784 pixels. Measured
here: at most 2.5e-6 relative and 4e-5 nats. RTOL = 1e-4 (with ATOL) leaves room for other CPUs' kernels, while
other noise moves the numbers by far more (asserted below, so the tolerance is known to be able to fail).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.config import Settings
from tests.datasets import stroke_images
from tests.service.harness import serving, stub_for
from training.config import ModelConfig
from training.evaluate import evaluate, iwae_log_likelihood, score_images
from training.model import ConvVAE, load_checkpoint, save_checkpoint
from vae_client.codecs import array_to_tensor
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub
from vaecore.objective import ImageScores

RTOL = 1e-4
# nats: float32 rounding grows with the sum of the per-pixel terms' sizes, not with their total, and a Gaussian
# log density sums terms of both signs (the tiny Gaussian model's ELBO is near 8 nats from ~784 such terms)
ATOL = 1e-4
SEED, SAMPLES = 1234, 64
MODELS = ("tiny", "tinygauss")


@pytest.fixture(scope="module")
def checkpoints(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The conftest's Bernoulli model, and a Gaussian one with the same network weights and a per-channel log sigma
    of -1.3 (weights need not be trained for the maths to be compared; training one would cost the 2 cores)."""
    model, checkpoint = load_checkpoint(trained_run / "best.pt")
    config = ModelConfig.from_dict({**model.config.to_dict(), "likelihood": "gaussian"})
    gaussian = ConvVAE(config)
    gaussian.load_state_dict(model.state_dict())
    with torch.no_grad():
        gaussian.log_scale.fill_(-1.3)
    path = tmp_path_factory.mktemp("gaussian") / "best.pt"
    extra = {key: value for key, value in checkpoint.items() if key not in ("model_config", "model_state", "ema_state")}
    save_checkpoint(path, gaussian, extra)
    return {"tiny": trained_run / "best.pt", "tinygauss": path}


@pytest.fixture(scope="module")
def stub(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaeServiceStub]:
    """A real server on the two exported models; small batches and score chunks so Score splits its rows."""
    from training.export import export_repository

    repo = tmp_path_factory.mktemp("score_repository")
    for name, path in checkpoints.items():
        model, checkpoint = load_checkpoint(path)
        export_repository(model, checkpoint, repo, name, max_batch_size=16)
    settings = Settings(host="127.0.0.1", port=0, metrics_port=0, model_repository=repo, max_batch_size=16,
                        max_wait_ms=0, score_chunk_rows=100, torch_threads=1)  # fmt: skip
    with serving(settings) as server, stub_for(server) as s:
        yield s


def images_for(name: str, n: int = 6) -> np.ndarray:
    """Binary strokes for the Bernoulli model (what it is evaluated on), grey levels for the Gaussian one."""
    x = stroke_images(n, seed=7)[0][:, None]
    return (x > 0.5).astype(np.float32) if name == "tiny" else x.astype(np.float32)


def service_scores(stub: VaeServiceStub, name: str, x: np.ndarray, seed: int, k: int) -> dict[str, np.ndarray]:
    request = V.ScoreRequest(model=name, images=V.Images(tensor=array_to_tensor(x)), importance_samples=k,
                             seed=V.Seed(value=seed))  # fmt: skip
    reply = stub.Score(request)
    assert reply.seed == seed and reply.importance_samples == k and len(reply.scores) == len(x)
    return {f: np.array([getattr(s, f) for s in reply.scores]) for f in ImageScores._fields}


def evaluation_scores(path: Path, x: np.ndarray, seed: int, k: int, **kwargs: Any) -> dict[str, np.ndarray]:
    model, _ = load_checkpoint(path)
    scores = score_images(model, torch.from_numpy(x), k, progress=False, seed=seed, **kwargs)
    return {f: getattr(scores, f).double().numpy() for f in ImageScores._fields}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("latents_per_call", [40, 256])  # 40: each image's 64 samples in two chunks; 256: 4 images
def test_score_equals_the_evaluation(
    stub: VaeServiceStub, checkpoints: dict[str, Path], name: str, latents_per_call: int
) -> None:
    x = images_for(name)
    served = service_scores(stub, name, x, SEED, SAMPLES)
    evaluated = evaluation_scores(checkpoints[name], x, SEED, SAMPLES, latents_per_call=latents_per_call)
    for field in ImageScores._fields:
        np.testing.assert_allclose(served[field], evaluated[field], rtol=RTOL, atol=ATOL, err_msg=f"{name}: {field}")
    assert np.all(served["kl"] > 0.01), "a KL this small would make the comparison of the KL empty"


@pytest.mark.parametrize("name", MODELS)
def test_the_tolerance_tells_other_noise_apart(stub: VaeServiceStub, checkpoints: dict[str, Path], name: str) -> None:
    """The comparison above is not vacuous: another seed, or each image given another image's noise (the images in
    reverse order), moves log p(x) and the reconstruction far outside the tolerance (one image may, by chance, land
    near its old value; the worst is ten times over)."""
    x = images_for(name)
    served = service_scores(stub, name, x, SEED, SAMPLES)
    other_seed = evaluation_scores(checkpoints[name], x, SEED + 1, SAMPLES)
    reversed_ = {f: v[::-1] for f, v in evaluation_scores(checkpoints[name], x[::-1].copy(), SEED, SAMPLES).items()}
    for other in (other_seed, reversed_):
        for field in ("reconstruction", "log_likelihood"):
            excess = np.abs(other[field] - served[field]) / (RTOL * np.abs(served[field]) + ATOL)
            assert excess.max() > 10, (field, excess)


def test_evaluate_reports_the_means_of_the_scores(checkpoints: dict[str, Path]) -> None:
    """`evaluate` (what `python -m training evaluate` publishes) is the mean of Score's per-image numbers."""
    x = images_for("tiny")
    model, _ = load_checkpoint(checkpoints["tiny"])
    result = evaluate(model, torch.from_numpy(x), SAMPLES, progress=False, seed=SEED)
    scores = evaluation_scores(checkpoints["tiny"], x, SEED, SAMPLES)
    assert result.test_elbo == pytest.approx(scores["elbo"].mean(), rel=1e-6)
    assert result.test_recon == pytest.approx(scores["reconstruction"].mean(), rel=1e-6)
    assert result.test_kl == pytest.approx(scores["kl"].mean(), rel=1e-6)
    assert result.test_nll == pytest.approx(-scores["log_likelihood"].mean(), rel=1e-6)
    assert result.test_nll_stderr == pytest.approx(scores["log_likelihood"].std(ddof=1) / math.sqrt(len(x)), rel=1e-4)


def _old_iwae_log_likelihood(model: ConvVAE, images: torch.Tensor, samples: int, chunk: int) -> torch.Tensor:
    """The evaluation as it was before vaecore (one image at a time, a running log-sum-exp), as the reference."""
    out = []
    for x in images.split(1):
        mu, logvar = model.encoder(x)
        log_sum = torch.full((1,), -math.inf)
        for done in range(0, samples, chunk):
            k = min(chunk, samples - done)
            z = mu + torch.exp(0.5 * logvar) * torch.randn((k, *mu.shape))
            logits = model.decoder(z.flatten(0, 1)).unflatten(0, (k, 1))
            log_px_z = (
                -torch.nn.functional.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
                .flatten(2)
                .sum(-1)
            )
            log_pz = -0.5 * (math.log(2 * math.pi) + z.pow(2)).sum(-1)
            log_qz = -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_px_z + log_pz - log_qz, dim=0))
        out.append(log_sum - math.log(samples))
    return torch.cat(out)


@torch.inference_mode()
def test_the_default_noise_gives_the_numbers_it_gave_before(checkpoints: dict[str, Path]) -> None:
    """Unseeded, the evaluation draws torch.randn exactly as before (same shapes, same order), so for a torch seed
    it reproduces the old code's estimate: the published NLL figures keep their meaning."""
    model, _ = load_checkpoint(checkpoints["tiny"])
    x = torch.from_numpy(images_for("tiny"))
    torch.manual_seed(3)
    new = iwae_log_likelihood(model, x, 300, latents_per_call=100, progress=False)  # one image, 3 chunks at a time
    torch.manual_seed(3)
    old = _old_iwae_log_likelihood(model, x, 300, chunk=100)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-5)
    torch.manual_seed(4)
    assert not torch.allclose(iwae_log_likelihood(model, x, 300, latents_per_call=100, progress=False), old)
