"""Versions through the Triton backend, against a real tritonserver in explicit model control
(`--model-control-mode=explicit`, nvidia-pytriton's server) serving the Python-backend copy of `versioned_repository`
(versions 1-3, and a version 4 whose decoder file is garbage):
- a loaded version answers with its own numbers (those of its TorchScript file, run here), while the version
  already serving keeps answering without one failed call and the backend never reports itself not ready (the
  failure mode of Triton issue #5757; Triton's own server readiness is false during every load, so the probe asks
  for liveness and each version's readiness instead);
- an unloaded version is refused while the others serve; Triton's repository index shows what it holds;
- a version whose file does not load is refused by name with Triton's reason and disturbs nothing (its other
  network, which did load, is unloaded again); so is a version Triton has no folder for; a load its caller gives
  up on is taken out of Triton once Triton has finished it;
- a Triton that restarted (and so forgot every load) gets the served versions back from the probe;
- with only the metadata on the service's side, Triton's own config is used;
- in model control "none", a version Triton does not serve cannot be loaded.
One server for the module; each test starts from a Triton with nothing loaded. Timings are printed (`pytest -s`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from service.backends.triton import TritonBackend
from tests.datasets import stroke_images
from training.export import derive_python_variant
from training.triton_local import TritonServer
from training.triton_repo import set_version_policy
from vae_client.errors import Unavailable
from vaecore.repository import ModelSpec, load_versions, metadata_path

NETWORKS = ("tiny_decoder", "tiny_encoder")


@pytest.fixture(scope="module")
def repository(versioned_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python-backend copy Triton serves, plus a version 4 whose encoder is version 1's file and whose decoder
    is garbage bytes, listed in both configs (as an export of a broken file would be)."""
    target = tmp_path_factory.mktemp("versions_python_repository")
    derive_python_variant(versioned_repository, target, max_batch_size=64)
    for network in NETWORKS:
        (target / network / "4").mkdir()
        shutil.copy2(target / network / "1" / "model.py", target / network / "4" / "model.py")
        set_version_policy(target / network, ["1", "2", "3", "4"])
    shutil.copy2(target / "tiny_encoder" / "1" / "model.pt", target / "tiny_encoder" / "4" / "model.pt")
    (target / "tiny_decoder" / "4" / "model.pt").write_bytes(b"not a TorchScript file " * 64)
    return target


@pytest.fixture(scope="module")
def versions(repository: Path) -> dict[str, ModelSpec]:
    """Versions 1-3 as the metadata lists them, and the broken version 4 (the metadata does not know it)."""
    specs = dict(load_versions(repository)["tiny"].versions)
    specs["4"] = dataclasses.replace(specs["1"], version="4")
    return specs


@pytest.fixture(scope="module")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = TritonServer(repository, tmp_path_factory.mktemp("triton_versions"), model_control="explicit").start()
    try:
        yield server
    finally:
        server.stop()


async def triton_states(url: str) -> dict[tuple[str, str], str]:
    """Triton's repository index: the state of each version of our networks it knows (READY, LOADING, ...)."""
    client = triton_grpc.InferenceServerClient(url)
    try:
        index = await client.get_model_repository_index(as_json=True)
    finally:
        await client.close()
    return {(e["name"], e["version"]): e.get("state", "") for e in index.get("models", [])
            if e.get("name") in NETWORKS and e.get("version")}  # fmt: skip


async def triton_serves(url: str) -> dict[str, set[str]]:
    """The versions of each network Triton serves (READY)."""
    served: dict[str, set[str]] = {n: set() for n in NETWORKS}
    for (network, version), state in (await triton_states(url)).items():
        if state == "READY":
            served[network].add(version)
    return served


async def nothing_loaded(url: str, timeout: float = 60.0) -> None:
    """Unload both networks and wait until Triton holds no version of them (READY, LOADING or UNLOADING)."""
    client = triton_grpc.InferenceServerClient(url)
    try:
        for network in NETWORKS:
            with contextlib.suppress(InferenceServerException):  # never loaded
                await client.unload_model(network)
    finally:
        await client.close()
    deadline = time.monotonic() + timeout
    while busy := {key: state for key, state in (await triton_states(url)).items() if state != "UNAVAILABLE"}:
        assert time.monotonic() < deadline, f"Triton still holds {busy}"
        await asyncio.sleep(0.1)


