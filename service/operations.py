"""What the service does, without gRPC: validate-free domain operations on numpy arrays.

Every backend call goes through a per-model, per-network `DynamicBatcher`; requests larger than the batch
size are split into chunks that run concurrently and are joined in order. All randomness comes from the
`np.random.Generator` the caller passes (seeded per request), so results do not depend on batch-mates.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.backends.base import Backend
from service.batching import BatchObserver, DynamicBatcher
from service.errors import FailedPrecondition, InvalidArgument, NotFound
from service.latent import interpolate, posterior_kl, prior_latents, weighted_sum
from vaecore.repository import ModelSpec

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class BatchingLimits:
    max_batch_size: int = 64
    max_wait_s: float = 0.002
    max_queue: int = 1024


@dataclass(frozen=True)
class Scores:
    elbo: np.ndarray
    reconstruction: np.ndarray
    kl: np.ndarray
    log_likelihood: np.ndarray


class LatentObserver(Protocol):
    """Sees every posterior the encoder produces and every Score result (service/latent_health.py)."""

    def posterior(self, model: str, mu: np.ndarray, logvar: np.ndarray) -> None: ...

    def log_likelihood(self, model: str, values: np.ndarray) -> None: ...


# A term of latent arithmetic after the API layer has parsed it: (weight, latent [D]) or (weight, attribute name)
Term = tuple[float, np.ndarray | str]


class VaeOperations:
    def __init__(
        self,
        models: dict[str, ModelSpec],
        backend: Backend,
        limits: BatchingLimits,
        observer: Callable[[str, str], BatchObserver] | None = None,
        latent_observer: LatentObserver | None = None,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        self.models = models
        self.backend = backend
        self.limits = limits
        self._observer = observer or (lambda model, network: BatchObserver())
        self._latent = latent_observer
        self._batchers: dict[tuple[str, str], DynamicBatcher] = {}
        self.refused = dict(refused or {})  # model -> why it is not served (service/integrity.py)

    async def start(self) -> None:
        """Start the backend, then one batcher per model and network (inside the running loop)."""
        await self.backend.start()
        for name, model in self.models.items():
            calls = {"encoder": self._encode_call(model), "decoder": self._decode_call(model)}
            for network, call in calls.items():
                batcher = DynamicBatcher(call, self.limits.max_batch_size, self.limits.max_wait_s,
                                         self.limits.max_queue, self._observer(name, network))  # fmt: skip
                batcher.start()
                self._batchers[(name, network)] = batcher

    def _encode_call(self, model: ModelSpec):  # type: ignore[no-untyped-def]
        async def call(rows: np.ndarray) -> tuple[np.ndarray, ...]:
            return await self.backend.encode(model, rows)

        return call

    def _decode_call(self, model: ModelSpec):  # type: ignore[no-untyped-def]
        async def call(rows: np.ndarray) -> tuple[np.ndarray, ...]:
            return await self.backend.decode(model, rows)

        return call

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self._batchers.values()))
        self._batchers.clear()
        await self.backend.close()

    def model(self, name: str) -> ModelSpec:
        model = self.models.get(name)
        if model is None and name in self.refused:
            raise FailedPrecondition(self.refused[name])
        if model is None:
            raise NotFound(f"model {name!r} is not served; available: {', '.join(sorted(self.models))}")
        return model

    # --- batched network calls -----------------------------------------------------------------------

    async def _batched(self, model: ModelSpec, network: str, rows: np.ndarray, deadline: float | None):  # type: ignore[no-untyped-def]
        batcher = self._batchers[(model.name, network)]
        size = self.limits.max_batch_size
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
        if len(chunks) == 1:
            return await batcher.submit(chunks[0], deadline)
        batcher.admit()  # refuse a new request when full; once admitted, its chunks wait for room
        results = await asyncio.gather(*(batcher.submit(c, deadline, wait_for_room=True) for c in chunks))
        if len(results) == 1:
            return results[0]
        return tuple(np.concatenate(parts) for parts in zip(*results, strict=True))

    async def posterior(self, model: ModelSpec, images: np.ndarray, deadline: float | None = None):  # type: ignore[no-untyped-def]
        """(mu, logvar) of q(z|x), each [N, D]."""
        mu, logvar = await self._batched(model, "encoder", images, deadline)
        if self._latent is not None:
            self._latent.posterior(model.name, mu, logvar)
        return mu, logvar

    async def decode(
        self,
        model: ModelSpec,
        latents: np.ndarray,
        sample: bool,
        rng: np.random.Generator,
        deadline: float | None = None,
    ) -> np.ndarray:
        """Images [N, C, H, W] in [0, 1]: the decoder's mean, or a sample from p(x|z)."""
        mean, _ = await self._batched(model, "decoder", latents, deadline)
        return sample_pixels(model, mean, rng) if sample else mean

    # --- the operations ----------------------------------------------------------------------------

    async def encode(
        self, model: ModelSpec, images: np.ndarray, samples: int, rng: np.random.Generator, deadline: float | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        mu, logvar = await self.posterior(model, images, deadline)
        if samples == 0:
            return mu, logvar, None
        noise = rng.standard_normal((len(mu), samples, model.latent_dim), dtype=np.float32)
        return mu, logvar, (mu[:, None] + np.exp(0.5 * logvar)[:, None] * noise).astype(np.float32)

    async def reconstruct(
        self, model: ModelSpec, images: np.ndarray, sample_latent: bool, sample_pixels_: bool,
        rng: np.random.Generator, deadline: float | None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        mu, _, samples = await self.encode(model, images, 1 if sample_latent else 0, rng, deadline)
        latents = samples[:, 0] if samples is not None else mu
        return await self.decode(model, latents, sample_pixels_, rng, deadline), latents

    async def sample(
        self, model: ModelSpec, n: int, temperature: float, sample_pixels_: bool,
        rng: np.random.Generator, deadline: float | None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        latents = prior_latents(rng, n, model.latent_dim, temperature)
        return await self.decode(model, latents, sample_pixels_, rng, deadline), latents

    async def interpolate(
        self, model: ModelSpec, start: np.ndarray, end: np.ndarray, steps: int, spherical: bool,
        sample_pixels_: bool, rng: np.random.Generator, deadline: float | None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        latents = interpolate(start, end, steps, spherical)
        return await self.decode(model, latents, sample_pixels_, rng, deadline), latents

    def attribute(self, model: ModelSpec, name: str) -> np.ndarray:
        vector = model.attributes.get(name)
        if vector is None:
            known = ", ".join(sorted(model.attributes)) or "none"
            raise NotFound(f"model {model.name!r} has no attribute {name!r}; it has: {known}")
        return vector

    async def arithmetic(
        self, model: ModelSpec, weights: list[float], vectors: list[np.ndarray], sample_pixels_: bool,
        rng: np.random.Generator, deadline: float | None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        latent = weighted_sum(np.asarray(weights, np.float32), np.stack(vectors))[None]
        return await self.decode(model, latent, sample_pixels_, rng, deadline), latent

    async def score(
        self, model: ModelSpec, images: np.ndarray, samples: int, rng: np.random.Generator, deadline: float | None
    ) -> Scores:
        """Per image: ELBO = E_q[log p(x|z)] - KL (analytic), and log p(x) ~= log mean_k p(x, z_k) / q(z_k|x),
        both from the same k samples z_k ~ q(z|x)."""
        mu, logvar = await self.posterior(model, images, deadline)
        n, d = mu.shape
        eps = rng.standard_normal((n, samples, d), dtype=np.float32)
        z = mu[:, None] + np.exp(0.5 * logvar)[:, None] * eps
        _, logits = await self._batched(model, "decoder", z.reshape(n * samples, d), deadline)
        logits = logits.reshape(n, samples, *images.shape[1:])
        log_px_z = log_likelihood(model, images[:, None], logits)  # [n, samples]
        log_pz = -0.5 * (LOG_2PI + z.astype(np.float64) ** 2).sum(-1)
        log_qz = -0.5 * (LOG_2PI + logvar[:, None] + eps.astype(np.float64) ** 2).sum(-1)
        log_w = log_px_z + log_pz - log_qz
        top = log_w.max(axis=1, keepdims=True)
        log_likelihood_ = (top[:, 0] + np.log(np.exp(log_w - top).mean(axis=1))).astype(np.float64)
        kl = posterior_kl(mu, logvar)
        reconstruction = log_px_z.mean(axis=1)
        if self._latent is not None:
            self._latent.log_likelihood(model.name, log_likelihood_)
        return Scores(reconstruction - kl, reconstruction, kl, log_likelihood_)


def log_likelihood(model: ModelSpec, x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """log p(x|z) summed over pixels, float64; Bernoulli from logits, Gaussian around sigmoid(logits)."""
    x64, l64 = x.astype(np.float64), logits.astype(np.float64)
    if model.likelihood == "bernoulli":
        per_pixel = x64 * l64 - np.logaddexp(0.0, l64)
    elif model.gaussian_log_scale is not None:
        log_scale = model.gaussian_log_scale.astype(np.float64).reshape(-1, 1, 1)
        mean = 1.0 / (1.0 + np.exp(-l64))
        per_pixel = -0.5 * (LOG_2PI + 2.0 * log_scale + (x64 - mean) ** 2 * np.exp(-2.0 * log_scale))
    else:
        raise InvalidArgument("model", f"model {model.name!r} has a Gaussian likelihood but no scale")
    return per_pixel.reshape(*per_pixel.shape[: logits.ndim - 3], -1).sum(-1)


def sample_pixels(model: ModelSpec, mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A draw from p(x|z) given its mean: Bernoulli pixels, or Gaussian noise clipped to [0, 1]."""
    if model.likelihood == "bernoulli":
        return (rng.random(mean.shape, dtype=np.float32) < mean).astype(np.float32)
    scale = np.exp(model.gaussian_log_scale if model.gaussian_log_scale is not None else np.float32(0.0))
    noise = rng.standard_normal(mean.shape, dtype=np.float32) * scale.reshape(-1, 1, 1)
    return np.clip(mean + noise, 0.0, 1.0).astype(np.float32)
