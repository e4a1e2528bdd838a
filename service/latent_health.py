"""Latent health, from live traffic, per model: is what clients send still what the model was trained on?

- `vae_latent_kl_nats`: KL(q(z|x) || N(0, I)) of every encoded input (histogram). Typical inputs sit near the
  training set's KL; far larger values mean inputs the encoder finds surprising.
- `vae_latent_active_units`: latent units whose posterior mean varies across the last `window` encoded inputs
  (variance > 0.01, the definition of Burda et al. 2015). A drop means inputs collapse onto few directions.
- `vae_score_nll_nats`: -log p(x) per image from Score's importance-weighted estimate (histogram), compared by
  the drift alert with `vae_model_test_nll_nats` (service/metrics.py), the test figure in the model's metadata.

Cost matters (it runs on every request): updates are vectorised numpy (bucket counts by `searchsorted`, a ring
buffer of posterior means), and the variance behind the active-unit count is computed only when scraped.
`benchmarks/latent_health_cost.py` measures it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import numpy as np
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from service.latent import posterior_kl
from vaecore.repository import ModelSpec

KL_BUCKETS = (0.5, 1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000)
# -log p(x): positive for Bernoulli models (about 84 nats on binarized MNIST test images). Gaussian densities can
# exceed 1, so their NLL can be negative: those land in the first bucket, and _sum stays exact. (A histogram of
# log p(x) itself would need negative bucket bounds, which OpenMetrics forbids alongside _sum and _count.)
NLL_BUCKETS = (0, 25, 50, 60, 70, 80, 90, 100, 110, 125, 150, 175, 200, 250, 300, 400, 500, 1000, 2000, 5000)
ACTIVE_UNIT_VARIANCE = 0.01
WINDOW = 1024


class _Histogram:
    """Bucket counts kept as a numpy array, so a batch of N values costs one `searchsorted`, not N calls."""

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = np.asarray(tuple(bounds), np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, np.int64)  # last: above the highest bound (+Inf)
        self.total = 0.0

    def observe(self, values: np.ndarray) -> None:
        finite = values[np.isfinite(values)]
        # Prometheus buckets are "less than or equal": index of the first bound >= value.
        index = np.searchsorted(self.bounds, finite, side="left")
        self.counts += np.bincount(index, minlength=len(self.counts))
        self.total += float(finite.sum())

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = np.cumsum(self.counts)
        edges = [repr(float(b)) for b in self.bounds] + ["+Inf"]
        return [(edge, float(count)) for edge, count in zip(edges, cumulative, strict=True)]


class _ModelState:
    def __init__(self, latent_dim: int, window: int) -> None:
        self.kl = _Histogram(KL_BUCKETS)
        self.nll = _Histogram(NLL_BUCKETS)
        self.means = np.zeros((window, latent_dim), np.float32)
        self.filled = 0
        self.next = 0

    def remember(self, mu: np.ndarray) -> None:
        size = len(self.means)
        rows = mu[-size:]
        first = min(len(rows), size - self.next)  # up to the end of the ring, then wrap to its start
        self.means[self.next : self.next + first] = rows[:first]
        self.means[: len(rows) - first] = rows[first:]
        self.next = (self.next + len(rows)) % size
        self.filled = min(size, self.filled + len(rows))

    def active_units(self) -> int:
        if self.filled < 2:
            return 0
        variance = self.means[: self.filled].astype(np.float64).var(axis=0)
        return int((variance > ACTIVE_UNIT_VARIANCE).sum())


class LatentHealth(Collector):
    """Observes encoder outputs and Score results; a Prometheus collector over what it saw."""

    def __init__(self, models: dict[str, ModelSpec], window: int = WINDOW) -> None:
        self._window = window
        self._state = {name: _ModelState(m.latent_dim, window) for name, m in models.items()}
        self._lock = threading.Lock()  # scrapes come from the metrics server's thread

    def add(self, model: ModelSpec) -> None:
        """A model first served after start-up (its versions share one state: the same inputs, the same name)."""
        with self._lock:
            self._state.setdefault(model.name, _ModelState(model.latent_dim, self._window))

    def posterior(self, model: str, mu: np.ndarray, logvar: np.ndarray) -> None:
        kl = posterior_kl(mu, logvar)
        with self._lock:
            state = self._state[model]
            state.kl.observe(kl)
            state.remember(mu)

    def log_likelihood(self, model: str, values: np.ndarray) -> None:
        """Score's log p(x) per image; recorded as its negative (see NLL_BUCKETS)."""
        with self._lock:
            self._state[model].nll.observe(-np.asarray(values, np.float64))

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        kl = HistogramMetricFamily(
            "vae_latent_kl_nats", "KL(q(z|x) || N(0, I)) of each encoded input, nats", labels=["model"]
        )
        nll = HistogramMetricFamily(
            "vae_score_nll_nats", "-log p(x) per image, Score's importance-weighted estimate, nats", labels=["model"]
        )
        active = GaugeMetricFamily(
            "vae_latent_active_units",
            f"latent units whose posterior mean has variance > {ACTIVE_UNIT_VARIANCE} over the last encoded inputs",
            labels=["model"],
        )
        with self._lock:
            for name, state in self._state.items():
                kl.add_metric([name], state.kl.buckets(), state.kl.total)
                nll.add_metric([name], state.nll.buckets(), state.nll.total)
                active.add_metric([name], state.active_units())
        yield from (kl, nll, active)
