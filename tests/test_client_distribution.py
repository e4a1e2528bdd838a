"""vae-client, the client's own distribution (clients/python): installed into a fresh virtual environment, it has
no torch, no prometheus-client and no server code, and its typed client and CLI call a running server. The
server's modules import it (one copy of the stubs). Prints the installed size."""

from __future__ import annotations

import ast
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from service.config import Settings
from service.inprocess import serving

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python"
SERVER_SIDE = {"service", "vaecore", "training", "tests", "tools", "torch", "prometheus_client", "aiohttp"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_client_imports_nothing_of_the_server() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & SERVER_SIDE)
                 for p in (CLIENT / "vae_client").rglob("*.py") if _imports(p) & SERVER_SIDE}  # fmt: skip
    assert offenders == {}


def test_there_is_one_copy_of_the_stubs() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert [f for f in tracked if f.endswith("vae_pb2.py")] == ["clients/python/vae_client/proto_gen/vae/v1/vae_pb2.py"]


@pytest.fixture(scope="module")
def client_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with only vae-client installed (from its folder, under the tests' pins)."""
    tmp = tmp_path_factory.mktemp("client_env")
    source = shutil.copytree(CLIENT, tmp / "source", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    env = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    # built from a copy: pip's build/ folder must not land in the checkout (mypy would read it as a second package)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c",
                    str(ROOT / "constraints.txt"), str(source)], check=True, timeout=600)  # fmt: skip
    return env


def _site_packages_mb(env: Path) -> float:
    (site,) = (env / "lib").glob("python3*/site-packages")
    return sum(p.stat().st_size for p in site.rglob("*") if p.is_file()) / 1e6


def test_installed_alone_it_has_no_torch_and_calls_a_server(client_env: Path, model_repository: Path) -> None:
    python = str(client_env / "bin" / "python")
    absent = "import importlib.util as u; print([m for m in ('torch', 'prometheus_client', 'service', 'vaecore') if u.find_spec(m)])"
    away = {"cwd": str(client_env), "capture_output": True, "text": True}  # not the repository's folder
    assert subprocess.run([python, "-c", absent], check=True, **away).stdout.strip() == "[]"  # type: ignore[call-overload]
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=model_repository, torch_threads=1)
    with serving(settings) as server:
        script = (
            "from vae_client import VaeClient\n"
            f"with VaeClient({server.address!r}, 'tiny') as vae:\n"
            "    out = vae.sample(3, seed=1)\n"
            "    print(out.images.shape, out.model_version, out.latents.latent_space[:4])\n"
            "    print(vae.decode(out.latents).shape)\n"
        )
        done = subprocess.run([python, "-c", script], timeout=120, **away)  # type: ignore[call-overload]
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["(3, 1, 28, 28) 1 ls1-", "(3, 1, 28, 28)"]
        cli = subprocess.run([str(client_env / "bin" / "vae"), "--target", server.address, "models"], timeout=120,
                             **away)  # type: ignore[call-overload]  # fmt: skip
        assert cli.returncode == 0 and cli.stdout.startswith("tiny: latent 4"), cli.stderr
    print(f"\nvae-client installed alone: {_site_packages_mb(client_env):.0f} MB of site-packages (pip included)")


def test_the_server_uses_the_clients_stubs() -> None:
    from service import api
    from vae_client.proto_gen.vae.v1 import vae_pb2

    assert api.vae_pb2 is vae_pb2
