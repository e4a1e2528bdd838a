"""Prometheus configuration, recording rules and alerts (deploy/prometheus/), checked by the real promtool:
`check config`, `check rules`, `test rules` (a firing and a non-firing case per alert), the annotations every
alert needs, the generated Kubernetes PrometheusRule kept in step, every metric and label name the rules read
checked against what the service really exports (and what a real tritonserver exports), and the service's rules
evaluated without error by a real Prometheus scraping the real service under traffic. Each checker is also shown
to reject a broken input, so none of these tests can pass vacuously. A missing promtool/prometheus is a failure."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.inprocess import serving
from tools.prom import PrometheusApi, PrometheusServer, ScrapeJob, poll
from tools.traffic import Traffic

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
CONFIGS = [PROMETHEUS / "prometheus.yml", PROMETHEUS / "prometheus-cpu.yml"]
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
SYNC_SCRIPT = ROOT / "scripts" / "sync_prometheus_rule.py"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
SEVERITIES = {"critical", "warning", "info"}

# Metric names a real tritonserver 2.51 (nvidia-pytriton 0.7.0, CPU, Python backend) exported on /metrics after
# one successful request, read on this machine; the GPU metrics (nv_gpu_*) exist only where a GPU is.
TRITON_METRICS = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count", "nv_inference_exec_count",
    "nv_inference_request_duration_us", "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count", "nv_pinned_memory_pool_total_bytes", "nv_pinned_memory_pool_used_bytes",
    "nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes",
}  # fmt: skip
TRITON_LABELS = {"model", "version", "reason"}  # reason: on nv_inference_request_failure only
TARGET_LABELS = {"job", "instance", "namespace"}  # added by Prometheus (namespace by the Prometheus Operator)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed (Debian package `prometheus`; `make setup` installs it)"
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def groups_of(paths: list[Path]) -> list[dict[str, Any]]:
    return [g for p in paths for g in load(p)["groups"]]


def all_rules() -> list[dict[str, Any]]:
    return [r for g in groups_of(RULE_FILES) for r in g["rules"]]


def all_alerts() -> list[dict[str, Any]]:
    return [r for r in all_rules() if "alert" in r]


def test_there_is_something_to_check() -> None:
    assert len(RULE_FILES) >= 2 and len(TEST_FILES) >= 2 and len(all_alerts()) >= 10


# ---------------------------------------------------------------------------------------------------------------
# promtool check config / check rules / test rules
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_promtool_accepts_the_config_from_any_directory(config: Path, tmp_path: Path) -> None:
    # From an unrelated working directory: rule_files must resolve relative to the config file itself.
    result = promtool("check", "config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    loaded = load(config)["rule_files"]
    assert f"SUCCESS: {len(loaded)} rule files found" in result.stdout, result.stdout


def test_configs_scrape_the_contract_jobs_and_load_the_right_rules() -> None:
    full, cpu = (load(c) for c in CONFIGS)
    for config in (full, cpu):
        assert config["global"]["scrape_interval"] == "15s"
    targets = {c: {j["job_name"]: [t for s in j["static_configs"] for t in s["targets"]] for j in cfg["scrape_configs"]}
               for c, cfg in (("full", full), ("cpu", cpu))}  # fmt: skip
    assert targets["full"] == {"vae-service": ["vae-service:8000"], "triton": ["triton:8002"]}
    assert targets["cpu"] == {"vae-service": ["vae-service:8000"]}
    # The full config loads every rule file; the CPU one all but Triton's (no Triton runs there).
    assert sorted(PROMETHEUS / p for p in full["rule_files"]) == RULE_FILES
    assert sorted(PROMETHEUS / p for p in cpu["rule_files"]) == [p for p in RULE_FILES if "triton" not in p.name]


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_promtool_accepts_each_rule_file(rule_file: Path) -> None:
    result = promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(test_file: Path, tmp_path: Path) -> None:
    result = promtool("test", "rules", str(test_file), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rejects_broken_configs_rules_and_expectations(tmp_path: Path) -> None:
    # A rule with a PromQL syntax error, and one with a misspelled field.
    bad_expr = tmp_path / "bad-expr.yml"
    bad_expr.write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: sum(rate(x[5m])\n")
    bad_field = tmp_path / "bad-field.yml"
    bad_field.write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n        expresion: up == 0\n")
    for path in (bad_expr, bad_field):
        result = promtool("check", "rules", str(path))
        assert result.returncode != 0, f"promtool accepted {path.name}: {result.stdout}"
    # A config whose rule file does not exist.
    config = tmp_path / "prometheus.yml"
    config.write_text("rule_files:\n  - rules/missing.yml\nscrape_configs: []\n")
    assert promtool("check", "config", str(config)).returncode != 0
    # A unit test whose expectation is wrong: the real alert file, but VaeBackendDown expected not to fire.
    test = load(PROMETHEUS / "tests" / "vae-alerts.test.yml")
    test["rule_files"] = [str((PROMETHEUS / "tests" / p).resolve()) for p in test["rule_files"]]
    case = next(t for t in test["tests"] for a in t.get("alert_rule_test", []) if a["alertname"] == "VaeBackendDown"
                and a["exp_alerts"])  # fmt: skip
    for a in case["alert_rule_test"]:
        a["exp_alerts"] = []
    test["tests"] = [case]
    wrong = tmp_path / "wrong.test.yml"
    wrong.write_text(yaml.safe_dump(test))
    result = promtool("test", "rules", str(wrong))
    assert result.returncode != 0 and "VaeBackendDown" in result.stdout + result.stderr, result.stdout


# ---------------------------------------------------------------------------------------------------------------
# What every alert must carry, and that the promtool tests cover every alert both ways
# ---------------------------------------------------------------------------------------------------------------


def alert_problems(rule: dict[str, Any]) -> list[str]:
    """What an alerting rule lacks: severity, summary, description, a runbook line pointing at its section."""
    name, labels, annotations = rule.get("alert", "?"), rule.get("labels") or {}, rule.get("annotations") or {}
    problems = []
    if labels.get("severity") not in SEVERITIES:
        problems.append(f"{name}: severity label must be one of {sorted(SEVERITIES)}")
    for key in ("summary", "runbook"):
        if not str(annotations.get(key, "")).strip():
            problems.append(f"{name}: no {key} annotation")
    if not str(annotations.get("description") or annotations.get("message") or "").strip():
        problems.append(f"{name}: no description annotation")
    if f"deploy/README.md#runbook-{name.lower()}" not in str(annotations.get("runbook", "")):
        problems.append(f"{name}: runbook does not point at deploy/README.md#runbook-{name.lower()}")
    return problems


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    problems = [p for rule in all_alerts() for p in alert_problems(rule)]
    assert not problems, "\n".join(problems)


def test_the_annotation_check_catches_a_bare_alert() -> None:
    bare = {"alert": "Bare", "expr": "up == 0", "labels": {"severity": "sev1"}, "annotations": {"summary": "x"}}
    assert len(alert_problems(bare)) == 4  # severity, runbook, description, runbook link


def test_alert_and_group_names_are_unique() -> None:
    # A PrometheusRule (which wraps all the files) rejects duplicate group names; duplicate alerts confuse routing.
    groups = [g["name"] for g in groups_of(RULE_FILES)]
    alerts = [r["alert"] for r in all_alerts()]
    assert len(groups) == len(set(groups)) and len(alerts) == len(set(alerts))


def coverage(test_files: list[Path]) -> tuple[set[str], set[str]]:
    """Alert names with a firing case (non-empty exp_alerts) and with a non-firing case (empty exp_alerts)."""
    firing, silent = set(), set()
    for path in test_files:
        for test in load(path)["tests"]:
            for case in test.get("alert_rule_test") or []:
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    return firing, silent


def test_every_alert_has_a_firing_and_a_non_firing_promtool_case() -> None:
    names = {r["alert"] for r in all_alerts()}
    firing, silent = coverage(TEST_FILES)
    assert not names - firing, f"alerts never tested firing: {sorted(names - firing)}"
    assert not names - silent, f"alerts never tested silent: {sorted(names - silent)}"
    assert not (firing | silent) - names, f"tests of unknown alerts: {sorted((firing | silent) - names)}"


def test_the_coverage_check_sees_a_missing_case(tmp_path: Path) -> None:
    one_sided = tmp_path / "one-sided.test.yml"
    one_sided.write_text(yaml.safe_dump({"tests": [{"alert_rule_test": [
        {"alertname": "A", "eval_time": "1m", "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
        {"alertname": "B", "eval_time": "1m", "exp_alerts": []},
    ]}]}))  # fmt: skip
    assert coverage([one_sided]) == ({"A"}, {"B"})


def test_unit_tests_load_the_rule_files_and_fix_the_group_order() -> None:
    # promtool evaluates the groups of a test in random order unless told; alerts reading recording rules would
    # then see this or last minute's values at random (flaky expectations). So each test file lists every group
    # of its rule files, recording groups first.
    tested = set()
    for path in TEST_FILES:
        test = load(path)
        files = [(path.parent / p).resolve() for p in test["rule_files"]]
        tested |= set(files)
        groups = groups_of(files)
        order = test.get("group_eval_order", [])
        assert sorted(order) == sorted(g["name"] for g in groups), path.name
        kinds = ["alert" if any("alert" in r for r in g["rules"]) else "record" for g in groups]
        by_name = dict(zip([g["name"] for g in groups], kinds, strict=True))
        assert [by_name[n] for n in order] == sorted(kinds, key=lambda k: k == "alert"), path.name
    assert tested == {p.resolve() for p in RULE_FILES}


# ---------------------------------------------------------------------------------------------------------------
# The Kubernetes PrometheusRule generated from the rule files
# ---------------------------------------------------------------------------------------------------------------


def sync_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_prometheus_rule", SYNC_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_is_what_the_sync_script_writes_now() -> None:
    result = subprocess.run([sys.executable, str(SYNC_SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rule = load(PROMETHEUS_RULE)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["name"] == "vae-service" and rule["metadata"]["labels"]["release"] == "prometheus"
    full = load(CONFIGS[0])
    assert rule["spec"] == {"groups": groups_of([PROMETHEUS / p for p in full["rule_files"]])}


def test_the_staleness_check_sees_an_edited_rule_file(tmp_path: Path) -> None:
    sync = sync_module()
    files = sync.rule_files()
    edited = tmp_path / files[0].name
    edited.write_text(files[0].read_text().replace("5m", "6m"))
    assert sync.render(files) == PROMETHEUS_RULE.read_text()
    assert sync.render([edited, *files[1:]]) != PROMETHEUS_RULE.read_text()


# ---------------------------------------------------------------------------------------------------------------
# Every metric the rules read exists (the service's live /metrics, Triton's verified list, or a recording rule),
# and so does every label they match or group by
# ---------------------------------------------------------------------------------------------------------------

PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                   "offset", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers that are not functions, keywords, label names,
    durations or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        word = match.group()
        if word.lower() in PROMQL_KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.99, sum by (job, le) (rate(vae_request_duration_seconds_bucket{method!="x"}[5m])))'
            ' / on (job) group_left () max by (job) (up{job="vae-service"} offset 1m) > bool 1e-12'
            ' and absent(job:vae_requests:rate5m)')  # fmt: skip
    assert metric_names(expr) == {"vae_request_duration_seconds_bucket", "up", "job:vae_requests:rate5m"}


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of each `name{...}` selector."""
    return [(m.group(1), set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2))))
            for m in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr)]  # fmt: skip


