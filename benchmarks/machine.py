"""Where and when a run happened: CPU model, cores, memory, versions, commit, date; stored with its results."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.procs import REPO_ROOT


def _first(path: str, key: str) -> str:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), "unknown")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _gib(kb: str) -> str:
    """'24684096 kB' -> '23.5 GiB'."""
    number = kb.split()[0]
    return f"{int(number) / 1024**2:.1f} GiB" if number.isdigit() else kb


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def describe(command: str) -> dict[str, Any]:
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory": _gib(_first("/proc/meminfo", "MemTotal")),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "grpcio": _version("grpcio"),
        "commit": _git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if dirty else ""),
    }
