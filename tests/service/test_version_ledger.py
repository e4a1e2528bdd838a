"""The version ledger (tests/service/version_ledger.py): 10^4 concurrent mixed requests while versions are
split, switched, rolled back, unloaded and loaded again, at least 20 times. Every request gets exactly one answer,
OK; the version it names was being routed to during its life; its numbers equal that version's answer alone.
A shorter run drives a real tritonserver in explicit model control: the service loads and unloads version 3 in
Triton while the routing changes. Also: RSS after 100 load/unload cycles stays within 10% of RSS after 10 (the
failure mode of Triton #5841), in this process with the local backend."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Settings
from service.inprocess import ServerThread, serving
from service.metrics import METHODS
from tests.service.version_ledger import CHANGES, MODEL, ROUTING_CHANGES, run_version_ledger
from tests.service.versions import ADMIN_TOKEN, copy_repository

REQUESTS = int(os.environ.get("VERSION_LEDGER_REQUESTS", "10000"))
MIN_CHANGES = 20
# Over Triton: the routing changes, then one unload and reload of version 3 in Triton (seconds each)
TRITON_CHANGES = ROUTING_CHANGES + [c for c in CHANGES if c[0] in ("unload 3", "load 3")]


@pytest.fixture(scope="module")
def server(versioned_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("version_ledger")
    (tmp / "admin").write_text(f"{ADMIN_TOKEN}\n")
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, torch_threads=1, max_batch_size=16,
                        model_repository=copy_repository(versioned_repository, tmp / "repo"),
                        admin_token_file=str(tmp / "admin"), unload_grace_s=5.0)  # fmt: skip
    with serving(settings) as running:
        yield running


def test_no_request_is_lost_or_misanswered_while_versions_change(server: ServerThread) -> None:
    assert server.running is not None
    run = run_version_ledger(server.address, REQUESTS, concurrency=32, min_changes=MIN_CHANGES)
    seen_cancelled = sum(server.running.metrics.requests.labels(m, "CANCELLED")._value.get() for m in METHODS)
    print(f"\n{run.table()}\nthe server counted {seen_cancelled:.0f} CANCELLED")
    assert len(run.outcomes) == REQUESTS
    assert len(run.changes) >= MIN_CHANGES
    assert run.problems == [], (
        "\n".join(run.problems[:20]) + f"\n... {len(run.problems)} problems\n{run.table()}\n"
        f"the server counted {seen_cancelled:.0f} CANCELLED (0: its handlers never saw them, issue 19's mechanism)"
    )
    served = Counter(o.version for o in run.outcomes)
    assert all(served[v] > 0 for v in ("1", "2", "3")), served  # the switches really moved traffic


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_memory_stays_flat_over_100_load_unload_cycles(server: ServerThread) -> None:
    assert server.running is not None
    registry = server.running.registry

    async def cycle() -> None:
        await registry.unload_version(MODEL, "3")
        await registry.drained()
        await registry.load_version(MODEL, "3")

    rss = {}
    for done in range(1, 101):
        server.call(cycle())
        if done in (10, 100):
            rss[done] = _rss_bytes()
    print(f"\nRSS after 10 cycles {rss[10] / 2**20:.1f} MiB, after 100 {rss[100] / 2**20:.1f} MiB")
    assert rss[100] <= 1.10 * rss[10], rss


TRITON_REQUESTS = int(os.environ.get("VERSION_LEDGER_TRITON_REQUESTS", "1500"))


def test_the_ledger_balances_over_triton_in_explicit_model_control(
    versioned_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from training.export import derive_python_variant
    from training.triton_local import TritonServer

    tmp = tmp_path_factory.mktemp("version_ledger_triton")
    (tmp / "admin").write_text(f"{ADMIN_TOKEN}\n")
    repo = copy_repository(versioned_repository, tmp / "repo")
    derive_python_variant(repo, tmp / "python", max_batch_size=64)
    triton = TritonServer(tmp / "python", tmp / "triton", model_control="explicit").start(timeout_s=300)
    try:
        # the service reads the repository Triton serves (as in deploy/: one copy), whose configs its loads send
        settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, max_batch_size=16,
                            model_repository=tmp / "python",
                            backend="triton", triton_url=triton.grpc_url, triton_model_control="explicit",
                            admin_token_file=str(tmp / "admin"), unload_grace_s=5.0)  # fmt: skip
        with serving(settings) as server:
            run = run_version_ledger(server.address, TRITON_REQUESTS, concurrency=16, min_changes=MIN_CHANGES,
                                     template_count=80, pause_s=0.2, changes=TRITON_CHANGES)  # fmt: skip
    finally:
        triton.stop()
    print(f"\n{run.table()}")
    assert len(run.changes) >= MIN_CHANGES
    assert any(c.what == "load 3" for c in run.changes)  # the service had Triton load a version mid-traffic
    assert run.problems == [], "\n".join(run.problems[:20]) + f"\n... {len(run.problems)} problems\n{run.table()}"
    served = Counter(o.version for o in run.outcomes)
    assert served["1"] > 0 and served["2"] > 0, served
