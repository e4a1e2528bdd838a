"""The one /metrics of `--workers N`, served by the supervisor: every worker's metrics, combined.

- Every Counter, Histogram and Gauge of service/metrics.py lives in prometheus-client's multiprocess files
  (PROMETHEUS_MULTIPROC_DIR, one file per worker process). MultiProcessCollector adds counters and histograms up,
  a dead worker's included (totals never go backwards across a restart), and combines each Gauge by its
  `multiprocess_mode`. Names and labels are those of one process, so dashboards and alerts read them unchanged.
- What a worker computes at scrape time is not in those files: latent health (service/latent_health.py) and
  process_*. The supervisor reads each live worker's own registry from its loopback endpoint and exports latent
  health merged (histogram counts and sums add up; the gauge, vae_latent_active_units, keeps the largest worker
  value: each worker sees only its share of the inputs), and process_* once per process with a `worker` label
  ("0".."N-1", and "supervisor" for this process): a sum would turn one worker's restart into a CPU-seconds
  counter that goes backwards, and a per-process view is what shows one worker hogging memory or CPU.
- Two series only N > 1 has: vae_worker_requests_total{worker} (RPCs each worker answered: how evenly the kernel
  spreads connections) and vae_worker_restarts_total{worker}.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class WorkerView:
    """One worker as the supervisor sees it at scrape time."""

    index: int
    pid: int
    metrics_port: int | None  # None until it serves
    restarts: int


@dataclass
class _Merged:
    """One family summed over workers, sample by sample (a gauge keeps the largest value)."""

    name: str
    documentation: str
    type: str
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def add(self, family: Metric) -> None:
        for sample in family.samples:
            if sample.name.endswith("_created"):  # a start time, not a count
                continue
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key not in self.values:
                self.values[key] = sample.value
            elif self.type == "gauge":
                self.values[key] = max(self.values[key], sample.value)
            else:
                self.values[key] += sample.value

    def metric(self) -> Metric:
        metric = Metric(self.name, self.documentation, self.type)
        for (name, labels), value in self.values.items():
            metric.add_sample(name, dict(labels), value)
        return metric


def _labelled(families: Iterable[Metric], worker: str, into: dict[str, Metric]) -> None:
    for family in families:
        target = into.setdefault(family.name, Metric(family.name, family.documentation, family.type))
        for sample in family.samples:
            target.add_sample(sample.name, {**sample.labels, "worker": worker}, sample.value)


class WorkersCollector(Collector):
    """Collects, at each scrape, the multiprocess files plus what each live worker's endpoint answers."""

    def __init__(self, directory: str, workers: Callable[[], Sequence[WorkerView]]) -> None:
        self._shared = MultiProcessCollector(None, path=directory)
        self._workers = workers
        self._own = ProcessCollector(registry=None)
        self._last: dict[int, tuple[int, list[Metric]]] = {}  # index -> (pid, families) of its last good answer
        self._lock = threading.Lock()  # scrapes may overlap (the HTTP server answers each in a thread)

    def collect(self) -> Iterator[Metric]:
        shared = list(self._shared.collect())
        yield from shared
        in_files = {family.name for family in shared}
        merged: dict[str, _Merged] = {}
        per_process: dict[str, Metric] = {}
        requests = CounterMetricFamily("vae_worker_requests", "RPCs answered, by worker process", labels=["worker"])
        restarts = CounterMetricFamily("vae_worker_restarts", "worker processes restarted after an unexpected exit",
                                       labels=["worker"])  # fmt: skip
        for view in self._workers():
            worker = str(view.index)
            restarts.add_metric([worker], view.restarts)
            families = self._scrape(view)
            for family in families:
                if family.name == "vae_requests":
                    requests.add_metric([worker], sum(s.value for s in family.samples if s.name.endswith("_total")))
                elif family.name.startswith("process_"):
                    _labelled([family], worker, per_process)
                elif family.name not in in_files and not family.name.startswith("python_"):
                    merged.setdefault(family.name, _Merged(family.name, family.documentation, family.type)).add(family)
        _labelled(self._own.collect(), "supervisor", per_process)
        yield from per_process.values()
        yield from (m.metric() for m in merged.values())
        yield from (requests, restarts)

    def _scrape(self, view: WorkerView) -> list[Metric]:
        """The worker's own registry; its last good answer when it does not answer in time (a busy worker)."""
        with self._lock:
            pid, last = self._last.get(view.index, (view.pid, []))
        last = last if pid == view.pid else []  # a restarted worker starts from nothing
        if view.metrics_port is None:
            return last
        try:
            url = f"http://127.0.0.1:{view.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as reply:
                families = list(text_string_to_metric_families(reply.read().decode()))
        except OSError as exc:
            log.warning("worker %d (pid %d) did not answer for metrics: %s", view.index, view.pid, exc)
            return last
        with self._lock:
            self._last[view.index] = (view.pid, families)
        return families
