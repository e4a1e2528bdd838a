"""The gRPC servicer: proto in, `RequestParser` (service/requests.py) -> `VaeOperations` -> proto out.

Every RPC is wrapped once (`rpc_handler`): request bytes that do not parse become INVALID_ARGUMENT instead of
grpc's UNKNOWN, metrics are recorded (each RPC counted exactly once, with the code its client sees), and domain
errors become statuses through `errors.status_for`, with `google.rpc.BadRequest` field violations attached to
INVALID_ARGUMENT. Parsing and reply building move to a worker thread when the payload is big enough to stall
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from service import requests as rq
from service.config import Settings
from service.metrics import ServiceMetrics
from service.model_info import model_info
from service.operations import Scores, VaeOperations, in_thread_if
from vae_client import codecs
from vae_client.errors import InvalidArgument, ServiceError, status_for
from vae_client.proto_gen.vae.v1 import vae_pb2
from vaecore.repository import ModelSpec

log = logging.getLogger(__name__)
SERVICE = vae_pb2.DESCRIPTOR.services_by_name["VaeService"]
OFFLOAD_BYTES = 1 << 20  # requests or replies above this are parsed or built in a worker thread
PNG_INLINE = 8  # requests with more PNG files than this are decoded in a worker thread
T = TypeVar("T")


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _heavy(request: Message) -> bool:
    """Whether parsing may take long enough to stall the loop: a big message, or more than a few PNG files."""
    images = getattr(request, "images", None)
    pngs = len(images.png.images) if isinstance(images, vae_pb2.Images) else 0
    return pngs > PNG_INLINE or request.ByteSize() > OFFLOAD_BYTES


R = TypeVar("R", bound=Message)


def _fill(reply: R, images: np.ndarray, output: rq.Output, latents: np.ndarray | None) -> R:
    """The images (and latents) written into the reply in place (`codecs.fill_tensor` says why)."""
    codecs.fill_images(reply.images, images, output.image_format)  # type: ignore[attr-defined]
    if latents is not None:
        codecs.fill_tensor(reply.latents, latents)  # type: ignore[attr-defined]
    return reply


async def _images_reply(reply: R, images: np.ndarray, output: rq.Output, latents: np.ndarray | None = None) -> R:
    """`reply` with its images in the requested encoding; PNG encoding or a big copy runs off the event loop."""
    return await in_thread_if(images.nbytes > OFFLOAD_BYTES, _fill, reply, images, output, latents)


class VaeServicer:
    """One method per RPC, each four steps: route to a version (a lease held until the reply is done), parse
    (validate everything) for that version, operate, shape the reply."""

    def __init__(self, operations: VaeOperations, settings: Settings, metrics: ServiceMetrics) -> None:
        self.ops = operations
        self.registry = operations.registry
        self.settings = settings
        self.metrics = metrics
        self.parse = rq.RequestParser(settings)
        self._items = {m.name: metrics.items.labels(m.name) for m in SERVICE.methods}  # bound once
        self._per_version: dict[tuple[str, str, str], Any] = {}  # vae_version_requests_total, bound on first use

    async def _parse(self, parse: Callable[[Any, ModelSpec], T], request: Message, model: ModelSpec) -> T:
        return await in_thread_if(_heavy(request), parse, request, model)

    @contextlib.contextmanager
    def _lease(self, request: Any, method: str) -> Iterator[ModelSpec]:
        """The version this request runs on (service/registry/routing.py), its stamps checked, counted per version."""
        stamps = rq.latent_stamps(request)
        with self.registry.lease(request.model, request.model_version, stamps.spaces) as model:
            if stamps.unstamped:
                self.metrics.unstamped_latents.labels(model.name, method).inc(stamps.unstamped)
            self._version_series(model, method).inc()
            yield model

    def _version_series(self, model: ModelSpec, method: str) -> Any:
        """`vae_version_requests_total` for (model, version, method), bound once: a `labels()` lookup per request
        costs a lock and a dict lookup on the request path (as `_Series` avoids for the per-method series)."""
        key = (model.name, model.version, method)
        series = self._per_version.get(key)
        if series is None:
            series = self._per_version[key] = self.metrics.version_requests.labels(*key)
        return series

    def _info(self, name: str, version: str = "") -> vae_pb2.ModelInfo:
        entry = self.registry.entry(name)
        if version:
            with self.registry.lease(entry.name, version) as spec:
                return model_info(entry, spec, self.settings.backend)
        return model_info(entry, self.registry.default_spec(entry), self.settings.backend)

    # --- RPCs ----------------------------------------------------------------------------------------

    async def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        models = [self._info(name) for name in sorted(self.registry.entries)]
        return vae_pb2.ListModelsResponse(models=models, default_model=self.registry.default_model)

    async def GetModelInfo(self, request, context):  # type: ignore[no-untyped-def]
        return vae_pb2.GetModelInfoResponse(info=self._info(request.model, request.model_version))

    async def Encode(self, request, context):  # type: ignore[no-untyped-def]
        with self._lease(request, "Encode") as model:
            req = await self._parse(self.parse.encode, request, model)
            mu, logvar, samples = await self.ops.encode(req, _deadline(context))
            self._items["Encode"].inc(len(mu))
            big = (mu.size + (0 if samples is None else samples.size)) * 4 > OFFLOAD_BYTES
            return await in_thread_if(big, _encode_reply, mu, logvar, samples, req)

    async def Decode(self, request, context):  # type: ignore[no-untyped-def]
        with self._lease(request, "Decode") as model:
            req = await self._parse(self.parse.decode, request, model)
            images = await self.ops.decode(req, _deadline(context))
            self._items["Decode"].inc(len(images))
            return await _images_reply(
                vae_pb2.DecodeResponse(seed=req.seed, **_answered(req.model)), images, req.output
            )

    async def Reconstruct(self, request, context):  # type: ignore[no-untyped-def]
        with self._lease(request, "Reconstruct") as model:
            req = await self._parse(self.parse.reconstruct, request, model)
            images, latents = await self.ops.reconstruct(req, _deadline(context))
            self._items["Reconstruct"].inc(len(images))
            reply = vae_pb2.ReconstructResponse(seed=req.seed, **_answered(req.model, stamped=True))
            return await _images_reply(reply, images, req.output, latents)

    async def Sample(self, request, context):  # type: ignore[no-untyped-def]
        with self._lease(request, "Sample") as model:
            req = await self._parse(self.parse.sample, request, model)
            images, latents = await self.ops.sample(req, _deadline(context))
            self._items["Sample"].inc(len(images))
            reply = vae_pb2.SampleResponse(seed=req.seed, **_answered(req.model, stamped=True))
            return await _images_reply(reply, images, req.output, latents)

    async def SampleStream(self, request, context):  # type: ignore[no-untyped-def]
        """Chunks decode one after another, so a client reading slowly holds back generation (flow control). The
        whole stream runs on the version it was routed to."""
        with self._lease(request, "SampleStream") as model:
            req = await self._parse(self.parse.sample_stream, request, model)
            async for offset, images, latents in self.ops.sample_chunks(req, _deadline(context)):
                self._items["SampleStream"].inc(len(images))
                reply = vae_pb2.SampleStreamResponse(offset=offset, seed=req.seed, **_answered(req.model, stamped=True))
                yield await _images_reply(reply, images, req.output, latents)

    async def Interpolate(self, request, context):  # type: ignore[no-untyped-def]
        with self._lease(request, "Interpolate") as model:
            req = await self._parse(self.parse.interpolate, request, model)
            images, latents = await self.ops.interpolate(req, _deadline(context))
            self._items["Interpolate"].inc(len(images))
            reply = vae_pb2.InterpolateResponse(seed=req.seed, **_answered(req.model, stamped=True))
            return await _images_reply(reply, images, req.output, latents)

    async def Arithmetic(self, request, context):  # type: ignore[no-untyped-def]
        with self._lease(request, "Arithmetic") as model:
            req = await self._parse(self.parse.arithmetic, request, model)
            images, latent = await self.ops.arithmetic(req, _deadline(context))
            self._items["Arithmetic"].inc(1)
            reply = vae_pb2.ArithmeticResponse(seed=req.seed, **_answered(req.model, stamped=True))
            codecs.fill_tensor(reply.latent, latent)
            return await _images_reply(reply, images, req.output)

    async def Score(self, request, context):  # type: ignore[no-untyped-def]
        with self._lease(request, "Score") as model:
            req = await self._parse(self.parse.score, request, model)
            scores = await self.ops.score(req, _deadline(context))
            self._items["Score"].inc(len(scores.elbo))
            return _score_reply(scores, req)


def _answered(model: ModelSpec, stamped: bool = False) -> dict[str, Any]:
    """The reply fields naming what answered: model, version and, for replies carrying latents, their space."""
    fields = {"model": model.name, "model_version": model.version}
    return {**fields, "latent_space": model.latent_space} if stamped else fields


def _encode_reply(
    mu: np.ndarray, logvar: np.ndarray, samples: np.ndarray | None, req: rq.Encode
) -> vae_pb2.EncodeResponse:
    reply = vae_pb2.EncodeResponse(seed=req.seed, **_answered(req.model, stamped=True))
    codecs.fill_tensor(reply.mean, mu)
    codecs.fill_tensor(reply.log_variance, logvar)
    if samples is not None:
        codecs.fill_tensor(reply.samples, samples)
    return reply


def _score_reply(scores: Scores, req: rq.Score) -> vae_pb2.ScoreResponse:
    rows = zip(scores.elbo, scores.reconstruction, scores.kl, scores.log_likelihood, strict=True)
    return vae_pb2.ScoreResponse(
        scores=[vae_pb2.ImageScore(elbo=e, reconstruction=r, kl=kl, log_likelihood=ll) for e, r, kl, ll in rows],
        importance_samples=req.samples,
        seed=req.seed,
        **_answered(req.model),
    )


# --- the wrapper around every RPC ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Unparseable:
    """Stands in for a request whose bytes are not a valid message, so the RPC is refused (and counted) like any
    other bad request rather than failing inside grpc with UNKNOWN."""

    type_name: str
    reason: str


def _tolerant(message_type: type[Message]) -> Callable[[bytes], Message | Unparseable]:
    def deserialize(data: bytes) -> Message | Unparseable:
        try:
            return message_type.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return Unparseable(message_type.DESCRIPTOR.full_name, str(exc) or type(exc).__name__)

    return deserialize


MAX_MESSAGE_CHARS = 1024  # status messages travel in HTTP/2 trailers: gRPC drops any over 8-16 KiB


def _short(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Error text cut to `limit` characters: messages can echo what a client sent, which may be any length."""
    return text if len(text) <= limit else f"{text[: limit - 30]}... ({len(text)} characters)"


