"""One row of the table: a load-generator process against one server, its JSON turned into a labelled row.

A load generator that fails (cannot connect, crashes) still gives a row, with its error in it: nothing a run
measures is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.payloads import Payload
from benchmarks.procs import PYTHON, REPO_ROOT


@dataclass(frozen=True)
class Load:
    inflight: int
    seconds: float
    warmup: float
    calls: int | None = None  # a fixed number of calls instead of a time (the 100k-image stream)
    channels: int = 1
    procs: int = 1  # client processes (--loadgen-procs); a row with fewer tasks gets one process per task

    @property
    def client_procs(self) -> int:
        """The load generator's --procs for this row: each process needs a task of its own."""
        return max(1, min(self.procs, self.inflight))


@dataclass(frozen=True)
class Label:
    server: str  # transport, service, service-nobatch, triton-direct, service-triton
    workers: int
    method: str  # Sample, Decode, Encode, SampleStream, or a mix in soak mode


def loadgen_argv(target: str, payloads: list[Payload], load: Load, folder: Path) -> list[str]:
    argv = [
        PYTHON,
        "-m",
        "benchmarks.loadgen",
        "--target",
        target,
        "--inflight",
        str(load.inflight),
        "--seconds",
        str(load.seconds),
        "--warmup",
        str(load.warmup),
        "--channels",
        str(load.channels),
        "--procs",
        str(load.client_procs),
    ]
    for payload in payloads:
        name = hashlib.sha256(payload.path.encode() + payload.body).hexdigest()[:16]
        argv += ["--call", payload.path, str(payload.save(folder, name))]
    if payloads[0].stream:
        argv.append("--stream")
    if load.calls is not None:
        argv += ["--calls", str(load.calls)]
    return argv


def parse_result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The load generator's JSON, or an error row carrying its stderr."""
    if done.returncode == 0:
        try:
            return dict(json.loads(done.stdout))
        except json.JSONDecodeError:
            pass
    tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[:400]
    return {
        "ok": 0,
        "errors": 1,
        "error_codes": {"LOADGEN_FAILED": 1},
        "first_error": tail,
        "rate": 0.0,
        "p50_ms": None,
        "p99_ms": None,
        "reply_bytes": [],
        "elapsed_s": 0.0,
    }


def run_load(target: str, payloads: list[Payload], load: Load, folder: Path) -> dict[str, Any]:
    limit = load.warmup + load.seconds + 120 if load.calls is None else 900
    argv = loadgen_argv(target, payloads, load, folder)
    try:
        done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess(argv, -1, "", f"load generator still running after {limit:.0f} s")
    return parse_result(done)


def load_row(label: Label, target: str, payload: Payload, load: Load, folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    stats = run_load(target, [payload], load, folder)
    return {
        "kind": "load",
        "server": label.server,
        "workers": label.workers,
        "method": label.method,
        "n": payload.items,
        "inflight": load.inflight,
        "procs": load.client_procs,  # also on a row whose load generator failed
        **stats,
        "images_per_s": stats["rate"] * payload.items,
        "wall_s": round(time.perf_counter() - started, 2),
    }
