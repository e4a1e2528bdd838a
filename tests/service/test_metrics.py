"""Metrics a dashboard relies on: every known series exists at zero before traffic, the latent-health metrics
equal what the replies themselves say, /metrics binds where it is told, and the health-check command."""

from __future__ import annotations

import gc
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from service import healthcheck
from service.config import Settings, load_settings, parse_bool
from service.latent_health import ACTIVE_UNIT_VARIANCE, KL_BUCKETS, _Histogram
from service.metrics import METHODS
from tests.datasets import stroke_images
from tests.service.harness import ServerThread, serving, stub_for
from vae_client.codecs import array_to_tensor, tensor_to_array
from vae_client.proto_gen.vae.v1 import vae_pb2 as V


def _settings(repo: Path, **extra: object) -> Settings:
    values: dict[str, object] = {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "model_repository": repo,
                                 "max_batch_size": 16, "torch_threads": 1}  # fmt: skip
    return Settings(**{**values, **extra})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(model_repository: Path) -> Iterator[ServerThread]:
    with serving(_settings(model_repository)) as running:
        yield running


def _samples(server: ServerThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert server.running is not None and server.running.metrics_port is not None
    url = f"http://127.0.0.1:{server.running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]  # type: ignore[no-any-return]


def _images(n: int, seed: int = 0) -> np.ndarray:
    return stroke_images(n, seed)[0][:, None].astype(np.float32)


def test_every_known_series_is_exported_at_zero_before_traffic(model_repository: Path) -> None:
    with serving(_settings(model_repository)) as fresh:
        samples = _samples(fresh)
    for method in METHODS:
        assert _get(samples, "vae_requests_total", method=method, code="OK") == 0
        assert _get(samples, "vae_requests_total", method=method, code="INTERNAL") == 0
        assert _get(samples, "vae_request_duration_seconds_count", method=method) == 0
        assert _get(samples, "vae_items_processed_total", method=method) == 0
        assert _get(samples, "vae_requests_in_flight", method=method) == 0
    for model in ("tiny", "tiny2"):
        for network in ("encoder", "decoder"):
            batching = {"model": model, "version": "1", "network": network}
            assert _get(samples, "vae_batch_size_count", **batching) == 0
            assert _get(samples, "vae_queue_depth", **batching) == 0
            assert _get(samples, "vae_queue_capacity", **batching) == Settings().max_queue
        # the model lifecycle (service/registry): its one version loaded once at start, nothing else yet
        assert _get(samples, "vae_model_loads_total", model=model, result="ok") == 1
        assert _get(samples, "vae_model_loads_total", model=model, result="failed") == 0
        assert _get(samples, "vae_model_load_seconds_count", model=model) == 1
        assert _get(samples, "vae_model_versions", model=model, state="ready") == 1
        assert _get(samples, "vae_model_versions", model=model, state="failed") == 0
        assert _get(samples, "vae_traffic_share", model=model, version="1") == 1
        assert _get(samples, "vae_traffic_split_since_seconds", model=model) == 0
        for method in ("Decode", "Interpolate", "Arithmetic"):
            assert _get(samples, "vae_unstamped_latents_total", model=model, method=method) == 0
        for method in METHODS:
            assert _get(samples, "vae_version_requests_total", model=model, version="1", method=method) == 0
        assert _get(samples, "vae_latent_kl_nats_count", model=model) == 0
        assert _get(samples, "vae_score_nll_nats_count", model=model) == 0
        assert _get(samples, "vae_latent_active_units", model=model) == 0
        assert _get(samples, "vae_model_test_nll_nats", model=model) == 321.5  # conftest's evaluation
    for network in ("encoder", "decoder"):
        assert _get(samples, "vae_backend_errors_total", backend="local", network=network) == 0
    assert _get(samples, "process_resident_memory_bytes") > 0 and _get(samples, "process_cpu_seconds_total") > 0
    for generation in ("0", "1", "2"):  # a series per generation (not zero: this test process collects too)
        assert _get(samples, "vae_gc_pause_seconds_count", generation=generation) >= 0


def test_gc_pauses_are_timed_by_generation(server: ServerThread) -> None:
    before = _samples(server)
    gc.collect()  # a full collection of this process (the in-process server's too): generation 2
    deadline = time.monotonic() + 5
    while _get(_samples(server), "vae_gc_pause_seconds_count", generation="2") <= _get(
        before, "vae_gc_pause_seconds_count", generation="2"
    ):
        assert time.monotonic() < deadline, "a full collection was not recorded"
        time.sleep(0.05)
    after = _samples(server)
    added = _get(after, "vae_gc_pause_seconds_sum", generation="2") - _get(
        before, "vae_gc_pause_seconds_sum", generation="2"
    )
    assert 0 < added < 5  # seconds: a real duration, not a count or a timestamp


def test_latent_health_equals_what_the_replies_say(server: ServerThread) -> None:
    inputs = _images(45)  # Encode sees all 45; Score sees the last 5 again
    with stub_for(server) as stub:
        encoded = stub.Encode(V.EncodeRequest(model="tiny2", images=V.Images(tensor=array_to_tensor(inputs))))
        scored = stub.Score(V.ScoreRequest(model="tiny2", images=V.Images(tensor=array_to_tensor(inputs[-5:])),
                                           importance_samples=10))  # fmt: skip
    mu = tensor_to_array(encoded.mean, "mean").astype(np.float64)
    logvar = tensor_to_array(encoded.log_variance, "log_variance").astype(np.float64)
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar).sum(-1)
    samples = _samples(server)
    assert _get(samples, "vae_latent_kl_nats_count", model="tiny2") == 50
    assert _get(samples, "vae_latent_kl_nats_sum", model="tiny2") == pytest.approx(kl.sum() + kl[-5:].sum(), rel=1e-5)
    assert _get(samples, "vae_latent_kl_nats_bucket", model="tiny2", le="+Inf") == 50
    below_10 = int((np.concatenate([kl, kl[-5:]]) <= 10).sum())
    assert _get(samples, "vae_latent_kl_nats_bucket", model="tiny2", le="10.0") == below_10
    log_px = [s.log_likelihood for s in scored.scores]
    assert _get(samples, "vae_score_nll_nats_count", model="tiny2") == 5
    assert _get(samples, "vae_score_nll_nats_sum", model="tiny2") == pytest.approx(-sum(log_px), rel=1e-6)
    window = np.concatenate([mu, mu[-5:]])  # every posterior mean the model produced, Score's included
    expected_active = int((window.var(axis=0) > ACTIVE_UNIT_VARIANCE).sum())
    assert _get(samples, "vae_latent_active_units", model="tiny2") == expected_active
    assert _get(samples, "vae_latent_kl_nats_count", model="tiny") == 0  # the other model saw nothing


