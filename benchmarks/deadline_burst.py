"""Do ordinary calls survive a burst of expired deadlines? Before and after, side by side.

    python -m benchmarks.deadline_burst [--rounds 3] [--repeats 2] [--echo-only] [--no-echo]
    python -m benchmarks.deadline_burst --held-memory 5000 20000     # RSS per call core holds, instead

The pattern (issue 19): per round, phase B sends 3,000 calls with 1-5 ms deadlines (128 in flight, one channel),
then at once phase C sends 1,500 ordinary calls with 30 s deadlines (32 in flight, a new channel). A C call that
fails is lost: its caller did nothing wrong. With gRPC's default backlog limit, 0.1-1% of C calls end CANCELLED
within milliseconds, never reaching a handler: docs/upstream/grpc-aio-pending-cancelled.md.

Rows, each run `--repeats` times on this machine, in turn:
  - echo, grpc defaults: a bare grpc.aio echo server (the upstream reproducer) with gRPC's own limits;
  - echo, one limit: the same with the service's default `--max-pending-calls` (soft = hard limit);
  - service, grpc defaults: `python -m service --max-pending-calls 0` (gRPC's limits);
  - service, grpc defaults + retry config: the same, C over a plain grpcio channel with the published service config
    (`vae_client/service_config.json`); `retried` is what the server counted (`vae_retried_requests_total`);
  - service: `python -m service` as shipped.
Loopback only; every server is a process of its own and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.procs import PYTHON, Server, free_port, launch, stop, wait_serving
from benchmarks.table import Table, as_text
from service.config import DEFAULT_REPOSITORY, Settings
from vae_client.proto_gen.vae.v1 import vae_pb2
from vae_client.retry import retry_options

SAMPLE = "/vae.v1.VaeService/Sample"
ECHO = "/repro.Echo/Call"
SERVICE_HEALTH = "vae.v1.VaeService"


@dataclass(frozen=True)
class Pattern:
    burst_calls: int = 3000
    burst_inflight: int = 128
    burst_deadline_s: tuple[float, float] = (0.001, 0.005)
    calls: int = 1500
    inflight: int = 32
    deadline_s: float = 30.0


@dataclass
class RoundResult:
    """Phase C of one round: the calls that failed, by code, and their ids."""

    calls: int
    failed: list[tuple[int, str, float]] = field(default_factory=list)  # (call id, code, ms after it was sent)

    @property
    def codes(self) -> Counter[str]:
        return Counter(code for _, code, _ in self.failed)

    def describe(self) -> str:
        if not self.failed:
            return f"0/{self.calls} lost"
        ms = [f[2] for f in self.failed]
        return f"{len(self.failed)}/{self.calls} lost {dict(self.codes)}, {min(ms):.1f}-{max(ms):.1f} ms after sending"


async def _phase(
    target: str, method: str, body: bytes, calls: int, inflight: int, deadline: Callable[[], float],
    options: Sequence[tuple[str, str | int]] = (),
) -> list[tuple[int, str, float]]:  # fmt: skip
    """`calls` calls of `method` on a new channel, `inflight` at a time; the ones that failed."""
    failed: list[tuple[int, str, float]] = []
    async with grpc.aio.insecure_channel(target, options=list(options)) as channel:
        call = channel.unary_unary(method)
        gate = asyncio.Semaphore(inflight)

        async def one(i: int) -> None:
            async with gate:
                started = time.perf_counter()
                try:
                    await call(body, timeout=deadline())
                except grpc.aio.AioRpcError as exc:
                    failed.append((i, exc.code().name, (time.perf_counter() - started) * 1000))

        await asyncio.gather(*(one(i) for i in range(calls)))
    return failed


async def burst_then_traffic(
    target: str, method: str, body: bytes, rounds: int, pattern: Pattern = Pattern(),
    options: Sequence[tuple[str, str | int]] = (), report: Callable[[str], None] | None = None,
) -> list[RoundResult]:  # fmt: skip
    """Rounds of phase B (the burst, whose failures are expected) then phase C (`options` on its channel)."""
    low, high = pattern.burst_deadline_s
    results = []
    for r in range(rounds):
        await _phase(target, method, body, pattern.burst_calls, pattern.burst_inflight,
                     lambda: random.uniform(low, high))  # fmt: skip
        failed = await _phase(target, method, body, pattern.calls, pattern.inflight, lambda: pattern.deadline_s,
                              options)  # fmt: skip
        results.append(RoundResult(pattern.calls, failed))
        if report is not None:
            report(f"round {r}: {results[-1].describe()}")
    return results


def metric_total(metrics_port: int, name: str) -> float:
    """The sum over every series of counter `name` on the server's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def sample_request(model: str) -> bytes:
    return vae_pb2.SampleRequest(model=model, n=1).SerializeToString()  # unseeded: the server draws one


