"""deploy/ checked offline: Kubernetes manifests (kubernetes-validate, strict, on the rendered overlays), the compose
file (the compose specification's JSON schema), the Dockerfile (hadolint), every YAML file (yamllint), and
cross-checks between them and the service's own settings.

There is no kustomize binary here, so `tools.kustomize.render()` is a deliberately small kustomize (`resources`,
strategic-merge `patches`, `images`, `namespace`); a kustomization using anything else fails rather than being
rendered wrong.
Every validator is also shown rejecting a broken input, so none of these checks can pass vacuously.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings, load_settings
from tools.kustomize import image_name, pod_containers, render
from vae_client.proto_gen.vae.v1 import vae_pb2

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
BIN = Path(sys.executable).parent
SERVICE_NAME = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name
DEFAULTS = Settings()
SETTING_ENV = {f"VAE_{f.name.upper()}" for f in dataclasses.fields(Settings)}
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
K8S_VERSION = "1.30.0"
SERVICE_IMAGE_NAME = "vae-service"
TRITON_IMAGE_NAME = "nvcr.io/nvidia/tritonserver"


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} is not installed (the dev extra and `make setup` provide it)"
    return found


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def container_port(deployment: dict[str, Any], target: int | str) -> int:
    """The container port a Service targetPort (number or name) resolves to."""
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        for port in c.get("ports", []):
            if target in (port["containerPort"], port.get("name")):
                return int(port["containerPort"])
    raise AssertionError(f"targetPort {target!r} matches no container port of {deployment['metadata']['name']}")


def selected_by(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def backing_deployment(docs: list[dict[str, Any]], service: dict[str, Any]) -> dict[str, Any]:
    found = [d for d in find(docs, "Deployment")
             if selected_by(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]  # fmt: skip
    assert len(found) == 1, f"Service {service['metadata']['name']} selects {len(found)} Deployments"
    return found[0]


def environment(c: dict[str, Any], resource_values: dict[str, str]) -> dict[str, str]:
    """A container's env as the process sees it; resourceFieldRef values come from `resource_values`."""
    env = {}
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            ref = var["valueFrom"]["resourceFieldRef"]
            env[var["name"]] = resource_values[ref["resource"]]
    return env


