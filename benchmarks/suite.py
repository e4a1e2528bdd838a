"""`make bench`: every figure of the serving path as a ratio against its limit, measured side by side in one run.

Limits: the raw TorchScript networks in-process; a bare grpc.aio server sending the real service's reply bytes
(the transport); the service with batching off; Triton called directly. Servers and the load generator are
processes of their own. Writes RESULTS/bench.json and RESULTS/bench.png and prints the tables;
`python -m benchmarks.report` renders BENCHMARKS.md from the JSON. `--soak SECONDS` instead runs one constant
load that long and compares the service's RSS at the end with after warm-up (RESULTS/soak.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import machine, report, targets
from benchmarks.payloads import METHODS, Payload, sample_stream, service_request, triton_request
from benchmarks.procs import PYTHON, REPO_ROOT, Server, StartError, memory_kb, stop
from benchmarks.rows import Label, Load, load_row, loadgen_argv, parse_result, run_load
from benchmarks.servers import ServiceConfig, capture, launch_service, start_transport, start_triton, wait_service
from benchmarks.table import all_tables, as_text
from vaecore.repository import ModelSpec, load_default

Row = dict[str, Any]
PayloadFor = Callable[[str, ModelSpec], Payload]
Compared = tuple[str, str, PayloadFor]  # row label, host:port, the request it is sent
DEFAULT_REPOSITORY = REPO_ROOT / "deploy" / "model_repository"


@dataclass
class Run:
    opts: argparse.Namespace
    model: ModelSpec
    work: Path
    rows: list[Row] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    interrupted: bool = False  # stopped by SIGTERM/SIGINT: the JSON holds the rows measured until then

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    def add(self, row: Row) -> None:
        """Keep a row and print it at once (a run takes minutes: show progress)."""
        self.rows.append(row)
        print(f"[{time.perf_counter() - self.started:6.1f} s] {progress_line(self.rows, row, self.opts)}", flush=True)

    def load(self, inflight: int, workers: int) -> Load:
        # One connection per worker is not enough: SO_REUSEPORT hashes connections, so give it several.
        channels = 1 if workers == 1 else 4 * workers
        return Load(inflight, self.opts.seconds, self.opts.warmup, channels=channels, procs=self.opts.loadgen_procs)


def progress_line(rows: list[Row], row: Row, opts: argparse.Namespace) -> str:
    if row["kind"] == "raw":
        return f"raw {row['network']} batch {row['batch']}: {row['images_per_s']:,.0f} images/s"
    if row["kind"] != "load":
        return f"{row['kind']} (workers {row.get('workers', '-')}): {row.get('message', row.get('ratio'))}"
    limit = targets.limit_row(rows, row, opts.max_batch_size)
    vs = ""
    if limit is not None:
        mine, base = (
            (row["images_per_s"], limit["images_per_s"]) if limit["kind"] == "raw" else (row["rate"], limit["rate"])
        )
        vs = f", {mine / base:.2f} of {limit.get('server', 'raw decoder')}" if base else ""
    p50 = "-" if row.get("p50_ms") is None else f"{row['p50_ms']:.2f}"
    errors = f", {row['errors']} ERRORS ({row.get('first_error', '')})" if row["errors"] else ""
    return (
        f"w{row['workers']} {row['server']:15} {row['method']:12} n={row['n']:<6} @{row['inflight']:<3}: "
        f"{row['rate']:,.0f} req/s, {row['images_per_s']:,.0f} images/s, p50 {p50} ms{vs}{errors}"
    )


# --- phases ------------------------------------------------------------------------------------------------


def measure_raw(run: Run) -> None:
    o = run.opts
    argv = [PYTHON, "-m", "benchmarks.raw", "--json", "--repo", str(o.repo), "--threads", str(o.torch_threads)]
    argv += ["--seconds", str(o.raw_seconds), "--batches", *map(str, o.raw_batches)]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        run.add(error_row(None, "raw", "measure", done.stderr.strip()[-400:]))
        return
    for row in json.loads(done.stdout):
        run.add(row)


def start(run: Run, configs: list[ServiceConfig]) -> list[Server | None]:
    """The services, started together (their start-ups overlap); None, with an error row saying why, for each
    one that did not become SERVING."""
    servers = [launch_service(config, run.logs) for config in configs]
    started: list[Server | None] = []
    try:
        for server, config in zip(servers, configs, strict=True):
            try:
                wait_service(server, config)
                started.append(server)
            except StartError as exc:
                started.append(None)
                run.add(error_row(config.workers, config.label, "start", str(exc)))
    except BaseException:  # interrupted while waiting: leave no server behind
        stop_all(list(servers))
        raise
    return started


def error_row(workers: int | None, server: str, what: str, message: str) -> Row:
    """What could not be measured, and why (a server that did not start, a reply that could not be captured)."""
    text = " ".join(message.split())[:600]
    return {"kind": "error", "workers": workers, "server": server, "method": what, "message": text}


def stop_all(servers: list[Server | None]) -> None:
    for server in servers:
        if server is not None:
            stop(server)


def warm_up(run: Run, target: str, make: PayloadFor) -> None:
    """Load at the largest in-flight count before anything is measured (TorchScript specializes per batch size;
    allocators grow), so 'RSS after warm-up' and the first rows are not start-up costs."""
    if run.opts.warmup_load <= 0:
        return
    for method in run.opts.methods:
        load = Load(max(run.opts.inflight), run.opts.warmup_load, 0.0, procs=run.opts.loadgen_procs)
        run_load(target, [make(method, run.model)], load, run.work / "requests")


def capture_replies(run: Run, service: Server) -> dict[str, Path]:
    """The service's reply to each benchmark request, saved for the transport server to send back."""
    files = {}
    for method in run.opts.methods:
        payload = service_request(method, run.model)
        files[payload.path] = Payload(payload.path, capture(service.target, payload)).save(run.work / "replies", method)
    return files


