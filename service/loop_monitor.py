"""What stalls the event loop, measured: its lag (`vae_event_loop_lag_seconds`) and the garbage collector's
pauses (`vae_gc_pause_seconds{generation}`).

Every RPC, health check and batch hand-off of the server runs on one asyncio loop; anything that computes on
that thread (instead of in an executor), or holds the GIL in any thread, delays all of them. A task sleeps a fixed
interval, over and over, and records how much later than asked it woke up. On an idle, healthy loop that is the
timer's own slack (about a millisecond); a request that holds the loop for 2 s shows up as one observation of
about 2 s. A stall shorter than the interval may be seen only in part (by up to the interval), so the interval is
short. The cost is one timer and one histogram observation per interval (20 per second).

Python's cyclic garbage collector stops the whole interpreter while it runs: one of the causes of lag, timed
directly through `gc.callbacks`. A young collection takes well under a millisecond; a full one (generation 2)
traverses every tracked object, and with the ~190,000 objects of start-up it took 90-114 ms, about three times
per 10 s at 64 requests in flight (BENCHMARKS.md); `--gc-freeze` (service/server.py) takes those objects out of
its reach. The callback only appends to a deque (it may run in any thread, inside any code, even code holding a
metrics lock); the loop's task moves the pauses into the histogram every interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import deque
from typing import Any

from prometheus_client import Histogram

LOOP_LAG_INTERVAL_S = 0.05
GC_GENERATIONS = ("0", "1", "2")


class LoopMonitor:
    """Create and `start()` inside the running loop it watches; `stop()` ends it."""

    def __init__(
        self, lag: Histogram, gc_pauses: Histogram | None = None, interval_s: float = LOOP_LAG_INTERVAL_S
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._lag = lag
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._gc_pauses = [gc_pauses.labels(g) for g in GC_GENERATIONS] if gc_pauses is not None else []
        self._gc_done: deque[tuple[int, float]] = deque(maxlen=100_000)
        self._gc_started = 0.0

    def start(self) -> None:
        if self._task is None:
            if self._gc_pauses:
                gc.callbacks.append(self._on_gc)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            if self._on_gc in gc.callbacks:
                gc.callbacks.remove(self._on_gc)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self.flush_gc()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """gc's callback. Collections never overlap (they hold the GIL), so one start time is enough."""
        now = time.perf_counter()
        if phase == "start":
            self._gc_started = now
        else:
            self._gc_done.append((int(info["generation"]), now - self._gc_started))

    def flush_gc(self) -> None:
        """Pauses seen since the last flush, into the histogram."""
        while self._gc_done:
            generation, seconds = self._gc_done.popleft()
            self._gc_pauses[generation].observe(seconds)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self._interval_s
            await asyncio.sleep(self._interval_s)
            self._lag.observe(max(0.0, loop.time() - due))
            self.flush_gc()