def explicit(url: str, *served: ModelSpec) -> TritonBackend:
    return TritonBackend({m.key: m for m in served}, url, model_control="explicit", probe_interval_s=0.1)


def local(model: ModelSpec, part: str, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The version's own TorchScript file, run here."""
    network = model.encoder if part == "encoder" else model.decoder
    module = torch.jit.load(str(model.torchscript_path(network)), map_location="cpu").eval()
    with torch.inference_mode():
        first, second = module(torch.from_numpy(np.ascontiguousarray(array)))
    return first.numpy(), second.numpy()


@dataclasses.dataclass
class Traffic:
    """Calls on one version back to back, in a task of their own, until stopped: every failure kept, and whether
    the backend ever reported itself not ready meanwhile."""

    backend: TritonBackend
    model: ModelSpec
    latents: np.ndarray
    ok: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    not_ready_seen: int = 0
    _stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Traffic:
        self._task = asyncio.get_running_loop().create_task(self._run())
        while self.ok < 3 and not self.failures:
            await asyncio.sleep(0.01)
        return self

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.backend.decode(self.model, self.latents)
                await self.backend.encode(self.model, np.zeros((2, *self.model.image_shape), np.float32))
                self.ok += 1
            except Exception as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)  # a call failing at once must not starve the loop
            self.not_ready_seen += not self.backend.ready()

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


LATENTS = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)
IMAGES = stroke_images(4, seed=3)[0][:, None].astype(np.float32)


def test_a_loaded_version_serves_its_own_numbers_while_the_others_keep_serving(
    triton: TritonServer, versions: dict[str, ModelSpec]
) -> None:
    v1, v2 = versions["1"], versions["2"]

    async def scenario() -> None:
        await nothing_loaded(triton.grpc_url)
        backend = explicit(triton.grpc_url, v1)
        started = time.monotonic()
        await backend.start()
        print(f"\nstart with version 1 (a network not loaded yet): {time.monotonic() - started:.2f} s")
        try:
            assert backend.ready()
            assert await triton_serves(triton.grpc_url) == {"tiny_encoder": {"1"}, "tiny_decoder": {"1"}}
            async with Traffic(backend, v1, LATENTS) as traffic:
                started = time.monotonic()
                await backend.load(v2)
                loading = time.monotonic() - started
            print(f"load version 2 beside 1: {loading:.2f} s; {traffic.ok} calls on version 1 meanwhile, "
                  f"{len(traffic.failures)} failed")  # fmt: skip
            assert traffic.failures == [] and traffic.ok > 10
            assert traffic.not_ready_seen == 0, "the backend reported itself not ready while version 2 loaded"
            assert await triton_serves(triton.grpc_url) == {"tiny_encoder": {"1", "2"}, "tiny_decoder": {"1", "2"}}

            started = time.monotonic()
            await backend.load(v2)  # already loaded: nothing to do
            assert time.monotonic() - started < 0.5

            means = {}
            for model in (v1, v2):
                mean, logits = await backend.decode(model, LATENTS)
                expected_mean, expected_logits = local(model, "decoder", LATENTS)
                np.testing.assert_allclose(mean, expected_mean, atol=1e-5, err_msg=model.key)
                np.testing.assert_allclose(logits, expected_logits, atol=1e-5, err_msg=model.key)
                mu, logvar = await backend.encode(model, IMAGES)
                expected_mu, expected_logvar = local(model, "encoder", IMAGES)
                np.testing.assert_allclose(mu, expected_mu, atol=1e-5, err_msg=model.key)
                np.testing.assert_allclose(logvar, expected_logvar, atol=1e-5, err_msg=model.key)
                means[model.version] = mean
            assert np.abs(means["1"] - means["2"]).max() > 1e-3, "versions 1 and 2 have different decoders"

            async with Traffic(backend, v2, LATENTS) as traffic:
                started = time.monotonic()
                await backend.unload(v1)
                unloading = time.monotonic() - started
            print(f"unload version 1: {unloading:.2f} s; {traffic.ok} calls on version 2 meanwhile, "
                  f"{len(traffic.failures)} failed")  # fmt: skip
            assert traffic.failures == []
            with pytest.raises(Unavailable, match="tiny:1"):
                await backend.decode(v1, LATENTS)
            assert await triton_serves(triton.grpc_url) == {"tiny_encoder": {"2"}, "tiny_decoder": {"2"}}
            np.testing.assert_allclose((await backend.decode(v2, LATENTS))[0], means["2"], atol=1e-6)
            assert backend.ready()

            await backend.unload(v2)  # the last version: the networks are unloaded
            assert await triton_serves(triton.grpc_url) == {"tiny_encoder": set(), "tiny_decoder": set()}
            with pytest.raises(Unavailable, match="tiny:2"):
                await backend.decode(v2, LATENTS)
            await backend.unload(v2)  # not loaded: nothing to do
        finally:
            await backend.close()

    asyncio.run(scenario())


