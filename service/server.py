"""Assembles and runs the server: settings -> repository -> backend -> model registry -> operations -> servicer,
plus the standard health service, reflection, the Prometheus endpoint, the admin service (when an admin credential
is configured), live reloads (SIGHUP, the repository poll) and graceful shutdown on SIGTERM/SIGINT.
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

from service.admin import ADMIN_SERVICE_NAME, AdminServicer
from service.api import VaeServicer, instrumented, rpc_handler
from service.backends.base import Backend
from service.config import Settings
from service.http.server import EXPLORER, OPENAPI, HttpFront
from service.integrity import Verdict, health_name, servable, version_health_name
from service.loop_monitor import LoopMonitor
from service.metrics import METHODS, InstrumentedBackend, LifecycleMetrics, ServiceMetrics
from service.operations import BatchingLimits, VaeOperations, batch_functions
from service.registry import ModelRegistry, State
from service.registry.control import ControlStore
from service.registry.loading import LoadLimits
from service.registry.triggers import Reloads, repository_signature
from service.security import ServerSecurity
from vae_client.proto_gen.vae.v1 import admin_pb2_grpc, vae_pb2
from vaecore.repository import (
    ModelSpec,
    RepositoryError,
    configured_default,
    default_model,
    load_repository,
    load_versions,
)

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
    """Message limits; the backlog of calls core may hold, one fixed limit; a maximum connection age.

    The backlog: grpc.aio takes calls from core one at a time, on the event loop, so while the loop is swamped
    (thousands of calls whose deadlines expire at once) core queues new calls, expired ones included. Past
    gRPC's default of 1000 queued, core cancels a growing share of new calls with CANCELLED before any handler sees
    them (docs/upstream/grpc-aio-pending-cancelled.md); one limit, soft = hard, keeps that for a true runaway.
    The connection age: gRPC pins a client to the replicas it connected to, so without one a scaled-out deployment's
    new replicas would get no traffic from existing clients (nor, with `--workers`, a restarted worker any from
    connections the others already hold)."""
    message_limit = settings.max_message_mb * 1024 * 1024
    options = [("grpc.max_send_message_length", message_limit), ("grpc.max_receive_message_length", message_limit)]
    if settings.max_pending_calls > 0:
        options += [
            ("grpc.server.max_pending_requests", settings.max_pending_calls),
            ("grpc.server.max_pending_requests_hard_limit", settings.max_pending_calls),
        ]
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


def _reload_counter(metrics: ServiceMetrics) -> Callable[[str, str], None]:
    """Counts each re-read of TLS or token files on SIGHUP, by kind and result (a failed one keeps the old)."""

    def count(kind: str, result: str) -> None:
        metrics.credential_reloads.labels(kind, result).inc()

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
    reloads: Reloads
    http: HttpFront | None = None

    @property
    def registry(self) -> ModelRegistry:
        return self.operations.registry

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    async def reload(self, trigger: str = "sighup") -> list[str]:
        """Re-read the repository (and, on SIGHUP, the TLS and token files): service/registry/triggers.py."""
        return await self.reloads.run(trigger)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting RPCs, let in-flight ones finish within the grace period, then release everything."""
        await self.health.enter_graceful_shutdown()
        await self.reloads.stop()
        if self.http is not None:
            await self.http.stop()
        await self.server.stop(grace_s)
        self._health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._health_task
        await self._loop_monitor.stop()
        await self.operations.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()


