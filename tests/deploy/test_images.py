"""The two service images, built (tools/containers, as `make image`) and run on a real container engine the way
the Kubernetes manifests run them: read-only root, a tmpfs /tmp, uid 10001, all capabilities dropped, the pod's
CPU and memory limits and its environment. The CPU image serves every RPC on its baked models; the `-triton`
image, which carries no torch, serves every RPC through a real tritonserver on the host. Also: /metrics,
reflection, the HEALTHCHECK command (healthy, and unhealthy while the backend is down), SIGTERM with requests in
flight. Times (build, start to SERVING) go to the end-of-run summary."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.deploy.conftest import REPORT
from tests.deploy.containers import Container, every_rpc, pod_spec, run_like_the_manifest, wait_until
from tools.containers.engine import Engine
from tools.containers.images import SIZE_LIMITS
from vae_client.client import VaeClient

ROOT = Path(__file__).resolve().parents[2]
START_S = 120  # the manifests' startup probe allows 90 s; a busy 2-core machine gets a little more


def healthcheck(engine: Engine, container: Container) -> tuple[int, str]:
    """The image's own HEALTHCHECK command, run by the engine (`podman healthcheck run`: there is no systemd here
    to run it on its interval): the engine's verdict (0 healthy, 1 unhealthy) and what it printed. (The status it
    records stays `healthy` during the image's 30 s start period, whatever the command says: not checked here.)"""
    result = engine("healthcheck", "run", container.id, check=False, timeout=30)
    return result.returncode, (result.stdout + result.stderr).strip()


@contextmanager
def serving_container(engine: Engine, image: str, overlay: str, extra: list[str] | None = None) -> Iterator[Container]:
    """`image` run as `overlay`'s service Deployment runs it, once SERVING (the time it took goes to the report)."""
    container = run_like_the_manifest(engine, image, pod_spec(overlay), extra=extra)
    try:
        seconds = wait_until(container.address, "SERVING", START_S, container)
        REPORT.append(f"{image}: start to SERVING in {seconds:.1f} s ({overlay} overlay's settings)")
        yield container
    finally:
        container.remove()


@pytest.fixture(scope="module")
def cpu_container(engine: Engine, images: dict[str, str]) -> Iterator[Container]:
    with serving_container(engine, images["local"], "cpu") as container:
        yield container


@pytest.fixture(scope="module")
def triton_container(engine: Engine, images: dict[str, str], triton_service_port: str) -> Iterator[Container]:
    """The gpu overlay's service container: VAE_TRITON_URL=triton:8001 as written, `triton` resolving to the
    forwarder in front of the test tritonserver (a real one, serving the shipped models)."""
    assert pod_spec("gpu").env["VAE_TRITON_URL"] == "triton:8001"
    with serving_container(engine, images["triton"], "gpu", ["--add-host", f"triton:{triton_service_port}"]) as c:
        yield c


def test_images_carry_what_they_should_and_fit_their_size_limits(engine: Engine, images: dict[str, str]) -> None:
    probe = ("import importlib.util as u; print(' '.join(m for m in ('torch', 'tritonclient', 'grpc', 'training', "
             "'pip', 'matplotlib', 'pytest', 'nvidia_pytriton') if u.find_spec(m)))")  # fmt: skip
    found = {}
    for target, image in images.items():
        result = engine("run", "--rm", "--read-only", "--entrypoint", "python", image, "-c", probe)
        found[target] = set(result.stdout.split())
    assert found["local"] == {"torch", "tritonclient", "grpc"}, found
    assert found["triton"] == {"tritonclient", "grpc"}, found
    for target, image in images.items():
        config = engine.inspect(image)["Config"]
        assert config["User"] == "10001:10001" and config["Entrypoint"] == ["python", "-m", "service"]
        assert engine.inspect(image)["Size"] <= SIZE_LIMITS[target], f"{image} is over {SIZE_LIMITS[target]} bytes"
    assert "VAE_BACKEND=triton" in engine.inspect(images["triton"])["Config"]["Env"]