def side_by_side(run: Run, workers: int, servers: list[Compared]) -> None:
    """Each method at each in-flight count on each server in turn, so the rows compared were measured together."""
    for method in run.opts.methods:
        for inflight in run.opts.inflight:
            for label, target, make in servers:
                row = load_row(
                    Label(label, workers, method),
                    target,
                    make(method, run.model),
                    run.load(inflight, workers),
                    run.work / "requests",
                )
                run.add(row)


def bulk(run: Run, workers: int, service: Server) -> None:
    """Sample n=bulk_n (one request at a time) and one SampleStream of stream_n images."""
    sample = service_request("Sample", run.model, run.opts.bulk_n)
    run.add(
        load_row(
            Label("service", workers, "Sample"),
            service.target,
            sample,
            Load(1, run.opts.seconds, run.opts.warmup, procs=run.opts.loadgen_procs),
            run.work / "requests",
        )
    )
    stream = sample_stream(run.model, run.opts.stream_n)
    run.add(
        load_row(
            Label("service", workers, "SampleStream"),
            service.target,
            stream,
            Load(1, 0.0, 0.0, calls=1, procs=run.opts.loadgen_procs),
            run.work / "requests",
        )
    )


def memory_row(kind: str, workers: int, pid: int, warm_kb: int, **extra: Any) -> Row:
    end_kb, hwm_kb = memory_kb(pid, "VmRSS"), memory_kb(pid, "VmHWM")
    return {
        "kind": kind,
        "workers": workers,
        "rss_warm_kb": warm_kb,
        "rss_end_kb": end_kb,
        "hwm_kb": hwm_kb,
        "ratio": end_kb / warm_kb if warm_kb else None,
        **extra,
    }


def local_phase(run: Run, workers: int) -> None:
    """Transport, service (batching on) and service (batching off) side by side; then bulk and memory."""
    o = run.opts
    on = ServiceConfig("service", o.repo, o.max_batch_size, None, o.torch_threads, workers)
    off = replace(on, label="service-nobatch", max_batch_size=1, max_wait_ms=0.0)
    servers = start(run, [on, off])
    try:
        service, nobatch = servers
        others: list[Compared] = [] if nobatch is None else [("service-nobatch", nobatch.target, service_request)]
        if service is None:
            side_by_side(run, workers, others)
        else:
            with_transport(run, workers, service, others)
    finally:
        stop_all(servers)