def test_a_version_that_does_not_load_is_refused_by_name_and_the_others_keep_serving(
    triton: TritonServer, versions: dict[str, ModelSpec]
) -> None:
    """Version 4's encoder loads and its decoder does not: the load fails naming the version and Triton's reason,
    the encoder's version 4 is unloaded again, and version 1 serves throughout. Then a version Triton has no
    folder for, which Triton skips without a word: refused too. Then a load given up by its caller."""
    v1, v4 = versions["1"], versions["4"]

    async def scenario() -> None:
        await nothing_loaded(triton.grpc_url)
        backend = explicit(triton.grpc_url, v1)
        await backend.start()
        try:
            async with Traffic(backend, v1, LATENTS) as traffic:
                started = time.monotonic()
                with pytest.raises(Unavailable) as error:
                    await backend.load(v4)
                failing = time.monotonic() - started
            message = str(error.value)
            print(f"\nbroken version 4 refused after {failing:.2f} s: {message[:200]}...; {traffic.ok} calls on "
                  f"version 1 meanwhile, {len(traffic.failures)} failed")  # fmt: skip
            assert "tiny:4" in message and "tiny_decoder version 4" in message
            assert "PytorchStreamReader" in message  # Triton's own reason
            assert traffic.failures == [] and traffic.not_ready_seen == 0
            assert await triton_serves(triton.grpc_url) == {"tiny_encoder": {"1"}, "tiny_decoder": {"1"}}
            with pytest.raises(Unavailable, match="tiny:4"):
                await backend.decode(v4, LATENTS)
            np.testing.assert_allclose((await backend.decode(v1, LATENTS))[0], local(v1, "decoder", LATENTS)[0],
                                       atol=1e-5)  # fmt: skip
            # Triton skips a listed version that has no folder and calls the load done: the backend asks.
            with pytest.raises(Unavailable, match=r"tiny:9 .*version \[9\]"):
                await backend.load(dataclasses.replace(v1, version="9"))
            assert await triton_serves(triton.grpc_url) == {"tiny_encoder": {"1"}, "tiny_decoder": {"1"}}
            assert backend.ready()

            # A load its caller gives up on (the registry's timeout) goes on in Triton: once it is done there, the
            # backend takes the version out again.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    await backend.load(versions["2"])
            given_up = time.monotonic()
            only_1 = {"tiny_encoder": {"1"}, "tiny_decoder": {"1"}}
            seen_2 = False  # Triton did load it (the load was not given up before Triton was asked)
            async with Traffic(backend, v1, LATENTS) as traffic:
                while True:
                    states = await triton_states(triton.grpc_url)
                    seen_2 |= any(v == "2" and st in ("LOADING", "READY") for (_, v), st in states.items())
                    busy = any(st in ("LOADING", "UNLOADING") for st in states.values())
                    if not busy and await triton_serves(triton.grpc_url) == only_1:
                        break
                    assert time.monotonic() - given_up < 60, f"version 2 stayed behind in Triton: {states}"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)
                assert await triton_serves(triton.grpc_url) == only_1
            assert seen_2
            print(f"load given up after 1 s: Triton serves version 1 alone again {time.monotonic() - given_up:.2f} "
                  f"s later; {traffic.ok} calls on version 1 meanwhile, {len(traffic.failures)} failed")  # fmt: skip
            assert traffic.failures == [] and backend.ready()
            with pytest.raises(Unavailable, match="tiny:2"):
                await backend.decode(versions["2"], LATENTS)
        finally:
            await backend.close()

    asyncio.run(scenario())


