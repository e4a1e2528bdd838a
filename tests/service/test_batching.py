"""The dynamic batcher under concurrency: exactly-once answers, ordering, failure isolation, max wait,
deadlines, cancellation, a bounded queue and the result-count check. Pure asyncio, no model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batching import DynamicBatcher
from vae_client.errors import DeadlineExceeded, QueueFull, ServiceError


class Recorder:
    """A fake backend call that doubles its rows and records every batch it sees."""

    def __init__(self, gate: asyncio.Event | None = None, poison: float | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.gate, self.poison = gate, poison

    async def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        self.batches.append(rows.copy())
        if self.gate is not None:
            await self.gate.wait()
        if self.poison is not None and (rows == self.poison).any():
            raise ValueError("poisoned row")
        return (rows * 2.0, rows.sum(axis=1))


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def test_every_request_gets_its_own_rows_exactly_once() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = DynamicBatcher(recorder, max_batch_size=16, max_wait_s=0.01, max_queue=1000)
        batcher.start()
        rng = np.random.default_rng(0)
        inputs = [rng.normal(size=(int(rng.integers(1, 9)), 3)).astype(np.float32) for _ in range(200)]
        results = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        await batcher.close()
        for x, (doubled, sums) in zip(inputs, results, strict=True):
            np.testing.assert_array_equal(doubled, x * 2.0)
            np.testing.assert_allclose(sums, x.sum(axis=1))
        seen = np.concatenate(recorder.batches)
        assert len(seen) == sum(len(x) for x in inputs)  # nothing run twice, nothing lost
        np.testing.assert_array_equal(seen, np.concatenate(inputs))  # submission order kept
        assert max(len(b) for b in recorder.batches) <= 16
        assert len(recorder.batches) < len(inputs) / 2  # requests really were merged

    run(scenario())


def test_failing_item_fails_only_its_own_request() -> None:
    async def scenario() -> None:
        recorder = Recorder(poison=-1.0)
        batcher = DynamicBatcher(recorder, max_batch_size=64, max_wait_s=0.05, max_queue=100)
        batcher.start()
        inputs = [np.full((2, 3), float(i), np.float32) for i in range(6)]
        inputs[3][1, 2] = -1.0
        results = await asyncio.gather(*(batcher.submit(x) for x in inputs), return_exceptions=True)
        await batcher.close()
        assert isinstance(results[3], ValueError)
        for i, result in enumerate(results):
            if i != 3:
                assert not isinstance(result, BaseException)
                np.testing.assert_array_equal(result[0], inputs[i] * 2.0)
        assert len(recorder.batches[0]) == 12  # merged first, then retried one by one

    run(scenario())


def test_lone_request_runs_after_max_wait_without_a_full_batch() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = DynamicBatcher(recorder, max_batch_size=1000, max_wait_s=0.05, max_queue=10)
        batcher.start()
        doubled, _ = await asyncio.wait_for(batcher.submit(np.ones((1, 2), np.float32)), timeout=5)
        await batcher.close()
        np.testing.assert_array_equal(doubled, [[2.0, 2.0]])

    run(scenario())


def test_requests_arriving_within_the_wait_share_one_batch() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = DynamicBatcher(recorder, max_batch_size=100, max_wait_s=0.5, max_queue=10)
        batcher.start()
        await asyncio.gather(*(batcher.submit(np.full((1, 2), i, np.float32)) for i in range(5)))
        await batcher.close()
        assert [len(b) for b in recorder.batches] == [5]

    run(scenario())


def test_request_past_its_deadline_is_dropped_before_running() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        recorder = Recorder(gate=gate)
        batcher = DynamicBatcher(recorder, max_batch_size=1, max_wait_s=0.0, max_queue=10)
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit(np.zeros((1, 2), np.float32)))
        while not recorder.batches:  # the worker is now busy with the blocker
            await asyncio.sleep(0)
        late = asyncio.ensure_future(batcher.submit(np.ones((1, 2), np.float32), deadline=0.0))
        await asyncio.sleep(0)
        gate.set()
        await blocker
        with pytest.raises(DeadlineExceeded):
            await late
        await batcher.close()
        assert len(recorder.batches) == 1

    run(scenario())


def test_cancelled_request_is_dropped_before_running() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        recorder = Recorder(gate=gate)
        batcher = DynamicBatcher(recorder, max_batch_size=1, max_wait_s=0.0, max_queue=10)
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit(np.zeros((1, 2), np.float32)))
        while not recorder.batches:
            await asyncio.sleep(0)
        cancelled = asyncio.ensure_future(batcher.submit(np.full((1, 2), 7.0, np.float32)))
        kept = asyncio.ensure_future(batcher.submit(np.full((1, 2), 8.0, np.float32)))
        await asyncio.sleep(0)
        cancelled.cancel()
        gate.set()
        await blocker
        await kept
        await batcher.close()
        assert [float(b[0, 0]) for b in recorder.batches] == [0.0, 8.0]
        assert cancelled.cancelled()

    run(scenario())


def test_full_queue_refuses_at_once() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        recorder = Recorder(gate=gate)
        batcher = DynamicBatcher(recorder, max_batch_size=1, max_wait_s=0.0, max_queue=2)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(np.zeros((1, 1), np.float32)))
        while not recorder.batches:
            await asyncio.sleep(0)
        queued = [asyncio.ensure_future(batcher.submit(np.ones((1, 1), np.float32))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="full"):
            await batcher.submit(np.ones((1, 1), np.float32))
        gate.set()
        await asyncio.gather(running, *queued)
        await batcher.close()

    run(scenario())


def test_wrong_result_count_is_an_error_not_a_misaligned_answer() -> None:
    async def short(rows: np.ndarray) -> tuple[np.ndarray, ...]:
        return (rows[:-1],)

    async def scenario() -> None:
        batcher = DynamicBatcher(short, max_batch_size=8, max_wait_s=0.0, max_queue=10)
        batcher.start()
        with pytest.raises(ServiceError, match="rows for a batch"):
            await batcher.submit(np.ones((3, 1), np.float32))
        await batcher.close()

    run(scenario())


def test_close_answers_everything_still_queued() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        batcher = DynamicBatcher(Recorder(gate=gate), max_batch_size=1, max_wait_s=0.0, max_queue=10)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(np.ones((1, 1), np.float32))) for _ in range(3)]
        await asyncio.sleep(0.01)
        await batcher.close()
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, ServiceError) and "shutting down" in str(r) for r in results)

    run(scenario())


def test_admitted_request_chunks_wait_for_room_instead_of_failing() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        recorder = Recorder(gate=gate)
        batcher = DynamicBatcher(recorder, max_batch_size=1, max_wait_s=0.0, max_queue=1)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(np.zeros((1, 1), np.float32)))
        while not recorder.batches:
            await asyncio.sleep(0)
        chunks = [
            asyncio.ensure_future(batcher.submit(np.full((1, 1), i, np.float32), wait_for_room=True))
            for i in range(1, 4)
        ]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            batcher.admit()  # a new request is refused while the queue is full...
        gate.set()  # ...but the admitted one's chunks all complete, in order
        results = await asyncio.gather(running, *chunks)
        await batcher.close()
        assert [float(r[0][0, 0]) for r in results] == [0.0, 2.0, 4.0, 6.0]

    run(scenario())