def test_triton_image_refuses_the_local_backend_in_one_clear_line(engine: Engine, images: dict[str, str]) -> None:
    result = engine("run", "--rm", "--read-only", "--tmpfs", "/tmp", "--env", "VAE_BACKEND=local", images["triton"],
                    check=False, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--backend local runs the networks in this process with PyTorch" in result.stderr
    assert "Traceback" not in result.stderr


def test_cpu_image_runs_locked_down_and_serves_every_rpc(engine: Engine, cpu_container: Container) -> None:
    answered = every_rpc(cpu_container.address)
    assert answered["ListModels"] == len(list((ROOT / "deploy" / "model_repository").glob("*.vae.json")))
    assert answered["SampleStream"] == 6 and answered["Interpolate"] == 5
    assert cpu_container.exec("id", "-u") == (0, "10001\n")
    code, out = cpu_container.exec("touch", "/opt/x")
    assert code != 0 and "Read-only file system" in out
    assert cpu_container.exec("touch", "/tmp/x")[0] == 0
    code, out = cpu_container.exec("grep", "CapEff", "/proc/1/status")
    assert code == 0 and out.split()[1] == "0000000000000000", out
    assert cpu_container.exec("printenv", "VAE_TORCH_THREADS") == (0, "2\n")  # the pod's CPU limit, resolved


def test_cpu_image_metrics_and_reflection(cpu_container: Container) -> None:
    every_rpc(cpu_container.address)
    with urllib.request.urlopen(f"http://127.0.0.1:{cpu_container.port(8000)}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    # The series exist at zero from the start: what counts is that the calls above were counted.
    counted = re.search(r'^vae_requests_total\{(?=[^}]*method="Sample")(?=[^}]*code="OK")[^}]*\} (\S+)$', metrics, re.M)
    assert counted and float(counted.group(1)) >= 1, counted
    with grpc.insecure_channel(cpu_container.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"vae.v1.VaeService", "grpc.health.v1.Health"} <= services


def test_triton_image_serves_every_rpc_through_a_real_tritonserver(triton_container: Container) -> None:
    answered = every_rpc(triton_container.address)
    assert answered["Score"] == 4 and answered["Decode"] == 4
    assert "backend triton" in triton_container.logs()


def test_healthcheck_is_healthy_then_unhealthy_while_triton_is_down(
    engine: Engine, triton_container: Container, shipped_triton: object
) -> None:
    from training.triton_local import TritonServer

    assert isinstance(shipped_triton, TritonServer)
    assert healthcheck(engine, triton_container)[0] == 0
    shipped_triton.stop()
    try:
        wait_until(triton_container.address, "NOT_SERVING", 30, triton_container)
        code, out = healthcheck(engine, triton_container)
        assert code == 1 and "unhealthy" in out, (code, out)
    finally:
        shipped_triton.start(timeout_s=300)
    wait_until(triton_container.address, "SERVING", 60, triton_container)
    assert healthcheck(engine, triton_container)[0] == 0


def test_sigterm_with_requests_in_flight_answers_every_one_and_exits_0(engine: Engine, images: dict[str, str]) -> None:
    """SIGTERM (what the kubelet and `docker stop` send) while 8 slow Scores run: all 8 answered OK, exit 0,
    within the manifests' grace (VAE_SHUTDOWN_GRACE_S=20)."""
    spec = pod_spec("cpu")
    container = run_like_the_manifest(engine, images["local"], spec)
    try:
        wait_until(container.address, "SERVING", START_S, container)
        with VaeClient(container.address, timeout_s=120) as client, ThreadPoolExecutor(8) as pool:
            images_in = client.sample(4, seed=1).images
            pending = [pool.submit(client.score, images_in, 400, seed) for seed in range(8)]
            time.sleep(0.5)  # let them reach the server; the test is about what happens to calls in flight
            engine("kill", "--signal", "TERM", container.id)
            signalled = time.monotonic()
            replies = [p.result(timeout=120) for p in pending]
        engine("wait", container.id, timeout=60)
        stopped = time.monotonic() - signalled
        state = container.state()
    finally:
        logs = container.logs()
        container.remove()
    assert all(len(r) == 4 for r in replies)
    assert state["ExitCode"] == 0, logs[-3000:]
    assert stopped < float(spec.env["VAE_SHUTDOWN_GRACE_S"]), stopped
    assert "shutting down" in logs
    REPORT.append(f"{images['local']}: SIGTERM with 8 Scores in flight: all answered, exit 0 in {stopped:.1f} s")
