"""Event-loop lag: how late the server's event loop runs a timer, exported as `vae_event_loop_lag_seconds`.

Every RPC, health check and batch hand-off of the server runs on one asyncio loop; anything that computes on
that thread (instead of in an executor), or holds the GIL in any thread, delays all of them. A task sleeps a fixed
interval, over and over, and records how much later than asked it woke up. On an idle, healthy loop that is the
timer's own slack (about a millisecond); a request that holds the loop for 2 s shows up as one observation of
about 2 s. A stall shorter than the interval may be seen only in part (by up to the interval), so the interval is
short. The cost is one timer and one histogram observation per interval (20 per second).
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import Histogram

LOOP_LAG_INTERVAL_S = 0.05


class LoopMonitor:
    """Create and `start()` inside the running loop it watches; `stop()` ends it."""

    def __init__(self, lag: Histogram, interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._lag = lag
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self._interval_s
            await asyncio.sleep(self._interval_s)
            self._lag.observe(max(0.0, loop.time() - due))