def with_transport(run: Run, workers: int, service: Server, others: list[Compared]) -> None:
    try:
        replies = capture_replies(run, service)
    except Exception as exc:  # a service that cannot answer one request: say so, measure nothing against it
        run.add(error_row(workers, "service", "capture", str(exc)))
        side_by_side(run, workers, others)
        return
    for _, target, make in [("service", service.target, service_request), *others]:
        warm_up(run, target, make)
    warm_kb = memory_kb(service.process.pid, "VmRSS")
    transport = start_transport(replies, workers, run.logs)
    try:
        trio: list[Compared] = [
            ("transport", transport.target, service_request),
            ("service", service.target, service_request),
        ]
        side_by_side(run, workers, trio + others)
    finally:
        stop(transport)
    bulk(run, workers, service)
    run.add(memory_row("memory", workers, service.process.pid, warm_kb))


def triton_phase(run: Run) -> None:
    """Triton called directly vs through the service (--backend triton), one tritonserver for all workers."""
    o = run.opts
    try:
        triton, python_repo = start_triton(o.repo, run.work, o.max_batch_size)
    except StartError as exc:
        run.add(error_row(None, "triton-direct", "start", str(exc)))
        return
    try:
        warm_up(run, triton.grpc_url, triton_request)
        for workers in o.workers:
            extra = ("--backend", "triton", "--triton-url", triton.grpc_url)
            config = ServiceConfig(
                "service-triton", python_repo, o.max_batch_size, None, o.torch_threads, workers, extra
            )
            [service] = start(run, [config])
            if service is None:
                continue
            try:
                warm_up(run, service.target, service_request)
                pair: list[Compared] = [
                    ("triton-direct", triton.grpc_url, triton_request),
                    ("service-triton", service.target, service_request),
                ]
                side_by_side(run, workers, pair)
            finally:
                stop(service)
    finally:
        triton.stop()


def soak_phase(run: Run) -> None:
    """One constant mixed load for --soak seconds; the service's RSS sampled along the way."""
    o, workers = run.opts, run.opts.workers[0]
    [service] = start(run, [ServiceConfig("service", o.repo, o.max_batch_size, None, o.torch_threads, workers)])
    if service is None:
        return
    try:
        payloads = [service_request(m, run.model) for m in o.methods]
        high = targets.TARGET_INFLIGHT if targets.TARGET_INFLIGHT in o.inflight else max(o.inflight)
        warm = Load(high, min(30.0, max(5.0, o.soak / 10)), 0.0, procs=o.loadgen_procs)
        run_load(service.target, payloads, warm, run.work)
        warm_kb = memory_kb(service.process.pid, "VmRSS")
        load = replace(run.load(high, workers), seconds=o.soak, warmup=0.0)
        stats, samples = sampled_load(run, service, payloads, load)
        label = {"kind": "load", "server": "service", "workers": workers, "method": "+".join(o.methods), "n": 1}
        run.add({**label, "inflight": high, "procs": load.client_procs, **stats, "images_per_s": stats["rate"]})
        run.add(memory_row("soak", workers, service.process.pid, warm_kb, seconds=o.soak, rss_samples_kb=samples))
    finally:
        stop(service)


def sampled_load(run: Run, service: Server, payloads: list[Payload], load: Load) -> tuple[Row, list[list[float]]]:
    argv = loadgen_argv(service.target, payloads, load, run.work / "requests")
    began, samples = time.perf_counter(), []
    with subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        while proc.poll() is None:
            time.sleep(min(5.0, load.seconds / 20))
            samples.append([round(time.perf_counter() - began, 1), memory_kb(service.process.pid, "VmRSS")])
        out, err = proc.communicate()
    return parse_result(subprocess.CompletedProcess(argv, proc.returncode, out, err)), samples


# --- the run -----------------------------------------------------------------------------------------------


def benchmark(run: Run) -> None:
    measure_raw(run)
    for workers in run.opts.workers:
        local_phase(run, workers)
    if run.opts.triton:
        triton_phase(run)