def cpu_count(quantity: str | int) -> str:
    """A CPU quantity as a resourceFieldRef with divisor 1 exposes it: rounded up to whole CPUs."""
    text = str(quantity)
    return str(-(-int(text[:-1]) // 1000)) if text.endswith("m") else str(-(-float(text) // 1)).split(".")[0]


def service_settings(c: dict[str, Any]) -> Settings:
    limits = {"limits.cpu": cpu_count(c["resources"]["limits"]["cpu"])}
    env = environment(c, limits)
    assert set(env) <= SETTING_ENV, f"not settings of the service: {set(env) - SETTING_ENV}"
    return load_settings(list(c.get("args", [])), environ=env)


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name}= appears {len(values)} times in {args}"
    return values[0]


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes: schema validation
# ---------------------------------------------------------------------------------------------------------------


def kubernetes_validate(docs: list[dict[str, Any]], workdir: Path) -> tuple[bool, str]:
    """kubernetes-validate, strict; its warnings (unknown kinds, removed API versions) count as failures."""
    path = workdir / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    result = run(tool("kubernetes-validate"), "-k", K8S_VERSION, "--strict", str(path))
    output = result.stdout + result.stderr
    ok = result.returncode == 0 and "WARN" not in output and "ERROR" not in output
    return ok, output


def test_overlays_pass_strict_schema_validation(overlay: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    _, docs = overlay
    builtin = [d for d in docs if d["kind"] not in CRD_KINDS]
    assert {d["kind"] for d in docs} - {d["kind"] for d in builtin} == CRD_KINDS
    ok, output = kubernetes_validate(builtin, tmp_path)
    assert ok, output


def test_validator_rejects_a_grpc_probe_with_a_named_port(tmp_path: Path) -> None:
    docs = render(K8S / "overlays" / "cpu")
    deployment = one(docs, "Deployment", "vae-service")
    container(deployment, "vae-service")["readinessProbe"]["grpc"]["port"] = "grpc"
    ok, output = kubernetes_validate([deployment], tmp_path)
    assert not ok and "grpc.port" in output, output


def test_validator_warning_on_a_removed_api_version_counts_as_failure(tmp_path: Path) -> None:
    pdb = one(render(K8S / "overlays" / "cpu"), "PodDisruptionBudget", "vae-service")
    pdb["apiVersion"] = "policy/v1beta1"  # removed in 1.25: kubernetes-validate only warns, exit status 0
    ok, output = kubernetes_validate([pdb], tmp_path)
    assert not ok and "WARN" in output, output


def test_validator_rejects_an_unknown_field(tmp_path: Path) -> None:
    hpa = one(render(K8S / "overlays" / "cpu"), "HorizontalPodAutoscaler", "vae-service")
    hpa["spec"]["targetCPUUtilizationPercentage"] = 70  # autoscaling/v1's field, not v2's
    ok, output = kubernetes_validate([hpa], tmp_path)
    assert not ok, output


def test_every_manifest_file_is_referenced_by_a_kustomization() -> None:
    referenced = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text())
        referenced |= {(kustomization.parent / r).resolve() for r in data.get("resources", [])}
        referenced |= {(kustomization.parent / p["path"]).resolve() for p in data.get("patches", [])}
        referenced.add(kustomization.resolve())
    manifests = {p.resolve() for p in K8S.rglob("*.yaml")} - {ADAPTER_VALUES.resolve()}
    assert manifests - referenced == set(), "manifests no overlay renders"


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes: the service Deployment against the service's settings
# ---------------------------------------------------------------------------------------------------------------


def test_service_deployment_probes_ports_and_settings(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    deployment = one(docs, "Deployment", "vae-service")
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment, "vae-service")
    settings = service_settings(c)
    assert settings.backend == {"cpu": "local", "gpu": "triton"}[name]
    assert str(settings.model_repository) == "/models"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": settings.port, "metrics": settings.metrics_port}
    assert (settings.port, settings.metrics_port) == (DEFAULTS.port, DEFAULTS.metrics_port)

    readiness, liveness, startup = c["readinessProbe"], c["livenessProbe"], c["startupProbe"]
    assert readiness["grpc"] == {"port": settings.port, "service": SERVICE_NAME}
    assert liveness["grpc"].get("service", "") == ""
    for probe in (readiness, liveness, startup):
        assert probe["grpc"]["port"] == settings.port and isinstance(probe["grpc"]["port"], int)
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60

    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_grace_s + float(pre_stop[1])

    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][key])
    assert pod["enableServiceLinks"] is False and pod["automountServiceAccountToken"] is False


