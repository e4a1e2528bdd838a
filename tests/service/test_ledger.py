"""The ledger (issue 7, part 4): 10^4 concurrent mixed requests of every RPC against a real server whose backend
fails the batches holding marked rows; plain requests, then some cancelled by their client, then some with very
short deadlines.
Every request ends with exactly one status; every answer equals the same request run alone; the server's
`vae_requests_total` matches what the clients saw (exactly for plain requests; within the bounds a server can know
for cancelled and timed-out ones, and never a deadline counted as a cancellation: tests/service/ledger.py);
in-flight and queue gauges return to 0. `scripts/ledger.py` runs the same at 10^5 and prints the table."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from service.backends.local import LocalBackend
from service.config import Settings
from tests.service.fake_backends import FakeFaultyBackend
from tests.service.harness import ServerThread, serving
from tests.service.ledger import CANCEL, DEADLINE, request_counts, run_ledger, wait_for_idle
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub
from vaecore.repository import load_repository

REQUESTS = int(os.environ.get("LEDGER_REQUESTS", "10000"))
CONCURRENCY = 64
TEMPLATES = 300


@pytest.fixture(scope="module")
def faulty(model_repository: Path) -> Iterator[tuple[ServerThread, FakeFaultyBackend]]:
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=model_repository,
                        max_batch_size=16, torch_threads=1)  # fmt: skip
    backend = FakeFaultyBackend(LocalBackend(load_repository(model_repository), "cpu", 1))
    with serving(settings, backend) as server:
        yield server, backend


def test_the_ledger_balances(faulty: tuple[ServerThread, FakeFaultyBackend]) -> None:
    server, backend = faulty
    run = run_ledger(server, TEMPLATES, REQUESTS, CONCURRENCY, seed=7)
    table = run.combined.table()
    print(f"\n{table}\nalone {run.alone_s:.1f} s, traffic {run.traffic_s:.1f} s")
    stuck, problems = run.stuck_gauges, run.problems
    assert stuck == []
    assert problems == [], "\n".join(problems) + "\n" + table

    # The run exercised what it claims to: every RPC answered OK, faults, cancellations and deadlines happened,
    # and some failing backend calls also held other requests' rows (the batcher had to isolate them).
    seen = run.combined.client()
    assert {method for method, code in seen if code == "OK"} == {t.method for t in run.combined.templates}
    assert {"OK", "INTERNAL", "INVALID_ARGUMENT", "NOT_FOUND", "CANCELLED", "DEADLINE_EXCEEDED"} <= set(
        code for _, code in seen
    )
    fates = {r.fate for r in run.combined.records}
    assert {CANCEL, DEADLINE} <= fates
    assert sum(backend.shared_failures.values()) > 0


@pytest.mark.parametrize("ending", ["deadline", "cancel"])
def test_a_stalled_stream_is_counted_as_its_client_saw_it(
    ending: str, faulty: tuple[ServerThread, FakeFaultyBackend]
) -> None:
    """The ledger's races made certain: a stream whose client does not read blocks its handler on flow control;
    its deadline then passes (or its client cancels it) while the server is surely still serving it. The server
    must count DEADLINE_EXCEEDED (or CANCELLED), the code its client sees."""
    server, _ = faulty
    assert server.running is not None
    registry = server.running.metrics.registry
    before = request_counts(registry)
    request = V.SampleStreamRequest(n=4096, chunk_size=512, seed=V.Seed(value=1))  # 1.6 MB messages
    # No BDP probing: the client's receive window stays at 64 KiB, so unread messages hold the server back.
    with grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        call = VaeServiceStub(channel).SampleStream(request, timeout=1.0 if ending == "deadline" else 60.0)
        time.sleep(1.5)  # read nothing: the handler's first write waits for the window
        if ending == "cancel":
            call.cancel()
        with pytest.raises(grpc.RpcError) as ended:
            next(call)
    expected = "DEADLINE_EXCEEDED" if ending == "deadline" else "CANCELLED"
    assert ended.value.code().name == expected
    assert all(v == 0 for v in wait_for_idle(registry).values())
    after = request_counts(registry)
    counted = {code: after[(m, code)] - before[(m, code)] for (m, code) in after if m == "SampleStream"}
    assert {code: n for code, n in counted.items() if n} == {expected: 1}
