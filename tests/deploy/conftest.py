"""A live monitoring stack for the dashboard tests: the service in-process (local backend, or --backend triton
against a real tritonserver), a real Prometheus scraping it (and Triton) every second, and a little traffic of
every RPC already sent and scraped. And the container images, built for real, with a real tritonserver for the
`-triton` image."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.config import Settings
from service.inprocess import ServerThread, serving
from tests.deploy.containers import ROOT, TcpForwarder
from tools.containers.engine import Engine, EngineUnavailable, find_engine
from tools.containers.images import TARGETS, build, plan, size, tag
from tools.prom import PrometheusApi, PrometheusServer, ScrapeJob, poll
from tools.traffic import Tally, Traffic

if TYPE_CHECKING:
    from training.triton_local import TritonServer

SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class LiveStack:
    backend: str  # local or triton
    server: ServerThread
    prometheus: PrometheusServer
    api: PrometheusApi
    tally: Tally  # what the traffic got back, by method and status code


def _wait_serving(server: ServerThread, timeout_s: float = 60.0) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="vae.v1.VaeService")
        poll(lambda: stub.Check(request, timeout=2).status == SERVING, timeout_s, "the service to be SERVING")


@pytest.fixture(scope="module", params=["local", "triton"])
def live_stack(
    request: pytest.FixtureRequest, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveStack]:
    backend = request.param
    with contextlib.ExitStack() as stack:
        jobs, extra = [], {}
        if backend == "triton":
            from training.export import derive_python_variant
            from training.triton_local import TritonServer

            python_repo = tmp_path_factory.mktemp("python_repository")
            derive_python_variant(model_repository, python_repo, max_batch_size=64)
            triton = TritonServer(python_repo, tmp_path_factory.mktemp("triton")).start()
            stack.callback(triton.stop)
            jobs.append(ScrapeJob("triton", [f"127.0.0.1:{triton.metrics_port}"]))
            extra = {"backend": "triton", "triton_url": triton.grpc_url}
        settings = Settings(host="127.0.0.1", port=0, metrics_port=0, model_repository=model_repository,
                            max_batch_size=16, max_wait_ms=5, torch_threads=1, **extra)  # type: ignore[arg-type]  # fmt: skip
        server = stack.enter_context(serving(settings))
        assert server.running is not None and server.running.metrics_port
        _wait_serving(server)
        jobs.insert(0, ScrapeJob("vae-service", [f"127.0.0.1:{server.running.metrics_port}"]))
        prometheus = stack.enter_context(PrometheusServer(tmp_path_factory.mktemp("prometheus"), jobs, "1s"))
        prometheus.wait_for_targets_up()  # a first scrape before the traffic, so rates see it as an increase
        assert prometheus.api is not None
        traffic = stack.enter_context(Traffic(server.address, images_per_request=4, score_samples=8))
        with ThreadPoolExecutor(3) as pool:  # concurrent rounds, so the batcher merges requests
            list(pool.map(lambda seed: traffic.round(seed, errors=True), range(6)))
        yield LiveStack(backend, server, prometheus, prometheus.api, traffic.tally)


# ---- the images, built for real (tests/deploy/test_images.py, test_kube_play.py) ------------------------------

REPORT: list[str] = []  # lines for the end of the run: build times, sizes, start to SERVING


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.write_sep("-", "container images")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def engine() -> Engine:
    """podman, able to run here. No engine is a failure that says what is missing, never a skip."""
    try:
        return find_engine(install=False)
    except EngineUnavailable as exc:
        pytest.fail(f"the image tests need a container engine: {exc}")


@pytest.fixture(scope="session")
def images(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Both images, built as `make image` builds them (the layer cache makes a rebuild of unchanged layers free)."""
    workdir = tmp_path_factory.mktemp("image-build")
    build_plan = plan(engine, workdir)
    REPORT.append(f"base image: {build_plan.base.describe()}")
    built = {}
    for target in TARGETS:
        seconds = build(engine, build_plan, target, workdir / "build.log", echo=False)
        built[target] = tag(target)
        REPORT.append(f"built {tag(target)} in {seconds:.0f} s: {size(engine, tag(target)) / 1e6:.0f} MB")
    return built


@pytest.fixture(scope="session")
def shipped_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A real tritonserver serving the shipped repository (its Python-backend variant: the libtorch backend is not
    on this machine), the one the `-triton` image's baked models expect."""
    from training.export import derive_python_variant
    from training.triton_local import TritonServer

    python_repo = tmp_path_factory.mktemp("shipped_python_repository")
    derive_python_variant(ROOT / "deploy" / "model_repository", python_repo, max_batch_size=64)
    server = TritonServer(python_repo, tmp_path_factory.mktemp("shipped_triton")).start(timeout_s=300)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def triton_service_port(engine: Engine, images: dict[str, str], shipped_triton: TritonServer) -> Iterator[str]:
    """The Kubernetes `triton` Service as a container sees it: port 8001 on the container network's gateway,
    relayed to the test tritonserver; containers resolve `triton` there (--add-host, or a pod's hostAliases)."""
    # podman creates the bridge, and the gateway's address on the host, with the first container on its network.
    engine("run", "--rm", "--network", "podman", "--entrypoint", "true", images["triton"])
    gateway = bridge_gateway(engine)
    forwarder = TcpForwarder(gateway, 8001, ("127.0.0.1", shipped_triton.grpc_port))
    try:
        yield gateway
    finally:
        forwarder.close()


def bridge_gateway(engine: Engine) -> str:
    """The host's address on podman's default bridge network (where containers reach the host)."""
    network = json.loads(engine("network", "inspect", "podman").stdout)[0]
    return str(network["subnets"][0]["gateway"])