# The upstream reproducer's server: an echo with a 4 ms await per call, gRPC's limits unless options are given.
ECHO_SERVER = r"""
import asyncio, json, sys, grpc
async def echo(request, context):
    await asyncio.sleep(0.004)
    return request
async def main():
    server = grpc.aio.server(options=[tuple(o) for o in json.loads(sys.argv[1])])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "repro.Echo", {"Call": grpc.unary_unary_rpc_method_handler(echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


def run_echo(options: list[tuple[str, int]], rounds: int) -> tuple[list[RoundResult], None]:
    process = subprocess.Popen([PYTHON, "-c", ECHO_SERVER, json.dumps(options)], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        return asyncio.run(burst_then_traffic(f"127.0.0.1:{port}", ECHO, b"x" * 64, rounds)), None
    finally:
        process.terminate()
        process.wait(10)


def start_service(repo: Path, logs: Path, flags: Sequence[str] = ()) -> tuple[Server, int]:
    """`python -m service` on free ports (gRPC, /metrics), one torch thread; waits until it serves."""
    port, metrics_port = free_port(), free_port()
    argv = [PYTHON, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--metrics-port",
            str(metrics_port), "--model-repository", str(repo), "--torch-threads", "1", *flags]  # fmt: skip
    server = launch(f"service{'-'.join(flags)}", argv, port, logs)
    wait_serving(server, SERVICE_HEALTH)
    return server, metrics_port


def run_service(
    repo: Path, model: str, flags: Sequence[str], rounds: int, retries: bool
) -> tuple[list[RoundResult], float | None]:
    """The pattern against a service process: (per-round results, retried attempts the server counted)."""
    with tempfile.TemporaryDirectory() as logs:
        server, metrics_port = start_service(repo, Path(logs), flags)
        try:
            options = retry_options() if retries else []
            results = asyncio.run(burst_then_traffic(server.target, SAMPLE, sample_request(model), rounds,
                                                     options=options))  # fmt: skip
            return results, metric_total(metrics_port, "vae_retried_requests_total")
        finally:
            stop(server)


# The cost of the backlog: a server whose first call blocks its loop, so every later call stays held in core.
BLOCKING_SERVER = r"""
import asyncio, json, sys, time, grpc
first = [True]
async def handle(request, context):
    if first[0]:
        first[0] = False
        print("blocked", flush=True)
        time.sleep(float(sys.argv[2]))  # the loop stops: calls that arrive now wait in core's backlog
    return b"ok"
