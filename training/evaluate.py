"""Test-set evaluation: the ELBO and the importance-weighted estimate of log p(x) (Burda et al. 2015).

log p(x) ~= log (1/k) sum_j p(x, z_j) / q(z_j|x), z_j ~ q(z|x). It is a stochastic lower bound that tightens
as k grows, so small k only overestimates the NLL. The maths is `vaecore.objective`, the same functions the
service's Score calls; each image's k samples are decoded in chunks, so memory stays flat for k=5000.

The noise is torch.randn on the model's device by default (fast on a GPU). With a `seed` it is instead drawn
exactly as the service's Score draws it (`vaecore.rng`, image after image, [k, D] each), so the evaluation of a
checkpoint and Score on its export give the same numbers for the same images, seed and k.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from training.model import ConvVAE
from vaecore import objective
from vaecore.objective import ImageScores
from vaecore.rng import generator


@dataclass(frozen=True)
class Evaluation:
    test_elbo: float
    test_recon: float
    test_kl: float
    test_nll: float  # -mean IWAE estimate of log p(x), nats
    test_nll_stderr: float
    importance_samples: int
    images: int
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _noise(mu: torch.Tensor, samples: int, chunk: int, rng: np.random.Generator | None) -> Iterator[torch.Tensor]:
    """eps [k, B, D] for the batch whose posterior means are `mu`, chunk after chunk of k <= `chunk` samples:
    torch.randn on mu's device, or with `rng` the service's order (one [B, samples, D] draw, image by image)."""
    drawn = None
    if rng is not None:
        block = rng.standard_normal((len(mu), samples, mu.shape[-1]), dtype=np.float32)
        drawn = torch.from_numpy(block).to(mu.device, mu.dtype).transpose(0, 1)
    for done in range(0, samples, chunk):
        k = min(chunk, samples - done)
        yield torch.randn((k, *mu.shape), dtype=mu.dtype, device=mu.device) if drawn is None else drawn[done : done + k]


def _score_batch(
    model: ConvVAE, x: torch.Tensor, samples: int, chunk: int, rng: np.random.Generator | None
) -> ImageScores:
    """Score's numbers for one batch of images: all `samples` log weights of each, decoded `chunk` at a time."""
    mu, logvar = model.encoder(x)
    log_px_z, log_w = [], []
    for eps in _noise(mu, samples, chunk, rng):
        z = objective.posterior_sample(mu, logvar, eps)
        logits = model.decoder(z.flatten(0, 1)).unflatten(0, z.shape[:2])
        terms = objective.importance_terms(x, z, mu, logvar, logits, model.config.likelihood, model.decoder_log_scale())
        log_px_z.append(terms[0])
        log_w.append(terms[1])
    return objective.image_scores(torch.cat(log_px_z), torch.cat(log_w), mu, logvar, sample_dim=0)


@torch.inference_mode()
def score_images(
    model: ConvVAE,
    images: torch.Tensor,
    samples: int,
    latents_per_call: int = 1000,
    progress: bool = True,
    seed: int | None = None,
) -> ImageScores:
    """Per image [N] each: ELBO, reconstruction E_q[log p(x|z)] and log p(x) from the same `samples` draws of
    q(z|x), and the analytic KL; what Score answers. `seed` draws the noise as Score does (see the module doc)."""
    model.eval()
    per_batch = max(1, latents_per_call // min(samples, latents_per_call))
    chunk = max(1, latents_per_call // per_batch)
    rng = None if seed is None else generator(seed)
    parts: list[ImageScores] = []
    bar = tqdm(total=len(images), desc=f"IWAE k={samples}", unit="img", disable=not progress, mininterval=2.0)
    for start in range(0, len(images), per_batch):
        parts.append(_score_batch(model, images[start : start + per_batch], samples, chunk, rng))
        bar.update(len(parts[-1].elbo))
        if len(parts) % 20 == 0:  # the running estimate, so a long run shows where it is heading
            nll = -float(torch.cat([p.log_likelihood for p in parts]).mean())
            bar.set_postfix(nll=f"{nll:.2f}", refresh=False)
    bar.close()
    return ImageScores(*(torch.cat(column).cpu() for column in zip(*parts, strict=True)))


def iwae_log_likelihood(
    model: ConvVAE,
    images: torch.Tensor,
    samples: int,
    latents_per_call: int = 1000,
    progress: bool = True,
    seed: int | None = None,
) -> torch.Tensor:
    """Per-image IWAE estimate of log p(x) with `samples` importance samples; returns [N] (nats)."""
    return score_images(model, images, samples, latents_per_call, progress, seed).log_likelihood


def evaluate(
    model: ConvVAE, images: torch.Tensor, samples: int, progress: bool = True, seed: int | None = None
) -> Evaluation:
    """Test ELBO (analytic KL, reconstruction averaged over the `samples` draws) and IWAE NLL, in one pass."""
    started = time.perf_counter()
    scores = score_images(model, images, samples, progress=progress, seed=seed)
    log_px = scores.log_likelihood
    stderr = float(log_px.std() / math.sqrt(len(log_px))) if len(log_px) > 1 else float("nan")
    return Evaluation(
        test_elbo=float(scores.elbo.double().mean()),
        test_recon=float(scores.reconstruction.double().mean()),
        test_kl=float(scores.kl.double().mean()),
        test_nll=float(-log_px.double().mean()),
        test_nll_stderr=stderr,
        importance_samples=samples,
        images=len(images),
        seconds=time.perf_counter() - started,
    )
