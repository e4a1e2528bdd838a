"""`python -m service --workers N` as users run it: real processes sharing one port, one aggregated /metrics, SIGTERM
that ends every process, a killed worker restarted, and `--workers 1` still the plain single-process server."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from service.config import load_settings
from service.server import server_options
from vae_client.codecs import array_to_tensor
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub

ROOT = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"serving on port (\d+) with (\d+) workers \(pids ([\d, ]+); metrics port (\w+)\)")
START_S = 90  # two workers importing torch at once on 2 busy cores
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    log: Path
    tmp: Path  # the supervisor's TMPDIR: its multiprocess metrics folder is made here
    port: int
    pids: list[int]
    metrics_port: int | None

    def metrics(self) -> Samples:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip

    def wait_for_log(self, pattern: str, timeout: float = START_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log.read_text())
            if found:
                return found
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in:\n{self.log.read_text()}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def _start(repo: Path, tmp: Path, *args: str) -> Service:
    tmp.mkdir(exist_ok=True)
    log = tmp / "log"
    env = {**os.environ, "VAE_MODEL_REPOSITORY": str(repo), "VAE_TORCH_THREADS": "1", "TMPDIR": str(tmp)}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", *args], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    service = Service(process, log, tmp, 0, [], None)
    try:
        found = service.wait_for_log(SERVING.pattern)
    except BaseException:
        process.kill()
        raise
    service.port, service.pids = int(found[1]), [int(p) for p in found[3].split(", ")]
    service.metrics_port = None if found[4] == "None" else int(found[4])
    return service


def _gone(pid: int) -> bool:
    """No such process, not even a zombie: its parent reaped it."""
    return not Path(f"/proc/{pid}").exists()


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (workers, and multiprocessing's resource tracker)."""
    children = {int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()}
    return children.union(*(_descendants(c) for c in children if not _gone(c)))