def test_pods_are_locked_down(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    for deployment in find(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod_containers(deployment):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert "latest" not in c["image"] and ":" in c["image"].rsplit("/", 1)[-1]
    service = container(one(docs, "Deployment", "vae-service"), "vae-service")
    assert service["securityContext"]["readOnlyRootFilesystem"] is True
    assert service["securityContext"]["runAsUser"] == 10001
    pod = one(docs, "Deployment", "vae-service")["spec"]["template"]["spec"]
    tmp_volumes = [m["name"] for m in service["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert [v for v in pod["volumes"] if v["name"] in tmp_volumes and "emptyDir" in v]


def test_services_headless_and_clusterip(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    cluster_ip = one(docs, "Service", "vae-service")
    headless = one(docs, "Service", "vae-service-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert cluster_ip["spec"].get("clusterIP") != "None"
    for svc in (cluster_ip, headless):
        deployment = backing_deployment(docs, svc)
        assert deployment["metadata"]["name"] == "vae-service"
        for port in svc["spec"]["ports"]:
            assert container_port(deployment, port["targetPort"]) == port["port"]
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == {"grpc": DEFAULTS.port}
    assert {p["name"]: p["port"] for p in cluster_ip["spec"]["ports"]} == {
        "grpc": DEFAULTS.port,
        "metrics": DEFAULTS.metrics_port,
    }


def test_disruption_budget_and_autoscaler(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    deployment = one(docs, "Deployment", "vae-service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget", "vae-service")
    assert pdb["apiVersion"] == "policy/v1"
    assert selected_by(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = one(docs, "HorizontalPodAutoscaler", "vae-service")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "vae-service")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    # A drain can always evict one pod: the budget keeps fewer than the autoscaler's minimum.
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == adapter_rule()["name"]["as"]


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes: Triton (gpu overlay)
# ---------------------------------------------------------------------------------------------------------------


def test_gpu_overlay_points_the_service_at_tritons_grpc_port() -> None:
    docs = render(K8S / "overlays" / "gpu")
    settings = service_settings(container(one(docs, "Deployment", "vae-service"), "vae-service"))
    host, port = settings.triton_url.rsplit(":", 1)
    triton_service = one(docs, "Service", host.split(".")[0])
    (grpc_port,) = [p for p in triton_service["spec"]["ports"] if p["name"] == "grpc"]
    assert int(port) == grpc_port["port"]
    triton = backing_deployment(docs, triton_service)
    args = container(triton, "triton")["args"]
    assert container_port(triton, grpc_port["targetPort"]) == int(flag(args, "grpc-port"))


def test_triton_deployment() -> None:
    docs = render(K8S / "overlays" / "gpu")
    triton = one(docs, "Deployment", "triton")
    pod = triton["spec"]["template"]["spec"]
    c = container(triton, "triton")
    assert image_name(c["image"]) == TRITON_IMAGE_NAME
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    http_port = int(flag(c["args"], "http-port"))
    for probe in ("readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/v2/health/ready", "port": http_port}
    assert c["livenessProbe"]["httpGet"]["port"] == http_port
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model loading needs minutes"
    # The model repository comes from a volume, filled by an init container from the service image.
    repository = flag(c["args"], "model-repository")
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == repository]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume
    (init,) = pod["initContainers"]
    service_image = container(one(docs, "Deployment", "vae-service"), "vae-service")["image"]
    assert init["image"] == service_image
    (init_mount,) = [m for m in init["volumeMounts"] if m["name"] == mount["name"]]
    assert "/models" in " ".join(init["command"]) and init_mount["mountPath"] in " ".join(init["command"])
    assert not find(render(K8S / "overlays" / "cpu"), "Deployment", "triton")


def test_triton_arguments_are_real_tritonserver_flags() -> None:
    """The flags given to Triton in compose and Kubernetes exist in a real tritonserver (2.51 from PyPI here)."""
    from training.triton_local import _pytriton_root, server_environment

    binary = _pytriton_root() / "tritonserver" / "bin" / "tritonserver"
    result = subprocess.run([str(binary), "--help"], capture_output=True, text=True, env=server_environment())
    known = set(re.findall(r"^\s+(--[a-z0-9-]+)", result.stdout + result.stderr, flags=re.M))
    assert "--model-repository" in known, result.stdout + result.stderr
    k8s_args = container(one(render(K8S / "overlays" / "gpu"), "Deployment", "triton"), "triton")["args"]
    compose_args = compose()["services"]["triton"]["command"]
    assert k8s_args == compose_args
    assert k8s_args[0] == "tritonserver"
    for arg in k8s_args[1:]:
        assert arg.split("=", 1)[0] in known, arg
    assert "--no-such-flag" not in known


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes: monitoring custom resources (not in kubernetes-validate's schemas: checked here)
# ---------------------------------------------------------------------------------------------------------------

SERVICEMONITOR_SPEC = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels"}
SERVICEMONITOR_ENDPOINT = {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings",
                           "metricRelabelings"}  # fmt: skip
DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")
METRICS_PORTS = {"vae-service": DEFAULTS.metrics_port, "triton": 8002}


def test_servicemonitors_select_one_service_and_its_metrics_port(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    monitors = find(docs, "ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == (
        {"vae-service", "triton"} if name == "gpu" else {"vae-service"}
    )
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(monitor["spec"]) <= SERVICEMONITOR_SPEC
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in find(docs, "Service") if selected_by(selector, s["metadata"].get("labels", {}))]
        assert len(services) == 1, f"{monitor['metadata']['name']} selects {len(services)} Services"
        (svc,) = services
        job = svc["metadata"]["name"]  # the operator's default job label
        assert job in METRICS_PORTS
        deployment = backing_deployment(docs, svc)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert set(endpoint) <= SERVICEMONITOR_ENDPOINT
            assert DURATION.match(endpoint["interval"]) and DURATION.match(endpoint["scrapeTimeout"])
            (port,) = [p for p in svc["spec"]["ports"] if p["name"] == endpoint["port"]]
            assert container_port(deployment, port["targetPort"]) == METRICS_PORTS[job]
            assert endpoint["path"] == annotations["prometheus.io/path"] == "/metrics"
            assert annotations["prometheus.io/scrape"] == "true"
            assert int(annotations["prometheus.io/port"]) == METRICS_PORTS[job]


def rule_files() -> list[Path]:
    files = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")) + sorted(
        (DEPLOY / "prometheus" / "rules").glob("*.yaml")
    )
    assert files, "deploy/prometheus/rules/ has no rule files"
    return files


def test_prometheusrule_wraps_the_prometheus_rule_files(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    (rule,) = find(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    groups = rule["spec"]["groups"]
    for group in groups:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r) and r["expr"]
            if "alert" in r:
                assert r["annotations"]["summary"]
    from_files = [g for path in rule_files() for g in yaml.safe_load(path.read_text())["groups"]]
    assert sorted(groups, key=lambda g: g["name"]) == sorted(from_files, key=lambda g: g["name"])


def alerts() -> list[dict[str, Any]]:
    return [
        r
        for path in rule_files()
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    ]


def test_readme_runbook_has_a_section_per_alert() -> None:
    readme = (DEPLOY / "README.md").read_text()
    runbook = readme.split("## Runbook", 1)[1]
    sections = set(re.findall(r"^### (\S+)\s*$", runbook, flags=re.M))
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', runbook))
    names = [a["alert"] for a in alerts()]
    assert names and set(names) <= sections, set(names) - sections
    for alert in alerts():
        assert f"runbook-{alert['alert'].lower()}" in anchors
        for link in re.findall(r"deploy/README\.md#([a-z0-9-]+)", alert["annotations"].get("runbook", "")):
            assert link in anchors, f"{alert['alert']} links to #{link}, which deploy/README.md lacks"


# ---------------------------------------------------------------------------------------------------------------
# prometheus-adapter rule for the HPA's traffic metric
# ---------------------------------------------------------------------------------------------------------------


def adapter_rule() -> dict[str, Any]:
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    return rule


def exported_metric_families() -> dict[str, str]:
    from prometheus_client import CollectorRegistry

    from service.metrics import ServiceMetrics

    registry = CollectorRegistry()
    ServiceMetrics(registry)
    return {family.name: family.type for family in registry.collect()}


def promtool_check_expression(expr: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "adapter-rule.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": [{"record": "x:y", "expr": expr}]}]}))
    return run(tool("promtool"), "check", "rules", str(path))


def test_adapter_rule_counts_the_services_requests_per_pod(tmp_path: Path) -> None:
    rule = adapter_rule()
    series = re.match(r"^([a-z_:]+)\{", rule["seriesQuery"]).group(1)  # type: ignore[union-attr]
    assert re.match(rule["name"]["matches"], series)
    assert series.endswith("_total") and exported_metric_families()[series.removesuffix("_total")] == "counter"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert "rate(<<.Series>>{<<.LabelMatchers>>}[2m])" in rule["metricsQuery"]
    expr = (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", 'namespace="vae-serving",pod=~"vae-service-.*"')
        .replace("<<.GroupBy>>", "pod")
    )
    result = promtool_check_expression(expr, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = promtool_check_expression(expr.replace("[2m]", "[2m"), tmp_path)
    assert broken.returncode != 0


# ---------------------------------------------------------------------------------------------------------------
# Compose
# ---------------------------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # resolves the `<<` merge keys


def default_of(value: str) -> str:
    """`${VAR:-default}` -> default."""
    match = re.fullmatch(r"\$\{[A-Z_]+:-([^}]+)\}", value)
    assert match, f"{value} is not ${{VAR:-default}}"
    return match.group(1)


def profile(name: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in compose()["services"].items() if name in v.get("profiles", [])}


def test_compose_validates_against_the_compose_spec(tmp_path: Path) -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("\n  triton:\n", "\n  triton:\n    restart_policy: always\n", 1))
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken))
    assert result.returncode != 0 and "restart_policy" in result.stdout, result.stdout + result.stderr


def test_compose_profiles() -> None:
    assert set(profile("gpu")) == {"triton", "vae-service", "prometheus", "grafana"}
    assert set(profile("cpu")) == {"vae-service-cpu", "prometheus-cpu", "grafana"}
    cpu = profile("cpu")
    assert "vae-service" in cpu["vae-service-cpu"]["networks"]["default"]["aliases"]
    assert "prometheus" in cpu["prometheus-cpu"]["networks"]["default"]["aliases"]
    for service in cpu.values():
        assert "deploy" not in service and "depends_on" not in service, "the cpu profile needs no GPU and no Triton"


@pytest.mark.parametrize(("name", "backend"), [("vae-service", "triton"), ("vae-service-cpu", "local")])
def test_compose_service_settings(name: str, backend: str) -> None:
    service = compose()["services"][name]
    env = {k: str(v) for k, v in service["environment"].items()}
    assert set(env) <= SETTING_ENV, set(env) - SETTING_ENV
    settings = load_settings([], environ=env)
    assert settings.backend == backend
    assert str(settings.model_repository) == "/models"
    published = {int(p.rsplit(":", 1)[1]) for p in service["ports"]}
    assert published == {settings.port, settings.metrics_port} == {DEFAULTS.port, DEFAULTS.metrics_port}
    assert service["user"].split(":")[0] == "10001" and service["read_only"] is True and "/tmp" in service["tmpfs"]
    assert int(service["stop_grace_period"].removesuffix("s")) > settings.shutdown_grace_s
    if backend == "triton":
        host, port = settings.triton_url.rsplit(":", 1)
        assert host == "triton" and int(port) == int(flag(compose()["services"]["triton"]["command"], "grpc-port"))
        assert service["depends_on"]["triton"]["condition"] == "service_healthy"


def test_compose_triton() -> None:
    triton = compose()["services"]["triton"]
    assert image_name(default_of(triton["image"])) == TRITON_IMAGE_NAME
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    args = triton["command"]
    assert triton["healthcheck"]["test"][-1] == f"http://127.0.0.1:{flag(args, 'http-port')}/v2/health/ready"
    (volume,) = triton["volumes"]
    source, target, _ = volume.split(":")
    assert target == flag(args, "model-repository")
    configs = list((DEPLOY / source).glob("*/config.pbtxt"))
    assert configs and all("KIND_GPU" in c.read_text() for c in configs)


def test_compose_monitoring_mounts_and_scrape_targets() -> None:
    services = compose()["services"]
    for name, config in (("prometheus", "prometheus.yml"), ("prometheus-cpu", "prometheus-cpu.yml")):
        mounts = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in services[name]["volumes"] if v.startswith(".")}
        assert mounts["/etc/prometheus/prometheus.yml"] == DEPLOY / "prometheus" / config
        prometheus = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
        targets = {job["job_name"]: {t for sc in job.get("static_configs", []) for t in sc["targets"]}
                   for job in prometheus["scrape_configs"]}  # fmt: skip
        assert targets["vae-service"] == {f"vae-service:{DEFAULTS.metrics_port}"}
        if name == "prometheus":
            assert targets["triton"] == {"triton:8002"}
            assert int(flag(services["triton"]["command"], "metrics-port")) == 8002
        else:
            assert "triton" not in targets
        # rule_files are relative to the config file: they must find the mounted rules directory's files.
        for pattern in prometheus["rule_files"]:
            container_dir = str(Path("/etc/prometheus") / pattern).rsplit("/", 1)[0]
            assert container_dir in mounts and list(mounts[container_dir].glob(pattern.rsplit("/", 1)[1]))
    grafana = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in services["grafana"]["volumes"] if v.startswith(".")}
    assert grafana["/etc/grafana/provisioning"].is_dir() and grafana["/var/lib/grafana/dashboards"].is_dir()
    assert list(grafana["/var/lib/grafana/dashboards"].glob("*.json"))