def finish(run: Run, name: str) -> int:
    """Ratios, targets, tables, JSON (and the plot); exit status 1 if any row had an error."""
    o = run.opts
    targets.annotate(run.rows, o.max_batch_size)
    per_method = [] if name == "soak" else o.methods  # a soak measures memory only
    found = targets.targets(run.rows, per_method, o.inflight, o.max_batch_size)
    print()
    for table in all_tables(run.rows, found):
        print(as_text(table), end="\n\n")
    command = ("make bench: " if "MAKELEVEL" in os.environ else "") + shlex.join(
        ["python", "-m", "benchmarks.suite", *sys.argv[1:]]
    )
    meta = {
        **machine.describe(command),
        "wall_s": round(time.perf_counter() - run.started, 1),
        "options": _jsonable(vars(o)),
        "loadgen_procs": o.loadgen_procs,  # client processes per load generator (fewer on rows with fewer in flight)
        "interrupted": run.interrupted,
    }
    document = {"meta": meta, "rows": run.rows, "targets": found}
    o.out.mkdir(parents=True, exist_ok=True)
    (o.out / f"{name}.json").write_text(json.dumps(document, indent=1) + "\n")
    if name == "bench":
        report.plot(document, o.out / "bench.png")
    failed = [r for r in run.rows if targets.failed(r)]
    print(f"wrote {o.out / (name + '.json')} in {meta['wall_s']:.0f} s; {len(failed)} row(s) with errors")
    if run.interrupted:
        print("INTERRUPTED: the run was stopped; the JSON holds only the rows measured before that", flush=True)
        return 130
    return 1 if failed else 0


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.suite", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=DEFAULT_REPOSITORY, help="model repository (its default model)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results", help="results folder")
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per row")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured load before each row, seconds")
    p.add_argument("--warmup-load", type=float, default=1.0, help="per method, before a server's first row")
    p.add_argument("--inflight", type=int, nargs="+", default=[1, 8, 64, 256], help="concurrent requests")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--workers", type=int, nargs="+", default=[1], help="service processes (--workers N if N > 1)")
    p.add_argument("--torch-threads", type=int, default=0, help="service and raw networks (0: torch's default)")
    p.add_argument("--max-batch-size", type=int, default=64, help="the service's, and the raw batch compared")
    p.add_argument("--raw-seconds", type=float, default=1.0, help="per raw batch size")
    p.add_argument("--raw-batches", type=int, nargs="+", default=[2**i for i in range(10)])
    p.add_argument("--bulk-n", type=int, default=1024, help="images per bulk Sample request")
    p.add_argument("--stream-n", type=int, default=100_000, help="images in the one SampleStream call")
    p.add_argument(
        "--loadgen-procs",
        type=int,
        default=1,
        help="client processes per load generator, every row alike (one process saturates a core before a "
        "multi-worker server does); a row with fewer in flight gets one per request",
    )
    p.add_argument("--triton", action=argparse.BooleanOptionalAction, default=True, help="Triton rows (slow)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny run (the test's): 0.5 s rows, 8 in flight only, no Triton, a 1024-image stream",
    )
    p.add_argument("--soak", type=float, default=0.0, help="instead: constant load this many seconds, RSS drift")
    o = p.parse_args(argv)
    if o.loadgen_procs < 1:
        p.error("--loadgen-procs must be at least 1")
    if o.quick:
        o.seconds, o.warmup, o.warmup_load, o.raw_seconds, o.triton = 0.5, 0.2, 0.0, 0.2, False
        o.inflight, o.raw_batches, o.stream_n = [8], [1, o.max_batch_size], 1024
    return o


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM too unwinds through every `finally`, which stops the servers started


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    opts = parse_args(argv)
    model = load_default(opts.repo)
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        run = Run(opts, model, Path(work))
        name = "soak" if opts.soak > 0 else "bench"
        try:
            if opts.soak > 0:
                soak_phase(run)
            else:
                benchmark(run)
        except KeyboardInterrupt:  # a deadline (timeout's SIGTERM) or Ctrl-C: keep what was measured
            if not run.rows:
                raise
            run.interrupted = True
            print("\ninterrupted: writing the rows measured so far", flush=True)
        return finish(run, name)


if __name__ == "__main__":
    sys.exit(main())
