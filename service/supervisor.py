"""`--workers N`: N server processes share the gRPC port, so serving uses more than one core (one Python process is
bound by the GIL near the gRPC transport limit). This process, the supervisor, serves no RPC and never imports
torch or the server:

- it reserves the port (`reserve_port`), so port 0 becomes one real port that every worker binds too;
- it starts the workers with multiprocessing's "spawn" context: each is a fresh interpreter, nothing of this
  process is forked into it (fork after torch or gRPC threads exist is unsafe), and it logs the port once all serve;
- it serves the one /metrics (service/worker_metrics.py) from a fresh PROMETHEUS_MULTIPROC_DIR it made before any
  worker started, and removes afterwards;
- a worker that exits unexpectedly is logged and restarted, at once the first time, then after a backoff that
  doubles (1 s to 30 s) while it keeps dying within 30 s; the others keep serving meanwhile. A worker that fails
  during the first start (a bad repository or setting) stops everything with its exit code instead: restarting
  cannot fix configuration;
- SIGTERM or SIGINT is forwarded (as SIGTERM) to every worker; each drains within shutdown_grace_s; this process
  exits 0 once all have exited cleanly (1 if one did not, after SIGKILL for any still there past the grace);
- SIGHUP is forwarded to every worker: each re-reads the repository, the operators' record and the TLS and token
  files (service/registry/triggers.py). An admin call reaches one worker, which records its change in the folder
  this process made (VAE_CONTROL_DIR) and sends this process SIGHUP (VAE_SUPERVISOR_PID): so every worker applies
  every change.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, start_http_server
from prometheus_client.multiprocess import mark_process_dead

from service.config import Settings
from service.registry.control import CONTROL_DIR_ENV, SUPERVISOR_PID_ENV
from service.worker_metrics import WorkersCollector, WorkerView
from service.workers import HELD_AT_START, STOP_SIGNALS, Ready, run_worker, worker_settings

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FIRST_BACKOFF_S, MAX_BACKOFF_S, STABLE_S = 1.0, 30.0, 30.0
STOP_MARGIN_S = 30.0  # past the grace: time for a worker to finish loading (a stop may come mid-start) and exit
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT that never listens. It holds the port (port 0: the one the kernel
    picked) while workers come and go, and, not listening, it is never handed a connection. For a wildcard host it
    is the dual-stack IPv6 socket gRPC itself binds then, so the port is free on both families."""
    candidates: list[tuple[Any, ...]] = []
    if host in _WILDCARDS and socket.has_ipv6:
        candidates.append((socket.AF_INET6, socket.SOCK_STREAM, 0, "", ("::", port)))
    lookup = "0.0.0.0" if host in _WILDCARDS else host.strip("[]")
    candidates += socket.getaddrinfo(lookup, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    error: OSError | None = None
    for family, kind, proto, _, address in candidates:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise OSError(f"cannot reserve {host}:{port}: {error}")


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    ready_pipe: Connection
    started: float
    ready: Ready | None = None


class Supervisor:
    """Starts, watches, restarts and stops the workers; `run` returns the exit code."""

    def __init__(self, settings: Settings, port: int, metrics_dir: str | None, http_port: int = -1) -> None:
        self.settings = settings
        self.port = port
        self._metrics_dir = metrics_dir
        self._child_settings = worker_settings(settings, port, http_port)
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._restart_at: dict[int, float] = {}
        self._backoff = dict.fromkeys(range(settings.workers), 0.0)
        self._restarts = dict.fromkeys(range(settings.workers), 0)
        self._serving = False  # all workers served once: from then on a death means restart, not a bad start
        self._stopping = False
        self._stop_deadline: float | None = None  # past it, workers still running are killed
        self._exit_code = 0

    def views(self) -> list[WorkerView]:
        """The live workers, for /metrics (called from the metrics server's threads: a snapshot)."""
        workers = list(self._workers.values())
        return [WorkerView(w.index, w.process.pid or 0, w.ready.metrics_port if w.ready else None,
                           self._restarts[w.index]) for w in workers]  # fmt: skip

    def run(self, metrics_port: int | None) -> int:
        wakeup, wakeup_writer = socket.socketpair()
        wakeup_writer.setblocking(False)
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (*STOP_SIGNALS, signal.SIGHUP)}
        signal.set_wakeup_fd(wakeup_writer.fileno())  # each signal's number lands on `wakeup`, waking `wait`
        try:
            for index in range(self.settings.workers):
                self._spawn(index)
            while self._workers or self._restart_at:
                self._step(wakeup, metrics_port)
        finally:
            signal.set_wakeup_fd(-1)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wakeup.close()
            wakeup_writer.close()
        return self._exit_code

    def _step(self, wakeup: socket.socket, metrics_port: int | None) -> None:
        waiting_for: list[Connection | socket.socket | int] = [wakeup]
        waiting_for += [w.process.sentinel for w in self._workers.values()]
        waiting_for += [w.ready_pipe for w in self._workers.values() if w.ready is None]
        woke = wait(waiting_for, self._timeout())
        if wakeup in woke:
            received = [signal.Signals(number) for number in wakeup.recv(64)]
            if any(sig in STOP_SIGNALS for sig in received):
                self._stop(f"received {next(s for s in received if s in STOP_SIGNALS).name}")
            elif signal.SIGHUP in received:
                self._forward_sighup()
        for worker in list(self._workers.values()):
            if worker.ready is None and worker.ready_pipe in woke:
                with contextlib.suppress(EOFError):  # it died before serving: its sentinel says so
                    self._ready(worker, worker.ready_pipe.recv(), metrics_port)
            if worker.process.sentinel in woke:
                self._exited(worker)
        now = time.monotonic()
        for index, due in list(self._restart_at.items()):
            if due <= now:
                del self._restart_at[index]
                self._spawn(index)
        if self._stop_deadline is not None and now >= self._stop_deadline:
            for worker in self._workers.values():
                log.error("worker %d (pid %s) still running past the grace: killing it", worker.index,
                          worker.process.pid)  # fmt: skip
                worker.process.kill()
            self._exit_code = self._exit_code or 1
            self._stop_deadline = None

    def _timeout(self) -> float | None:
        deadlines = [*self._restart_at.values(), *([self._stop_deadline] if self._stop_deadline else [])]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _spawn(self, index: int) -> None:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(target=run_worker, args=(self._child_settings, index, send),
                                        name=f"vae-worker-{index}")  # fmt: skip
        # started with the stop signals blocked (the mask survives exec): see service/workers.py
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_AT_START)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        send.close()
        self._workers[index] = _Worker(index, process, receive, time.monotonic())

    def _ready(self, worker: _Worker, ready: Ready, metrics_port: int | None) -> None:
        worker.ready = ready
        if self._stopping:
            return
        if self._serving:
            log.info("worker %d serving again (pid %d)", worker.index, ready.pid)
        elif all(w.ready for w in self._workers.values()) and len(self._workers) == self.settings.workers:
            self._serving = True
            pids = ", ".join(str(w.process.pid) for w in self._workers.values())
            log.info("serving on port %d with %d workers (pids %s; metrics port %s)", self.port,
                     self.settings.workers, pids, metrics_port)  # fmt: skip

    def _exited(self, worker: _Worker) -> None:
        del self._workers[worker.index]
        worker.ready_pipe.close()
        worker.process.join()  # reaps it: no zombie
        code, pid = worker.process.exitcode, worker.process.pid
        if self._metrics_dir and pid:
            mark_process_dead(pid, self._metrics_dir)  # drops its "live" gauge files; its counts stay in the totals
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        if self._stopping:
            if code != 0:
                log.error("worker %d (pid %s) ended with %s while stopping", worker.index, pid, how)
                self._exit_code = self._exit_code or 1
            else:
                log.info("worker %d (pid %s) stopped", worker.index, pid)
            return
        if not self._serving:
            log.error("worker %d (pid %s) failed to start (%s): stopping", worker.index, pid, how)
            self._exit_code = 2 if code == 2 else 1
            self._stop("a worker failed to start")
            return
        lived = time.monotonic() - worker.started
        delay = 0.0 if lived >= STABLE_S else self._backoff[worker.index]
        self._backoff[worker.index] = min(MAX_BACKOFF_S, max(FIRST_BACKOFF_S, 2 * delay))
        self._restarts[worker.index] += 1
        self._restart_at[worker.index] = time.monotonic() + delay
        log.error("worker %d (pid %s) exited unexpectedly (%s); restarting it in %.0f s", worker.index, pid, how, delay)

    def _forward_sighup(self) -> None:
        """Every worker that serves reloads; one still starting reloads once it serves (service/workers.py)."""
        if self._stopping:
            return
        for worker in self._workers.values():
            if worker.ready is not None and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGHUP)
        log.info("SIGHUP: asked %d workers to reload", sum(1 for w in self._workers.values() if w.ready))

    def _stop(self, why: str) -> None:
        if self._stopping:
            log.info("%s: already stopping", why)
            return
        self._stopping = True
        log.info("%s: stopping %d workers (grace %.1fs)", why, len(self._workers), self.settings.shutdown_grace_s)
        self._restart_at.clear()
        self._stop_deadline = time.monotonic() + self.settings.shutdown_grace_s + STOP_MARGIN_S
        for worker in self._workers.values():
            if worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)


