"""The Kubernetes pods, started: the cpu overlay's Deployment and the gpu overlay's service Deployment, rendered
(tools/kustomize.py) and started with `podman kube play`, the nearest thing to a cluster here. Their args, env,
security context, resources and volumes are as written; only the image becomes the locally built tag (no
registry), and the gpu pod gets a `hostAliases` entry for `triton` (the cluster DNS name of the Triton Service),
pointing at the test tritonserver's forwarder on port 8001. Each pod must serve, and its own readiness and
liveness probes (native gRPC probes, which podman does not run) must pass when run inside it as the same
gRPC health checks.

What podman 4.3's kube play does not implement, checked by tests/deploy/test_manifests.py instead: gRPC probes
(startup, readiness, liveness), `lifecycle.preStop`, `terminationGracePeriodSeconds` (podman stops with its own
10 s), `emptyDir.sizeLimit` (the emptyDir becomes a named volume), `seccompProfile`, `fsGroup`,
`topologySpreadConstraints`, `enableServiceLinks` and `automountServiceAccountToken` (no API server).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.containers import every_rpc, health, pod_spec, wait_until
from tools.containers.engine import Engine


def probe_command(probe: dict[str, Any]) -> list[str]:
    """A native gRPC probe as the command that asks the same question from inside the pod."""
    grpc = probe["grpc"]
    return ["python", "-m", "service.healthcheck", "--target", f"127.0.0.1:{grpc['port']}",
            "--service", grpc.get("service", ""), "--timeout", str(probe.get("timeoutSeconds", 1))]  # fmt: skip


@contextmanager
def played(
    engine: Engine, deployment: dict[str, Any], image: str, tmp: Path, aliases: dict[str, str]
) -> Iterator[tuple[str, str]]:
    """`podman kube play` of `deployment` (image replaced, host aliases added); yields its container and address."""
    doc = copy.deepcopy(deployment)
    doc["metadata"]["name"] = f"{doc['metadata']['name']}-{image.rsplit(':', 1)[1]}"
    spec = doc["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    container["image"] = f"localhost/{image}"
    if aliases:
        spec["hostAliases"] = [{"ip": ip, "hostnames": [name]} for name, ip in aliases.items()]
    manifest = tmp / "deployment.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    engine("kube", "play", "--network", "podman", str(manifest), timeout=120)
    name = f"{doc['metadata']['name']}-pod-0-{container['name']}"
    try:
        ip = engine.inspect(name, "container")["NetworkSettings"]["Networks"]["podman"]["IPAddress"]
        yield name, f"{ip}:{container['ports'][0]['containerPort']}"
    finally:
        engine("kube", "down", str(manifest), check=False, timeout=120)
        engine("volume", "rm", "--force", "tmp", check=False)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlay_pod_starts_serves_and_passes_its_probes(
    overlay: str, engine: Engine, images: dict[str, str], triton_service_port: str, tmp_path: Path
) -> None:
    spec = pod_spec(overlay)
    image = images["local" if overlay == "cpu" else "triton"]
    assert spec.deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image  # what the overlay names
    aliases = {"triton": triton_service_port} if overlay == "gpu" else {}
    with played(engine, spec.deployment, image, tmp_path, aliases) as (name, address):
        wait_until(address, "SERVING", 120)
        answered = every_rpc(address)
        assert answered["Sample"] == 4 and answered["Score"] == 4
        (container,) = spec.deployment["spec"]["template"]["spec"]["containers"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            result = engine("exec", name, *probe_command(container[kind]), check=False, timeout=60)
            assert result.returncode == 0, f"{kind}: {result.stdout}{result.stderr}"
        assert health(address, "") == "SERVING"
        config = engine.inspect(name, "container")
        assert config["Config"]["User"].split(":")[0] == "10001"
        assert config["HostConfig"]["ReadonlyRootfs"] is True
        assert config["HostConfig"]["NanoCpus"] == 2_000_000_000  # limits.cpu "2"
        env = dict(item.split("=", 1) for item in config["Config"]["Env"])
        for key, value in spec.env.items():
            assert env[key] == value, key  # resourceFieldRef included: VAE_TORCH_THREADS from limits.cpu
        assert config["Config"]["Cmd"] == spec.args