def grouping_labels(expr: str) -> set[str]:
    """Label names in by/without/on/ignoring/group_left/group_right lists."""
    lists = re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr)
    return {label.strip() for names in lists for label in names.split(",") if label.strip()}


def test_label_extraction() -> None:
    expr = 'sum by (job, le) (rate(x_bucket{method!="a", code=~"B|C"}[5m])) / on (job) group_left () max(up{job="j"})'
    assert selectors(expr) == [("x_bucket", {"method", "code"}), ("up", {"job"})]
    assert grouping_labels(expr) == {"job", "le"}


CANARY = "canary.broken-at-run-time"


@dataclass
class Live:
    exported: dict[str, set[str]]  # sample names on the service's /metrics before traffic, with their labels
    api: PrometheusApi  # a real Prometheus scraping the service every second, with the service's rule files
    rule_files: list[Path]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The service serving the shipped model (local backend; every series exists at zero from the start), a real
    Prometheus loading the rule files of the CPU profile's config, and a few rounds of every RPC."""
    settings = Settings(host="127.0.0.1", port=0, metrics_port=0, model_repository=ROOT / "deploy" / "model_repository",
                        torch_threads=1)  # type: ignore[arg-type]  # fmt: skip
    rule_files = [PROMETHEUS / p for p in load(CONFIGS[1])["rule_files"]]
    # Copies without the groups' own `interval` (1m for the 1d/3d windows), so every group is evaluated every
    # second like the rest instead of once in its first minute; the rules themselves are unchanged.
    copies = tmp_path_factory.mktemp("rules")
    for path in rule_files:
        content = load(path)
        for group in content["groups"]:
            group.pop("interval", None)
        (copies / path.name).write_text(yaml.safe_dump(content))
    # A canary that passes `promtool check rules` but fails at run time, on data (one-to-one matching `on
    # (method)` with a series per code on the left), to show that the health check below sees such errors.
    canary = tmp_path_factory.mktemp("canary") / "canary.yml"
    canary.write_text(yaml.safe_dump({"groups": [{"name": CANARY, "rules": [
        {"record": "canary:many_to_many", "expr": "vae_requests_total / on (method) vae_requests_in_flight"}]}]}))  # fmt: skip
    assert promtool("check", "rules", str(canary)).returncode == 0
    with serving(settings) as server:
        assert server.running is not None and server.running.metrics_port
        target = f"127.0.0.1:{server.running.metrics_port}"
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as response:
            text = response.read().decode()
        exported: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                exported.setdefault(sample.name, set()).update(sample.labels)
        jobs = [ScrapeJob("vae-service", [target])]
        loaded = [copies / p.name for p in rule_files] + [canary]
        with PrometheusServer(tmp_path_factory.mktemp("prometheus"), jobs, "1s", loaded) as prometheus:
            prometheus.wait_for_targets_up()
            assert prometheus.api is not None
            with Traffic(server.address, images_per_request=4, score_samples=8) as traffic:
                for seed in range(3):
                    traffic.round(seed, errors=True)
            yield Live(exported, prometheus.api, rule_files)


