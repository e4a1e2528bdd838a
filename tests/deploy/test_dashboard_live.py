"""Every query of every panel of the Grafana dashboard returns data from a real Prometheus scraping the real
service (local backend, then the Triton backend against a real tritonserver, with Triton scraped too) after a
little traffic of every RPC. Template variables are substituted with the values Prometheus knows, as Grafana does.

Excluded, and only these: panels explicitly marked GPU only (Triton exports nv_gpu_* only where it sees a GPU),
and with the local backend the panels of Triton's own metrics (no Triton runs then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tools import dashboard
from tools.dashboard import Panel, Target
from tools.prom import PrometheusError, finite_values, poll
from tools.traffic import METHODS

if TYPE_CHECKING:
    from tests.deploy.conftest import LiveStack

RATE_INTERVAL = "1m"  # what $__rate_interval becomes; Prometheus scrapes every second here
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return dashboard.load()


def variable_values(board: dict[str, Any], stack: LiveStack) -> dict[str, list[str]]:
    return {name: stack.api.label_values(label, metric) for name, (metric, label) in dashboard.variables(board).items()}


def _uses_triton(panel: Panel) -> bool:
    return bool(panel.metric_names() & dashboard.TRITON_METRICS)


def checked_targets(board: dict[str, Any], backend: str) -> list[tuple[Panel, Target]]:
    return [
        (panel, target)
        for panel in dashboard.panels(board)
        if not panel.gpu_only and (backend == "triton" or not _uses_triton(panel))
        for target in panel.targets
    ]


def values_of(stack: LiveStack, expr: str) -> list[float]:
    """The finite values an instant query returns now (0/0 = NaN counts as no data)."""
    return finite_values(stack.api.query(expr))


def test_the_traffic_reached_every_rpc_and_some_failed(live_stack: LiveStack) -> None:
    for method in METHODS:
        assert "OK" in live_stack.tally.codes(method), method
    assert "INVALID_ARGUMENT" in live_stack.tally.codes("Sample")
    assert "NOT_FOUND" in live_stack.tally.codes("GetModelInfo")


def test_template_variables_list_the_served_models_and_every_method(board: dict, live_stack: LiveStack) -> None:
    values = variable_values(board, live_stack)
    assert values["model"] == ["tiny", "tiny2"]
    assert sorted(values["method"]) == sorted(METHODS)


def test_every_panel_query_returns_data(board: dict, live_stack: LiveStack) -> None:
    values = variable_values(board, live_stack)
    targets = checked_targets(board, live_stack.backend)
    panels_checked = {panel.id for panel, _ in targets}
    excluded = [p for p in dashboard.panels(board) if p.id not in panels_checked]
    assert all(p.gpu_only or (live_stack.backend == "local" and _uses_triton(p)) for p in excluded)
    if live_stack.backend == "triton":
        assert {p.title for p in excluded} == {p.title for p in dashboard.panels(board) if p.gpu_only}
    pending = {(panel.title, target.ref): dashboard.substitute(target.expr, values, RATE_INTERVAL)
               for panel, target in targets}  # fmt: skip

    def all_answered() -> bool:
        for key, expr in list(pending.items()):
            if values_of(live_stack, expr):
                del pending[key]
        return not pending

    try:
        poll(all_answered, DEADLINE_S, "every panel query to return data")
    except PrometheusError:
        pytest.fail("panel queries without data:\n" + "\n".join(f"{k}: {e}" for k, e in pending.items()))


def test_the_excluded_gpu_panels_use_only_triton_gpu_metrics(board: dict) -> None:
    gpu = [p for p in dashboard.panels(board) if p.gpu_only]
    assert gpu, "the dashboard should show GPU utilization and memory where Triton exports them"
    for panel in gpu:
        assert panel.metric_names() and panel.metric_names() <= dashboard.TRITON_GPU_METRICS, panel.title


def test_a_misspelled_metric_returns_no_data(board: dict, live_stack: LiveStack) -> None:
    """The same machinery on a copy of a panel query with one letter dropped from the metric name: no data."""
    values = variable_values(board, live_stack)
    panel = next(p for p in dashboard.panels(board) if p.title == "Requests/s by method and code")
    expr = dashboard.substitute(panel.targets[0].expr, values, RATE_INTERVAL)
    assert "vae_requests_total" in expr
    poll(lambda: values_of(live_stack, expr), DEADLINE_S, "the original query to return data")
    misspelled = expr.replace("vae_requests_total", "vae_request_total")
    assert live_stack.api.query(misspelled) == []
    assert values_of(live_stack, misspelled) == []


def test_the_metric_name_lists_match_what_is_scraped(live_stack: LiveStack) -> None:
    """The lists the static dashboard test checks names against are the names the real servers export."""

    def scraped(job: str) -> set[str]:
        result = live_stack.api.query(f'count by (__name__) ({{job="{job}"}})')
        return {series["metric"]["__name__"] for series in result} - dashboard.PROMETHEUS_METRICS

    service = scraped("vae-service")
    assert service <= dashboard.service_metric_names()
    assert {n for n in dashboard.service_metric_names() if not n.endswith("_created")} <= service
    if live_stack.backend == "triton":
        assert scraped("triton") >= dashboard.TRITON_METRICS