def health_statuses(backend: Backend, registry: ModelRegistry) -> dict[str, bool]:
    """Readiness by health name (docs/model-lifecycle.md "Health names"): `vae.v1.VaeService` while the backend is
    ready and any version of the default model serves ("updating" is not "down"); `vae.v1.VaeService/<model>` while
    any version of it serves; `vae.v1.VaeService/<model>:<version>` while that version serves (LOADING, FAILED,
    DRAINING and UNLOADED versions are NOT_SERVING); a model refused at start-up stays NOT_SERVING."""
    up = backend.ready()
    statuses = {SERVICE_NAME: up and registry.serving(registry.default_model)}
    statuses.update({health_name(name): False for name in registry.refused})
    for name, entry in registry.entries.items():
        statuses[health_name(name)] = up and bool(entry.ready())
        for version in entry.versions.values():
            statuses[version_health_name(name, version.version)] = up and version.state is State.READY
    return statuses


async def _track_health(backend: Backend, servicer: health.aio.HealthServicer, registry: ModelRegistry) -> None:
    """Polled every HEALTH_POLL_S; only changes are set. Liveness, the empty name, is not tied to the backend: a
    Triton outage must take the replicas out of rotation, not make an orchestrator restart every one of them. A
    name that disappears (a version unloaded) is set NOT_SERVING."""
    last: dict[str, bool] = {}
    while True:
        statuses = health_statuses(backend, registry)
        statuses.update({name: False for name in last if name not in statuses})
        for name, serving in statuses.items():
            if last.get(name) != serving:
                status = (
                    health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await servicer.set(name, status)
                if name == SERVICE_NAME:
                    log.info("readiness: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))
        last = statuses
        await asyncio.sleep(HEALTH_POLL_S)


async def _servable_models(settings: Settings) -> Verdict:
    """The repository's models (their default versions), each network file checked against its recorded SHA-256
    before any is loaded; their other versions are checked as they load (service/registry/loading.py)."""
    models = load_repository(settings.model_repository)
    try:  # a configured default must exist and pass its check; otherwise the first served model is the default
        default_model(settings.model_repository, models, settings.default_model)
    except RepositoryError as exc:
        raise ValueError(str(exc)) from exc
    configured = configured_default(settings.model_repository, settings.default_model)
    return await asyncio.to_thread(servable, models, settings.backend != "triton", configured)


async def _grpc_server(
    settings: Settings,
    servicer: VaeServicer,
    security: ServerSecurity,
    verdict: Verdict,
    admin: AdminServicer | None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """The VAE service, the admin service (only with an admin credential), health (all names NOT_SERVING until
    proven otherwise) and reflection, on a bound port."""
    auth, credentials = security.interceptor, security.credentials  # re-read on SIGHUP (service/security.py)
    server = grpc.aio.server(options=server_options(settings), interceptors=[auth] if auth else None)
    server.add_generic_rpc_handlers((rpc_handler(servicer),))
    services = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
    if admin is not None:
        admin_pb2_grpc.add_ModelAdminServiceServicer_to_server(admin, server)
        services.append(ADMIN_SERVICE_NAME)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME, *map(health_name, verdict.served), *map(health_name, verdict.refused)):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(services, server)
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
    metrics = ServiceMetrics(registry or CollectorRegistry())
    # a TLS or token setting that can't work stops us here, in one line, before anything loads
    security = ServerSecurity.from_settings(settings, _refused_counter(metrics), _reload_counter(metrics))
    verdict = await _servable_models(settings)  # a model whose files fail their check is not served
    models = verdict.served
    instrumented = InstrumentedBackend(backend or make_backend(settings, {}), metrics)
    limits = BatchingLimits(settings.max_batch_size, settings.max_wait_s, settings.max_queue, settings.score_chunk_rows)
    metrics.describe_models(models, settings.backend, settings.max_queue, settings.latent_health)
    model_registry = _model_registry(settings, instrumented, metrics, verdict)
    operations = VaeOperations(model_registry, limits, metrics.latent_health)
    fronts: list[HttpFront] = []  # the HTTP front, once it exists: its TLS files reload with gRPC's
    reloads = Reloads(model_registry, metrics.reloads, settings.repository_poll_s, _credentials(security, fronts))
    admin = AdminServicer(model_registry, reloads, settings.backend) if settings.admin_token_file else None
    servicer = VaeServicer(operations, settings, metrics)
    server, health_servicer, port = await _grpc_server(settings, servicer, security, verdict, admin)

    await instrumented.start()
    signature = repository_signature(settings.model_repository)  # before the read: a later change is seen
    versions = load_versions(settings.model_repository)
    await model_registry.start({name: versions[name] for name in models})
    reloads.start(signature)
    health_task = asyncio.get_running_loop().create_task(_track_health(instrumented, health_servicer, model_registry))
    loop_monitor = LoopMonitor(metrics.loop_lag, metrics.gc_pause)  # vae_event_loop_lag_seconds, vae_gc_pause_seconds
    loop_monitor.start()
    metrics_http, metrics_port = _metrics_endpoint(settings, metrics)
    await server.start()
    fronts += await _http_front(settings, servicer, admin, security, metrics)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)  # liveness: the server answers
    log.info("serving %s on port %d (%s; backend %s, metrics port %s, HTTP port %s)", ", ".join(models), port,
             security.describe(), settings.backend, metrics_port, fronts[0].port if fronts else None)  # fmt: skip
    return RunningServer(server, port, metrics_port, operations, health_servicer, metrics, metrics_http, health_task,
                         loop_monitor, reloads, fronts[0] if fronts else None)  # fmt: skip


async def _http_front(
    settings: Settings,
    servicer: VaeServicer,
    admin: AdminServicer | None,
    security: ServerSecurity,
    metrics: ServiceMetrics,
) -> list[HttpFront]:
    """The HTTP/JSON front on --http-port (none when it is -1), serving the same instrumented handlers."""
    if settings.http_port < 0:
        return []
    front = HttpFront(settings, instrumented(servicer), admin, security, metrics, static_dir=EXPLORER,
                      openapi=OPENAPI)  # fmt: skip
    await front.start()
    return [front]


def _credentials(security: ServerSecurity, fronts: list[HttpFront]) -> Callable[[], None]:
    """SIGHUP's re-read of the TLS and token files, for the gRPC port and the HTTP port alike."""

    def reload() -> None:
        if security.reload().get("tls") == "ok":
            for front in fronts:
                front.reload_tls_soon()

    return reload


def _model_registry(settings: Settings, backend: Backend, metrics: ServiceMetrics, verdict: Verdict) -> ModelRegistry:
    """The registry of served versions; with `--workers` the operators' changes live in the supervisor's folder."""
    limits = LoadLimits(settings.max_batch_size, settings.max_wait_s, settings.max_queue,
                        files_required=settings.backend != "triton", timeout_s=settings.load_timeout_s)  # fmt: skip
    chosen = default_model(settings.model_repository, verdict.served, settings.default_model)
    return ModelRegistry(backend, limits, batch_functions(backend, metrics.latent_health), metrics.observer,
                         repository=settings.model_repository, default_model=chosen,
                         unload_grace_s=settings.unload_grace_s, control=ControlStore.from_environment(),
                         lifecycle=LifecycleMetrics(metrics), refused=verdict.refused)  # fmt: skip


def listen_for_sighup(running: RunningServer, early: asyncio.Event) -> None:
    """SIGHUP reloads from now on; one received while starting (`early`) reloads now."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, running.reloads.on_sighup)
    if early.is_set():
        running.reloads.on_sighup()


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
    """Run until SIGTERM or SIGINT, then shut down gracefully; SIGHUP reloads (one that arrives while the models
    load is held and handled once the server serves: its default action would end the process)."""
    loop = asyncio.get_running_loop()
    early_sighup = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, early_sighup.set)
    running = await start_server(settings)
    freeze_start_up_objects(settings)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listen_for_sighup(running, early_sighup)
    await stop.wait()
    log.info("shutting down: finishing in-flight requests (grace %.1fs)", settings.shutdown_grace_s)
    await running.stop(settings.shutdown_grace_s)
