"""A real Prometheus server (Debian's `prometheus` binary) as a child process on a temporary directory, and a
small client for its HTTP API.

The server listens on port 0 (the OS picks) and we read the real port from its own log line
(`msg="Listening on" address=127.0.0.1:PORT`), so there is no probe-then-close race.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LISTENING = re.compile(r'msg="Listening on" address=([\d.]+):(\d+)')


class PrometheusError(RuntimeError):
    pass


@dataclass(frozen=True)
class ScrapeJob:
    name: str
    targets: Sequence[str]  # host:port
    metrics_path: str = "/metrics"


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusError("the `prometheus` binary is not on PATH: `make system-deps` (Debian package prometheus)")
    return binary


def render_config(jobs: Sequence[ScrapeJob], scrape_interval: str, rule_files: Sequence[Path] = ()) -> str:
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {"job_name": j.name, "metrics_path": j.metrics_path, "static_configs": [{"targets": list(j.targets)}]}
            for j in jobs
        ],
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    return json.dumps(config, indent=1)  # JSON is YAML


@dataclass
class PrometheusServer:
    """`start()` runs prometheus scraping `jobs` every `scrape_interval`; `stop()` ends it."""

    workdir: Path
    jobs: Sequence[ScrapeJob]
    scrape_interval: str = "1s"
    rule_files: Sequence[Path] = ()
    host: str = "127.0.0.1"
    port: int = 0  # 0: the OS picks; the real one is read from the server's log
    retention: str = "1d"
    process: subprocess.Popen[bytes] | None = None
    api: PrometheusApi | None = field(default=None, init=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(render_config(self.jobs, self.scrape_interval, self.rule_files))
        cmd = [
            prometheus_binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while self.port == 0:
            self._check_alive()
            found = LISTENING.search(self.log_path.read_text(errors="replace"))
            if found:
                self.port = int(found.group(2))
            elif time.monotonic() > deadline:
                self.stop()
                raise PrometheusError(f"prometheus did not report its port; log:\n{self.log_tail()}")
            else:
                time.sleep(0.05)
        api = self.api = PrometheusApi(self.url)

        def ready() -> bool:
            self._check_alive()
            return api.ready()

        poll(ready, deadline - time.monotonic(), "prometheus ready", self.log_tail)
        return self

    def _check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise PrometheusError(f"prometheus exited; log:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def wait_for_targets_up(self, timeout_s: float = 60.0) -> None:
        """Until every configured target has been scraped successfully at least once."""
        assert self.api is not None
        wanted = {(j.name, t) for j in self.jobs for t in j.targets}
        api = self.api

        def all_up() -> bool:
            active = api.get("/api/v1/targets")["activeTargets"]
            up = {(t["labels"]["job"], t["labels"]["instance"]) for t in active if t["health"] == "up"}
            return wanted <= up

        poll(all_up, timeout_s, f"targets {sorted(wanted)} up", lambda: json.dumps(api.get("/api/v1/targets")))

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> PrometheusServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class PrometheusApi:
    url: str
    timeout_s: float = 10.0

    def get(self, path: str, **params: str | float) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=self.timeout_s) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=self.timeout_s) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector (or scalar, as one unlabelled series) at the server's now."""
        data = self.get("/api/v1/query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/query_range", query=expr, start=start, end=end, step=step)["result"])

    def label_values(self, label: str, metric: str) -> list[str]:
        return list(self.get(f"/api/v1/label/{label}/values", **{"match[]": metric}))


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    """The finite numbers of an instant query's result (NaN comes from 0/0, e.g. a quantile without traffic)."""
    values = [float(series["value"][1]) for series in result]
    return [v for v in values if math.isfinite(v)]


def poll(check: Callable[[], Any], timeout_s: float, what: str, detail: Callable[[], str] = str) -> Any:
    """Call `check` until it returns something truthy; raise with `detail()` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise PrometheusError(f"timed out after {timeout_s:.0f}s waiting for {what} ({last_error}):\n{detail()}")
        time.sleep(0.1)
