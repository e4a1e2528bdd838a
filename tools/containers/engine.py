"""The container engine: podman, with this repository's containers.conf, found (and installed from Debian when
asked) and checked with `podman info` before anything relies on it.

Every podman call of `make image` and of the image tests goes through `Engine.__call__`, so the settings that
this kind of machine needs (deploy/docker/containers.conf: runc, cgroupfs, ulimits) apply to all of them and a
failure always carries podman's own message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "deploy" / "docker" / "containers.conf"
INSTALL_SCRIPT = ROOT / "scripts" / "install_container_engine.sh"


class EngineUnavailable(RuntimeError):
    """No container engine can run here; the message says what is missing and how to get it."""


class EngineError(RuntimeError):
    """A podman command failed; the message holds the command and podman's output."""


@dataclass(frozen=True)
class Engine:
    binary: str
    env: dict[str, str]

    def __call__(
        self, *args: str, check: bool = True, timeout: float | None = 300, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `podman ARGS`; with `check`, a non-zero exit raises EngineError with its output."""
        result = subprocess.run(
            [self.binary, *args], env=self.env, capture_output=True, text=True, timeout=timeout, input=input
        )
        if check and result.returncode != 0:
            raise EngineError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def stream(self, args: list[str], log: Path, echo: bool) -> int:
        """Run `podman ARGS` with its output appended to `log` (and printed, with `echo`); its exit code."""
        with (
            log.open("a") as sink,
            subprocess.Popen(
                [self.binary, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as process,
        ):
            assert process.stdout is not None
            for line in process.stdout:
                sink.write(line)
                if echo:
                    print(line, end="", flush=True)
        return process.returncode

    def image_exists(self, name: str) -> bool:
        return self("image", "exists", name, check=False).returncode == 0

    def inspect(self, name: str, kind: str = "image") -> dict[str, Any]:
        return dict(json.loads(self(kind, "inspect", name).stdout)[0])


def _environment() -> dict[str, str]:
    """The caller's environment with this repository's containers.conf, unless the caller named one."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def _install() -> None:
    result = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise EngineUnavailable(
            f"podman is not installed and {INSTALL_SCRIPT.relative_to(ROOT)} could not install it "
            f"(it needs root or sudo and Debian's package archive):\n{result.stdout}{result.stderr}"
        )


def find_engine(install: bool = False) -> Engine:
    """podman, able to run containers here. With `install`, a missing podman is installed from Debian first.
    Raises EngineUnavailable, with what is missing, where none can run."""
    if shutil.which("podman") is None:
        if not install:
            raise EngineUnavailable(
                "no container engine: podman is not installed. `make setup` installs it from Debian "
                f"({INSTALL_SCRIPT.relative_to(ROOT)}: podman, runc, debootstrap); the image tests need it"
            )
        print("podman is missing: installing it from Debian", flush=True)
        _install()
    binary = shutil.which("podman")
    if binary is None:
        raise EngineUnavailable("podman is still not on PATH after installing it")
    engine = Engine(binary, _environment())
    info = engine("info", "--format", "json", check=False, timeout=60)
    if info.returncode != 0:
        raise EngineUnavailable(f"podman is installed but cannot work here (`podman info` failed):\n{info.stderr}")
    return engine
