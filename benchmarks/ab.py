"""Two service configurations side by side: the same load on each in turn, round after round, so the drift of a
shared machine hits both alike. For one setting's effect (`--gc-freeze`, `--inline-rows`, `--torch-threads`)
when it is smaller than what separates two runs of the whole suite.

    python -m benchmarks.ab --a "--gc-freeze off" --b "--gc-freeze on" [--method Sample] [--inflight 64]
                            [--rounds 5] [--seconds 4] [--torch-threads 1]

Both services run all along (started together, each a process of its own); each round loads A, then B (the
order alternates every round). Prints every round, then the medians and B / A, then what each service's own
/metrics says of its garbage-collector pauses over the whole run (`vae_gc_pause_seconds`).
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.payloads import service_request
from benchmarks.procs import Server, stop
from benchmarks.rows import Label, Load, load_row
from benchmarks.servers import ServiceConfig, launch_service, wait_service
from benchmarks.suite import DEFAULT_REPOSITORY
from vaecore.repository import load_default

FIGURES = (("rate", "req/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default="", help="service flags of A, one string")
    p.add_argument("--b", default="", help="service flags of B, one string")
    p.add_argument("--repo", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--method", choices=("Sample", "Decode", "Encode"), default="Sample")
    p.add_argument("--n", type=int, default=1, help="items per request")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per server per round")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured load before each measurement")
    p.add_argument("--torch-threads", type=int, default=1, help="both services (0: their default)")
    return p.parse_args(argv)


def _start(configs: list[ServiceConfig], logs: Path) -> list[Server]:
    servers = [launch_service(config, logs) for config in configs]
    try:
        for server, config in zip(servers, configs, strict=True):
            wait_service(server, config)
    except BaseException:
        for server in servers:
            stop(server)
        raise
    return servers


def _measure(opts: argparse.Namespace, servers: list[Server], work: Path) -> list[list[dict[str, Any]]]:
    """rows[i] = the rounds of server i, each a load-generator row."""
    payload = service_request(opts.method, load_default(opts.repo), opts.n)
    load = Load(opts.inflight, opts.seconds, opts.warmup)
    rows: list[list[dict[str, Any]]] = [[], []]
    for round_ in range(opts.rounds):
        order = (0, 1) if round_ % 2 == 0 else (1, 0)
        for index in order:
            row = load_row(Label("AB"[index], 1, opts.method), servers[index].target, payload, load, work)
            rows[index].append(row)
            cells = "  ".join(f"{name} {_cell(row.get(key))}" for key, name in FIGURES)
            print(f"round {round_ + 1} {'AB'[index]}: {cells}  errors {row['errors']}", flush=True)
    return rows


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def summary(opts: argparse.Namespace, rows: list[list[dict[str, Any]]]) -> str:
    head = f"{opts.method} n={opts.n}, {opts.inflight} in flight, {opts.rounds} rounds of {opts.seconds:g} s"
    lines = [head, "", "| figure (median) | A | B | B / A |", "|---|---|---|---|"]
    for key, name in FIGURES:
        a, b = _median(rows[0], key), _median(rows[1], key)
        ratio = "-" if a is None or b is None or a == 0 else f"{b / a:.2f}"
        lines.append(f"| {name} | {_cell(a)} | {_cell(b)} | {ratio} |")
    errors = [sum(r["errors"] for r in side) for side in rows]
    lines += ["", f"A: `{opts.a}`  B: `{opts.b}`  errors A {errors[0]}, B {errors[1]}"]
    return "\n".join(lines)


def gc_pauses(server: Server) -> dict[str, tuple[float, float]]:
    """generation -> (collections, seconds paused) from the service's /metrics (its port is in its log)."""
    found = re.search(r"metrics port (\d+)", server.log.read_text(errors="replace"))
    if found is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{found.group(1)}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {
        (s.name, s.labels.get("generation", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("vae_gc_pause_seconds_")
    }
    generations = sorted({g for _, g in values})
    return {
        g: (values[("vae_gc_pause_seconds_count", g)], values[("vae_gc_pause_seconds_sum", g)]) for g in generations
    }


def gc_table(pauses: list[dict[str, tuple[float, float]]], seconds: float) -> str:
    lines = [
        "| service | generation | collections | paused, ms | mean pause, ms | share of the run |",
        "|---|---|---|---|---|---|",
    ]
    for label, side in zip("AB", pauses, strict=True):
        for generation, (count, paused) in side.items():
            mean = paused / count * 1e3 if count else 0.0
            lines.append(f"| {label} | {generation} | {count:,.0f} | {paused * 1e3:,.1f} | {mean:.2f} | "
                         f"{paused / seconds:.2%} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    configs = [
        ServiceConfig(
            label, opts.repo, torch_threads=opts.torch_threads, extra=("--metrics-port", "0", *shlex.split(flags))
        )
        for label, flags in (("A", opts.a), ("B", opts.b))
    ]
    with tempfile.TemporaryDirectory(prefix="vae-ab-") as folder:
        work = Path(folder)
        servers = _start(configs, work / "logs")
        started = time.monotonic()
        try:
            rows = _measure(opts, servers, work / "requests")
            pauses = [gc_pauses(server) for server in servers]
            elapsed = time.monotonic() - started
        finally:
            for server in servers:
                stop(server)
    print()
    print(summary(opts, rows))
    print()
    print(f"Garbage collection over the whole run ({elapsed:.0f} s measured; counts include each one's start-up):")
    print(gc_table(pauses, elapsed))


if __name__ == "__main__":
    main()
