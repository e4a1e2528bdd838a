"""The Grafana dashboard (deploy/grafana/dashboards/vae-service.json) as data: its panels, their PromQL with the
template variables substituted the way Grafana does, and the metric names each expression uses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "vae-service.json"
SHIPPED_REPOSITORY = REPO / "deploy" / "model_repository"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
GPU_ONLY = "[GPU only]"  # a panel whose description starts with this has no data on a machine without a GPU

# Triton's metrics (tritonserver 2.51), as its /metrics shows them on a CPU machine; the live Triton test checks
# this list against the real server. GPU ones exist only where Triton sees a GPU.
TRITON_METRICS = frozenset({
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count", "nv_inference_exec_count",
    "nv_inference_request_duration_us", "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count", "nv_pinned_memory_pool_total_bytes", "nv_pinned_memory_pool_used_bytes",
    "nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes",
})  # fmt: skip
TRITON_GPU_METRICS = frozenset({
    "nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes", "nv_gpu_power_usage",
    "nv_gpu_power_limit", "nv_energy_consumption",
})  # fmt: skip
# series Prometheus adds to every scraped target
PROMETHEUS_METRICS = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped",
                                "scrape_samples_post_metric_relabeling", "scrape_series_added"})  # fmt: skip

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
             "inf", "nan"}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([^,]+?)\s*,\s*(\w+)\s*\)\s*$")


@dataclass(frozen=True)
class Target:
    ref: str
    expr: str
    legend: str
    format: str  # time_series, heatmap, table


@dataclass(frozen=True)
class Panel:
    id: int
    title: str
    type: str
    row: str
    description: str
    grid: tuple[int, int, int, int]  # x, y, w, h in Grafana's 24-column grid
    targets: tuple[Target, ...]
    raw: Mapping[str, Any]

    @property
    def gpu_only(self) -> bool:
        return self.description.startswith(GPU_ONLY)

    @property
    def unit(self) -> str:
        return str(self.raw.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"))

    def metric_names(self) -> set[str]:
        return {name for t in self.targets for name in metric_names(t.expr)}


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def panels(dashboard: Mapping[str, Any]) -> list[Panel]:
    """Every non-row panel, in order, with the title of the row above it (collapsed rows' panels included)."""
    found: list[Panel] = []
    row = ""
    for raw in dashboard["panels"]:
        if raw["type"] == "row":
            row = raw["title"]
            found.extend(_panel(p, row) for p in raw.get("panels", []))
        else:
            found.append(_panel(raw, row))
    return found


def _panel(raw: Mapping[str, Any], row: str) -> Panel:
    g = raw["gridPos"]
    targets = tuple(
        Target(t["refId"], t["expr"], t.get("legendFormat", ""), t.get("format", "time_series"))
        for t in raw.get("targets", [])
    )
    grid = (g["x"], g["y"], g["w"], g["h"])
    return Panel(raw["id"], raw["title"], raw["type"], row, raw.get("description", ""), grid, targets, raw)


def variables(dashboard: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Template variable name -> (metric, label) of its `label_values(metric, label)` query."""
    found = {}
    for var in dashboard.get("templating", {}).get("list", []):
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = _LABEL_VALUES.match(query)
        if var["type"] != "query" or match is None:
            raise ValueError(f"variable {var['name']}: only label_values(metric, label) queries are supported: {query}")
        found[var["name"]] = (match.group(1), match.group(2))
    return found


def substitute(expr: str, values: Mapping[str, Sequence[str]], rate_interval: str) -> str:
    """What Grafana sends to Prometheus: $__rate_interval replaced, a multi-value variable as a regex alternation
    of its (regex-escaped) values, as its Prometheus datasource does for "All" without a custom all value."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name == "__rate_interval":
            return rate_interval
        if name not in values:
            raise KeyError(f"no value for template variable ${name} in: {expr}")
        escaped = [re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\\\1", v) for v in values[name]]
        return "(" + "|".join(escaped) + ")"

    return _VARIABLE.sub(replace, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords, label names
    (inside {}, by(), on(), group_left() ...), durations ([...]) or parts of strings and numbers."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _LABEL_LIST.sub(" ", s)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(s):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def service_metric_names(repository: Path = SHIPPED_REPOSITORY) -> set[str]:
    """Every sample name the service's registry exports once it has described its models (read from the code and
    the shipped repository, not from a running server)."""
    from prometheus_client import CollectorRegistry

    from service.metrics import ServiceMetrics
    from vaecore.repository import load_repository

    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    metrics.describe_models(load_repository(repository), "local", max_queue=1, latent_health=True)
    return sample_names(registry.collect())


def sample_names(families: Iterable[Any]) -> set[str]:
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",)}  # fmt: skip
    names: set[str] = set()
    for family in families:
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