def test_the_versions_a_restarted_triton_forgot_are_loaded_again(
    triton: TritonServer, versions: dict[str, ModelSpec]
) -> None:
    v1 = versions["1"]

    async def scenario() -> None:
        await nothing_loaded(triton.grpc_url)
        backend = explicit(triton.grpc_url, v1)
        await backend.start()
        try:
            assert backend.ready()
            before = await triton_serves(triton.grpc_url)
            assert before == {"tiny_encoder": {"1"}, "tiny_decoder": {"1"}}
            triton.stop()
            await asyncio.to_thread(triton.start)  # explicit mode: Triton starts with nothing loaded
            restarted = time.monotonic()
            while not (backend.ready() and await triton_serves(triton.grpc_url) == before):
                assert time.monotonic() - restarted < 60, "the backend did not load its versions again"
                await asyncio.sleep(0.05)
            print(f"\nTriton restarted: serving version 1 again {time.monotonic() - restarted:.2f} s later")
            np.testing.assert_allclose((await backend.decode(v1, LATENTS))[0], local(v1, "decoder", LATENTS)[0],
                                       atol=1e-5)  # fmt: skip
        finally:
            await backend.close()

    asyncio.run(scenario())


def test_without_a_config_here_the_backend_has_triton_use_its_own(
    triton: TritonServer, versions: dict[str, ModelSpec], tmp_path: Path
) -> None:
    """A service-side repository with the metadata alone (service/integrity.py allows it): no config.pbtxt to base
    an override on, so Triton loads every version its own config lists, and is then told to serve only the one
    asked for. (With the broken version 4 listed that first load fails as a whole, so the configs list 1-3 here.)"""
    shutil.copy2(metadata_path(versions["2"].directory, "tiny"), tmp_path)
    v2 = load_versions(tmp_path)["tiny"].versions["2"]
    assert not (tmp_path / "tiny_decoder").exists()
    triton_side = versions["1"].directory

    async def scenario() -> None:
        await nothing_loaded(triton.grpc_url)
        backend = explicit(triton.grpc_url, v2)
        started = time.monotonic()
        await backend.start()
        print(f"\nno config here: version 2 served after {time.monotonic() - started:.2f} s")
        try:
            assert backend.ready()
            assert await triton_serves(triton.grpc_url) == {"tiny_encoder": {"2"}, "tiny_decoder": {"2"}}
            np.testing.assert_allclose((await backend.decode(v2, LATENTS))[0],
                                       local(versions["2"], "decoder", LATENTS)[0], atol=1e-5)  # fmt: skip
        finally:
            await backend.close()

    for network in NETWORKS:
        set_version_policy(triton_side / network, ["1", "2", "3"])
    try:
        asyncio.run(scenario())
    finally:
        for network in NETWORKS:
            set_version_policy(triton_side / network, ["1", "2", "3", "4"])


def test_model_control_none_only_checks_that_triton_serves_the_version(
    triton: TritonServer, versions: dict[str, ModelSpec]
) -> None:
    v1, v2 = versions["1"], versions["2"]

    async def scenario() -> None:
        await nothing_loaded(triton.grpc_url)
        loader = explicit(triton.grpc_url, v1)  # stands in for Triton's own loading in mode none
        await loader.start()
        await loader.close()  # closing unloads nothing
        backend = TritonBackend({}, triton.grpc_url, probe_interval_s=0.1)
        await backend.start()
        try:
            with pytest.raises(Unavailable) as error:
                await backend.load(v2)
            assert "tiny:2" in str(error.value) and "tiny_encoder, tiny_decoder" in str(error.value)
            with pytest.raises(Unavailable, match="tiny:2"):
                await backend.decode(v2, LATENTS)
            await backend.load(v1)
            np.testing.assert_allclose((await backend.decode(v1, LATENTS))[0], local(v1, "decoder", LATENTS)[0],
                                       atol=1e-5)  # fmt: skip
            await backend.unload(v1)  # forgets it; Triton keeps serving it
            with pytest.raises(Unavailable, match="tiny:1"):
                await backend.decode(v1, LATENTS)
            assert await triton_serves(triton.grpc_url) == {"tiny_encoder": {"1"}, "tiny_decoder": {"1"}}
        finally:
            await backend.close()

    asyncio.run(scenario())


def test_model_control_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="model_control"):
        TritonBackend({}, "127.0.0.1:1", model_control="poll")
    with pytest.raises(ValueError, match="model_control"):
        TritonServer(Path("."), Path("."), model_control="poll")
    with pytest.raises(ValueError, match="load_models"):
        TritonServer(Path("."), Path("."), load_models=("tiny_encoder",))
    server = TritonServer(Path("."), Path("."), model_control="explicit", load_models=("*",))
    assert server.model_control_flags() == ["--model-control-mode=explicit", "--load-model=*"]
    assert TritonServer(Path("."), Path(".")).model_control_flags() == []
