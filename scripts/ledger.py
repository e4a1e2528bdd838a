"""The ledger at scale: 10^5 concurrent mixed requests of every RPC against the real server (in this process, over
loopback gRPC) whose backend fails the batches holding marked rows, some requests cancelled by their client, some
with very short deadlines; then every answer and every count is checked and the ledger printed: per method and
status code, what the clients saw, what the plain (never cancelled, no deadline) ones saw, and what the server's
`vae_requests_total` counted. The rules are in tests/service/ledger.py; tests/service/test_ledger.py runs 10^4.

    .venv/bin/python scripts/ledger.py [--requests 100000] [--model-repository deploy/model_repository]

Exit status 1 when a check fails (the problems are printed above the table).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from service.backends.local import LocalBackend  # noqa: E402
from service.config import DEFAULT_REPOSITORY, Settings  # noqa: E402
from service.inprocess import serving  # noqa: E402
from tests.service.fake_backends import FakeFaultyBackend  # noqa: E402
from tests.service.ledger import run_ledger  # noqa: E402
from vaecore.repository import load_repository  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--templates", type=int, default=1000, help="distinct requests, each also run alone")
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--max-batch-size", type=int, default=16, help="small, so requests share and split batches")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("service.api").setLevel(logging.CRITICAL)  # the injected faults: one traceback each
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=args.model_repository,
                        max_batch_size=args.max_batch_size)  # fmt: skip
    backend = FakeFaultyBackend(LocalBackend(load_repository(args.model_repository), settings.device))
    started = time.perf_counter()
    with serving(settings, backend) as server:

        def progress(line: str) -> None:
            print(f"[{time.perf_counter() - started:7.1f} s] {line}", flush=True)

        progress(f"server on {server.address}; {args.templates} templates, then {args.requests} requests, "
                 f"{args.concurrency} in flight")  # fmt: skip
        run = run_ledger(server, args.templates, args.requests, args.concurrency, args.seed, progress)
    total_s = time.perf_counter() - started

    for problem in run.problems + run.stuck_gauges:
        print(f"PROBLEM: {problem}")
    print(run.combined.table())
    failed = ", ".join(f"{network} {n} ({backend.shared_failures[network]} shared with other requests' rows)"
                       for network, n in sorted(backend.failures.items()))  # fmt: skip
    print(f"backend calls {sum(backend.calls.values())}, failed on purpose: {failed or 'none'}")
    rate = args.requests / run.traffic_s
    print(f"alone {run.alone_s:.1f} s; traffic {run.traffic_s:.1f} s ({rate:.0f} requests/s); total {total_s:.1f} s")
    checks = "FAILED" if run.problems or run.stuck_gauges else "all checks passed"
    print(f"{checks}: one status per request, answers equal alone, server counts, gauges back to 0")
    return 1 if run.problems or run.stuck_gauges else 0


if __name__ == "__main__":
    sys.exit(main())
