"""One worker of `--workers N`: the ordinary server (service/server.py) in a process the supervisor spawned.

It binds the port the supervisor reserved (SO_REUSEPORT: the kernel spreads new connections over the workers),
exposes its own registry on a loopback port for the supervisor's /metrics, and drains gracefully on SIGTERM.
The supervisor starts it with SIGTERM, SIGINT and SIGHUP blocked, so a stop (or a reload) that arrives while torch
and the models load waits until the event loop can handle it instead of killing the process half-started. SIGINT
is ignored: a terminal's Ctrl-C reaches the whole process group, and the supervisor alone decides (it forwards
SIGTERM).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection

from service.config import Settings
from vaecore.repository import RepositoryError

log = logging.getLogger(__name__)
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
HELD_AT_START = STOP_SIGNALS | {signal.SIGHUP}  # blocked while a worker starts (SIGHUP's default action would kill it)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Ready:
    """What a worker tells the supervisor once it serves."""

    index: int
    pid: int
    port: int
    metrics_port: int | None  # its loopback registry endpoint (None: metrics disabled)


def worker_settings(settings: Settings, port: int, http_port: int = -1) -> Settings:
    """The supervisor's settings as one worker needs them: the reserved port; its registry on a loopback port of its
    own (the supervisor serves the public /metrics); the reserved HTTP port (SO_REUSEPORT too; -1: none); torch's
    default thread count (0) shared out among the workers, since N workers each using every core would fight over
    them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = settings.torch_threads or max(1, cores // settings.workers)
    metrics_port = 0 if settings.metrics_port >= 0 else -1
    return replace(settings, port=port, metrics_host="127.0.0.1", metrics_port=metrics_port, torch_threads=threads,
                   http_port=http_port)  # fmt: skip


def run_worker(settings: Settings, index: int, ready: Connection) -> None:
    """The spawned process's entry point: serve until SIGTERM; exit 2 on a bad repository or setting, as
    `python -m service` does."""
    _die_with_parent()
    logging.basicConfig(
        level=settings.log_level, format=f"%(asctime)s %(levelname)s worker {index} %(name)s: %(message)s"
    )
    try:
        asyncio.run(_serve(settings, index, ready))
    except (RepositoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


async def _serve(settings: Settings, index: int, ready: Connection) -> None:
    from service.server import freeze_start_up_objects, listen_for_sighup, start_server  # the supervisor imports us

    stop, early_sighup = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, early_sighup.set)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_AT_START)  # a SIGTERM or SIGHUP kept while loading: delivered now
    running = await start_server(settings)
    listen_for_sighup(running, early_sighup)
    if not early_sighup.is_set():  # a change another worker made while this one loaded (it read the record early)
        running.registry.reload_soon()
    freeze_start_up_objects(settings)
    ready.send(Ready(index, os.getpid(), running.port, running.metrics_port))
    ready.close()
    await stop.wait()
    log.info("shutting down: finishing in-flight requests (grace %.1fs)", settings.shutdown_grace_s)
    await running.stop(settings.shutdown_grace_s)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies, even by SIGKILL, so no worker outlives it."""
    parent = multiprocessing.parent_process()
    if not sys.platform.startswith("linux") or parent is None:
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent.pid:  # it died before the request took effect
        sys.exit(0)