def test_images_match_between_compose_and_kubernetes(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """cpu: the local-backend image; gpu: the image without torch (make image's tags), in compose and Kubernetes,
    for the service and for the init container that copies its repository into Triton's volume."""
    from tools.containers.images import tag

    name, docs = overlay
    services = compose()["services"]
    compose_service = {"cpu": "vae-service-cpu", "gpu": "vae-service"}[name]
    service_image = default_of(services[compose_service]["image"])
    assert service_image == tag({"cpu": "local", "gpu": "triton"}[name])
    assert services[compose_service]["build"]["target"] == {"cpu": "local", "gpu": "triton"}[name]
    assert image_name(service_image) == SERVICE_IMAGE_NAME
    assert container(one(docs, "Deployment", "vae-service"), "vae-service")["image"] == service_image
    if name == "gpu":
        triton = one(docs, "Deployment", "triton")
        assert container(triton, "triton")["image"] == default_of(services["triton"]["image"])
        (init,) = triton["spec"]["template"]["spec"]["initContainers"]
        assert init["name"] == "model-repository" and init["image"] == service_image


# ---------------------------------------------------------------------------------------------------------------
# Dockerfile and build context
# ---------------------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    result = run(tool("hadolint"), "--failure-threshold", "warning", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM x:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = run(tool("hadolint"), "--failure-threshold", "warning", str(broken))
    assert result.returncode != 0 and "DL3007" in result.stdout and "DL3008" in result.stdout, result.stdout


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's instructions by stage name (`FROM ... AS name`)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for op, arg in dockerfile_instructions():
        if op == "FROM":
            current = stages.setdefault(arg.split()[-1], [])
        current.append((op, arg))
    return stages


def install_steps(stage: list[tuple[str, str]]) -> list[str]:
    return [arg for op, arg in stage if op == "RUN" and "pip install" in arg]


def test_dockerfile_targets_serving_only_non_root_and_the_tests_constraints() -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "local", "a plain `docker build` (no --target) gives the CPU image"
    copies = [shlex.split(arg) for op, arg in dockerfile_instructions() if op == "COPY"]
    sources = {s for words in copies if not words[0].startswith("--from") for s in words[:-1]}
    assert sources == {"pyproject.toml", "constraints.txt", "deploy/docker/requirements.py", "README.md", "vaecore/",
                       "service/", "deploy/model_repository/", "clients/python/pyproject.toml",
                       "clients/python/"}  # fmt: skip
    assert not any("training" in s or "tests" in s for s in sources)
    # Dependencies: pyproject's base list plus the named extras, under the tests' constraints file.
    for stage, extras in (("deps-triton", "triton"), ("deps-local", "local triton")):
        (install,) = install_steps(stages[stage])
        assert f"requirements.py pyproject.toml {extras} > requirements.txt" in install
        assert "-c constraints.txt -r requirements.txt" in install and "compileall" in install
    assert "TORCH_INDEX" in install_steps(stages["deps-local"])[0]
    assert "TORCH_INDEX" not in " ".join(install_steps(stages["deps-triton"]))
    # The project itself: installed (not editable) without dependencies, once for both targets.
    (project,) = install_steps(stages["app"])
    words = shlex.split(project.split("&&")[-2])
    assert "--no-deps" in words and "-e" not in words and "--editable" not in words
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()  # the tests' environment: same constraints file

    runtime = stages["runtime"]
    env = " ".join(arg for op, arg in runtime if op == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "VAE_MODEL_REPOSITORY=/models" in env
    (expose,) = [arg for op, arg in runtime if op == "EXPOSE"]
    assert {int(p) for p in expose.split()} == {DEFAULTS.port, DEFAULTS.metrics_port}
    (entrypoint,) = [json.loads(arg) for op, arg in runtime if op == "ENTRYPOINT"]
    assert entrypoint == ["python", "-m", "service"]
    for target, deps in (("local", "deps-local"), ("triton", "deps-triton")):
        stage = stages[target]
        assert stage[0][1].split()[0] == "runtime"
        assert f"--from={deps} /opt/venv /opt/venv" in [arg for op, arg in stage if op == "COPY"]
        (user,) = [arg for op, arg in stage if op == "USER"]
        assert user.split(":")[0] == "10001"
    assert "VAE_BACKEND=triton" in [arg for op, arg in stages["triton"] if op == "ENV"]
    load_settings([], environ={})  # the image starts with no arguments: defaults must parse


def test_dockerfile_requirements_helper_matches_pyproject() -> None:
    """deploy/docker/requirements.py lists what `pip install '.[local,triton]'` would: the same dependency lists."""
    helper = DEPLOY / "docker" / "requirements.py"
    result = run(sys.executable, str(helper), str(ROOT / "pyproject.toml"), "triton")
    assert result.returncode == 0, result.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())["project"]
    # vae-client (this repository's own distribution, installed from its folder) is replaced by its dependencies
    expected = [r for d in project["dependencies"] for r in (client["dependencies"] if d.startswith("vae-client")
                                                             else [d])]  # fmt: skip
    assert result.stdout.split() == list(dict.fromkeys(expected + project["optional-dependencies"]["triton"]))
    assert not any(r.startswith("torch") for r in result.stdout.split()), "the -triton image carries no torch"
    local = run(sys.executable, str(helper), str(ROOT / "pyproject.toml"), "local", "triton").stdout.split()
    assert "torch==2.13.0" in local
    unknown = run(sys.executable, str(helper), str(ROOT / "pyproject.toml"), "gpu")
    assert unknown.returncode != 0 and "no extra gpu" in unknown.stderr


def healthcheck_command() -> list[str]:
    (healthcheck,) = [arg for op, arg in dockerfile_instructions() if op == "HEALTHCHECK"]
    return json.loads(healthcheck.split("CMD", 1)[1])


def test_dockerfile_healthcheck_asks_the_readiness_name_on_the_grpc_port() -> None:
    command = healthcheck_command()
    assert command[:3] == ["python", "-m", "service.healthcheck"]
    args = dict(zip(command[3::2], command[4::2], strict=True))
    assert args["--target"] == f"127.0.0.1:{DEFAULTS.port}"
    assert args["--service"] == SERVICE_NAME


def test_dockerfile_healthcheck_command_against_a_real_server(tmp_path: Path) -> None:
    """The image's HEALTHCHECK command, pointed at a real server started with the compose cpu profile's settings:
    exit 0 once SERVING; nonzero where nothing listens."""
    import socket
    import time

    from service.inprocess import serving

    env = {k: str(v) for k, v in compose()["services"]["vae-service-cpu"]["environment"].items()}
    env["VAE_MODEL_REPOSITORY"] = str(DEPLOY / "model_repository")
    settings = load_settings(["--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"], environ=env)
    command = healthcheck_command()
    target = command.index("--target") + 1

    def check(address: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, *command[1:target], address, *command[target + 1 :]]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=tmp_path)

    with serving(settings) as server:
        deadline = time.monotonic() + 30
        result = check(server.address)
        while result.returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            result = check(server.address)
        assert result.returncode == 0, result.stdout + result.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: nothing answers there
        assert check(f"127.0.0.1:{s.getsockname()[1]}").returncode != 0


