"""Assembles and runs the server: settings -> repository -> backend -> operations -> servicer, plus the standard
health service, reflection, the Prometheus endpoint and graceful shutdown on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from service.api import VaeServicer, rpc_handler
from service.backends.base import Backend
from service.config import Settings
from service.integrity import Verdict, health_name, servable
from service.loop_monitor import LoopMonitor
from service.metrics import METHODS, InstrumentedBackend, ServiceMetrics
from service.operations import BatchingLimits, VaeOperations
from service.proto_gen.vae.v1 import vae_pb2
from service.security import auth_interceptor, describe, server_credentials
from vaecore.repository import ModelSpec, RepositoryError, configured_default, default_model, load_repository

log = logging.getLogger(__name__)
SERVICE_NAME = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name
HEALTH_POLL_S = 0.5


def make_backend(settings: Settings, models: dict[str, ModelSpec]) -> Backend:
    if settings.backend == "triton":
        from service.backends.triton import TritonBackend

        return TritonBackend.from_settings(models, settings)
    try:
        from service.backends.local import LocalBackend
    except ModuleNotFoundError as exc:  # the -triton image: the networks run in Triton, so it carries no torch
        if exc.name != "torch":
            raise
        raise ValueError(
            "--backend local runs the networks in this process with PyTorch, which this installation does not have "
            "(the vae-service:<version>-triton image carries none): use --backend triton with --triton-url, or the "
            "image without -triton (or pip install 'vae-serving[local]')"
        ) from exc
    return LocalBackend(models, settings.device, settings.torch_threads, inline_rows=settings.inline_rows,
                        onednn=settings.onednn, max_batch_size=settings.max_batch_size)  # fmt: skip


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Message limits, and a maximum connection age: gRPC pins a client to the replicas it connected to, so
    without one a scaled-out deployment's new replicas would get no traffic from existing clients (nor, with
    `--workers`, a restarted worker any from connections the others already hold)."""
    message_limit = settings.max_message_mb * 1024 * 1024
    options = [("grpc.max_send_message_length", message_limit), ("grpc.max_receive_message_length", message_limit)]
    if settings.workers > 1:  # every worker binds the same port: on by default on Linux, required here, so explicit
        options.append(("grpc.so_reuseport", 1))
    if settings.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)),
        ]
    return options


def _refused_counter(metrics: ServiceMetrics) -> Callable[[str, str], None]:
    """Counts a call the auth interceptor refused: the servicer never sees it, yet its client saw UNAUTHENTICATED."""

    def count(service: str, method: str) -> None:
        if service == SERVICE_NAME and method in METHODS:
            metrics.requests.labels(method, grpc.StatusCode.UNAUTHENTICATED.name).inc()

    return count


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    operations: VaeOperations
    health: health.aio.HealthServicer
    metrics: ServiceMetrics
    _metrics_http: WSGIServer | None
    _health_task: asyncio.Task[None]
    _loop_monitor: LoopMonitor

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting RPCs, let in-flight ones finish within the grace period, then release everything."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        self._health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._health_task
        await self._loop_monitor.stop()
        await self.operations.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()


