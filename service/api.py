"""The gRPC servicer: proto in, validate, call `VaeOperations`, proto out. No model maths here.

Every method is wrapped once by `_unary` / `_streaming`, which record metrics and turn domain errors into
gRPC statuses through `errors.status_for`, the single mapping table.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np

from service import codecs
from service.config import Settings
from service.errors import InvalidArgument, ServiceError, status_for
from service.metrics import ServiceMetrics
from service.operations import VaeOperations
from service.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc
from vaecore.repository import ModelSpec

log = logging.getLogger(__name__)
MAX_TEMPERATURE = 10.0
MAX_STEPS = 1024
MAX_POSTERIOR_SAMPLES = 1024
MAX_TERMS = 64


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _seed(message: Any) -> tuple[int, np.random.Generator]:
    """The request's seed, or a fresh one; the reply echoes it so the answer can be reproduced."""
    seed = message.seed.value if message.HasField("seed") else secrets.randbits(63)
    return seed, np.random.Generator(np.random.PCG64(seed))


def _sample_pixels(options: vae_pb2.OutputOptions) -> bool:
    if options.mode not in (vae_pb2.DECODE_MODE_UNSPECIFIED, vae_pb2.DECODE_MODE_MEAN, vae_pb2.DECODE_MODE_SAMPLE):
        raise InvalidArgument("output.mode", f"unknown decode mode {options.mode}")
    return options.mode == vae_pb2.DECODE_MODE_SAMPLE


