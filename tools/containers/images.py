"""Build the two service images (deploy/docker/Dockerfile) and report their sizes: what `make image` runs, and
what the image tests build with.

- `vae-service:<version>`: target `local`, the networks in-process on CPU PyTorch;
- `vae-service:<version>-triton`: target `triton`, the service in front of a Triton server, no PyTorch.

On this kind of machine no registry of base images and no PyTorch wheel index can be reached, so the build
uses a stand-in base made from Debian packages (tools/containers/base_image.py) and the host's own pip
configuration (tools/containers/pip_config.py), both said in the output. With a registry and the index, the
same Dockerfile builds with a plain `docker build` (deploy/README.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tools.containers.base_image import BaseImage, ensure_base
from tools.containers.engine import ROOT, Engine, EngineError, EngineUnavailable, find_engine
from tools.containers.pip_config import BuildPipConfig, for_build

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
REPOSITORY = "vae-service"
TARGETS = {"local": "", "triton": "-triton"}  # Dockerfile target -> tag suffix
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # the Dockerfile's default TORCH_INDEX
# Upper bounds on what each image may weigh, in bytes (podman's sizes): deploy/README.md has the measured ones.
SIZE_LIMITS = {"local": 1_000_000_000, "triton": 350_000_000}


def version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def tag(target: str) -> str:
    return f"{REPOSITORY}:{version()}{TARGETS[target]}"


def reachable(url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return True
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True)
class BuildPlan:
    base: BaseImage
    pip: BuildPipConfig
    torch_index: str  # empty: no extra index, the pip configuration must find torch

    def args(self, target: str) -> list[str]:
        return [
            "build", "--format", "docker",  # the OCI format drops HEALTHCHECK
            "--network", "host",  # the build reaches the package registries as the host does
            "--file", str(DOCKERFILE), "--target", target, "--tag", tag(target),
            "--build-arg", f"PYTHON_IMAGE={self.base.name}", "--build-arg", f"TORCH_INDEX={self.torch_index}",
            *self.pip.build_args(), str(ROOT),
        ]  # fmt: skip


def plan(engine: Engine, workdir: Path, torch_index: str | None = None) -> BuildPlan:
    """Where the base image, the packages and PyTorch come from on this machine; printed."""
    base = ensure_base(engine)
    pip = for_build(workdir)
    if torch_index is None:
        torch_index = TORCH_INDEX if reachable(TORCH_INDEX) else ""
        if not torch_index:
            print(f"{TORCH_INDEX} cannot be reached: TORCH_INDEX is off, the host's pip configuration finds torch")
    print(f"base image: {base.describe()}\npackages: {pip.describe()}\ntorch index: {torch_index or 'off'}")
    return BuildPlan(base, pip, torch_index)


def build(engine: Engine, build_plan: BuildPlan, target: str, log: Path, echo: bool = True) -> float:
    """Build one target (the layer cache makes a rebuild of unchanged layers free); its seconds."""
    started = time.monotonic()
    code = engine.stream(build_plan.args(target), log, echo)
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise EngineError(f"building {tag(target)} failed (exit {code}); the end of {log}:\n{tail}")
    return time.monotonic() - started


def size(engine: Engine, image: str) -> int:
    return int(engine.inspect(image)["Size"])


def largest_layers(engine: Engine, image: str, count: int = 4) -> list[tuple[int, str]]:
    """The image's `count` largest layers: (bytes, the instruction that made each)."""
    fields = engine("history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", image).stdout.splitlines()
    rows = []
    for line in fields:
        human, _, created_by = line.partition("\t")
        rows.append((_bytes(human), created_by.replace("/bin/sh -c #(nop) ", "").strip()))
    return sorted(rows, reverse=True)[:count]


def _bytes(human: str) -> int:
    """podman's '849 MB' / '35.8 kB' / '0 B' (decimal units) as bytes."""
    number, _, unit = human.strip().partition(" ")
    scale = {"B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[unit or "B"]
    return int(float(number) * scale)


def report(engine: Engine, targets: list[str]) -> str:
    lines = []
    for target in targets:
        image = tag(target)
        total = size(engine, image)
        limit = SIZE_LIMITS[target]
        lines.append(f"{image}: {total / 1e6:.0f} MB (limit {limit / 1e6:.0f} MB{'' if total <= limit else ', OVER'})")
        for layer_bytes, created_by in largest_layers(engine, image):
            lines.append(f"  {layer_bytes / 1e6:8.1f} MB  {created_by[:110]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.containers.images", description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=sorted(TARGETS), action="append", help="default: both")
    parser.add_argument("--torch-index", help=f"PyTorch wheel index ('' for none; default {TORCH_INDEX} if reachable)")
    parser.add_argument("--quiet", action="store_true", help="the build's output goes to the log file only")
    args = parser.parse_args(argv)
    targets = args.target or list(TARGETS)
    try:
        engine = find_engine(install=True)
        with tempfile.TemporaryDirectory(prefix="vae-image-build-") as tmp:
            build_plan = plan(engine, Path(tmp), args.torch_index)
            log = Path(tempfile.gettempdir()) / "vae-image-build.log"
            log.write_text("")
            for target in targets:
                print(f"building {tag(target)} (target {target}; log {log}) ...", flush=True)
                seconds = build(engine, build_plan, target, log, echo=not args.quiet)
                print(f"built {tag(target)} in {seconds:.0f} s", flush=True)
    except (EngineUnavailable, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report(engine, targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
