"""What the service does, without gRPC: domain requests (already validated by service/requests.py) in, numpy out.

Every backend call goes through the `DynamicBatcher` of its model version and network (service/registry); requests
larger than the batch size are split into chunks that run concurrently and are joined in order. All randomness
comes from one generator seeded by the request, so results do not depend on batch-mates. Numpy work big enough to
stall the event loop runs in a worker thread (`offload`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from service import requests as rq
from service.backends.base import Backend
from service.batching import BatchFunction
from service.latent import interpolate, prior_latents, weighted_sum
from service.registry import ModelRegistry
from vae_client.errors import InvalidArgument, ServiceError
from vaecore import objective
from vaecore.repository import ModelSpec
from vaecore.rng import generator

T = TypeVar("T")


@dataclass(frozen=True)
class BatchingLimits:
    max_batch_size: int = 64
    max_wait_s: float = 0.0
    max_queue: int = 1024
    score_chunk_rows: int = 2048


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


def batch_functions(backend: Backend, latent: LatentObserver | None) -> Callable[[ModelSpec], dict[str, BatchFunction]]:
    """What each version's batchers run (service/registry/loading.py): its backend calls, and latent health's
    view of every encoded row, once per batch (cheaper under load than per request)."""

    def calls(model: ModelSpec) -> dict[str, BatchFunction]:
        async def encode(rows: np.ndarray) -> tuple[np.ndarray, ...]:
            mu, logvar = await backend.encode(model, rows)
            if latent is not None:
                latent.posterior(model.name, mu, logvar)
            return mu, logvar

        async def decode(rows: np.ndarray) -> tuple[np.ndarray, ...]:
            return await backend.decode(model, rows)

        return {"encoder": encode, "decoder": decode}

    return calls


class VaeOperations:
    """The operations on domain requests; the versions they run on, and their batchers, are the registry's."""

    def __init__(self, registry: ModelRegistry, limits: BatchingLimits, latent_observer: LatentObserver | None = None):
        self.registry = registry
        self.backend = registry.backend
        self.limits = limits
        self.score_chunk_rows = max(limits.score_chunk_rows, limits.max_batch_size)
        self._latent = latent_observer

    async def close(self) -> None:
        await self.registry.close()
        await self.backend.close()

    # --- batched network calls -----------------------------------------------------------------------

    async def _batched(self, model: ModelSpec, network: str, rows: np.ndarray, deadline: float | None):  # type: ignore[no-untyped-def]
        batcher = self.registry.batcher(model, network)
        size = self.limits.max_batch_size
        if len(rows) <= size:  # the common case: one chunk
            return await batcher.submit(rows, deadline)
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
        batcher.admit()  # refuse a new request when full; once admitted, its chunks wait for room
        results = await asyncio.gather(*(batcher.submit(c, deadline, wait_for_room=True) for c in chunks))
        return await offload(_join, results, work=sum(part.size for part in results[0]) * len(results))

    async def posterior(self, model: ModelSpec, images: np.ndarray, deadline: float | None = None):  # type: ignore[no-untyped-def]
        """(mu, logvar) of q(z|x), each [N, D] (latent health sees them per batch: `_encode_call`)."""
        return await self._batched(model, "encoder", images, deadline)

    # --- the operations (domain requests in, numpy out) ---------------------------------------------

    async def encode(self, req: rq.Encode, deadline: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        mu, logvar = await self.posterior(req.model, req.images, deadline)
        if req.samples == 0:
            return mu, logvar, None
        rng = _rng(req.seed)
        return mu, logvar, await offload(_posterior_samples, rng, mu, logvar, req.samples, work=mu.size * req.samples)

    async def decode(self, req: rq.Decode, deadline: float | None) -> np.ndarray:
        return await self.render(req.model, req.latents, req.output.sample_pixels, _rng(req.seed), deadline)

    async def render(
        self, model: ModelSpec, latents: np.ndarray, sample: bool, rng: np.random.Generator, deadline: float | None
    ) -> np.ndarray:
        """Images [N, C, H, W] in [0, 1]: the decoder's mean, or a sample from p(x|z)."""
        mean, _ = await self._batched(model, "decoder", latents, deadline)
        await offload(_require_finite, mean, model, "decoder", work=mean.size)
        return await offload(sample_pixels, model, mean, rng, work=mean.size) if sample else mean

    async def reconstruct(self, req: rq.Reconstruct, deadline: float | None) -> tuple[np.ndarray, np.ndarray]:
        rng = _rng(req.seed)
        mu, logvar = await self.posterior(req.model, req.images, deadline)
        latents = _posterior_samples(rng, mu, logvar, 1)[:, 0] if req.sample_latent else mu
        return await self.render(req.model, latents, req.output.sample_pixels, rng, deadline), latents

    async def sample(self, req: rq.Sample, deadline: float | None) -> tuple[np.ndarray, np.ndarray]:
        """All n images at once (Sample: the request is one chunk); the same numbers as `sample_chunks`."""
        return await self._sample_chunk(req, _rng(req.seed), req.n, deadline)

    async def sample_chunks(
        self, req: rq.Sample, deadline: float | None
    ) -> AsyncIterator[tuple[int, np.ndarray, np.ndarray]]:
        """(offset, images, latents) chunk after chunk, all drawn from one generator seeded by the request."""
        rng = _rng(req.seed)
        for offset in range(0, req.n, req.chunk):
            images, latents = await self._sample_chunk(req, rng, min(req.chunk, req.n - offset), deadline)
            yield offset, images, latents

    async def _sample_chunk(
        self, req: rq.Sample, rng: np.random.Generator, count: int, deadline: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        latents = prior_latents(rng, count, req.model.latent_dim, req.temperature)
        return await self.render(req.model, latents, req.output.sample_pixels, rng, deadline), latents

    async def points(self, model: ModelSpec, points: rq.Points, deadline: float | None) -> list[np.ndarray]:
        """The latents a request named, its images replaced by their posterior means, encoded in one call."""
        if points.images is None:
            return [item for item in points.items if not isinstance(item, int)]
        means, _ = await self.posterior(model, points.images, deadline)
        return [means[item] if isinstance(item, int) else item for item in points.items]

    async def interpolate(self, req: rq.Interpolate, deadline: float | None) -> tuple[np.ndarray, np.ndarray]:
        start, end = await self.points(req.model, req.ends, deadline)
        latents = interpolate(start, end, req.steps, req.spherical)
        return await self.render(req.model, latents, req.output.sample_pixels, _rng(req.seed), deadline), latents

    async def arithmetic(self, req: rq.Arithmetic, deadline: float | None) -> tuple[np.ndarray, np.ndarray]:
        vectors = await self.points(req.model, req.terms, deadline)
        latent = weighted_sum(np.asarray(req.weights, np.float32), np.stack(vectors))[None]
        if not np.isfinite(latent).all():
            raise InvalidArgument("terms", "the weighted sum of the terms overflows float32; use smaller weights")
        return await self.render(req.model, latent, req.output.sample_pixels, _rng(req.seed), deadline), latent

    async def score(self, req: rq.Score, deadline: float | None) -> Scores:
        """Per image: ELBO = E_q[log p(x|z)] - KL (analytic), and log p(x) ~= log mean_k p(x, z_k) / q(z_k|x),
        both from the same k samples z_k ~ q(z|x), by `vaecore.objective` (the maths training's evaluation uses:
        `training.evaluate.score_images(..., seed=)` gives these numbers). The images x samples rows are decoded
        and scored in chunks of `score_chunk_rows`, the maths in a worker thread: memory is bounded and the event
        loop stays free."""
        model, k = req.model, req.samples
        mu, logvar = await self.posterior(model, req.images, deadline)
        n, d = mu.shape
        eps = _rng(req.seed).standard_normal((n, k, d), dtype=np.float32).reshape(n * k, d)
        rows = np.repeat(np.arange(n), k)
        log_px_z = np.empty(n * k, np.float64)
        log_w = np.empty(n * k, np.float64)
        for start in range(0, n * k, self.score_chunk_rows):
            part = slice(start, min(start + self.score_chunk_rows, n * k))
            mu_part, logvar_part = mu[rows[part]], logvar[rows[part]]
            z = _posterior_draws(mu_part, logvar_part, eps[part])
            _, logits = await self._batched(model, "decoder", z, deadline)
            _require_finite(logits, model, "decoder")
            log_px_z[part], log_w[part] = await offload(
                _log_weights, model, req.images[rows[part]], logits, z, mu_part, logvar_part, work=logits.size
            )
        scores = await offload(_image_scores, log_px_z.reshape(n, k), log_w.reshape(n, k), mu, logvar, work=n * k)
        if self._latent is not None:
            self._latent.log_likelihood(model.name, scores.log_likelihood)
        return scores


OFFLOAD_WORK = 1 << 18  # array elements: below this numpy is quicker inline than a hop to a worker thread


async def in_thread_if(big: bool, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker thread when `big` (work that would stall the event loop), else inline: the hop
    costs more than small work. The one mechanism behind every off-loop step (parsing, numpy, replies)."""
    return await asyncio.to_thread(fn, *args) if big else fn(*args)


async def offload(fn: Callable[..., T], *args: Any, work: int) -> T:
    """CPU-heavy numpy over `work` array elements, in a worker thread when it is big enough to stall the loop."""
    return await in_thread_if(work >= OFFLOAD_WORK, fn, *args)


def _join(results: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """The chunks of one request's backend results, concatenated output by output."""
    return tuple(np.concatenate(parts) for parts in zip(*results, strict=True))


def _rng(seed: int) -> np.random.Generator:
    return generator(seed)


def _posterior_samples(rng: np.random.Generator, mu: np.ndarray, logvar: np.ndarray, k: int) -> np.ndarray:
    """[N, k, D] draws of q(z|x). Drawn a block of rows at a time (the same numbers as one draw: the generator fills
    in order) so that a worker thread running this hands the GIL back to the event loop between blocks."""
    n, d = mu.shape
    out = np.empty((n, k, d), np.float32)
    scale = np.exp(0.5 * logvar)
    rows = max(1, OFFLOAD_WORK // max(1, k * d))
    for start in range(0, n, rows):
        block = slice(start, min(start + rows, n))
        noise = rng.standard_normal((block.stop - block.start, k, d), dtype=np.float32)
        out[block] = mu[block, None] + scale[block, None] * noise
    return out


def _require_finite(array: np.ndarray, model: ModelSpec, network: str) -> None:
    """The service never answers with NaN or infinity: inputs are bounded so this cannot happen for a sound
    model; if it does, it is the server's fault, reported as such (INTERNAL)."""
    if not np.isfinite(array).all():
        raise ServiceError(f"model {model.name!r}: the {network} produced non-finite values")


def _f64(array: np.ndarray) -> np.ndarray:
    """`array` in float64, for the Score maths."""
    return np.asarray(array, dtype=np.float64)


def _posterior_draws(mu: np.ndarray, logvar: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """z = mu + sigma * eps per row, float32, by the function training's evaluation uses."""
    return objective.posterior_sample(mu, logvar, eps).astype(np.float32, copy=False)


def _log_scale(model: ModelSpec) -> np.ndarray | None:
    """The Gaussian likelihood's per-channel log sigma from the model's metadata; None for Bernoulli."""
    if model.likelihood != "gaussian":
        return None
    if model.gaussian_log_scale is None:
        raise InvalidArgument("model", f"model {model.name!r} has a Gaussian likelihood but no scale")
    return _f64(model.gaussian_log_scale)


MATH_ROWS = 256  # rows per float64 step of Score's maths: its temporaries stay a few MB, not ~100 MB per chunk


def _log_weights(
    model: ModelSpec, x: np.ndarray, logits: np.ndarray, z: np.ndarray, mu: np.ndarray, logvar: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: log p(x|z) and the importance weight log p(x, z) - log q(z|x), in float64 (`vaecore.objective`).
    Done MATH_ROWS rows at a time: float64 copies of a whole chunk and the likelihood's temporaries, freed in a
    worker thread's malloc arena, grew the server by ~300 MiB for one large Score (the responsiveness test)."""
    log_px_z, log_w = np.empty(len(z), np.float64), np.empty(len(z), np.float64)
    scale = _log_scale(model)
    for start in range(0, len(z), MATH_ROWS):
        rows = slice(start, start + MATH_ROWS)
        part = (_f64(x[rows]), _f64(z[rows]), _f64(mu[rows]), _f64(logvar[rows]), _f64(logits[rows]))
        log_px_z[rows], log_w[rows] = objective.importance_terms(*part, model.likelihood, scale)
    return log_px_z, log_w


def _image_scores(log_px_z: np.ndarray, log_w: np.ndarray, mu: np.ndarray, logvar: np.ndarray) -> Scores:
    """Score's reply from the [N, k] log terms and the posterior [N, D], reduced by `vaecore.objective`."""
    return Scores(*objective.image_scores(log_px_z, log_w, _f64(mu), _f64(logvar), 1))


def sample_pixels(model: ModelSpec, mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A draw from p(x|z) given its mean: Bernoulli pixels, or Gaussian noise clipped to [0, 1]."""
    if model.likelihood == "bernoulli":
        return (rng.random(mean.shape, dtype=np.float32) < mean).astype(np.float32)
    scale = np.exp(model.gaussian_log_scale if model.gaussian_log_scale is not None else np.float32(0.0))
    noise = rng.standard_normal(mean.shape, dtype=np.float32) * scale.reshape(-1, 1, 1)
    return np.clip(mean + noise, 0.0, 1.0).astype(np.float32)