def test_liveness_name_stays_serving_while_the_backend_is_down() -> None:
    """The probes' contract: liveness asks "" and must stay SERVING while the backend is down (else Kubernetes
    restarts every service pod during a Triton outage); readiness asks vae.v1.VaeService, NOT_SERVING then."""
    import socket
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from service.inprocess import serving

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: a Triton that is down
        triton_url = f"127.0.0.1:{closed.getsockname()[1]}"
        argv = ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1", "--backend", "triton"]
        env = {"VAE_MODEL_REPOSITORY": str(DEPLOY / "model_repository"), "VAE_TRITON_URL": triton_url}
        with serving(load_settings(argv, environ=env)) as server, grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(name: str) -> str:
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=3)
                return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

            deadline = time.monotonic() + 10
            while status("") != "SERVING" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert status(SERVICE_NAME) == "NOT_SERVING"
            assert status("") == "SERVING", "liveness follows the backend: a Triton outage would restart every pod"


def dockerignore_included(path: str) -> bool:
    """Docker's .dockerignore semantics for the patterns used: last match wins, `!` re-includes, a directory
    pattern covers what is under it, `**` crosses directories."""
    included = True
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(fnmatch.fnmatchcase(part, tail) for part in parts)
        else:
            hit = any(re.fullmatch(regex, prefix) for prefix in prefixes)
        if hit:
            included = negate
    return included


