"""Static checks of the Grafana dashboard and its provisioning: what Grafana's file provisioning needs (fixed
datasource uid, no ${DS_...} inputs, stable uid), every metric name one the service or Triton exports, every
expression valid PromQL (promtool), GPU-only panels marked, and the paths the compose file mounts.
Each checker is also shown rejecting a broken copy."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools import dashboard
from tools.dashboard import DATASOURCE, REPO

GRAFANA = REPO / "deploy" / "grafana"


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return dashboard.load()


@pytest.fixture(scope="module")
def known_metrics() -> set[str]:
    return (
        dashboard.service_metric_names()
        | dashboard.TRITON_METRICS
        | dashboard.TRITON_GPU_METRICS
        | dashboard.PROMETHEUS_METRICS
    )


# --- checkers (each returns a list of problems) ---------------------------------------------------------------


def datasource_problems(board: dict[str, Any]) -> list[str]:
    problems = []
    text = json.dumps(board)
    if "${DS_" in text or "__inputs" in board:
        problems.append("${DS_...} inputs: Grafana file provisioning does not resolve them")
    for raw in board["panels"]:
        for p in [raw, *raw.get("panels", [])]:
            if p["type"] == "row":
                continue
            if p.get("datasource") != DATASOURCE:
                problems.append(f"panel {p['title']!r}: datasource {p.get('datasource')}")
            for t in p.get("targets", []):
                if t.get("datasource") != DATASOURCE:
                    problems.append(f"panel {p['title']!r} target {t['refId']}: datasource {t.get('datasource')}")
    for var in board.get("templating", {}).get("list", []):
        if var.get("datasource") != DATASOURCE:
            problems.append(f"variable {var['name']}: datasource {var.get('datasource')}")
    return problems


def unknown_metric_problems(board: dict[str, Any], known: set[str]) -> list[str]:
    problems = []
    for panel in dashboard.panels(board):
        for target in panel.targets:
            for name in sorted(dashboard.metric_names(target.expr) - known):
                problems.append(f"panel {panel.title!r} target {target.ref}: unknown metric {name}")
    for name, (metric, _) in dashboard.variables(board).items():
        if metric not in known:
            problems.append(f"variable {name}: unknown metric {metric}")
    return problems


def gpu_marking_problems(board: dict[str, Any]) -> list[str]:
    """Marked GPU only if and only if the panel uses a metric Triton exports only on GPU machines."""
    problems = []
    for panel in dashboard.panels(board):
        uses_gpu = bool(panel.metric_names() & dashboard.TRITON_GPU_METRICS)
        if uses_gpu != panel.gpu_only:
            problems.append(
                f"panel {panel.title!r}: uses GPU metrics {uses_gpu}, marked {dashboard.GPU_ONLY} {panel.gpu_only}"
            )
    return problems


def promql_problems(board: dict[str, Any], workdir: Path) -> list[str]:
    """`promtool check rules` on every expression (variables substituted) written as a recording rule."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not on PATH: `make system-deps` (Debian package prometheus)"
    values = {name: ["a", "b.c"] for name in dashboard.variables(board)}
    rules = [{"record": f"dashboard:panel_{p.id}:{t.ref}", "expr": dashboard.substitute(t.expr, values, "1m")}
             for p in dashboard.panels(board) for t in p.targets]  # fmt: skip
    path = workdir / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    return [] if result.returncode == 0 else [result.stdout + result.stderr]


def _mutated(board: dict[str, Any], title: str, change: Any) -> dict[str, Any]:
    broken = copy.deepcopy(board)
    panel = next(p for p in broken["panels"] if p.get("title") == title)
    change(panel)
    return broken


# --- the dashboard --------------------------------------------------------------------------------------------


def test_dashboard_identity(board: dict[str, Any]) -> None:
    assert board["uid"] == "vae-service"
    assert board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_uses_the_provisioned_datasource(board: dict[str, Any]) -> None:
    assert datasource_problems(board) == []
    broken = _mutated(
        board, "Queue depth", lambda p: p.update(datasource={"type": "prometheus", "uid": "${DS_PROMETHEUS}"})
    )
    assert len(datasource_problems(broken)) == 2  # the ${DS_ text and the panel's uid


def test_every_metric_name_is_exported(board: dict[str, Any], known_metrics: set[str]) -> None:
    assert unknown_metric_problems(board, known_metrics) == []

    def misspell(panel: dict[str, Any]) -> None:
        panel["targets"][0]["expr"] = panel["targets"][0]["expr"].replace("vae_queue_depth", "vae_queue_dept")

    problems = unknown_metric_problems(_mutated(board, "Queue depth", misspell), known_metrics)
    assert problems == ["panel 'Queue depth' target A: unknown metric vae_queue_dept"]