def supervise(settings: Settings) -> int:
    """`python -m service --workers N` (N > 1): reserve the port, serve /metrics, run the workers; the exit code."""
    try:
        reservation = reserve_port(settings.host, settings.port)
        http_host = settings.http_host or settings.host
        http_reservation = reserve_port(http_host, settings.http_port) if settings.http_port >= 0 else None
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics_dir = tempfile.mkdtemp(prefix="vae-metrics-") if settings.metrics_port >= 0 else None
    control_dir = tempfile.mkdtemp(prefix="vae-control-")  # the operators' record, shared by the workers
    os.environ[CONTROL_DIR_ENV], os.environ[SUPERVISOR_PID_ENV] = control_dir, str(os.getpid())
    if metrics_dir:  # before any worker starts, hence before any of them imports prometheus_client
        os.environ[MULTIPROC_ENV] = metrics_dir
    else:  # no /metrics: workers keep their metrics in memory, not in a folder someone else set
        os.environ.pop(MULTIPROC_ENV, None)
    http_port = http_reservation.getsockname()[1] if http_reservation is not None else -1
    supervisor = Supervisor(settings, reservation.getsockname()[1], metrics_dir, http_port)
    metrics_http = None
    try:
        if metrics_dir:
            registry = CollectorRegistry()
            registry.register(WorkersCollector(metrics_dir, supervisor.views))
            PlatformCollector(registry=registry)
            try:
                metrics_http, _ = start_http_server(settings.metrics_port, settings.metrics_bind_host, registry)
            except OSError as exc:
                print(f"error: metrics port {settings.metrics_port}: {exc}", file=sys.stderr)
                return 2
        return supervisor.run(metrics_http.server_port if metrics_http else None)
    finally:
        if metrics_http is not None:
            metrics_http.shutdown()
            metrics_http.server_close()
        reservation.close()
        if http_reservation is not None:
            http_reservation.close()
        if metrics_dir:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
        for name in (CONTROL_DIR_ENV, SUPERVISOR_PID_ENV):
            os.environ.pop(name, None)
        shutil.rmtree(control_dir, ignore_errors=True)
