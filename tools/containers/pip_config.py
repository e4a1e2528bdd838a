"""This machine's pip configuration, handed to an image build at build time only.

Where packages come from is the host's business: a TLS-intercepting proxy whose CA only the host trusts, wheel
folders and file:// indexes on its disk (the CPU PyTorch wheel among them). The build gets exactly what the
host's pip sees (`pip config list`, files and PIP_* variables), as build secrets and read-only bind mounts:

- `pip.conf`: one [global] section with the host's settings; the secret becomes /etc/pip.conf in the install steps;
- `ca.crt`: the host's `cert` bundle; the pip.conf points at /run/secrets/ca.crt;
- every local folder or file the settings name (find-links, file:// indexes with the folder above them,
  constraint files), mounted read-only at the same path, so the settings stay true inside the build.

None of it is written to a layer: a secret is a tmpfs file of the one RUN step, a build volume is not committed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

CA_TARGET = "/run/secrets/ca.crt"
# Settings whose values are lists of places to find packages (space or newline separated). An index's pages may
# link to files beside it (a local mirror's simple/ pages point at ../files/), so an index mounts its parent folder.
LINKS = {"find-links"}
INDEXES = {"index-url", "extra-index-url"}
FILES = {"constraint", "requirement"}
CERTS = {"cert"}
# Section precedence of `pip config list` keys: environment variables over the [install] and [global] sections.
PRECEDENCE = {"global": 0, "install": 1, ":env:": 2}
LINE = re.compile(r"^(?P<section>[^.]+|:env:)\.(?P<key>[\w-]+)='(?P<value>.*)'$")


@dataclass
class BuildPipConfig:
    settings: dict[str, str]
    secrets: dict[str, Path] = field(default_factory=dict)  # secret id -> file on the host
    mounts: list[Path] = field(default_factory=list)  # host paths, bound read-only at the same path

    def build_args(self) -> list[str]:
        """The podman build flags that hand this configuration to the build."""
        args = [f"--secret=id={name},src={path}" for name, path in sorted(self.secrets.items())]
        return args + [f"--volume={path}:{path}:ro" for path in self.mounts]

    def describe(self) -> str:
        keys = ", ".join(sorted(self.settings)) or "none"
        mounts = ", ".join(map(str, self.mounts)) or "none"
        return f"host pip settings ({keys}) as build secrets; read-only mounts: {mounts}"


def host_settings(python: str = sys.executable) -> dict[str, str]:
    """`pip config list` of the host's pip, one value per key, the highest-precedence section winning."""
    listing = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    chosen: dict[str, tuple[int, str]] = {}
    for line in listing.stdout.splitlines():
        match = LINE.match(line.strip())
        if match is None:
            continue
        rank = PRECEDENCE.get(match["section"], 0)
        if match["key"] not in chosen or rank >= chosen[match["key"]][0]:
            chosen[match["key"]] = (rank, match["value"])
    return {key: value for key, (_, value) in chosen.items()}


def _local_path(location: str) -> Path | None:
    """The host path a pip location names (a folder, a file, or a file:// URL), if it is local and exists."""
    if location.startswith("file:"):
        location = unquote(urlparse(location).path)
    elif "://" in location:
        return None
    path = Path(location)
    return path if path.is_absolute() and path.exists() else None


def for_build(workdir: Path, settings: dict[str, str] | None = None) -> BuildPipConfig:
    """The host's pip configuration as files under `workdir`, ready for `podman build`."""
    settings = dict(host_settings() if settings is None else settings)
    config = BuildPipConfig(settings)
    mounts: list[Path] = []
    for key, value in settings.items():
        if key in CERTS and Path(value).is_file():
            config.secrets["ca.crt"] = Path(shutil.copy(value, workdir / "ca.crt"))
            settings[key] = CA_TARGET
        elif key in LINKS | FILES:
            mounts += [p for p in map(_local_path, value.split()) if p is not None]
        elif key in INDEXES:
            mounts += [p.parent for p in map(_local_path, value.split()) if p is not None]
    config.mounts = sorted(set(mounts))
    lines = ["[global]", *(f"{key} = {value}" for key, value in sorted(settings.items()))]
    config.secrets["pip.conf"] = workdir / "pip.conf"
    config.secrets["pip.conf"].write_text("\n".join(lines) + "\n")
    return config
