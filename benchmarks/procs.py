"""Processes of a benchmark run: each server and each load generator is a process of its own, so none of them
steals the others' event loop or GIL. Here: free ports, start (and wait for gRPC health), stop, memory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SERVING = health_pb2.HealthCheckResponse.SERVING


class StartError(RuntimeError):
    """A server that exited or never became SERVING; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])


def launch(name: str, argv: list[str], port: int, log_dir: Path, env: dict[str, str] | None = None) -> Server:
    """Start `argv` in a session of its own (stop() then ends its children too), output to a log file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return Server(name, process, port, log)


def wait_serving(server: Server, service: str, timeout_s: float = 90.0) -> None:
    """Poll gRPC health for `service` until SERVING; a process that exits first is a StartError with its log."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise StartError(
                    f"{server.name} exited at start-up (rc {server.process.returncode}):\n{server.log_tail()}"
                )
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    stop(server)
    raise StartError(f"{server.name} not SERVING after {timeout_s:.0f} s:\n{server.log_tail()}")


def stop(server: Server, timeout_s: float = 20.0) -> None:
    """SIGTERM to the server's whole process group (workers included), SIGKILL if it outstays `timeout_s`."""
    if server.process.poll() is not None:
        return
    _signal_group(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(server.process.pid, signal.SIGKILL)
        server.process.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a service with --workers N forks N server processes)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                queue += [int(child) for child in task.read_text().split()]
            except OSError:
                continue
    return found


def memory_kb(pid: int, field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (peak) from /proc/<pid>/status, summed over the process tree, in kB."""
    total = 0
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith(f"{field}:"))
    return total
