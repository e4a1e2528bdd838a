"""Running the built images the way the manifests run them, for the image and kube-play tests.

`pod_spec()` reads a rendered Deployment's container (args, env with resourceFieldRef resolved, limits, security
context); `run_like_the_manifest()` turns it into `podman run` flags: read-only root, a tmpfs /tmp, the numeric
user, all capabilities dropped, no new privileges, the CPU and memory limits, gRPC and metrics published on
loopback ports the OS picks. `every_rpc()` calls every RPC through the project's typed client.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tools.containers.engine import Engine
from tools.kustomize import render
from vae_client.client import VaeClient

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
READINESS = "vae.v1.VaeService"


@dataclass(frozen=True)
class PodSpec:
    deployment: dict[str, Any]
    args: list[str]
    env: dict[str, str]
    cpus: str
    memory: str
    user: str


def _quantity_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, scale in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * scale
    return int(quantity)


def pod_spec(overlay: str, name: str = "vae-service") -> PodSpec:
    """The service container of `overlay`'s Deployment `name`, as Kubernetes would start it."""
    (deployment,) = [
        d for d in render(OVERLAYS / overlay) if d["kind"] == "Deployment" and d["metadata"]["name"] == name
    ]
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    limits = container["resources"]["limits"]
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:  # resourceFieldRef limits.cpu with divisor 1: the limit rounded up
            ref = item["valueFrom"]["resourceFieldRef"]
            assert ref["resource"] == "limits.cpu" and str(ref.get("divisor", "1")) == "1", ref
            env[item["name"]] = str(-(-_millicpu(limits["cpu"]) // 1000))
    security = container["securityContext"]
    user = f"{security['runAsUser']}:{deployment['spec']['template']['spec']['securityContext']['runAsGroup']}"
    return PodSpec(deployment, list(container.get("args", [])), env, str(_millicpu(limits["cpu"]) / 1000),
                   str(_quantity_bytes(limits["memory"])), user)  # fmt: skip


def _millicpu(quantity: str | int) -> int:
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


@dataclass
class Container:
    engine: Engine
    id: str
    started: float = field(default_factory=time.monotonic)

    def port(self, container_port: int) -> int:
        mapping = self.engine("port", self.id, f"{container_port}/tcp").stdout.strip().splitlines()[0]
        return int(mapping.rsplit(":", 1)[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port(50051)}"

    def logs(self) -> str:
        result = self.engine("logs", self.id, check=False)
        return result.stdout + result.stderr

    def exec(self, *command: str, timeout: float = 60) -> tuple[int, str]:
        result = self.engine("exec", self.id, *command, check=False, timeout=timeout)
        return result.returncode, result.stdout + result.stderr

    def state(self) -> dict[str, Any]:
        return dict(self.engine.inspect(self.id, "container")["State"])

    def remove(self) -> None:
        self.engine("rm", "--force", "--time", "0", self.id, check=False)


def health(address: str, name: str = READINESS, timeout: float = 2.0) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_until(address: str, status: str, timeout_s: float, container: Container | None = None) -> float:
    """Seconds until `address` reports `status` for the readiness name; fails with the container's log."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout_s:
        try:
            last = health(address)
            if last == status:
                return time.monotonic() - started
        except grpc.RpcError as exc:
            last = exc.code().name
        if container is not None and not container.state().get("Running", False):
            break
        time.sleep(0.2)
    log = container.logs()[-4000:] if container is not None else ""
    raise AssertionError(f"{address} not {status} after {time.monotonic() - started:.0f} s (last: {last})\n{log}")


def run_like_the_manifest(
    engine: Engine, image: str, spec: PodSpec, env: dict[str, str] | None = None, extra: list[str] | None = None
) -> Container:
    flags = ["run", "--detach", "--read-only", "--tmpfs", "/tmp:rw,size=256m", "--user", spec.user,
             "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--cpus", spec.cpus, "--memory", spec.memory,
             "--publish", "127.0.0.1::50051", "--publish", "127.0.0.1::8000", *(extra or [])]  # fmt: skip
    for key, value in {**spec.env, **(env or {})}.items():
        flags += ["--env", f"{key}={value}"]
    container_id = engine(*flags, image, *spec.args).stdout.strip().splitlines()[-1]
    return Container(engine, container_id)


def every_rpc(address: str) -> dict[str, int]:
    """Each RPC of vae.v1.VaeService once, through the typed client, on the default model: items answered per RPC."""
    with VaeClient(address, timeout_s=60) as client:
        models = client.list_models()
        info = client.info()
        shape = tuple(info.image_shape)
        sample = client.sample(4, seed=1)
        assert sample.images.shape == (4, *shape) and sample.latents.shape == (4, info.latent_dim)
        chunks = list(client.sample_stream(6, chunk_size=4, seed=2))
        posterior = client.encode(sample.images, seed=3)
        decoded = client.decode(posterior.mean)
        reconstructed = client.reconstruct(sample.images, seed=4)
        row = client.interpolate(sample.images[0], sample.images[1], steps=5, seed=5)
        assert "thickness" in info.attribute_names
        moved = client.arithmetic([(1.0, sample.latents[0]), (1.5, "thickness")], seed=6)
        scores = client.score(sample.images, samples=8, seed=7)
    assert decoded.shape == (4, *shape) and np.isfinite(decoded).all()
    assert all(np.isfinite(s.log_likelihood) and s.log_likelihood < 0 for s in scores)
    return {"ListModels": len(models), "GetModelInfo": 1, "Sample": len(sample.images),
            "SampleStream": sum(len(c.images) for c in chunks), "Encode": len(posterior.mean), "Decode": len(decoded),
            "Reconstruct": len(reconstructed.images), "Interpolate": len(row.images), "Arithmetic": len(moved.images),
            "Score": len(scores)}  # fmt: skip


class TcpForwarder:
    """Listens on (host, port) and relays each connection to `target`: a Kubernetes Service's port in front of a
    test server, so a manifest's address (e.g. `triton:8001`) is used as written."""

    def __init__(self, host: str, port: int, target: tuple[str, int]) -> None:
        self._listener = socket.create_server((host, port), reuse_port=False)
        self._target = target
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target)
            except OSError:  # the server behind is down: refuse this connection, as a Service without endpoints
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
