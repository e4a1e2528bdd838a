"""Issue 19: after a burst of expired deadlines, no ordinary call is lost.

Against `python -m service` as users run it (its own process, real loopback gRPC): rounds of 3,000 calls with 1-5 ms
deadlines, then at once 1,500 ordinary calls (30 s deadlines, a new channel). With gRPC's own backlog limit, 0.1-1%
of the ordinary calls ended CANCELLED within milliseconds, before any handler saw them
(docs/upstream/grpc-aio-pending-cancelled.md; `python -m benchmarks.deadline_burst` gives the rates side by side).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.deadline_burst import Pattern, burst_then_traffic, metric_total, sample_request, start_service
from benchmarks.procs import Server, stop
from vae_client.retry import retry_options

SAMPLE = "/vae.v1.VaeService/Sample"
ROUNDS = 5  # the issue asks for 3 or more; with gRPC's limit this test failed 9 runs of 9 (with 5 rounds: 15-64 lost)


@pytest.fixture
def service(model_repository: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Server, int]]:
    """The service with the flags the test is parametrized with (none: as shipped): (server, metrics port)."""
    flags = getattr(request, "param", ())
    server, metrics_port = start_service(model_repository, tmp_path, flags)
    try:
        yield server, metrics_port
    finally:
        stop(server)


def _lost(results: list) -> int:
    return sum(len(r.failed) for r in results)


def test_no_ordinary_call_is_lost_after_bursts_of_expired_deadlines(service: tuple[Server, int]) -> None:
    """The server's fix alone: the ordinary calls go over a plain channel with no retries at all."""
    server, metrics_port = service
    results = asyncio.run(burst_then_traffic(server.target, SAMPLE, sample_request("tiny"), ROUNDS, report=print))
    retried = metric_total(metrics_port, "vae_retried_requests_total")
    print(f"lost {_lost(results)} of {ROUNDS * Pattern().calls}; retried attempts the server saw: {retried:.0f}")
    assert [r.failed for r in results] == [[]] * ROUNDS
    assert retried == 0  # no channel here retries: every ordinary call got through on its first attempt


@pytest.mark.parametrize("service", [("--max-pending-calls", "0")], indirect=True)
def test_the_published_retry_policy_recovers_what_grpcs_default_limit_cancels(service: tuple[Server, int]) -> None:
    """gRPC's own backlog limit (with which the first test loses calls), the ordinary calls over a plain grpcio
    channel with the published service config: none lost; the retries it took, as the server counted them, printed.
    Whether a first attempt failed in a given run is up to chance: the next test makes it certain."""
    server, metrics_port = service
    results = asyncio.run(burst_then_traffic(server.target, SAMPLE, sample_request("tiny"), ROUNDS,
                                             options=retry_options(), report=print))  # fmt: skip
    retried = metric_total(metrics_port, "vae_retried_requests_total")
    print(f"lost {_lost(results)} of {ROUNDS * Pattern().calls}; retried attempts the server saw: {retried:.0f}")
    assert [r.failed for r in results] == [[]] * ROUNDS


@pytest.mark.parametrize("service", [("--max-pending-calls", "1")], indirect=True)
def test_calls_core_cancels_are_retried_and_counted_by_the_server(service: tuple[Server, int]) -> None:
    """A backlog limit of 1 makes core cancel calls whenever the loop lags at all: the published policy's retries
    reach the handlers, and `vae_retried_requests_total` counts them."""
    server, metrics_port = service
    plain = Pattern(burst_calls=0, calls=600)
    without = asyncio.run(burst_then_traffic(server.target, SAMPLE, sample_request("tiny"), 1, plain))
    assert without[0].codes.keys() <= {"CANCELLED"} and without[0].failed, without[0].describe()
    asyncio.run(burst_then_traffic(server.target, SAMPLE, sample_request("tiny"), 1, plain, options=retry_options()))
    retried = metric_total(metrics_port, "vae_retried_requests_total")
    print(f"without retries: {without[0].describe()}; retried attempts the server saw with them: {retried:.0f}")
    assert retried > 0