async def main():
    server = grpc.aio.server(options=[tuple(o) for o in json.loads(sys.argv[1])])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "repro.Echo", {"Call": grpc.unary_unary_rpc_method_handler(handle)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


async def _hold(process: subprocess.Popen[bytes], port: int, calls: int, size: int, block_s: float) -> tuple[int, int]:
    """(RSS before, RSS with `calls` held) of the server, in kB; every call is answered in the end."""
    assert process.stdout is not None
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(ECHO)
        first = asyncio.ensure_future(call(b"x", timeout=60 + block_s))
        assert (await loop.run_in_executor(None, process.stdout.readline)).strip() == b"blocked"
        before = _rss_kb(process.pid)
        held = [asyncio.ensure_future(call(b"x" * size, timeout=120 + block_s)) for _ in range(calls)]
        await asyncio.sleep(block_s * 0.8)
        during = _rss_kb(process.pid)
        await asyncio.gather(first, *held)
    return before, during


def held_call_memory(calls: int, size: int = 64, block_s: float = 8.0) -> float:
    """kB of server RSS per call gRPC's core holds while the loop is blocked (the limit is set out of the way)."""
    limit = [("grpc.server.max_pending_requests", 10**6), ("grpc.server.max_pending_requests_hard_limit", 10**6)]
    process = subprocess.Popen([PYTHON, "-c", BLOCKING_SERVER, json.dumps(limit), str(block_s)], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        before, during = asyncio.run(_hold(process, port, calls, size, block_s))
        return (during - before) / calls
    finally:
        process.terminate()
        process.wait(10)


GRPC_LIMITS: list[tuple[str, int]] = []  # gRPC's own: random rejections from 1000 queued calls, all past 3000
SERVICE_LIMIT = Settings().max_pending_calls  # the service's default, soft = hard
ONE_LIMIT = [("grpc.server.max_pending_requests", SERVICE_LIMIT),
             ("grpc.server.max_pending_requests_hard_limit", SERVICE_LIMIT)]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of 3,000 + 1,500 calls per run")
    p.add_argument("--repeats", type=int, default=2, help="runs of each row")
    p.add_argument("--repo", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--model", default="mnist")
    p.add_argument("--echo-only", action="store_true", help="only the bare echo server's rows")
    p.add_argument("--no-echo", action="store_true", help="only the service's rows")
    p.add_argument("--block-s", type=float, default=8.0, help="--held-memory: how long the server's loop is blocked")
    p.add_argument("--held-memory", type=int, nargs="*", metavar="CALLS",
                   help="instead: server RSS per call held in core's backlog, for so many 64-byte calls")  # fmt: skip
    return p.parse_args(argv)


def _row(label: str, runs: list[tuple[list[RoundResult], float | None]]) -> list[str]:
    lost = [sum(len(r.failed) for r in results) for results, _ in runs]
    calls = sum(r.calls for results, _ in runs for r in results)
    codes: Counter[str] = sum((r.codes for results, _ in runs for r in results), Counter())
    retried = [retried for _, retried in runs if retried is not None]
    return [label, f"{calls:,}", f"{sum(lost):,}", " ".join(str(n) for n in lost), f"{100 * sum(lost) / calls:.3f}",
            ", ".join(f"{c} {n}" for c, n in codes.items()) or "-",
            f"{sum(retried):,.0f}" if retried else "-"]  # fmt: skip


Run = Callable[[], tuple[list[RoundResult], float | None]]


def _plan(args: argparse.Namespace) -> list[tuple[str, Run]]:
    plan: list[tuple[str, Run]] = []
    if not args.no_echo:
        plan += [("echo, grpc defaults", partial(run_echo, GRPC_LIMITS, args.rounds)),
                 (f"echo, one limit of {SERVICE_LIMIT:,}", partial(run_echo, ONE_LIMIT, args.rounds))]  # fmt: skip
    if not args.echo_only:
        grpc_defaults = ["--max-pending-calls", "0"]
        plan += [
            ("service, grpc defaults", partial(run_service, args.repo, args.model, grpc_defaults, args.rounds, False)),
            ("service, grpc defaults + retry config",
             partial(run_service, args.repo, args.model, grpc_defaults, args.rounds, True)),
            ("service (as shipped)", partial(run_service, args.repo, args.model, [], args.rounds, False)),
        ]  # fmt: skip
    return plan


def main(argv: list[str] | None = None) -> None:
    """Every row once per repeat, the rows in turn within each repeat, so a shared machine's drift hits all alike."""
    args = parse_args(argv)
    if args.held_memory:
        cells = [[f"{n:,}", f"{held_call_memory(n, block_s=args.block_s):.1f}"] for n in args.held_memory]
        print(as_text(("server memory per call held in core's backlog (loop blocked)", ["calls", "kB each"], cells)))
        return
    plan = _plan(args)
    runs: dict[str, list[tuple[list[RoundResult], float | None]]] = {label: [] for label, _ in plan}
    for repeat in range(args.repeats):
        for label, run in plan:
            runs[label].append(run())
            print(f"{label}, run {repeat + 1}: {sum(len(r.failed) for r in runs[label][-1][0])} lost", flush=True)
    header = ["server", "C calls", "lost", "lost per run", "lost %", "codes", "retried"]
    title = f"ordinary calls lost after bursts of expired deadlines ({args.rounds} rounds x {args.repeats} runs)"
    table: Table = (title, header, [_row(label, results) for label, results in runs.items()])
    print(as_text(table))


if __name__ == "__main__":
    main()
