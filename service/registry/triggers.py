"""What starts a reload of the registry: SIGHUP, the repository poll (`--repository-poll-s`), the admin service's
Reload, and, with `--workers N`, a change another worker made (the supervisor turns it into a SIGHUP here).

SIGHUP also re-reads the TLS certificate, key and client CA and the token files (service/security.py), so a
certificate manager's rotation needs no restart. Reloads run one at a time (the registry's lock); a SIGHUP that
arrives during one queues one more, never more than one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from service.registry.control import CONTROL_DIR_ENV, CONTROL_FILE
from service.registry.registry import ModelRegistry
from vaecore.repository import metadata_files

log = logging.getLogger(__name__)


class _Counter(Protocol):
    def labels(self, *values: str) -> _Counter: ...

    def inc(self, amount: float = 1) -> None: ...


def repository_signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What the poll compares: each metadata file's name, size and modification time, and the operators' record
    (a version's files are written before its metadata, so the metadata changing is what matters)."""
    paths = list(metadata_files(directory))
    control = os.environ.get(CONTROL_DIR_ENV)
    if control:
        paths.append(Path(control) / CONTROL_FILE)
    signature = []
    for path in paths:
        with contextlib.suppress(OSError):
            stat = path.stat()
            signature.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


class Reloads:
    def __init__(
        self,
        registry: ModelRegistry,
        counter: _Counter,
        poll_s: float = 0.0,
        credentials: Callable[[], object] | None = None,
    ) -> None:
        self.registry = registry
        self._counter = counter
        self._poll_s = poll_s
        self._credentials = credentials  # re-reads TLS and token files (ServerSecurity.reload)
        self._tasks: set[asyncio.Task[object]] = set()
        self._poll: asyncio.Task[None] | None = None
        self._queued = False

    def start(self, signature: tuple[tuple[str, int, int], ...] = ()) -> None:
        """Poll (with --repository-poll-s), comparing with `signature`: the repository as it was just before the
        registry first read it, so a change made while the models loaded is not missed."""
        if self._poll_s > 0:
            self._poll = asyncio.get_running_loop().create_task(self._watch(signature))

    async def run(self, trigger: str, started: Callable[[], None] | None = None) -> list[str]:
        self._counter.labels(trigger).inc()
        return await self.registry.reload(started)

    def on_sighup(self) -> None:
        """The signal handler: credentials now, then one repository reload (at most one queued behind another)."""
        if self._credentials is not None:
            self._credentials()
        if self._queued:
            return
        self._queued = True
        task = asyncio.get_running_loop().create_task(self._sighup())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sighup(self) -> list[str]:
        def started() -> None:  # from here on, a new SIGHUP needs a reload of its own
            self._queued = False

        try:
            return await self.run("sighup", started)
        except Exception:  # a reload must never take the server down
            log.exception("reload on SIGHUP failed")
            return []

    async def _watch(self, last: tuple[tuple[str, int, int], ...]) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            current = await asyncio.to_thread(repository_signature, self.registry.repository)
            if current == last:
                continue
            last = current
            try:
                await self.run("poll")
            except Exception:
                log.exception("repository poll failed")

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._poll] if self._poll else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._poll] if self._poll else []), return_exceptions=True)
