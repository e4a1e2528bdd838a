"""The servers a run compares, each started as its own process: the service (local or Triton backend, batching
on or off, N workers), the bare transport server, and a real tritonserver."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from benchmarks.payloads import Payload
from benchmarks.procs import PYTHON, Server, StartError, free_port, launch, wait_serving

if TYPE_CHECKING:
    from training.triton_local import TritonServer

SERVICE_NAME = "vae.v1.VaeService"


@dataclass(frozen=True)
class ServiceConfig:
    """What differs between the service processes of one run."""

    label: str  # row label: service, service-nobatch, service-triton
    repo: Path
    max_batch_size: int = 64
    max_wait_ms: float | None = None  # None: the service's default
    torch_threads: int = 0  # 0: the service's default (cores / workers)
    workers: int = 1
    extra: tuple[str, ...] = ()  # e.g. --backend triton --triton-url ...

    def argv(self, port: int) -> list[str]:
        argv = [
            PYTHON,
            "-m",
            "service",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "-1",
            "--model-repository",
            str(self.repo),
            "--max-batch-size",
            str(self.max_batch_size),
            *self.extra,
        ]
        if self.max_wait_ms is not None:
            argv += ["--max-wait-ms", str(self.max_wait_ms)]
        if self.torch_threads > 0:
            argv += ["--torch-threads", str(self.torch_threads)]
        if self.workers > 1:  # passed only when asked for, so a service without the flag still runs N=1
            argv += ["--workers", str(self.workers)]
        return argv


def launch_service(config: ServiceConfig, log_dir: Path) -> Server:
    """Start the process and return at once: several services start together, then each is waited for."""
    port = free_port()
    return launch(f"{config.label}-w{config.workers}", config.argv(port), port, log_dir)


def wait_service(server: Server, config: ServiceConfig) -> None:
    """Until SERVING; a StartError that says so plainly when this service has no --workers flag."""
    try:
        wait_serving(server, SERVICE_NAME)
    except StartError as exc:
        if "unrecognized arguments: --workers" in str(exc):
            raise StartError(
                f"this service has no --workers flag yet (asked for --workers {config.workers}); {exc}"
            ) from None
        raise


def start_transport(replies: dict[str, Path], processes: int, log_dir: Path) -> Server:
    """The bare server with the captured replies; `processes` of them share the port (SO_REUSEPORT)."""
    port = free_port()
    argv = [PYTHON, "-m", "benchmarks.transport", "--port", str(port), "--processes", str(processes)]
    for path, file in replies.items():
        argv += ["--reply", path, str(file)]
    server = launch(f"transport-w{processes}", argv, port, log_dir)
    wait_serving(server, SERVICE_NAME, timeout_s=30)
    return server


def capture(target: str, payload: Payload) -> bytes:
    """One real reply's bytes (identity deserializer), for the transport server to send back."""
    options = [("grpc.max_receive_message_length", 512 * 1024 * 1024)]
    with grpc.insecure_channel(target, options=options) as channel:
        return bytes(channel.unary_unary(payload.path)(payload.body, timeout=60))


def start_triton(repo: Path, work: Path, max_batch_size: int) -> tuple[TritonServer, Path]:
    """A real tritonserver on the Python-backend variant of `repo` (dynamic batching on, the service's max batch
    size); returns it and that repository, which the service with --backend triton reads its metadata from."""
    from training.export import derive_python_variant  # imports torch: only for runs with Triton
    from training.triton_local import TritonServer, TritonStartError

    python_repo = work / "triton_repository"
    derive_python_variant(repo, python_repo, max_batch_size=max_batch_size)
    (work / "triton").mkdir(parents=True, exist_ok=True)
    try:
        return TritonServer(python_repo.resolve(), work / "triton").start(), python_repo
    except TritonStartError as exc:
        raise StartError(f"tritonserver: {exc}") from None