async def _track_health(
    backend: Backend, servicer: health.aio.HealthServicer, names: tuple[str, ...] = (SERVICE_NAME,)
) -> None:
    """Readiness: `vae.v1.VaeService` is NOT_SERVING until the backend is ready and whenever it is down (polled
    every HEALTH_POLL_S). Liveness, the empty name, is not tied to the backend: a Triton outage must take the
    replicas out of rotation, not make an orchestrator restart every one of them. `names` also holds each served
    model's own name (`vae.v1.VaeService/<model>`); a model refused at start-up stays NOT_SERVING."""
    last = None
    while True:
        status = (
            health_pb2.HealthCheckResponse.SERVING if backend.ready() else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if status != last:
            for name in names:
                await servicer.set(name, status)
            log.info("readiness: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))
            last = status
        await asyncio.sleep(HEALTH_POLL_S)


async def _servable_models(settings: Settings) -> Verdict:
    """The repository's models, each network file checked against its recorded SHA-256 before any is loaded."""
    models = load_repository(settings.model_repository)
    try:  # a configured default must exist and pass its check; otherwise the first served model is the default
        default_model(settings.model_repository, models, settings.default_model)
    except RepositoryError as exc:
        raise ValueError(str(exc)) from exc
    configured = configured_default(settings.model_repository, settings.default_model)
    return await asyncio.to_thread(servable, models, settings.backend != "triton", configured)


async def _grpc_server(
    settings: Settings, servicer: VaeServicer, auth: grpc.aio.ServerInterceptor | None, verdict: Verdict
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """The VAE service, health (all names NOT_SERVING until proven otherwise) and reflection, on a bound port."""
    credentials = server_credentials(settings)
    server = grpc.aio.server(options=server_options(settings), interceptors=[auth] if auth else None)
    server.add_generic_rpc_handlers((rpc_handler(servicer),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME, *map(health_name, verdict.served), *map(health_name, verdict.refused)):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection([SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    return server, health_servicer, port


def _metrics_endpoint(settings: Settings, metrics: ServiceMetrics) -> tuple[WSGIServer | None, int | None]:
    if settings.metrics_port < 0:
        return None, None
    http, _ = start_http_server(settings.metrics_port, settings.metrics_bind_host, metrics.registry)
    return http, http.server_port


async def start_server(
    settings: Settings, registry: CollectorRegistry | None = None, backend: Backend | None = None
) -> RunningServer:
    """Build and start everything; returns once the gRPC port is bound (health may still be NOT_SERVING).

    `backend` replaces the one the settings name (tests wrap a real backend to inject faults)."""
    server_credentials(settings)  # a TLS setting that can't work stops us here, in one line, before anything loads
    verdict = await _servable_models(settings)  # a model whose files fail their check is not served
    models = verdict.served
    metrics = ServiceMetrics(registry or CollectorRegistry())
    auth = auth_interceptor(settings, on_refused=_refused_counter(metrics))  # tokens read once, here
    instrumented = InstrumentedBackend(backend or make_backend(settings, models), metrics)
    limits = BatchingLimits(settings.max_batch_size, settings.max_wait_s, settings.max_queue, settings.score_chunk_rows)
    metrics.describe_models(models, settings.backend, settings.max_queue, settings.latent_health)
    operations = VaeOperations(models, instrumented, limits, metrics.observer, metrics.latent_health, verdict.refused)
    server, health_servicer, port = await _grpc_server(
        settings, VaeServicer(operations, settings, metrics), auth, verdict
    )

    await operations.start()
    health_task = asyncio.get_running_loop().create_task(
        _track_health(instrumented, health_servicer, (SERVICE_NAME, *map(health_name, models)))
    )
    loop_monitor = LoopMonitor(metrics.loop_lag, metrics.gc_pause)  # vae_event_loop_lag_seconds, vae_gc_pause_seconds
    loop_monitor.start()
    metrics_http, metrics_port = _metrics_endpoint(settings, metrics)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)  # liveness: the server answers
    log.info("serving %s on port %d (%s; backend %s, metrics port %s)", ", ".join(models), port, describe(settings),
             settings.backend, metrics_port)  # fmt: skip
    return RunningServer(server, port, metrics_port, operations, health_servicer, metrics, metrics_http, health_task,
                         loop_monitor)  # fmt: skip


def freeze_start_up_objects(settings: Settings) -> None:
    """With `gc_freeze`, move every object alive now (models, modules, protobuf descriptors, grpc and asyncio
    internals) to the GC's permanent generation, after a collection so that no garbage is kept. Python's full
    collections otherwise traverse all of them again and again while serving: pauses that land in the tail
    latency of whichever requests are running. Called by the server processes (`serve`, each worker) once they
    serve; not by `start_server`, whose in-process users (tests) own their interpreter's heap."""
    if settings.gc_freeze:
        gc.collect()
        gc.freeze()
        log.info("froze %d start-up objects out of the cyclic GC (--gc-freeze)", gc.get_freeze_count())


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start_server(settings)
    freeze_start_up_objects(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: finishing in-flight requests (grace %.1fs)", settings.shutdown_grace_s)
    await running.stop(settings.shutdown_grace_s)