def test_dockerignore_admits_only_what_the_image_copies() -> None:
    files = run("git", "ls-files", cwd=ROOT).stdout.split()
    included = {f for f in files if dockerignore_included(f)}
    assert included, "nothing would reach the build"
    allowed = ("pyproject.toml", "constraints.txt", "README.md", "service/", "vaecore/", "deploy/model_repository/",
               "deploy/docker/requirements.py", "clients/python/")  # fmt: skip
    assert all(f.startswith(allowed) for f in included), sorted(f for f in included if not f.startswith(allowed))
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "service/__main__.py",
                   "deploy/model_repository/mnist.vae.json"):  # fmt: skip
        assert needed in included
    assert not any(f.startswith(("training/", "tests/")) for f in included)
    assert not dockerignore_included("service/__pycache__/api.cpython-311.pyc")


# ---------------------------------------------------------------------------------------------------------------
# yamllint
# ---------------------------------------------------------------------------------------------------------------


def test_every_deploy_yaml_file_passes_yamllint(tmp_path: Path) -> None:
    config = DEPLOY / ".yamllint"
    files = sorted(str(p) for p in [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert str(COMPOSE) in files and len(files) > 5
    result = run(tool("yamllint"), "--strict", "-c", str(config), *files)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: 1\nb:\n    - x\na: 2\n")  # duplicate key, wrong indentation
    result = run(tool("yamllint"), "--strict", "-c", str(config), str(broken))
    assert result.returncode != 0 and "key-duplicates" in result.stdout, result.stdout
