"""The load generator: N concurrent tasks, each sending one pre-serialized request back to back for T seconds.

It runs in a process of its own and sends the same bytes over generic calls with identity serializers, so the
client's cost is identical whichever server answers (the service, the bare transport server, or Triton's
ModelInfer): the ratios between them are the servers' doing. Prints one JSON object on stdout.

One Python process saturates one core before a multi-worker server does, so `--procs P` splits the in-flight
tasks, the connections and `--calls` over P child processes that measure one common window; their raw latencies
are merged, so p50/p99 are those of every call, not averages of percentiles.

    python -m benchmarks.loadgen --target 127.0.0.1:50051 --call /vae.v1.VaeService/Sample req.bin \
        --inflight 64 --seconds 3 --warmup 0.5 [--procs 4 --channels 16]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np

MAX_MESSAGE = 512 * 1024 * 1024
READY_TIMEOUT_S = 120.0  # children import grpc and numpy and connect; slow on a loaded machine, never hang
START_DELAY_S = 0.2  # the common start lies this far after the last child is ready, so every child is waiting


@dataclass
class Window:
    """Calls started in [measure_from, stop) count, and each task's first call after measure_from however long it
    takes (a call slower than the window still gives a figure); `calls_left` (count mode): exactly K calls."""

    measure_from: float
    stop: float
    calls_left: int | None = None

    def go_on(self, now: float, measured: int) -> bool:
        if self.calls_left is None:
            return now < self.stop or measured == 0
        self.calls_left -= 1
        return self.calls_left >= 0


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str = ""
    sizes: set[int] = field(default_factory=set)  # distinct reply sizes (a few: a fixed request has one)
    messages: int = 0
    last_end: float = 0.0

    def record(self, started: float, ended: float, size: int | None, error: grpc.aio.AioRpcError | None) -> None:
        self.last_end = max(self.last_end, ended)
        if error is not None:
            self.errors[error.code().name] += 1
            self.first_error = self.first_error or f"{error.code().name}: {error.details()}"[:300]
            return
        self.latencies.append(ended - started)
        if size is not None and len(self.sizes) < 8:
            self.sizes.add(size)


async def _unary(call: Any, request: bytes, timeout: float, stats: Stats) -> int:
    return len(await call(request, timeout=timeout))


async def _stream(call: Any, request: bytes, timeout: float, stats: Stats) -> int:
    size = 0
    async for message in call(request, timeout=timeout):
        stats.messages += 1
        size += len(message)
    return size


async def _task(calls: itertools.cycle, window: Window, stats: Stats, stream: bool, timeout: float) -> None:
    send, measured = (_stream if stream else _unary), 0
    while window.go_on(time.perf_counter(), measured):
        call, request = next(calls)
        started, size, error = time.perf_counter(), None, None
        try:
            size = await send(call, request, timeout, stats)
        except grpc.aio.AioRpcError as exc:
            error = exc
        if started >= window.measure_from:
            stats.record(started, time.perf_counter(), size, error)
            measured += 1


def _channels(target: str, count: int) -> list[grpc.aio.Channel]:
    """Separate connections (a local subchannel pool each), so SO_REUSEPORT can spread them over workers."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    return [grpc.aio.insecure_channel(target, options=options) for _ in range(count)]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """One process's load, started as soon as its connections are up (--procs 1)."""
    stats, measure_from = await _load(args, None)
    return summary(np.asarray(stats.latencies), stats, max(stats.last_end - measure_from, 1e-9), args)


async def _load(args: argparse.Namespace, ready: Callable[[], Awaitable[float]] | None) -> tuple[Stats, float]:
    """The calls, and when the measured window began; `ready` (a child's) reports the connections up and
    returns the common start the parent chose."""
    channels = _channels(args.target, args.channels)
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 30)
    payloads = [(method, Path(path).read_bytes()) for method, path in args.call]
    per_task = []
    for i in range(args.inflight):
        channel = channels[i % len(channels)]
        make = channel.unary_stream if args.stream else channel.unary_unary
        calls = [(make(method), body) for method, body in payloads]  # identity serializers: bytes in, bytes out
        per_task.append(itertools.cycle(calls[i % len(calls) :] + calls[: i % len(calls)]))
    began = time.perf_counter() if ready is None else await _until(await ready())
    counting = args.calls is not None
    window = Window(began + (0 if counting else args.warmup), began + args.warmup + args.seconds, args.calls)
    stats = Stats()
    await asyncio.gather(*(_task(c, window, stats, args.stream, args.timeout) for c in per_task))
    for channel in channels:
        await channel.close()
    return stats, window.measure_from


async def _until(moment: float) -> float:
    """Sleep until `moment`, never return early (asyncio may wake a hair before; a call started before the
    window would go uncounted, and --calls would come up short)."""
    await asyncio.sleep(max(0.0, moment - time.perf_counter() - 0.002))
    while time.perf_counter() < moment:
        pass
    return moment


def summary(latencies: np.ndarray, stats: Stats, elapsed: float, args: argparse.Namespace) -> dict[str, Any]:
    ms = latencies * 1000.0
    ok = len(latencies)
    return {
        "ok": ok,
        "errors": sum(stats.errors.values()),
        "error_codes": dict(stats.errors),
        "first_error": stats.first_error,
        "elapsed_s": round(elapsed, 4),
        "rate": ok / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if ok else None,
        "p99_ms": float(np.percentile(ms, 99)) if ok else None,
        "reply_bytes": sorted(stats.sizes),
        "messages": stats.messages,
        "inflight": args.inflight,
        "channels": args.channels,
    }


# --- several processes -------------------------------------------------------------------------------------