def _all_gone(pids: set[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not all(map(_gone, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return all(map(_gone, pids))


@pytest.fixture(scope="module")
def two_workers(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("workers")
    service = _start(model_repository, tmp, "--workers", "2", "--port", "0", "--metrics-port", "0",
                     "--metrics-host", "127.0.0.1", "--max-queue", "77")  # fmt: skip
    try:
        yield service
    finally:
        if service.process.poll() is None:
            code = service.stop()
            assert code == 0, service.log.read_text()
            assert list(tmp.glob("vae-metrics-*")) == [], "the multiprocess metrics folder was left behind"


def _channel(port: int) -> grpc.Channel:
    """A channel with its own TCP connection (channels with equal arguments would share one)."""
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])


def _total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)


def _call_from_many_connections(port: int, connections: int, per_connection: int) -> None:
    image = V.Images(tensor=array_to_tensor(np.random.default_rng(0).random((1, 1, 28, 28), np.float32)))

    def calls(_: int) -> None:
        with _channel(port) as channel:
            stub = VaeServiceStub(channel)
            for _ in range(per_connection):
                stub.Sample(V.SampleRequest(model="tiny", n=1), timeout=60)
                stub.Encode(V.EncodeRequest(model="tiny", images=image), timeout=60)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(calls, range(connections)))


def test_many_connections_reach_both_workers_and_every_request_is_counted_once(two_workers: Service) -> None:
    before = two_workers.metrics()
    _call_from_many_connections(two_workers.port, connections=16, per_connection=2)  # 64 RPCs, 32 encoded images
    after = two_workers.metrics()

    def delta(name: str, **labels: str) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    assert delta("vae_requests_total") == 64
    assert delta("vae_requests_total", method="Encode", code="OK") == 32
    assert delta("vae_items_processed_total", method="Sample") == 32
    per_worker = [delta("vae_worker_requests_total", worker=w) for w in ("0", "1")]
    assert sum(per_worker) == 64 and min(per_worker) > 0, f"the kernel gave one worker every connection: {per_worker}"
    # latent health lives in each worker's memory, merged by the supervisor: every encoded image counted once
    assert delta("vae_latent_kl_nats_count", model="tiny") == 32


def test_series_start_at_zero_and_gauges_combine_as_one_server(two_workers: Service) -> None:
    deadline = time.monotonic() + 30
    while _total(samples := two_workers.metrics(), "vae_backend_up", backend="local") != 1:  # livemin: all ready
        assert time.monotonic() < deadline, "a worker's backend never became ready"
        time.sleep(0.2)
    for method in ("Arithmetic", "Score"):
        assert ("vae_requests_total", frozenset({("method", method), ("code", "DATA_LOSS")})) in samples
        assert samples[("vae_requests_in_flight", frozenset({("method", method)}))] == 0  # livesum over workers
    assert samples[("vae_backend_errors_total", frozenset({("backend", "local"), ("network", "decoder")}))] == 0
    assert samples[("vae_queue_depth", frozenset({("model", "tiny2"), ("version", "1"), ("network", "encoder")}))] == 0
    # the same in every worker: shown once ("max"), not doubled
    capacity = ("vae_queue_capacity", frozenset({("model", "tiny"), ("version", "1"), ("network", "decoder")}))
    assert samples[capacity] == 77
    assert samples[("vae_model_test_nll_nats", frozenset({("model", "tiny")}))] == 321.5
    assert _total(samples, "vae_model_info", model="tiny") == 1
    assert ("vae_latent_active_units", frozenset({("model", "tiny2")})) in samples
    for worker in ("0", "1", "supervisor"):  # per-process figures, one series per process
        assert _total(samples, "process_resident_memory_bytes", worker=worker) > 0
    assert ("vae_worker_restarts_total", frozenset({("worker", "1")})) in samples


def test_every_connection_is_answered_by_a_ready_worker(two_workers: Service) -> None:
    for _ in range(6):
        with _channel(two_workers.port) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(service="vae.v1.VaeService"), timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_every_dashboard_panel_has_data_from_the_workers(two_workers: Service, tmp_path: Path) -> None:
    """The shipped Grafana dashboard's queries (local backend) against a real Prometheus scraping the supervisor's
    /metrics: names and labels are what one process exports, so every panel still answers."""
    from tools import dashboard
    from tools.prom import PrometheusError, PrometheusServer, ScrapeJob, finite_values, poll
    from tools.traffic import Traffic

    board = dashboard.load()
    job = ScrapeJob("vae-service", [f"127.0.0.1:{two_workers.metrics_port}"])
    with PrometheusServer(tmp_path, [job], "1s") as prometheus:
        assert prometheus.api is not None
        api = prometheus.api
        prometheus.wait_for_targets_up()  # a first scrape before the traffic, so rates see it as an increase
        with Traffic(f"127.0.0.1:{two_workers.port}", images_per_request=4, score_samples=8) as traffic:
            for seed in range(3):
                traffic.round(seed, errors=True)
        values = {name: api.label_values(label, metric) for name, (metric, label) in dashboard.variables(board).items()}
        pending = {(panel.title, target.ref): dashboard.substitute(target.expr, values, "1m")
                   for panel in dashboard.panels(board)
                   if not panel.gpu_only and not panel.metric_names() & dashboard.TRITON_METRICS
                   for target in panel.targets}  # fmt: skip

        def all_answered() -> bool:
            for key, expr in list(pending.items()):
                if finite_values(api.query(expr)):
                    del pending[key]
            return not pending

        try:
            poll(all_answered, 60, "every panel query to return data")
        except PrometheusError:
            pytest.fail("panel queries without data:\n" + "\n".join(f"{k}: {e}" for k, e in pending.items()))
        scraped = {series["metric"]["__name__"] for series in api.query('count by (__name__) ({job="vae-service"})')}
    only_with_workers = {"vae_worker_requests_total", "vae_worker_restarts_total"}
    assert scraped - dashboard.PROMETHEUS_METRICS <= dashboard.service_metric_names() | only_with_workers


def test_a_killed_worker_is_restarted_and_the_totals_keep_its_counts(two_workers: Service) -> None:
    victim = two_workers.pids[0]
    before = two_workers.metrics()
    os.kill(victim, signal.SIGKILL)
    found = two_workers.wait_for_log(r"worker 0 serving again \(pid (\d+)\)")
    two_workers.pids[0] = int(found[1])
    assert f"worker 0 (pid {victim}) exited unexpectedly (signal SIGKILL)" in two_workers.log.read_text()
    assert _gone(victim)
    after = two_workers.metrics()
    assert after[("vae_worker_restarts_total", frozenset({("worker", "0")}))] == 1
    # counters never go backwards: the dead worker's counts stay in the totals
    assert _total(after, "vae_requests_total") == _total(before, "vae_requests_total")
    _call_from_many_connections(two_workers.port, connections=4, per_connection=1)
    assert _total(two_workers.metrics(), "vae_requests_total") == _total(before, "vae_requests_total") + 8


def test_sigterm_drains_in_flight_requests_and_ends_every_process(model_repository: Path, tmp_path: Path) -> None:
    service = _start(model_repository, tmp_path, "--workers", "2", "--port", "0", "--metrics-port", "0",
                     "--shutdown-grace-s", "120")  # fmt: skip
    try:
        processes = _descendants(service.process.pid)
        assert set(service.pids) <= processes
        # 60,000 rows: long enough to be still running when the signal comes (5,000 were not, once every batch size
        # is warmed up at start)
        x = (np.random.default_rng(0).random((60, 1, 28, 28)) > 0.5).astype(np.float32)
        slow = V.ScoreRequest(model="tiny", images=V.Images(tensor=array_to_tensor(x)), importance_samples=1000)
        with _channel(service.port) as channel, ThreadPoolExecutor(1) as pool:
            pending = pool.submit(VaeServiceStub(channel).Score, slow, timeout=150)
            deadline = time.monotonic() + 30
            while _total(service.metrics(), "vae_requests_in_flight", method="Score") < 1 and not pending.done():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert not pending.done(), "the Score ended before the signal: the test proves nothing"
            assert service.stop() == 0, service.log.read_text()
            assert len(pending.result(timeout=150).scores) == len(x)  # the request in flight was finished, not cut
        log = service.log.read_text()
        assert all(f"worker {i} (pid {pid}) stopped" in log for i, pid in enumerate(service.pids)), log
        assert _all_gone(processes), f"left running: {[p for p in processes if not _gone(p)]}"
        assert list(tmp_path.glob("vae-metrics-*")) == []
    finally:
        if service.process.poll() is None:
            service.process.kill()


def test_a_fixed_port_with_metrics_disabled(model_repository: Path, tmp_path: Path) -> None:
    """What the benchmark runs: `--workers 2 --port P --metrics-port -1`. The port is held by a socket of the test's
    own (SO_REUSEPORT, never listening, as the supervisor holds it) so no other program can take it meanwhile."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        service = _start(model_repository, tmp_path, "--workers", "2", "--port", str(port), "--metrics-port", "-1")
        try:
            assert service.port == port and service.metrics_port is None
            _call_from_many_connections(port, connections=4, per_connection=1)
            assert service.stop() == 0, service.log.read_text()
            assert all(_gone(pid) for pid in service.pids)
            assert list(tmp_path.glob("vae-metrics-*")) == []  # no metrics, no multiprocess folder
        finally:
            if service.process.poll() is None:
                service.process.kill()


def test_a_worker_that_cannot_start_stops_the_service_with_its_code(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "service", "--workers", "2", "--model-repository", str(tmp_path),
                             "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "error: no *.vae.json" in result.stderr and "failed to start" in result.stderr


def test_a_port_in_use_is_refused_in_one_line(model_repository: Path) -> None:
    with socket.socket() as taken:  # listening without SO_REUSEPORT: nobody may share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run([sys.executable, "-m", "service", "--workers", "2", "--host", "127.0.0.1", "--port",
                                 str(taken.getsockname()[1]), "--model-repository", str(model_repository)],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("error: cannot reserve 127.0.0.1:"), result.stderr


def test_workers_setting_and_one_worker_is_the_plain_server(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings([], {}).workers == 1
    assert load_settings([], {"VAE_WORKERS": "3"}).workers == 3
    assert load_settings(["--workers", "2"], {"VAE_WORKERS": "3"}).workers == 2
    with pytest.raises(SystemExit):
        load_settings(["--workers", "0"], {})
    one = load_settings([], {})
    assert ("grpc.so_reuseport", 1) not in server_options(one)  # options exactly as before workers existed
    assert ("grpc.so_reuseport", 1) in server_options(load_settings(["--workers", "2"], {}))

    import service.server
    from service import __main__ as service_main

    served = []

    async def serve(settings: object) -> None:
        served.append(settings)

    monkeypatch.setattr(service.server, "serve", serve)
    assert service_main.main(["--port", "0"]) == 0
    assert served == [load_settings(["--port", "0"])]  # this process serves: no supervisor, no worker
