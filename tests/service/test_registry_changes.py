"""The registry's state machine under the failures a review found (service/registry), each over a real server and
the real local backend on a copy of the versioned repository. Where a failure cannot be produced here for real (a
backend whose unload fails, a backend that is down, a slow load), a thin wrapper fakes only that, and the test's
name says so. Two in-process servers sharing one operators' record stand in for two workers of `--workers 2`
(tests/service/test_lifecycle_processes.py runs the real processes)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.backends.local import LocalBackend
from service.config import Settings
from service.inprocess import ServerThread, serving
from service.registry.control import CONTROL_DIR_ENV
from tests.service.versions import ADMIN_TOKEN, add_broken_version, add_version, copy_repository, set_default
from vae_client.client import Latents
from vaecore.repository import ModelSpec

MODEL = "tiny"


class FakeFaults:
    """The real local backend, with faults switched on by the test: `down` (not ready, loads fail), `fail_unload`,
    `slow_load_s` (a load that takes that long)."""

    def __init__(self, inner: LocalBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.down = False
        self.fail_unload = False
        self.slow_load_s = 0.0

    async def start(self) -> None:
        await self.inner.start()

    def ready(self) -> bool:
        return not self.down and self.inner.ready()

    async def load(self, model: ModelSpec) -> None:
        await asyncio.sleep(self.slow_load_s)
        if self.down:
            raise RuntimeError("fake: the backend is down")
        await self.inner.load(model)

    async def unload(self, model: ModelSpec) -> None:
        if self.fail_unload:
            raise RuntimeError("fake: the backend cannot be told")
        await self.inner.unload(model)

    async def encode(self, model: ModelSpec, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self.inner.encode(model, images)

    async def decode(self, model: ModelSpec, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self.inner.decode(model, latents)

    async def close(self) -> None:
        await self.inner.close()


def _settings(repo: Path, tmp: Path) -> Settings:
    (tmp / "admin").write_text(f"{ADMIN_TOKEN}\n")
    return Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=repo, torch_threads=1,
                    max_batch_size=4, admin_token_file=str(tmp / "admin"), unload_grace_s=2.0)  # fmt: skip


@pytest.fixture
def repo(versioned_repository: Path, tmp_path: Path) -> Path:
    return copy_repository(versioned_repository, tmp_path / "repo")


@pytest.fixture
def faulty(repo: Path, tmp_path: Path) -> Iterator[tuple[ServerThread, FakeFaults]]:
    backend = FakeFaults(LocalBackend({}, "cpu", 1, max_batch_size=4))
    with serving(_settings(repo, tmp_path), backend) as server:
        yield server, backend


def _states(server: ServerThread, model: str = MODEL) -> dict[str, str]:
    assert server.running is not None
    entry = server.running.registry.entries.get(model)
    return {} if entry is None else {v: s.state.value for v, s in entry.versions.items()}


def _routing(server: ServerThread) -> tuple[str, tuple[tuple[str, float], ...]]:
    assert server.running is not None
    routing = server.running.registry.entries[MODEL].routing
    return routing.default, routing.split


def _wait(condition, what: str, timeout_s: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_drain_ends_even_when_the_fake_backend_cannot_unload(faulty: tuple[ServerThread, FakeFaults]) -> None:
    server, backend = faulty
    assert server.running is not None
    registry = server.running.registry
    backend.fail_unload = True
    server.call(registry.unload_version(MODEL, "2"))
    server.call(registry.drained())
    assert _states(server)["2"] == "unloaded"  # not stuck DRAINING
    backend.fail_unload = False
    server.call(registry.load_version(MODEL, "2"), timeout=30)  # and it loads again, without a hang
    assert _states(server)["2"] == "ready"


def test_a_reload_interrupted_mid_load_by_a_fake_slow_load_leaves_nothing_loading(
    faulty: tuple[ServerThread, FakeFaults], repo: Path
) -> None:
    server, backend = faulty
    assert server.running is not None
    registry = server.running.registry
    add_version(repo, MODEL, "2", "4", make_default=True)
    backend.slow_load_s = 5.0

    async def reload_then_give_up() -> None:
        task = asyncio.ensure_future(registry.reload())
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    server.call(reload_then_give_up())
    assert _states(server)["4"] == "failed" and _routing(server)[0] == "1"  # interrupted: not LOADING forever
    backend.slow_load_s = 0.0
    server.call(registry.reload())  # an interrupted load is retried by the next reload
    assert _states(server)["4"] == "ready" and _routing(server)[0] == "4"


def test_a_version_waiting_for_the_fake_down_backend_takes_its_default_once_it_is_up(
    faulty: tuple[ServerThread, FakeFaults], repo: Path
) -> None:
    server, backend = faulty
    assert server.running is not None
    add_version(repo, MODEL, "2", "4", make_default=True)
    backend.down = True
    server.call(server.running.registry.reload())
    assert _states(server)["4"] == "loading" and _routing(server)[0] == "1"
    backend.down = False
    _wait(lambda: _routing(server)[0] == "4", "the routing to follow the new default once it loaded")
    assert _states(server)["4"] == "ready"


def test_an_operators_unload_sticks_when_a_new_default_fails(
    faulty: tuple[ServerThread, FakeFaults], repo: Path
) -> None:
    server, _ = faulty
    assert server.running is not None
    registry = server.running.registry
    server.call(registry.unload_version(MODEL, "3"))
    server.call(registry.drained())
    add_broken_version(repo, MODEL, "1", "5", "garbage")
    set_default(repo, MODEL, "5")
    server.call(registry.reload())
    server.call(registry.reload())
    states = _states(server)
    assert states["5"] == "failed" and states["3"] == "unloaded" and _routing(server)[0] == "1"


def test_a_model_removed_from_the_repository_is_unloaded(model_repository: Path, tmp_path: Path) -> None:
    repo = copy_repository(model_repository, tmp_path / "two")
    with serving(_settings(repo, tmp_path)) as server:
        assert server.running is not None
        (repo / "tiny2.vae.json").unlink()
        changes = server.call(server.running.registry.reload())
        assert any("tiny2:1: draining" in line for line in changes), changes
        server.call(server.running.registry.drained())
        assert "tiny2" not in server.running.registry.entries
        assert not any("tiny2" in line for line in server.call(server.running.registry.reload()))


def test_a_new_model_whose_only_version_fails_is_listed_and_not_retried(
    faulty: tuple[ServerThread, FakeFaults], repo: Path
) -> None:
    server, _ = faulty
    assert server.running is not None
    for part in ("encoder", "decoder"):
        shutil.copytree(repo / f"tiny_{part}", repo / f"other_{part}")
    text = (repo / "tiny.vae.json").read_text().replace('"tiny', '"other')
    (repo / "other.vae.json").write_text(text)
    (repo / "other_decoder" / "1" / "model.pt").write_bytes(b"garbage")
    failed = server.running.metrics.loads.labels("other", "failed")
    server.call(server.running.registry.reload())
    server.call(server.running.registry.reload())
    assert _states(server, "other")["1"] == "failed"
    assert failed._value.get() == 1  # one refusal, not one per reload


@pytest.fixture
def two_workers(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ServerThread, ServerThread]]:
    """Two servers on one repository sharing one operators' record, as two workers do."""
    (tmp_path / "control").mkdir()
    monkeypatch.setenv(CONTROL_DIR_ENV, str(tmp_path / "control"))
    with serving(_settings(repo, tmp_path)) as a, serving(_settings(repo, tmp_path)) as b:
        yield a, b


