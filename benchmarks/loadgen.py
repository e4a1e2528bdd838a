"""The load generator: N concurrent tasks, each sending one pre-serialized request back to back for T seconds.

It runs in a process of its own and sends the same bytes over generic calls with identity serializers, so the
client's cost is identical whichever server answers (the service, the bare transport server, or Triton's
ModelInfer): the ratios between them are the servers' doing. Prints one JSON object on stdout.

    python -m benchmarks.loadgen --target 127.0.0.1:50051 --call /vae.v1.VaeService/Sample req.bin \
        --inflight 64 --seconds 3 --warmup 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

MAX_MESSAGE = 512 * 1024 * 1024


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
    began = time.perf_counter()
    counting = args.calls is not None
    window = Window(began + (0 if counting else args.warmup), began + args.warmup + args.seconds, args.calls)
    stats = Stats()
    await asyncio.gather(*(_task(c, window, stats, args.stream, args.timeout) for c in per_task))
    for channel in channels:
        await channel.close()
    return summary(stats, window.measure_from, args)


def summary(stats: Stats, measure_from: float, args: argparse.Namespace) -> dict[str, Any]:
    ms = np.asarray(stats.latencies) * 1000.0
    elapsed = max(stats.last_end - measure_from, 1e-9)
    ok = len(stats.latencies)
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(asyncio.run(run(parse_args(argv)))))


if __name__ == "__main__":
    main()