def _rich_status(code: grpc.StatusCode, message: str, error: Exception) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying a google.rpc.Status; for INVALID_ARGUMENT with a BadRequest field violation."""
    status = status_pb2.Status(code=getattr(code_pb2, code.name, code_pb2.UNKNOWN), message=message)
    if isinstance(error, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=_short(error.field, 256), description=_short(error.problem)
        )
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        status.details.append(detail)
    return (("grpc-status-details-bin", status.SerializeToString()),)


class _Series:
    """One RPC's metric series, bound once: a `labels()` lookup per request costs a lock and a dict lookup."""

    def __init__(self, method: str, metrics: ServiceMetrics) -> None:
        self.method = method
        self.in_flight = metrics.in_flight.labels(method)
        self.latency = metrics.latency.labels(method)
        self.codes = {code: metrics.requests.labels(method, code.name) for code in grpc.StatusCode}
        self.retried = metrics.retried.labels(method)

    def record(self, code: grpc.StatusCode, started: float) -> None:
        self.in_flight.dec()
        self.codes[code].inc()
        self.latency.observe(time.perf_counter() - started)


# The server's deadline is the client's shifted by the headers' transit time, and a client whose own deadline
# fires sends a cancel that can reach the server just before the server's deadline: a cancel this close to it is
# the deadline (a client cancelling on purpose this close to its deadline is counted as its deadline, harmlessly).
DEADLINE_SLACK_S = 0.05


