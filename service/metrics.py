"""Prometheus metrics, defined once against a registry the caller owns (tests make a fresh one).

Names and labels are in docs/operations.md ("Metrics"); dashboards and alerts depend on them. Every labelled series
that can be known at start-up (methods x status codes, models x networks, backends) is created at zero, so
dashboards and alerts see 0 rather than "no data" before the first request or the first error.

With `--workers N` (service/supervisor.py) every worker process writes these to prometheus-client's multiprocess
files and the supervisor's /metrics adds them up: counters and histograms are summed (a dead worker's counts are
kept, so totals never go backwards), and each Gauge says how its workers' values combine (`multiprocess_mode`,
ignored with one process). Collectors computed at scrape time (process_*, latent health) are gathered from each
worker separately (service/worker_metrics.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

from service.backends.base import Backend
from service.batching import BatchObserver
from service.latent_health import LatentHealth
from service.registry.state import ModelEntry, State, routed_default
from vae_client.proto_gen.vae.v1 import vae_pb2
from vaecore.repository import ModelSpec

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# event-loop lag: an idle loop sits in the first bucket; the health-check budget is 0.1 s
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GC_PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
METHODS = tuple(m.name for m in vae_pb2.DESCRIPTOR.services_by_name["VaeService"].methods)
STAMPED_METHODS = ("Decode", "Interpolate", "Arithmetic")  # the RPCs that take latents a client kept
NETWORKS = ("encoder", "decoder")
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
RELOAD_TRIGGERS = ("start", "sighup", "poll", "admin")
HTTP_STATUSES = ("200", "400", "401", "404", "429", "499", "500", "503", "504")  # service/http/transcode.py


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("vae_requests", "RPCs answered, by method and gRPC status code",
                                ["method", "code"], registry=registry)  # fmt: skip
        self.latency = Histogram("vae_request_duration_seconds", "RPC latency, by method", ["method"],
                                 buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        # in flight and queued: what every live worker holds adds up; a dead worker holds nothing ("live" drops it)
        self.in_flight = Gauge("vae_requests_in_flight", "RPCs being served", ["method"], registry=registry,
                               multiprocess_mode="livesum")  # fmt: skip
        # retry attempts (gRPC's grpc-previous-rpc-attempts header; a call retried twice counts 2): an earlier attempt
        # failed, e.g. cancelled by core before any handler saw it (docs/upstream/grpc-aio-pending-cancelled.md)
        self.retried = Counter("vae_retried_requests", "RPC attempts that arrived as a client's retry, by method",
                               ["method"], registry=registry)  # fmt: skip
        # the HTTP/JSON front's answers by HTTP status (each is also in vae_requests_total, with its gRPC code)
        self.http_responses = Counter("vae_http_responses", "HTTP/JSON answers, by method and HTTP status",
                                      ["method", "status"], registry=registry)  # fmt: skip
        self.items = Counter("vae_items_processed", "images or latents produced or consumed, by method",
                             ["method"], registry=registry)  # fmt: skip
        batching = ["model", "version", "network"]  # each version has batchers of its own
        self.batch_size = Histogram("vae_batch_size", "rows per backend call after dynamic batching",
                                    batching, buckets=BATCH_BUCKETS, registry=registry)  # fmt: skip
        self.batch_requests = Histogram("vae_batch_requests", "requests merged into one backend call",
                                        batching, buckets=BATCH_BUCKETS, registry=registry)  # fmt: skip
        # the fullest worker's queue, not the sum: each worker refuses when *its* queue (vae_queue_capacity, per
        # worker) is full, so the saturation alert's depth / capacity must be one worker's ratio, never above 1
        self.queue_depth = Gauge("vae_queue_depth", "requests waiting for a batch", batching,
                                 registry=registry, multiprocess_mode="livemax")  # fmt: skip
        self.queue_wait = Histogram("vae_queue_wait_seconds", "time from arrival to batch start",
                                    batching, buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        self.backend_latency = Histogram("vae_backend_duration_seconds", "backend call latency", ["backend", "network"],
                                         buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        self.backend_errors = Counter("vae_backend_errors", "failed backend calls", ["backend", "network"],
                                      registry=registry)  # fmt: skip
        # up only when every live worker's backend is: one worker with a dead backend fails its share of requests
        self.backend_up = Gauge("vae_backend_up", "1 when the backend is ready", ["backend"], registry=registry,
                                multiprocess_mode="livemin")  # fmt: skip
        # the next three are the same in every worker (same settings, same repository): "max" shows that one value
        # (a sum would double it), and keeps it while a worker restarts
        self.queue_capacity = Gauge("vae_queue_capacity", "most chunks that may wait (--max-queue)",
                                    batching, registry=registry, multiprocess_mode="max")  # fmt: skip
        info_labels = ["model", "version", "latent_dim", "likelihood", "dataset", "backend", "latent_space"]
        self.model_info = Gauge("vae_model_info", "served model versions (1 while READY, 0 once unloaded)",
                                info_labels, registry=registry, multiprocess_mode="max")  # fmt: skip
        self.test_nll = Gauge("vae_model_test_nll_nats", "test NLL stored in the model's metadata, nats", ["model"],
                              registry=registry, multiprocess_mode="max")  # fmt: skip
        self.loop_lag = Histogram("vae_event_loop_lag_seconds", "how late the event loop woke from a timer",
                                  buckets=LOOP_LAG_BUCKETS, registry=registry)  # fmt: skip
        self.gc_pause = Histogram("vae_gc_pause_seconds", "pauses of Python's cyclic garbage collector, by generation",
                                  ["generation"], buckets=GC_PAUSE_BUCKETS, registry=registry)  # fmt: skip
        self._lifecycle_metrics(registry)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.latent_health: LatentHealth | None = None
        self._zero_rpc_series()

    def _lifecycle_metrics(self, registry: CollectorRegistry) -> None:
        """Versions and their changes (service/registry): what the "Model versions" dashboard row and the
        VaeModelLoadFailed / VaeTrafficSplitLongLived alerts read."""
        self.version_requests = Counter("vae_version_requests", "requests routed to each model version, by method",
                                        ["model", "version", "method"], registry=registry)  # fmt: skip
        self.unstamped_latents = Counter("vae_unstamped_latents", "latents sent without their latent_space stamp",
                                         ["model", "method"], registry=registry)  # fmt: skip
        self.loads = Counter("vae_model_loads", "version loads (read, check, load, warm up), by result",
                             ["model", "result"], registry=registry)  # fmt: skip
        self.load_seconds = Histogram("vae_model_load_seconds", "time to load and warm up one version", ["model"],
                                      buckets=LOAD_BUCKETS, registry=registry)  # fmt: skip
        self.versions = Gauge("vae_model_versions", "versions of each model, by state", ["model", "state"],
                              registry=registry, multiprocess_mode="livemax")  # fmt: skip
        self.traffic_share = Gauge("vae_traffic_share", "share of unpinned requests routed to each version",
                                   ["model", "version"], registry=registry, multiprocess_mode="livemax")  # fmt: skip
        self.split_since = Gauge("vae_traffic_split_since_seconds", "unix time the traffic split was set; 0: none",
                                 ["model"], registry=registry, multiprocess_mode="livemax")  # fmt: skip
        self.reloads = Counter("vae_repository_reloads", "repository reloads, by what triggered them", ["trigger"],
                               registry=registry)  # fmt: skip
        self.credential_reloads = Counter("vae_credential_reloads", "re-reads of TLS and token files on SIGHUP",
                                          ["kind", "result"], registry=registry)  # fmt: skip
        for trigger in RELOAD_TRIGGERS:
            self.reloads.labels(trigger)
        for kind in ("tls", "tokens", "admin_tokens"):
            for result in ("ok", "unchanged", "failed"):
                self.credential_reloads.labels(kind, result)

    def _zero_rpc_series(self) -> None:
        for method in METHODS:
            for status in HTTP_STATUSES:
                self.http_responses.labels(method, status)
            for code in grpc.StatusCode:
                self.requests.labels(method, code.name)
            self.latency.labels(method)
            self.in_flight.labels(method)
            self.items.labels(method)
            self.retried.labels(method)

    def observer(self, model: ModelSpec, network: str) -> BatchObserver:
        return _Observer(self, model.name, model.version, network)

    def describe_models(self, models: dict[str, ModelSpec], backend: str, max_queue: int, latent_health: bool) -> None:
        """The models served at start-up (their default versions): per-model series at zero, backend series."""
        self._backend, self._max_queue = backend, max_queue
        for m in models.values():
            self.describe_model(m.name)
        for network in NETWORKS:
            self.backend_latency.labels(backend, network)
            self.backend_errors.labels(backend, network)
        self.backend_up.labels(backend).set(0)
        if latent_health:
            self.latent_health = LatentHealth(models)
            self.registry.register(self.latent_health)

    def describe_model(self, name: str) -> None:
        """Every per-model series of the lifecycle at zero (a model may also first appear at a reload)."""
        for result in ("ok", "failed"):
            self.loads.labels(name, result)
        self.load_seconds.labels(name)
        self.split_since.labels(name)
        for method in STAMPED_METHODS:
            self.unstamped_latents.labels(name, method)

    def describe_version(self, m: ModelSpec) -> None:
        """A version that now serves: its info series, limits, batching and request series at zero."""
        self.model_info.labels(m.name, m.version, str(m.latent_dim), m.likelihood, m.dataset, self._backend,
                               m.latent_space).set(1)  # fmt: skip
        for network in NETWORKS:
            self.queue_capacity.labels(m.name, m.version, network).set(self._max_queue)
            self.observer(m, network)  # creates the batching series
        for method in METHODS:
            self.version_requests.labels(m.name, m.version, method)
        if self.latent_health is not None:
            self.latent_health.add(m)

    def test_nll_of(self, default: ModelSpec | None) -> None:
        """The drift alert compares live NLL with the default version's test figure."""
        if default is not None and default.test_nll > 0:
            self.test_nll.labels(default.name).set(default.test_nll)

    def forget_version(self, m: ModelSpec) -> None:
        """A version no longer serving: its gauges set to 0, not removed (with `--workers` a worker cannot remove
        a series from the shared files), and its counters kept, so rates never go negative."""
        self.model_info.labels(m.name, m.version, str(m.latent_dim), m.likelihood, m.dataset, self._backend,
                               m.latent_space).set(0)  # fmt: skip
        for network in NETWORKS:
            self.queue_depth.labels(m.name, m.version, network).set(0)
        self.traffic_share.labels(m.name, m.version).set(0)


