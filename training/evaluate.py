"""Test-set evaluation: the ELBO and the importance-weighted estimate of log p(x) (Burda et al. 2015).

log p(x) ~= log (1/k) sum_j p(x, z_j) / q(z_j|x), z_j ~ q(z|x). It is a stochastic lower bound that tightens
as k grows, so small k only overestimates the NLL. The k samples of one image are drawn in chunks and merged
with a running log-sum-exp, so memory stays flat for k=5000.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from training import losses
from training.model import ConvVAE
from training.train import evaluate_elbo


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


@torch.inference_mode()
def iwae_log_likelihood(
    model: ConvVAE,
    images: torch.Tensor,
    samples: int,
    latents_per_call: int = 1000,
    progress: bool = True,
) -> torch.Tensor:
    """Per-image IWAE estimate of log p(x) with `samples` importance samples; returns [N] (nats)."""
    model.eval()
    per_batch = max(1, latents_per_call // min(samples, latents_per_call))
    chunk = max(1, latents_per_call // per_batch)
    results = []
    bar = tqdm(total=len(images), desc=f"IWAE k={samples}", unit="img", disable=not progress, mininterval=2.0)
    for start in range(0, len(images), per_batch):
        x = images[start : start + per_batch]
        mu, logvar = model.encoder(x)
        log_sum = torch.full((len(x),), -math.inf, device=x.device)
        for done in range(0, samples, chunk):
            k = min(chunk, samples - done)
            z = losses.reparameterize(mu, logvar, k)
            logits = model.decoder(z.flatten(0, 1)).unflatten(0, (k, len(x)))
            log_w = losses.log_importance_weights(
                x, z, mu, logvar, logits, model.config.likelihood, model.decoder_log_scale()
            )
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_w, dim=0))
        results.append(log_sum - math.log(samples))
        bar.update(len(x))
        if len(results) % 20 == 0:  # the running estimate, so a long run shows where it is heading
            bar.set_postfix(nll=f"{-float(torch.cat(results).mean()):.2f}", refresh=False)
    bar.close()
    return torch.cat(results).cpu()


def evaluate(model: ConvVAE, images: torch.Tensor, samples: int, progress: bool = True) -> Evaluation:
    """Test ELBO (analytic KL, one reconstruction sample per image) and IWAE NLL with `samples` samples."""
    started = time.perf_counter()
    elbo = evaluate_elbo(model, images)
    log_px = iwae_log_likelihood(model, images, samples, progress=progress)
    stderr = float(log_px.std() / math.sqrt(len(log_px))) if len(log_px) > 1 else float("nan")
    return Evaluation(
        test_elbo=elbo["elbo"],
        test_recon=elbo["recon"],
        test_kl=elbo["kl"],
        test_nll=float(-log_px.mean()),
        test_nll_stderr=stderr,
        importance_samples=samples,
        images=len(images),
        seconds=time.perf_counter() - started,
    )