def _is_retry(context: grpc.aio.ServicerContext) -> bool:
    """Whether this is a retry attempt: the client's gRPC sends gRFC A6's header on each one (never on the first)."""
    return any(key == "grpc-previous-rpc-attempts" for key, _ in context.invocation_metadata() or ())


def _interrupted(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The code a client sees when its call ends early: its deadline passed, or it went away."""
    remaining = context.time_remaining()
    expired = remaining is not None and remaining <= DEADLINE_SLACK_S
    return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


async def _refuse(series: _Series, context: grpc.aio.ServicerContext, failure: Exception) -> None:
    """Abort with the status `failure` maps to (google.rpc.Status attached); logged if it is not a domain error."""
    code, message = status_for(failure)
    message = _short(message)
    if not isinstance(failure, ServiceError):
        log.error("%s failed", series.method, exc_info=failure)
    await context.abort(code, message, trailing_metadata=_rich_status(code, message, failure))


def _check_parsed(request: Any) -> None:
    if isinstance(request, Unparseable):
        raise InvalidArgument("request", f"is not a valid {request.type_name} message ({request.reason})")


@contextlib.asynccontextmanager
async def _observed(series: _Series, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Around one RPC: in-flight gauge, latency, the request counter by status code, errors -> statuses.

    The metrics are recorded before an error status is sent, so a client that has its answer finds it counted.
    """
    if _is_retry(context):
        series.retried.inc()
    started, code, failure = time.perf_counter(), grpc.StatusCode.OK, None
    series.in_flight.inc()
    try:
        yield
    except (asyncio.CancelledError, GeneratorExit):  # the client went away, or its deadline passed
        code = _interrupted(context)
        raise
    except Exception as exc:
        code, failure = status_for(exc)[0], exc
    finally:
        series.record(code, started)
    if failure is not None:
        await _refuse(series, context, failure)


def _unary(series: _Series, handler: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(handler)
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _observed(series, context):
            _check_parsed(request)
            return await handler(request, context)

    return wrapper


def _streaming(series: _Series, handler: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
    @functools.wraps(handler)
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _observed(series, context):
            _check_parsed(request)
            async for message in handler(request, context):
                yield message

    return wrapper


@dataclass(frozen=True)
class Instrumented:
    """One RPC as both fronts serve it (gRPC here, HTTP/JSON in service/http): the handler wrapped in the metrics
    and the error mapping, and its message types."""

    name: str
    call: Callable[..., Any]  # (request, context) -> reply, or an async iterator of replies when `streaming`
    streaming: bool
    request_type: type[Message]
    response_type: type[Message]


def instrumented(servicer: VaeServicer) -> dict[str, Instrumented]:
    """Every RPC of `vae.v1.VaeService`, instrumented, by method name."""
    methods = {}
    for method in SERVICE.methods:
        handler = getattr(servicer, method.name)
        series = _Series(method.name, servicer.metrics)
        wrap = _streaming if method.server_streaming else _unary
        methods[method.name] = Instrumented(method.name, wrap(series, handler), method.server_streaming,
                                            getattr(vae_pb2, method.input_type.name),
                                            getattr(vae_pb2, method.output_type.name))  # fmt: skip
    return methods


def rpc_handler(servicer: VaeServicer) -> grpc.GenericRpcHandler:
    """Every RPC of `vae.v1.VaeService`, instrumented, with tolerant request deserializers."""
    handlers = {}
    for name, rpc in instrumented(servicer).items():
        kind = grpc.unary_stream_rpc_method_handler if rpc.streaming else grpc.unary_unary_rpc_method_handler
        handlers[name] = kind(rpc.call, request_deserializer=_tolerant(rpc.request_type),
                              response_serializer=rpc.response_type.SerializeToString)  # fmt: skip
    return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)