def test_active_units_are_the_units_whose_posterior_mean_varies(server: ServerThread) -> None:
    from service.latent_health import LatentHealth

    assert server.running is not None
    models = server.running.registry.models()
    health = LatentHealth(models, window=8)
    rng = np.random.default_rng(0)
    mu = np.zeros((20, 4), np.float32)
    mu[:, 1] = rng.normal(0, 1, 20)  # one unit varies; the others are constant
    mu[:, 3] = rng.normal(0, 0.05, 20)  # variance 0.0025 < 0.01: inactive
    health.posterior("tiny", mu, np.zeros_like(mu))
    values = {m.name: m.samples for m in health.collect()}
    active = [s.value for s in values["vae_latent_active_units"] if s.labels["model"] == "tiny"]
    assert active == [1]


def test_bulk_histogram_buckets_equal_prometheus_clients_own() -> None:
    values = np.array([0.5, 0.5000001, 1.0, 3.0, 25.0, 999.0, 1000.0, 5000.0, -1.0, np.nan])
    ours = _Histogram(KL_BUCKETS)
    ours.observe(values)
    reference = Histogram("h", "h", buckets=KL_BUCKETS, registry=CollectorRegistry())
    for v in values[np.isfinite(values)]:
        reference.observe(float(v))
    theirs = {s.labels["le"]: s.value for s in next(iter(reference.collect())).samples if s.name == "h_bucket"}
    assert dict(ours.buckets()) == {le: theirs[le] for le in theirs}
    assert ours.total == pytest.approx(float(values[np.isfinite(values)].sum()))


def test_latent_health_can_be_turned_off(model_repository: Path) -> None:
    with serving(_settings(model_repository, latent_health=False)) as quiet:
        names = {name for name, _ in _samples(quiet)}
    assert not any(n.startswith(("vae_latent_", "vae_score_nll")) for n in names)
    assert "vae_requests_total" in names


def test_metrics_bind_the_host_they_are_told(model_repository: Path) -> None:
    with serving(_settings(model_repository)) as default:  # --metrics-host empty: follows --host
        assert default.running is not None and default.running._metrics_http is not None
        assert default.running._metrics_http.server_address[0] == "127.0.0.1"
    with serving(_settings(model_repository, host="0.0.0.0", metrics_host="127.0.0.1")) as split:
        assert split.running is not None and split.running._metrics_http is not None
        assert split.running._metrics_http.server_address[0] == "127.0.0.1"


def test_boolean_settings_parse_strictly() -> None:
    assert load_settings(["--latent-health", "false"], {}).latent_health is False
    assert load_settings([], {"VAE_LATENT_HEALTH": "No"}).latent_health is False
    assert load_settings([], {"VAE_LATENT_HEALTH": "1"}).latent_health is True
    assert load_settings([], {"VAE_METRICS_HOST": "127.0.0.1"}).metrics_bind_host == "127.0.0.1"
    with pytest.raises(ValueError, match="got 'maybe'"):
        parse_bool("maybe")
    with pytest.raises(SystemExit):
        load_settings([], {"VAE_LATENT_HEALTH": "maybe"})


def test_healthcheck_command_exits_zero_only_when_serving(server: ServerThread, capsys: pytest.CaptureFixture) -> None:
    assert healthcheck.main(["--target", server.address]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert healthcheck.main(["--target", server.address, "--service", "no.such.Service"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().out
    assert healthcheck.main(["--target", "127.0.0.1:1", "--timeout", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().out or "DEADLINE_EXCEEDED" in capsys.readouterr().out


def test_the_window_of_posterior_means_keeps_the_latest_rows_across_the_wrap() -> None:
    from service.latent_health import _ModelState

    state = _ModelState(latent_dim=2, window=5)
    for k in range(7):  # 21 rows in batches of 3: the ring wraps inside batches
        state.remember(np.full((3, 2), k, np.float32))
    assert state.filled == 5 and sorted(state.means[:, 0].tolist()) == [5, 5, 6, 6, 6]
    state.remember(np.arange(12, dtype=np.float32).reshape(6, 2))  # a batch larger than the window
    assert sorted(state.means[:, 0].tolist()) == [2, 4, 6, 8, 10]
