"""Requests per second and latency of the running service, dynamic batching on vs off, side by side.

Starts the real server in-process (local backend) for each configuration and drives it with concurrent
gRPC clients (threads) calling Sample(n=1) for a fixed time. Prints a table; compare rows of one run.

Run: .venv/bin/python benchmarks/service_throughput.py [--repo deploy/model_repository] [--seconds 5]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.config import Settings
from service.inprocess import serving, stub_for
from service.proto_gen.vae.v1 import vae_pb2


def drive(settings: Settings, clients: int, seconds: float) -> tuple[float, float, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    with serving(settings) as server, stub_for(server) as stub:
        stub.Sample(vae_pb2.SampleRequest(n=8))  # warm-up
        stop_at = time.perf_counter() + seconds

        def client() -> None:
            mine = []
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                stub.Sample(vae_pb2.SampleRequest(n=1))
                mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
    ms = np.asarray(latencies) * 1000
    return len(latencies) / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path("deploy/model_repository"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 16, 64])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the local backend")
    args = parser.parse_args()
    print(f"{'batching':10} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for clients in args.clients:
        for label, batch, wait_ms in (("off", 1, 0.0), ("on", 64, 2.0)):
            settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=args.repo,
                                max_batch_size=batch, max_wait_ms=wait_ms, torch_threads=args.threads)  # fmt: skip
            rate, p50, p99 = drive(settings, clients, args.seconds)
            print(f"{label:10} {clients:>7} {rate:>8.0f} {p50:>8.2f} {p99:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