class _Observer(BatchObserver):
    def __init__(self, metrics: ServiceMetrics, model: str, version: str, network: str) -> None:
        self._depth = metrics.queue_depth.labels(model, version, network)
        self._size = metrics.batch_size.labels(model, version, network)
        self._requests = metrics.batch_requests.labels(model, version, network)
        self._wait = metrics.queue_wait.labels(model, version, network)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def batch(self, rows: int, requests: int) -> None:
        self._size.observe(rows)
        self._requests.observe(requests)

    def queue_wait(self, seconds: float) -> None:
        self._wait.observe(seconds)


class InstrumentedBackend:
    """Wraps a backend to time its calls and count its failures; behaviour is unchanged."""

    def __init__(self, inner: Backend, metrics: ServiceMetrics) -> None:
        self.inner = inner
        self.name = inner.name
        self._metrics = metrics

    async def start(self) -> None:
        await self.inner.start()

    def ready(self) -> bool:
        up = self.inner.ready()
        self._metrics.backend_up.labels(self.name).set(1 if up else 0)
        return up

    async def load(self, model: ModelSpec) -> None:
        await self.inner.load(model)

    async def unload(self, model: ModelSpec) -> None:
        await self.inner.unload(model)

    async def _timed(self, network: str, call, model: ModelSpec, array: np.ndarray):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return await call(model, array)
        except Exception:
            self._metrics.backend_errors.labels(self.name, network).inc()
            raise
        finally:
            self._metrics.backend_latency.labels(self.name, network).observe(time.perf_counter() - started)

    async def encode(self, model: ModelSpec, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self._timed("encoder", self.inner.encode, model, images)  # type: ignore[no-any-return]

    async def decode(self, model: ModelSpec, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self._timed("decoder", self.inner.decode, model, latents)  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.inner.close()


class LifecycleMetrics:
    """The registry's reports (service/registry/registry.py `Lifecycle`) as metrics."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics
        self._described: set[tuple[str, str]] = set()
        self._specs: dict[tuple[str, str], ModelSpec] = {}

    def load_finished(self, spec: ModelSpec, seconds: float, ok: bool) -> None:
        self._metrics.loads.labels(spec.name, "ok" if ok else "failed").inc()
        if ok:
            self._metrics.load_seconds.labels(spec.name).observe(seconds)

    def changed(self, entries: Mapping[str, ModelEntry]) -> None:
        """Versions by state, traffic shares and splits, and the series of versions that came or went."""
        serving = set()
        for name, entry in entries.items():
            if (name, "") not in self._described:
                self._metrics.describe_model(name)
                self._described.add((name, ""))
            counts = dict.fromkeys(State, 0)
            for version in entry.versions.values():
                counts[version.state] += 1
                if version.state is State.READY:
                    serving.add((name, version.version))
                    if (name, version.version) not in self._described:
                        self._metrics.describe_version(version.spec)
                        self._described.add((name, version.version))
                        self._specs[(name, version.version)] = version.spec
            for state, count in counts.items():
                self._metrics.versions.labels(name, state.value).set(count)
            shares = entry.routing.shares()
            for number in entry.versions:
                self._metrics.traffic_share.labels(name, number).set(shares.get(number, 0.0))
            self._metrics.split_since.labels(name).set(entry.routing.since if entry.routing.split else 0)
            default = routed_default(entry)
            self._metrics.test_nll_of(default.spec if default is not None else None)
        for key in [k for k in self._specs if k not in serving]:
            self._metrics.forget_version(self._specs.pop(key))
            self._described.discard(key)