@pytest.fixture(scope="module")
def exported(live: Live) -> dict[str, set[str]]:
    return live.exported


def label_problems(rules: list[dict[str, Any]], exported: dict[str, set[str]]) -> list[str]:
    """Labels a rule matches on a metric that lacks them, or groups by although no metric has them."""
    any_label = TARGET_LABELS | TRITON_LABELS | {label for labels in exported.values() for label in labels}
    problems = []
    for rule in rules:
        name, expr = rule.get("alert") or rule.get("record"), str(rule["expr"])
        for metric, matched in selectors(expr):
            has = exported.get(metric, TRITON_LABELS if metric in TRITON_METRICS else any_label)
            problems += [f"{name}: {metric} has no label {label}" for label in sorted(matched - has - TARGET_LABELS)]
        problems += [f"{name}: no metric has a label {label}" for label in sorted(grouping_labels(expr) - any_label)]
    return problems


def unknown_metrics(rules: list[dict[str, Any]], exported: set[str]) -> dict[str, set[str]]:
    """Per rule, the metric names it reads that nothing provides."""
    recorded = {r["record"] for r in rules if "record" in r}
    known = exported | TRITON_METRICS | recorded | {"up"}
    unknown = {}
    for rule in rules:
        missing = metric_names(str(rule["expr"])) - known
        if missing:
            unknown[rule.get("alert") or rule.get("record")] = missing
    return unknown


