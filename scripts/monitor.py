"""`make monitor`: watch the service here. Starts the service on the shipped model (local backend, or with
--triton a real tritonserver from nvidia-pytriton and the service on --backend triton), a little continuous traffic
of every RPC, and a real Prometheus scraping both (with deploy/prometheus/rules loaded when present); prints the
URLs; after --minutes draws docs/images/dashboard.png from the Grafana dashboard's panels; runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from tools import dashboard  # noqa: E402
from tools.prom import PrometheusApi, PrometheusServer, ScrapeJob, finite_values, poll  # noqa: E402
from tools.render import format_value, render  # noqa: E402
from tools.traffic import Traffic  # noqa: E402

RULES = REPO / "deploy" / "prometheus" / "rules"
SERVING = re.compile(r"on port (\d+) .*metrics port (\d+)")


def say(message: str) -> None:
    print(f"[monitor {time.strftime('%H:%M:%S')}] {message}", flush=True)


def rule_files() -> list[Path]:
    return sorted(p for p in RULES.glob("*") if p.suffix in (".yml", ".yaml")) if RULES.is_dir() else []


@contextlib.contextmanager
def triton_server(repository: Path, workdir: Path) -> Iterator[object]:
    from training.export import derive_python_variant
    from training.triton_local import TritonServer

    python_repo = workdir / "triton_repository"
    derive_python_variant(repository, python_repo)
    say("starting tritonserver (nvidia-pytriton, Python-backend variant of the repository) ...")
    server = TritonServer(python_repo, workdir / "triton").start()
    say(f"tritonserver ready: gRPC 127.0.0.1:{server.grpc_port}, metrics 127.0.0.1:{server.metrics_port}")
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def service_process(args: argparse.Namespace, workdir: Path, triton_url: str | None) -> Iterator[tuple[int, int]]:
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(args.port),
           "--metrics-port", str(args.metrics_port), "--model-repository", str(args.model_repository)]  # fmt: skip
    if triton_url:
        cmd += ["--backend", "triton", "--triton-url", triton_url]
    log_path = workdir / "service.log"
    say(f"starting the service: {' '.join(cmd[1:])} (log {log_path})")
    with log_path.open("ab") as log:
        process = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:

        def ports() -> tuple[int, int] | None:
            if process.poll() is not None:
                raise RuntimeError(f"the service exited; log:\n{log_path.read_text()[-4000:]}")
            found = SERVING.search(log_path.read_text(errors="replace"))
            return (int(found.group(1)), int(found.group(2))) if found else None

        port, metrics_port = poll(ports, 120, "the service to start", lambda: log_path.read_text()[-4000:])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="vae.v1.VaeService")
            poll(lambda: health.Check(request, timeout=2).status == health_pb2.HealthCheckResponse.SERVING, 120,
                 "the service to be SERVING", lambda: log_path.read_text()[-4000:])  # fmt: skip
        yield port, metrics_port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def progress(api: PrometheusApi, traffic: Traffic, started: float, total_s: float | None) -> str:
    def one(expr: str, unit: str) -> str:
        values = finite_values(api.query(expr))
        return format_value(values[0], unit) if values else "-"

    elapsed = time.monotonic() - started
    clock = f"{elapsed / 60:4.1f}/{total_s / 60:g} min" if total_s else f"{elapsed / 60:4.1f} min"
    parts = [
        clock,
        f"sent {traffic.tally.total()} RPCs ({traffic.tally.errors()} meant to fail)",
        f"service {one('sum(rate(vae_requests_total[30s]))', 'reqps')}",
        f"p99 {one('histogram_quantile(0.99, sum by (le) (rate(vae_request_duration_seconds_bucket[30s])))', 's')}",
        f"images/s {one('sum(rate(vae_items_processed_total[30s]))', 'short')}",
    ]
    triton = finite_values(api.query("sum(rate(nv_inference_request_success[30s]))"))
    if triton:
        parts.append(f"Triton {format_value(triton[0], 'reqps')}")
    return " | ".join(parts)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--triton", action="store_true", help="serve through a real tritonserver (nvidia-pytriton)")
    parser.add_argument("--minutes", type=float, default=3.0, help="traffic before the dashboard is rendered")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "images" / "dashboard.png")
    parser.add_argument("--exit-after-render", action="store_true", help="stop once the PNG is written")
    parser.add_argument("--model-repository", type=Path, default=REPO / "deploy" / "model_repository")
    parser.add_argument("--port", type=int, default=50051, help="service gRPC port (0: any free one)")
    parser.add_argument("--metrics-port", type=int, default=8000, help="service /metrics port (0: any free one)")
    parser.add_argument("--prometheus-port", type=int, default=9090, help="Prometheus port (0: any free one)")
    parser.add_argument("--threads", type=int, default=3, help="traffic threads, each looping over every RPC")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds each traffic thread rests between rounds")
    args = parser.parse_args(argv)
    # Ctrl-C or SIGTERM: stop the traffic, then the service, Prometheus and Triton (even when started in the
    # background, where a shell leaves SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vae-monitor-")))
        triton = stack.enter_context(triton_server(args.model_repository, workdir)) if args.triton else None
        triton_url = f"127.0.0.1:{triton.grpc_port}" if triton else None  # type: ignore[attr-defined]
        port, metrics_port = stack.enter_context(service_process(args, workdir, triton_url))
        jobs = [ScrapeJob("vae-service", [f"127.0.0.1:{metrics_port}"])]
        if triton:
            jobs.append(ScrapeJob("triton", [f"127.0.0.1:{triton.metrics_port}"]))  # type: ignore[attr-defined]
        rules = rule_files()
        say(f"starting Prometheus (scrape every 1s; rule files: {', '.join(p.name for p in rules) or 'none'}) ...")
        prometheus = PrometheusServer(workdir / "prometheus", jobs, "1s", rules, port=args.prometheus_port)
        stack.enter_context(prometheus.start())
        prometheus.wait_for_targets_up()
        assert prometheus.api is not None
        print(f"\n  Prometheus UI   {prometheus.url}   (try: sum by (method, code) (rate(vae_requests_total[1m])))")
        print(f"  Service gRPC    127.0.0.1:{port}   (e.g. .venv/bin/vae --target 127.0.0.1:{port} info)")
        print(f"  Service metrics http://127.0.0.1:{metrics_port}/metrics")
        if triton:
            print(f"  Triton metrics  http://127.0.0.1:{triton.metrics_port}/metrics")  # type: ignore[attr-defined]
        print(f"  Alerts          {prometheus.url}/alerts\n", flush=True)

        traffic = stack.enter_context(Traffic(f"127.0.0.1:{port}"))
        failures: list[Exception] = []
        traffic.start(args.threads, args.pause, on_error=failures.append)
        started = time.monotonic()
        render_at = started + args.minutes * 60
        rendered = False
        try:
            while True:
                time.sleep(10 if not rendered else 60)
                if failures:
                    say(f"unexpected RPC failure: {failures[-1]}")
                    failures.clear()
                say(progress(prometheus.api, traffic, started, None if rendered else args.minutes * 60))
                if not rendered and time.monotonic() >= render_at:
                    board = dashboard.load()
                    values = {name: prometheus.api.label_values(label, metric)
                              for name, (metric, label) in dashboard.variables(board).items()}  # fmt: skip
                    backend = "Triton backend (tritonserver 2.51, CPU)" if triton else "local backend"
                    subtitle = f"make monitor, shipped model, {backend}"
                    out = render(board, prometheus.api, values, args.png, args.minutes, "30s", subtitle=subtitle)
                    say(f"wrote {out}")
                    rendered = True
                    if args.exit_after_render:
                        break
                    say("still running: Ctrl-C to stop")
        except KeyboardInterrupt:
            say("stopping")
        traffic.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