def _in_range(value: float, field: str, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidArgument(field, f"must be between {low:g} and {high:g}, got {value:g}")


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    def __init__(self, operations: VaeOperations, settings: Settings, metrics: ServiceMetrics) -> None:
        self.ops = operations
        self.settings = settings
        self.metrics = metrics
        self.default_model = settings.default_model or sorted(operations.models)[0]
        self.backend_name = settings.backend

    def _model(self, name: str) -> ModelSpec:
        return self.ops.model(name or self.default_model)

    def _info(self, model: ModelSpec) -> vae_pb2.ModelInfo:
        return vae_pb2.ModelInfo(
            name=model.name,
            latent_dim=model.latent_dim,
            image_shape=list(model.image_shape),
            likelihood=model.likelihood,
            attribute_names=sorted(model.attributes),
            label_names=list(model.label_names),
            dataset=model.dataset,
            test_nll=model.test_nll,
            test_nll_samples=model.test_nll_samples,
            backend=self.backend_name,
        )

    def _images(self, images: vae_pb2.Images, model: ModelSpec, field: str = "images") -> np.ndarray:
        return codecs.images_from_proto(images, model.image_shape, self.settings.max_items, field)

    def _count(self, n: int, field: str) -> None:
        if not 1 <= n <= self.settings.max_items:
            raise InvalidArgument(field, f"must be between 1 and {self.settings.max_items}, got {n}")

    async def _endpoint(
        self, endpoint: vae_pb2.Endpoint, model: ModelSpec, field: str, deadline: float | None, attributes: bool
    ) -> np.ndarray:
        """One latent [D] from an image (its posterior mean), a raw latent, or a named attribute vector."""
        kind = endpoint.WhichOneof("value")
        if kind == "image":
            images = self._images(endpoint.image, model, f"{field}.image")
            if len(images) != 1:
                raise InvalidArgument(f"{field}.image", f"must hold exactly one image, got {len(images)}")
            mu, _ = await self.ops.posterior(model, images, deadline)
            return mu[0]
        if kind == "latent":
            latents = codecs.latents_from_proto(endpoint.latent, model.latent_dim, 1, f"{field}.latent")
            return latents[0]
        if kind == "attribute":
            if not attributes:
                raise InvalidArgument(field, "an attribute is a direction, not a point: use an image or a latent")
            return self.ops.attribute(model, endpoint.attribute)
        raise InvalidArgument(field, "is required: set image, latent or attribute")

    # --- RPCs ----------------------------------------------------------------------------------------

    async def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        models = [self._info(m) for _, m in sorted(self.ops.models.items())]
        return vae_pb2.ListModelsResponse(models=models, default_model=self.default_model)

    async def GetModelInfo(self, request, context):  # type: ignore[no-untyped-def]
        return vae_pb2.GetModelInfoResponse(info=self._info(self._model(request.model)))

    async def Encode(self, request, context):  # type: ignore[no-untyped-def]
        model = self._model(request.model)
        images = self._images(request.images, model)
        k = request.samples_per_image
        if not 0 <= k <= MAX_POSTERIOR_SAMPLES:
            raise InvalidArgument("samples_per_image", f"must be between 0 and {MAX_POSTERIOR_SAMPLES}, got {k}")
        seed, rng = _seed(request)
        mu, logvar, samples = await self.ops.encode(model, images, k, rng, _deadline(context))
        self.metrics.items.labels("Encode").inc(len(images))
        reply = vae_pb2.EncodeResponse(
            mean=codecs.array_to_tensor(mu), log_variance=codecs.array_to_tensor(logvar), seed=seed, model=model.name
        )
        if samples is not None:
            reply.samples.CopyFrom(codecs.array_to_tensor(samples))
        return reply

    async def Decode(self, request, context):  # type: ignore[no-untyped-def]
        model = self._model(request.model)
        latents = codecs.latents_from_proto(request.latents, model.latent_dim, self.settings.max_items, "latents")
        seed, rng = _seed(request)
        images = await self.ops.decode(model, latents, _sample_pixels(request.output), rng, _deadline(context))
        self.metrics.items.labels("Decode").inc(len(images))
        return vae_pb2.DecodeResponse(
            images=codecs.images_to_proto(images, request.output.format), seed=seed, model=model.name
        )

    async def Reconstruct(self, request, context):  # type: ignore[no-untyped-def]
        model = self._model(request.model)
        images = self._images(request.images, model)
        seed, rng = _seed(request)
        out, latents = await self.ops.reconstruct(
            model, images, request.sample_latent, _sample_pixels(request.output), rng, _deadline(context)
        )
        self.metrics.items.labels("Reconstruct").inc(len(images))
        return vae_pb2.ReconstructResponse(
            images=codecs.images_to_proto(out, request.output.format),
            latents=codecs.array_to_tensor(latents),
            seed=seed,
            model=model.name,
        )

    def _temperature(self, request: Any) -> float:
        temperature = request.temperature or 1.0
        _in_range(temperature, "temperature", 0.0, MAX_TEMPERATURE)
        return float(temperature)

    async def Sample(self, request, context):  # type: ignore[no-untyped-def]
        model = self._model(request.model)
        self._count(request.n, "n")
        temperature = self._temperature(request)
        seed, rng = _seed(request)
        images, latents = await self.ops.sample(
            model, request.n, temperature, _sample_pixels(request.output), rng, _deadline(context)
        )
        self.metrics.items.labels("Sample").inc(len(images))
        return vae_pb2.SampleResponse(
            images=codecs.images_to_proto(images, request.output.format),
            latents=codecs.array_to_tensor(latents),
            seed=seed,
            model=model.name,
        )

    async def SampleStream(self, request, context):  # type: ignore[no-untyped-def]
        """Chunks decode one after another, so a client reading slowly holds back generation (flow control)."""
        model = self._model(request.model)
        limit = self.settings.max_items * 256
        if not 1 <= request.n <= limit:
            raise InvalidArgument("n", f"must be between 1 and {limit}, got {request.n}")
        chunk = request.chunk_size or self.settings.stream_chunk
        if not 1 <= chunk <= self.settings.max_items:
            raise InvalidArgument("chunk_size", f"must be between 1 and {self.settings.max_items}, got {chunk}")
        temperature = self._temperature(request)
        sample = _sample_pixels(request.output)
        seed, rng = _seed(request)
        for offset in range(0, request.n, chunk):
            count = min(chunk, request.n - offset)
            images, latents = await self.ops.sample(model, count, temperature, sample, rng, _deadline(context))
            self.metrics.items.labels("SampleStream").inc(count)
            yield vae_pb2.SampleStreamResponse(
                images=codecs.images_to_proto(images, request.output.format),
                latents=codecs.array_to_tensor(latents),
                offset=offset,
                seed=seed,
                model=model.name,
            )

    async def Interpolate(self, request, context):  # type: ignore[no-untyped-def]
        model = self._model(request.model)
        if not 2 <= request.steps <= MAX_STEPS:
            raise InvalidArgument(
                "steps", f"must be between 2 and {MAX_STEPS} (endpoints included), got {request.steps}"
            )
        methods = (
            vae_pb2.INTERPOLATION_METHOD_UNSPECIFIED,
            vae_pb2.INTERPOLATION_METHOD_LINEAR,
            vae_pb2.INTERPOLATION_METHOD_SPHERICAL,
        )
        if request.method not in methods:
            raise InvalidArgument("method", f"unknown interpolation method {request.method}")
        deadline = _deadline(context)
        start = await self._endpoint(request.start, model, "start", deadline, attributes=False)
        end = await self._endpoint(request.end, model, "end", deadline, attributes=False)
        seed, rng = _seed(request)
        spherical = request.method != vae_pb2.INTERPOLATION_METHOD_LINEAR
        images, latents = await self.ops.interpolate(
            model, start, end, request.steps, spherical, _sample_pixels(request.output), rng, deadline
        )
        self.metrics.items.labels("Interpolate").inc(len(images))
        return vae_pb2.InterpolateResponse(
            images=codecs.images_to_proto(images, request.output.format),
            latents=codecs.array_to_tensor(latents),
            seed=seed,
            model=model.name,
        )

    async def Arithmetic(self, request, context):  # type: ignore[no-untyped-def]
        model = self._model(request.model)
        if not 1 <= len(request.terms) <= MAX_TERMS:
            raise InvalidArgument("terms", f"must hold between 1 and {MAX_TERMS} terms, got {len(request.terms)}")
        deadline = _deadline(context)
        weights, vectors = [], []
        for index, term in enumerate(request.terms):
            _in_range(term.weight, f"terms[{index}].weight", -1e3, 1e3)
            weights.append(term.weight)
            vectors.append(await self._endpoint(term.value, model, f"terms[{index}].value", deadline, attributes=True))
        seed, rng = _seed(request)
        images, latent = await self.ops.arithmetic(
            model, weights, vectors, _sample_pixels(request.output), rng, deadline
        )
        self.metrics.items.labels("Arithmetic").inc(1)
        return vae_pb2.ArithmeticResponse(
            images=codecs.images_to_proto(images, request.output.format),
            latent=codecs.array_to_tensor(latent),
            seed=seed,
            model=model.name,
        )

    async def Score(self, request, context):  # type: ignore[no-untyped-def]
        model = self._model(request.model)
        images = self._images(request.images, model)
        k = request.importance_samples or self.settings.default_score_samples
        if not 1 <= k <= self.settings.max_score_samples:
            raise InvalidArgument(
                "importance_samples", f"must be between 1 and {self.settings.max_score_samples}, got {k}"
            )
        if len(images) * k > self.settings.max_score_rows:
            raise InvalidArgument(
                "importance_samples",
                f"images x samples = {len(images) * k} exceeds the limit of "
                f"{self.settings.max_score_rows} per request; send fewer images or samples",
            )
        seed, rng = _seed(request)
        scores = await self.ops.score(model, images, k, rng, _deadline(context))
        self.metrics.items.labels("Score").inc(len(images))
        rows = zip(scores.elbo, scores.reconstruction, scores.kl, scores.log_likelihood, strict=True)
        return vae_pb2.ScoreResponse(
            scores=[vae_pb2.ImageScore(elbo=e, reconstruction=r, kl=kl, log_likelihood=ll) for e, r, kl, ll in rows],
            importance_samples=k,
            seed=seed,
            model=model.name,
        )


async def _fail(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    """Abort the RPC with the status the error maps to; unexpected errors are logged with their traceback."""
    code, message = status_for(exc)
    if not isinstance(exc, ServiceError):
        log.exception("%s failed", method)
    await context.abort(code, message)  # raises: the RPC ends here


@contextlib.asynccontextmanager
async def _observed(method: str, metrics: ServiceMetrics, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Around one RPC: in-flight gauge, latency, the request counter by status code, errors -> statuses.

    The metrics are recorded before an error status is sent, so a client that has its answer finds it counted.
    """
    started, code, failure = time.perf_counter(), grpc.StatusCode.OK, None
    metrics.in_flight.labels(method).inc()
    try:
        yield
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
        raise
    except Exception as exc:
        code, failure = status_for(exc)[0], exc
    finally:
        metrics.in_flight.labels(method).dec()
        metrics.requests.labels(method, code.name).inc()
        metrics.latency.labels(method).observe(time.perf_counter() - started)
    if failure is not None:
        await _fail(context, method, failure)


def _unary(method: str, handler: Callable[..., Any], metrics: ServiceMetrics) -> Callable[..., Any]:
    @functools.wraps(handler)
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _observed(method, metrics, context):
            return await handler(request, context)

    return wrapper


def _streaming(method: str, handler: Callable[..., AsyncIterator[Any]], metrics: ServiceMetrics) -> Callable[..., Any]:
    @functools.wraps(handler)
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _observed(method, metrics, context):
            async for message in handler(request, context):
                yield message

    return wrapper


def instrument(servicer: VaeServicer) -> VaeServicer:
    """Wrap every RPC of the servicer with metrics and the error-to-status mapping."""
    for method in vae_pb2.DESCRIPTOR.services_by_name["VaeService"].methods:
        handler = getattr(servicer, method.name)
        wrap = _streaming if method.server_streaming else _unary
        setattr(servicer, method.name, wrap(method.name, handler, servicer.metrics))
    return servicer