def test_every_metric_and_label_the_rules_read_is_exported(exported: dict[str, set[str]]) -> None:
    assert {"vae_requests_total", "vae_score_nll_nats_count", "vae_model_test_nll_nats"} <= set(exported)
    assert exported["vae_requests_total"] == {"method", "code"}
    assert not unknown_metrics(all_rules(), set(exported))
    # Each name the rules read from the service really is the service's (not just any known name).
    used = {n for r in all_rules() for n in metric_names(str(r["expr"]))}
    assert {n for n in used if n.startswith(("vae_", "process_"))} <= set(exported)
    assert not label_problems(all_rules(), exported)


def test_a_misspelled_metric_or_label_is_caught(exported: dict[str, set[str]]) -> None:
    rules = [{"alert": "Typo", "expr": 'rate(vae_request_total[5m]) > 0 and vae_requests_total{status="OK"}'},
             {"record": "job:x:rate5m", "expr": "sum by (job, methd) (rate(nv_inference_request_succes[5m]))"}]  # fmt: skip
    assert unknown_metrics(rules, set(exported)) == {
        "Typo": {"vae_request_total"},
        "job:x:rate5m": {"nv_inference_request_succes"},
    }
    assert label_problems(rules, exported) == [
        "Typo: vae_requests_total has no label status",
        "job:x:rate5m: no metric has a label methd",
    ]


def evaluated_at(rule: dict[str, Any]) -> float:
    """A rule's lastEvaluation (RFC 3339 with nanoseconds) as Unix seconds."""
    stamp = re.sub(r"(\.\d{6})\d*", r"\1", rule["lastEvaluation"]).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def test_a_real_prometheus_evaluates_every_service_rule_without_error_and_records_data(live: Live) -> None:
    # Evaluation errors (say, many-to-many matching on the real label sets) only show at run time, on data.
    service_rules = [r for g in groups_of(live.rule_files) for r in g["rules"]]
    records = [r["record"] for r in service_rules if "record" in r]
    # After traffic of every RPC (Score and Encode included), every recording rule has series...
    poll(lambda: all(live.api.query(name) for name in records), 60, "every recording rule to have data",
         lambda: str([name for name in records if not live.api.query(name)]))  # fmt: skip
    # ...and every rule, evaluated again from now on (on that data), is healthy; the canary is not.
    now = float(live.api.query("time()")[0]["value"][1])

    def evaluated() -> dict[str, list[dict[str, Any]]] | None:
        groups = {g["name"]: g["rules"] for g in live.api.get("/api/v1/rules")["groups"]}
        rules = [r for rules in groups.values() for r in rules]
        done = len(rules) == len(service_rules) + 1 and all(evaluated_at(r) > now for r in rules)
        return groups if done else None

    groups = poll(evaluated, 60, "every rule evaluated again")
    (canary,) = groups.pop(CANARY)
    assert canary["health"] == "err" and "multiple matches" in canary["lastError"], canary
    assert not [(r["name"], r.get("lastError")) for rules in groups.values() for r in rules if r["health"] != "ok"]