def split(total: int, parts: int) -> list[int]:
    """`total` in `parts` shares as even as can be (the first ones get the remainder), summing to `total`."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def child_args(args: argparse.Namespace) -> list[argparse.Namespace]:
    """Each child's options: its share of the tasks, of the connections (at least one: a child cannot share
    another's) and of --calls; the same seconds and warm-up for all."""
    procs = args.procs
    channels = [max(1, c) for c in split(args.channels, procs)]
    calls = split(args.calls, procs) if args.calls is not None else [None] * procs
    return [
        argparse.Namespace(**{**vars(args), "procs": 1, "inflight": n, "channels": c, "calls": k})
        for n, c, k in zip(split(args.inflight, procs), channels, calls, strict=True)
    ]


def _child(args: argparse.Namespace, conn: Connection) -> None:
    """A child: connect, say ready, wait for the parent's common start, load, send back its counts and its raw
    latencies (float64 bytes)."""

    async def ready() -> float:
        conn.send("ready")
        start = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        return float(start)

    stats, measure_from = asyncio.run(_load(args, ready))
    conn.send_bytes(np.asarray(stats.latencies, dtype=np.float64).tobytes())
    conn.send(
        {
            "errors": dict(stats.errors),
            "first_error": stats.first_error,
            "sizes": sorted(stats.sizes),
            "messages": stats.messages,
            "elapsed": stats.last_end - measure_from,
        }
    )
    conn.close()


def _receive(conn: Connection, process: multiprocessing.process.BaseProcess, what: str, timeout: float) -> Any:
    """The child's next message; an error (not a hang) if it died or went silent."""
    if not conn.poll(timeout):
        raise RuntimeError(f"load generator child {process.pid} sent no {what} within {timeout:.0f} s")
    try:
        return conn.recv_bytes() if what == "latencies" else conn.recv()
    except EOFError:
        process.join(5)
        raise RuntimeError(
            f"load generator child {process.pid} exited ({process.exitcode}) before its {what}"
        ) from None


def run_procs(args: argparse.Namespace) -> dict[str, Any]:
    """P children over one window: started together once all are connected, their results merged."""
    context = multiprocessing.get_context("spawn")  # no forked grpc state; each child its own fresh client
    parts = child_args(args)
    children = []
    try:
        for part in parts:
            mine, theirs = context.Pipe()
            process = context.Process(target=_child, args=(part, theirs), daemon=True)
            process.start()
            theirs.close()  # the parent's copy: so a dead child reads as EOF, not as silence
            children.append((process, mine))
        for process, conn in children:
            _receive(conn, process, "ready", READY_TIMEOUT_S)
        start = time.perf_counter() + START_DELAY_S  # CLOCK_MONOTONIC on Linux: the same instant in every process
        for _, conn in children:
            conn.send(start)
        limit = args.timeout + args.warmup + args.seconds + READY_TIMEOUT_S
        results = []
        for process, conn in children:
            latencies = np.frombuffer(_receive(conn, process, "latencies", limit), dtype=np.float64)
            results.append((latencies, _receive(conn, process, "counts", 30.0)))
        for process, _ in children:
            process.join(30)
    finally:
        for process, _ in children:
            if process.is_alive():
                process.terminate()
    return merge(args, parts, results)


def merge(
    args: argparse.Namespace, parts: list[argparse.Namespace], results: list[tuple[np.ndarray, dict[str, Any]]]
) -> dict[str, Any]:
    """Sums of counts, percentiles of all the raw latencies together, the rate over the common window (it
    ends with the last child's last call)."""
    stats = Stats(errors=Counter())
    for _, counts in results:
        stats.errors.update(counts["errors"])
        stats.first_error = stats.first_error or counts["first_error"]
        stats.sizes.update(counts["sizes"])
        stats.messages += counts["messages"]
    elapsed = max([1e-9, *(counts["elapsed"] for _, counts in results)])
    latencies = np.concatenate([latencies for latencies, _ in results])
    total = argparse.Namespace(**{**vars(args), "channels": sum(part.channels for part in parts)})
    children = [
        {"inflight": part.inflight, "channels": part.channels, "calls": part.calls, "ok": len(latencies)}
        for part, (latencies, _) in zip(parts, results, strict=True)
    ]
    return {**summary(latencies, stats, elapsed, total), "procs": args.procs, "children": children}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument(
        "--call",
        nargs=2,
        action="append",
        required=True,
        metavar=("METHOD", "REQUEST_FILE"),
        help="full method path and a file of serialized request bytes; repeat to mix (round robin)",
    )
    parser.add_argument("--stream", action="store_true", help="server-streaming calls (count every message)")
    parser.add_argument("--inflight", type=int, default=1, help="concurrent tasks, each one call at a time")
    parser.add_argument("--channels", type=int, default=1, help="connections the tasks share round robin")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time")
    parser.add_argument("--warmup", type=float, default=0.5, help="load before the measured time, not counted")
    parser.add_argument("--calls", type=int, help="instead of a time: exactly this many calls, all measured")
    parser.add_argument("--timeout", type=float, default=300.0, help="per call, seconds")
    parser.add_argument(
        "--procs",
        type=int,
        default=1,
        help="client processes sharing --inflight, --channels and --calls over one window (one core each)",
    )
    args = parser.parse_args(argv)
    if args.procs < 1:
        parser.error("--procs must be at least 1")
    if args.procs > args.inflight:
        parser.error(f"--procs {args.procs} > --inflight {args.inflight}: every process needs a task of its own")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(json.dumps(asyncio.run(run(args)) if args.procs == 1 else run_procs(args)))


if __name__ == "__main__":
    main()