def test_a_worker_that_has_not_reloaded_yet_never_reverts_anothers_change(
    two_workers: tuple[ServerThread, ServerThread],
) -> None:
    a, b = two_workers
    assert a.running is not None and b.running is not None
    a.call(a.running.registry.unload_version(MODEL, "3"))
    b.call(b.running.registry.set_default(MODEL, "2"))  # b has not seen a's change: it must not undo it
    for server in (a, b):
        server.call(server.running.registry.reload())  # type: ignore[union-attr]
        server.call(server.running.registry.drained())  # type: ignore[union-attr]
    assert _states(a)["3"] == _states(b)["3"] == "unloaded"
    assert _routing(a)[0] == _routing(b)[0] == "2"


def test_rollback_means_the_same_on_every_worker(two_workers: tuple[ServerThread, ServerThread]) -> None:
    a, b = two_workers
    assert a.running is not None and b.running is not None

    def settle() -> None:
        for server in (a, b):
            server.call(server.running.registry.reload())  # type: ignore[union-attr]

    a.call(a.running.registry.set_default(MODEL, "2"))
    settle()
    a.call(a.running.registry.set_default(MODEL, "3"))
    settle()
    b.call(b.running.registry.rollback(MODEL))
    settle()
    assert _routing(a)[0] == _routing(b)[0] == "2"
    a.call(a.running.registry.rollback(MODEL))
    settle()
    assert _routing(a)[0] == _routing(b)[0] == "1"


def test_latents_of_two_spaces_cannot_be_combined() -> None:
    a, b = Latents(np.ones((1, 4)), "ls1-aaa"), Latents(np.ones((1, 4)), "ls1-bbb")
    assert (a * 2 + a).latent_space == "ls1-aaa"
    assert (a + np.ones((1, 4), np.float32)).latent_space == "ls1-aaa"  # a plain array takes the stamp it meets
    with pytest.raises(ValueError, match="different latent spaces"):
        _ = 0.5 * a + 0.5 * b
