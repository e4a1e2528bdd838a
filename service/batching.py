"""One small dynamic batcher: concurrent requests for the same model and operation are merged into one
backend call of at most `max_batch_size` rows.

One batch runs at a time; whatever arrives while it runs forms the next batch. So a request that finds the
backend idle is dispatched at once, and batches grow with the load by themselves, without a timer (as Triton's
and vLLM's schedulers do). `max_wait_s` > 0 also holds the first request of a batch that long for company
(off by default: on an idle backend it only adds latency; measured in BENCHMARKS.md).

Guarantees (each has a test): every submitted request gets exactly one answer; a request cancelled or past its
deadline is dropped before its batch runs, and one whose deadline passes while its batch runs gets
DEADLINE_EXCEEDED at its deadline; the backend's result row count is checked; when a merged batch fails, its
requests are retried one by one so a failing item fails only its own request (not when the backend is
unavailable or the deadline passed: those fail the batch at once); the queue is bounded and a full queue refuses
at once (RESOURCE_EXHAUSTED) instead of growing without limit. While a backend call runs, `call_deadline` holds
the latest deadline of its requests, so a backend can bound its call by it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np

from vae_client.errors import Cancelled, DeadlineExceeded, QueueFull, ServiceError, Unavailable

BatchFunction = Callable[[np.ndarray], Awaitable[tuple[np.ndarray, ...]]]

# During a backend call (in the worker's context): the latest deadline, monotonic seconds, of the requests it
# serves, or None if one of them has none. Past it nobody waits for the answer, so a backend may stop there.
call_deadline: ContextVar[float | None] = ContextVar("call_deadline", default=None)


@dataclass
class BatchObserver:
    """Hooks for metrics; the default does nothing, so the batcher needs no metrics to be tested."""

    def queue_depth(self, depth: int) -> None: ...
    def batch(self, rows: int, requests: int) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...


@dataclass
class _Entry:
    rows: np.ndarray
    future: asyncio.Future[tuple[np.ndarray, ...]]
    deadline: float | None  # monotonic seconds
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Create inside the running event loop; `start()` launches the worker, `close()` ends it."""

    def __init__(
        self,
        run: BatchFunction,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_s >= 0")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue(maxsize=max_queue)
        self._carry: _Entry | None = None
        self._observer = observer or BatchObserver()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        for entry in self._drain():
            _resolve(entry, error=Unavailable("the server is shutting down"))

    def admit(self) -> None:
        """Admission control for a new request: refuse at once when the queue is full."""
        if self._queue.full():
            raise QueueFull(f"request queue is full ({self._queue.maxsize} waiting); retry later")

    async def submit(
        self, rows: np.ndarray, deadline: float | None = None, wait_for_room: bool = False
    ) -> tuple[np.ndarray, ...]:
        """Run `rows` (at most max_batch_size of them) in some batch; returns this request's result rows.

        A full queue refuses the rows (QueueFull), unless `wait_for_room`: the later chunks of an admitted
        request wait for room instead, so a large request is never refused halfway through. The deadline is a
        timer on the loop that fails the future (no task per request); a caller cancelled while waiting
        cancels the future, and the worker skips it.
        """
        if not 1 <= len(rows) <= self.max_batch_size:
            raise ValueError(f"submit between 1 and {self.max_batch_size} rows, got {len(rows)}")
        if self._worker is None:
            raise Unavailable("batcher is not running")
        loop = asyncio.get_running_loop()
        entry = _Entry(rows, loop.create_future(), deadline)
        if wait_for_room:
            await self._queue.put(entry)
            entry.enqueued = time.monotonic()
        else:
            self.admit()
            self._queue.put_nowait(entry)
        self._observer.queue_depth(self._queue.qsize())
        if deadline is None:
            return await entry.future
        timer = loop.call_later(max(deadline - time.monotonic(), 0.0), _expire, entry.future)
        try:
            return await entry.future
        finally:
            timer.cancel()

    # --- worker ------------------------------------------------------------------------------------

    def _drain(self) -> list[_Entry]:
        entries = [self._carry] if self._carry is not None else []
        self._carry = None
        while not self._queue.empty():
            entries.append(self._queue.get_nowait())
        return entries

    async def _next_batch(self) -> list[_Entry]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, count = [first], len(first.rows)
        # Measured from the first item's arrival, so time it already spent queued counts against the wait.
        closes_at = first.enqueued + self.max_wait_s
        while count < self.max_batch_size:
            remaining = closes_at - time.monotonic()
            try:
                entry = (
                    self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
                )
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if count + len(entry.rows) > self.max_batch_size:
                self._carry = entry  # first of the next batch: order is kept
                break
            batch.append(entry)
            count += len(entry.rows)
        self._observer.queue_depth(self._queue.qsize())
        return batch

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            now = time.monotonic()
            live = []
            for entry in batch:
                if entry.future.done():  # cancelled by its caller
                    continue
                if entry.deadline is not None and now >= entry.deadline:
                    _resolve(entry, error=DeadlineExceeded("deadline passed while queued"))
                    continue
                self._observer.queue_wait(now - entry.enqueued)
                live.append(entry)
            if live:
                try:
                    await self._execute(live)
                except asyncio.CancelledError:  # closing mid-batch: nobody is left waiting forever
                    for entry in live:
                        _resolve(entry, error=Unavailable("the server is shutting down"))
                    raise

    async def _execute(self, entries: list[_Entry]) -> None:
        self._observer.batch(sum(len(e.rows) for e in entries), len(entries))
        deadlines = [e.deadline for e in entries]
        latest = None if None in deadlines else max(d for d in deadlines if d is not None)
        try:
            results = await self._call(np.concatenate([e.rows for e in entries]), latest)
        except Exception as exc:
            if len(entries) == 1 or isinstance(exc, Unavailable | DeadlineExceeded):
                for entry in entries:
                    _resolve(entry, error=exc)
                return
            for entry in entries:  # isolate the failing item: each request alone
                if entry.future.done():
                    continue
                try:
                    _resolve(entry, await self._call(entry.rows, entry.deadline))
                except Exception as single:
                    _resolve(entry, error=single)
            return
        offset = 0
        for entry in entries:
            n = len(entry.rows)
            _resolve(entry, tuple(r[offset : offset + n] for r in results))
            offset += n

    async def _call(self, rows: np.ndarray, deadline: float | None) -> tuple[np.ndarray, ...]:
        token = call_deadline.set(deadline)
        try:
            results = await self._run(rows)
        finally:
            call_deadline.reset(token)
        if any(len(r) != len(rows) for r in results):
            raise ServiceError(f"backend returned {[len(r) for r in results]} rows for a batch of {len(rows)}")
        return results


def _expire(future: asyncio.Future[tuple[np.ndarray, ...]]) -> None:
    """A request's deadline passed: queued, the worker will skip it; running, its batch-mates carry on."""
    if not future.done():
        future.set_exception(DeadlineExceeded("deadline passed while waiting for the backend"))


def _resolve(entry: _Entry, result: tuple[np.ndarray, ...] | None = None, error: BaseException | None = None) -> None:
    """Set the future exactly once; a future already cancelled by its caller is left alone."""
    if entry.future.done():
        return
    if error is not None:
        entry.future.set_exception(error if not isinstance(error, asyncio.CancelledError) else Cancelled("cancelled"))
    else:
        entry.future.set_result(result)  # type: ignore[arg-type]
