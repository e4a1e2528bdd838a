"""The base image the Dockerfile builds on: the upstream `python:3.11-slim-bookworm` where a registry can be
reached, else a stand-in made here from Debian's own packages.

The stand-in is Debian bookworm (debootstrap's minbase with python3, python3-venv, python-is-python3 and
ca-certificates, from the mirror apt uses), imported as `localhost/vae-standin-python:3.11-bookworm`. Its Python
is Debian's 3.11 at /usr/bin/python, where the official image has python.org's 3.11 at /usr/local/bin: the same
minor version, so the same wheels. It is never tagged with the upstream name, so nothing mistakes it for the
real image, and every build that uses it says so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tools.containers.engine import Engine, EngineError

UPSTREAM = "docker.io/library/python:3.11-slim-bookworm"
STANDIN = "localhost/vae-standin-python:3.11-bookworm"
STANDIN_RECIPE = "debootstrap minbase bookworm + python3 python3-venv python-is-python3 ca-certificates, v1"
STANDIN_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Left out of the stand-in: apt's downloads and lists, documentation, manuals and translations (about 140 MB).
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale")


@dataclass(frozen=True)
class BaseImage:
    name: str
    standin: bool

    def describe(self) -> str:
        if self.standin:
            return f"{self.name} (a STAND-IN for {UPSTREAM}, which could not be pulled: {STANDIN_RECIPE})"
        return self.name


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses here (deb822 `URIs:` or a one-line `deb` entry), not its security archive."""
    texts = [p.read_text() for p in sorted(sources.glob("sources.list.d/*.sources"))]
    if (sources / "sources.list").exists():
        texts.append((sources / "sources.list").read_text())
    for text in texts:
        for uri in re.findall(r"^\s*(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, flags=re.MULTILINE):
            if "security" not in uri:
                return str(uri)
    return DEFAULT_MIRROR


def _standin_is_current(engine: Engine) -> bool:
    if not engine.image_exists(STANDIN):
        return False
    labels = engine.inspect(STANDIN).get("Config", {}).get("Labels") or {}
    return bool(labels.get("vae.standin.recipe") == STANDIN_RECIPE)


def make_standin(engine: Engine, mirror: str | None = None) -> None:
    """debootstrap a minimal bookworm with Python into a temporary folder and import it as STANDIN (about 50 s)."""
    if shutil.which("debootstrap") is None:
        raise EngineError("debootstrap is missing (scripts/install_container_engine.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="vae-standin-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={STANDIN_PACKAGES}", "bookworm", str(rootfs),
               mirror or debian_mirror()]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise EngineError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr}")
        for relative in TRIM:
            for entry in (rootfs / relative).glob("*"):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        archive = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True, timeout=300)
        engine("import", "--change", 'CMD ["python3"]', "--change", f'LABEL vae.standin.recipe="{STANDIN_RECIPE}"',
               str(archive), STANDIN)  # fmt: skip


def ensure_base(engine: Engine, pull_timeout_s: float = 120) -> BaseImage:
    """The upstream image if it is here or can be pulled, else the stand-in (made once, then reused)."""
    if engine.image_exists(UPSTREAM):
        return BaseImage(UPSTREAM, standin=False)
    try:
        pulled = engine("pull", "--quiet", UPSTREAM, check=False, timeout=pull_timeout_s)
    except subprocess.TimeoutExpired:
        reason = f"no answer in {pull_timeout_s:.0f} s"
    else:
        if pulled.returncode == 0:
            return BaseImage(UPSTREAM, standin=False)
        reason = (pulled.stderr.strip().splitlines() or ["no output"])[-1]
    print(f"cannot pull {UPSTREAM} ({reason[:200]}); using a stand-in base made from Debian packages", flush=True)
    if not _standin_is_current(engine):
        print(f"making {STANDIN} with debootstrap (about a minute) ...", flush=True)
        make_standin(engine)
    return BaseImage(STANDIN, standin=True)
