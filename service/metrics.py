"""Prometheus metrics, defined once against a registry the caller owns (tests make a fresh one).

Names and labels are documented in README.md; dashboards and alerts depend on them. Every labelled series
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

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

from service.backends.base import Backend
from service.batching import BatchObserver
from service.latent_health import LatentHealth
from service.proto_gen.vae.v1 import vae_pb2
from vaecore.repository import ModelSpec

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# event-loop lag: an idle loop sits in the first bucket; the health-check budget is 0.1 s
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GC_PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
METHODS = tuple(m.name for m in vae_pb2.DESCRIPTOR.services_by_name["VaeService"].methods)
NETWORKS = ("encoder", "decoder")


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
        self.items = Counter("vae_items_processed", "images or latents produced or consumed, by method",
                             ["method"], registry=registry)  # fmt: skip
        self.batch_size = Histogram("vae_batch_size", "rows per backend call after dynamic batching",
                                    ["model", "network"], buckets=BATCH_BUCKETS, registry=registry)  # fmt: skip
        self.batch_requests = Histogram("vae_batch_requests", "requests merged into one backend call",
                                        ["model", "network"], buckets=BATCH_BUCKETS, registry=registry)  # fmt: skip
        # the fullest worker's queue, not the sum: each worker refuses when *its* queue (vae_queue_capacity, per
        # worker) is full, so the saturation alert's depth / capacity must be one worker's ratio, never above 1
        self.queue_depth = Gauge("vae_queue_depth", "requests waiting for a batch", ["model", "network"],
                                 registry=registry, multiprocess_mode="livemax")  # fmt: skip
        self.queue_wait = Histogram("vae_queue_wait_seconds", "time from arrival to batch start",
                                    ["model", "network"], buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
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
                                    ["model", "network"], registry=registry, multiprocess_mode="max")  # fmt: skip
        info_labels = ["model", "latent_dim", "likelihood", "dataset", "backend"]
        self.model_info = Gauge("vae_model_info", "served models (value 1)", info_labels, registry=registry,
                                multiprocess_mode="max")  # fmt: skip
        self.test_nll = Gauge("vae_model_test_nll_nats", "test NLL stored in the model's metadata, nats", ["model"],
                              registry=registry, multiprocess_mode="max")  # fmt: skip
        self.loop_lag = Histogram("vae_event_loop_lag_seconds", "how late the event loop woke from a timer",
                                  buckets=LOOP_LAG_BUCKETS, registry=registry)  # fmt: skip
        self.gc_pause = Histogram("vae_gc_pause_seconds", "pauses of Python's cyclic garbage collector, by generation",
                                  ["generation"], buckets=GC_PAUSE_BUCKETS, registry=registry)  # fmt: skip
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.latent_health: LatentHealth | None = None
        self._zero_rpc_series()

    def _zero_rpc_series(self) -> None:
        for method in METHODS:
            for code in grpc.StatusCode:
                self.requests.labels(method, code.name)
            self.latency.labels(method)
            self.in_flight.labels(method)
            self.items.labels(method)

    def observer(self, model: str, network: str) -> BatchObserver:
        return _Observer(self, model, network)

    def describe_models(self, models: dict[str, ModelSpec], backend: str, max_queue: int, latent_health: bool) -> None:
        """The served models, their limits and reference figures, and every per-model series at zero."""
        for m in models.values():
            self.model_info.labels(m.name, str(m.latent_dim), m.likelihood, m.dataset, backend).set(1)
            if m.test_nll > 0:
                self.test_nll.labels(m.name).set(m.test_nll)
            for network in NETWORKS:
                self.queue_capacity.labels(m.name, network).set(max_queue)
                self.observer(m.name, network)  # creates the batching series
        for network in NETWORKS:
            self.backend_latency.labels(backend, network)
            self.backend_errors.labels(backend, network)
        self.backend_up.labels(backend).set(0)
        if latent_health:
            self.latent_health = LatentHealth(models)
            self.registry.register(self.latent_health)


class _Observer(BatchObserver):
    def __init__(self, metrics: ServiceMetrics, model: str, network: str) -> None:
        self._depth = metrics.queue_depth.labels(model, network)
        self._size = metrics.batch_size.labels(model, network)
        self._requests = metrics.batch_requests.labels(model, network)
        self._wait = metrics.queue_wait.labels(model, network)

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