def test_the_dashboard_covers_issue_6(board: dict[str, Any]) -> None:
    """Every metric the issue asks to see is on some panel."""
    used = {name for p in dashboard.panels(board) for name in p.metric_names()}
    wanted = {
        "vae_requests_total", "vae_request_duration_seconds_bucket", "vae_items_processed_total",
        "vae_batch_size_bucket", "vae_batch_requests_bucket", "vae_queue_depth", "vae_queue_capacity",
        "vae_queue_wait_seconds_bucket", "vae_backend_duration_seconds_bucket", "vae_backend_errors_total",
        "vae_backend_up", "vae_requests_in_flight", "process_cpu_seconds_total", "process_resident_memory_bytes",
        "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us", "nv_inference_count", "nv_inference_exec_count",
        "nv_gpu_utilization", "nv_gpu_memory_used_bytes",
        "vae_latent_kl_nats_sum", "vae_latent_kl_nats_count", "vae_latent_active_units", "vae_model_info",
        "vae_score_nll_nats_bucket", "vae_model_test_nll_nats",
    }  # fmt: skip
    assert wanted - used == set()
    assert {"Latent health", "Triton"} <= {p.row for p in dashboard.panels(board)}


def test_gpu_only_panels_are_marked_and_only_those(board: dict[str, Any]) -> None:
    assert gpu_marking_problems(board) == []
    assert [p.title for p in dashboard.panels(board) if p.gpu_only] == ["GPU utilization", "GPU memory"]
    unmarked = _mutated(board, "GPU memory", lambda p: p.update(description="GPU memory."))
    assert len(gpu_marking_problems(unmarked)) == 1
    overmarked = _mutated(board, "Queue depth", lambda p: p.update(description=f"{dashboard.GPU_ONLY} no."))
    assert len(gpu_marking_problems(overmarked)) == 1


def test_every_expression_is_valid_promql(board: dict[str, Any], tmp_path: Path) -> None:
    assert promql_problems(board, tmp_path) == []
    broken = _mutated(board, "Queue depth", lambda p: p["targets"][0].update(expr="max by (model (vae_queue_depth)"))
    assert promql_problems(broken, tmp_path) != []


def test_every_panel_is_described_and_fits_the_grid(board: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard.panels(board):
        assert panel.description, panel.title
        assert panel.targets and all(t.expr for t in panel.targets), panel.title
        x, y, w, h = panel.grid
        assert x >= 0 and x + w <= 24, panel.title
        for cell in ((cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)):
            assert cell not in cells, f"{panel.title!r} overlaps {cells[cell]!r}"
            cells[cell] = panel.title


# --- the helpers the tests rely on -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (method, code) (rate(vae_requests_total{method=~"$method"}[$__rate_interval])) > 0',
            {"vae_requests_total"},
        ),
        ("max by (model) (a_b) * on (model) group_left (latent_dim) max by (model, latent_dim) (c:d)", {"a_b", "c:d"}),
        ("sum(rate(x_us[1m])) / sum(rate(y[5m] offset 1m)) / 1e6 and bool z", {"x_us", "y", "z"}),
        ('histogram_quantile(0.99, sum without (le_x) (rate(h_bucket{code!~"up|down"}[1m])))', {"h_bucket"}),
        ("nv_gpu_utilization", {"nv_gpu_utilization"}),
    ],
)
def test_metric_names_of_an_expression(expr: str, names: set[str]) -> None:
    assert dashboard.metric_names(expr) == names


def test_substitution_is_what_grafana_sends() -> None:
    expr = 'rate(m{model=~"$model", x=~"(${model})_.*", y="[[method]]"}[$__rate_interval])'
    out = dashboard.substitute(expr, {"model": ["tiny", "a.b"], "method": ["Score"]}, "1m")
    assert out == r'rate(m{model=~"(tiny|a\\.b)", x=~"((tiny|a\\.b))_.*", y="(Score)"}[1m])'
    with pytest.raises(KeyError):
        dashboard.substitute('m{a=~"$nope"}', {}, "1m")


# --- provisioning ---------------------------------------------------------------------------------------------


def test_datasource_provisioning() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = config["datasources"]
    assert source["uid"] == DATASOURCE["uid"] and source["type"] == DATASOURCE["type"]
    assert source["url"] == "http://prometheus:9090"


def test_dashboard_provider_and_compose_mounts_agree() -> None:
    """The provider reads the folder compose mounts the dashboards into; compose mounts provisioning where Grafana
    looks for it, and names the services the datasource URL and the scrape jobs use."""
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    (entry,) = provider["providers"]
    assert entry["type"] == "file"
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"prometheus", "grafana", "vae-service", "triton"} <= set(services)
    mounts = {}
    for volume in services["grafana"]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = (REPO / "deploy" / source).resolve()
    assert mounts["/etc/grafana/provisioning"] == (GRAFANA / "provisioning").resolve()
    assert mounts[entry["options"]["path"]] == dashboard.DASHBOARD.parent.resolve()
