"""The model lifecycle over real gRPC (local backend): versions served side by side and named in every reply,
latents stamped with their latent space and checked when they come back, the admin service (its own credential)
switching, splitting and rolling back traffic, reloads that load new versions, drain and unload old ones, and
refuse broken ones while what serves keeps serving."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from service.config import Settings
from service.inprocess import ServerThread, serving, stub_for
from tests.service.versions import (
    ADMIN_TOKEN,
    add_broken_version,
    add_version,
    admin_for,
    array,
    copy_repository,
    remove,
    set_default,
    states,
)
from vae_client import cli
from vae_client.client import Latents, VaeClient
from vae_client.codecs import array_to_tensor
from vae_client.proto_gen.vae.v1 import vae_pb2 as V

MODEL = "tiny"


def _settings(repo: Path, tmp_path: Path, **overrides: object) -> Settings:
    token_file = tmp_path / "admin-tokens"
    token_file.write_text(f"{ADMIN_TOKEN}\n")
    base = {"host": "127.0.0.1", "port": 0, "metrics_port": -1, "model_repository": repo, "torch_threads": 1,
            "max_batch_size": 16, "admin_token_file": str(token_file), "unload_grace_s": 5.0}  # fmt: skip
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def repo(versioned_repository: Path, tmp_path: Path) -> Path:
    return copy_repository(versioned_repository, tmp_path / "repo")


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[ServerThread]:
    with serving(_settings(repo, tmp_path)) as running:
        yield running


def _info(stub: V.VaeServiceStub) -> V.ModelInfo:  # type: ignore[name-defined]
    return stub.GetModelInfo(V.GetModelInfoRequest(model=MODEL)).info


def _decode(stub, latents: np.ndarray, version: str = "", space: str = ""):  # type: ignore[no-untyped-def]
    request = V.DecodeRequest(model=MODEL, latents=array_to_tensor(latents), model_version=version, latent_space=space)
    return stub.Decode(request)


def _health(server: ServerThread, name: str) -> str:
    """The health service's answer for `name`: SERVING, NOT_SERVING, or NOT_FOUND (a name not set yet)."""
    with grpc.insecure_channel(server.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return "NOT_FOUND"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _wait(condition, what: str, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_every_version_serves_side_by_side_and_replies_name_it(server: ServerThread) -> None:
    latents = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with stub_for(server) as stub:
        info = _info(stub)
        assert states(info) == {"1": "READY", "2": "READY", "3": "READY"}
        assert info.version == info.default_version == "1"
        spaces = {v.version: v.latent_space for v in info.versions}
        assert spaces["1"] == spaces["2"] != spaces["3"] and spaces["1"].startswith("ls1-")
        assert {v.version: v.traffic_share for v in info.versions} == {"1": 1.0, "2": 0.0, "3": 0.0}
        images = {}
        for version in ("1", "2", "3"):
            reply = _decode(stub, latents, version)
            assert reply.model_version == version and reply.model == MODEL
            images[version] = array(reply.images.tensor)
        unpinned = _decode(stub, latents)
        assert unpinned.model_version == "1"
        np.testing.assert_array_equal(array(unpinned.images.tensor), images["1"])
        assert not np.allclose(images["1"], images["2"], atol=1e-4)  # a different decoder answers
        assert server.running is not None
        routed = server.running.metrics.version_requests.labels(MODEL, "3", "Sample")
        before = routed._value.get()
        sample = stub.Sample(V.SampleRequest(model=MODEL, n=2, model_version="3"))
        assert routed._value.get() == before + 1  # counted against the version that answered
        assert (sample.model_version, sample.latent_space) == ("3", spaces["3"])
        assert stub.GetModelInfo(V.GetModelInfoRequest(model=MODEL, model_version="3")).info.latent_space == spaces["3"]
        with pytest.raises(grpc.RpcError) as missing:
            _decode(stub, latents, "9")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "1 ready, 2 ready, 3 ready" in str(
            missing.value.details()
        )
    assert _health(server, "vae.v1.VaeService/tiny:3") == "SERVING"


def test_latents_carry_their_space_and_a_mismatch_is_refused(server: ServerThread) -> None:
    assert server.running is not None
    images = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    with stub_for(server) as stub:
        encoded = stub.Encode(V.EncodeRequest(model=MODEL, images=V.Images(tensor=array_to_tensor(images)),
                                              model_version="3"))  # fmt: skip
        space3 = encoded.latent_space
        space1 = stub.Encode(V.EncodeRequest(model=MODEL, images=V.Images(tensor=array_to_tensor(images)))).latent_space
        assert space3 and space1 and space3 != space1
        z3 = array(encoded.mean)
        with pytest.raises(grpc.RpcError) as refused:  # unpinned: the routing's version 1 has another space
            _decode(stub, z3, space=space3)
        message = refused.value.details()
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert space3 in message and space1 in message and "versions that accept it: 3" in message
        with pytest.raises(grpc.RpcError) as pinned:  # pinned to a version of the other space
            _decode(stub, z3, "2", space3)
        assert pinned.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _decode(stub, z3, "3", space3).model_version == "3"
        assert _decode(stub, z3, "2", space1).model_version == "2"  # a decoder-only retrain keeps the space
        mixed = V.InterpolateRequest(model=MODEL, steps=3,
                                     start=V.Endpoint(latent=array_to_tensor(z3[0]), latent_space=space3),
                                     end=V.Endpoint(latent=array_to_tensor(z3[1]), latent_space=space1))  # fmt: skip
        with pytest.raises(grpc.RpcError) as two_spaces:
            stub.Interpolate(mixed)
        assert two_spaces.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "different latent spaces" in str(
            two_spaces.value.details()
        )
        unstamped = server.running.metrics.unstamped_latents.labels(MODEL, "Decode")
        before = unstamped._value.get()
        _decode(stub, z3)  # no stamp: served as before, and counted
        assert unstamped._value.get() == before + 1


def test_the_admin_service_needs_its_own_token(server: ServerThread) -> None:
    with admin_for(server.address, token="not-the-admin-token") as wrong, pytest.raises(grpc.RpcError) as refused:
        wrong.index()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with admin_for(server.address) as admin:
        (model,) = [m for m in admin.index().models if m.name == MODEL]
        assert states(model) == {"1": "READY", "2": "READY", "3": "READY"}


def test_a_server_without_an_admin_credential_has_no_admin_service(repo: Path, tmp_path: Path) -> None:
    with (
        serving(_settings(repo, tmp_path, admin_token_file="")) as server,
        admin_for(server.address) as admin,
        pytest.raises(grpc.RpcError) as refused,
    ):
        admin.index()
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED  # not registered at all


def _versions_answering(stub, n: int, **fields: object) -> Counter[str]:  # type: ignore[no-untyped-def]
    return Counter(stub.Sample(V.SampleRequest(model=MODEL, n=1, **fields)).model_version for _ in range(n))


def test_split_default_and_rollback(server: ServerThread) -> None:
    assert server.running is not None
    with stub_for(server) as stub, admin_for(server.address) as admin:
        info = admin.split(MODEL, {"1": 1.0, "2": 1.0})
        assert {v.version: v.traffic_share for v in info.versions} == {"1": 0.5, "2": 0.5, "3": 0.0}
        seen = _versions_answering(stub, 200)
        assert set(seen) == {"1", "2"} and min(seen.values()) > 50, seen
        assert server.running.metrics.split_since.labels(MODEL)._value.get() > 0
        # a stamp narrows the split: latents of version 3's space never reach 1 or 2, and back again
        admin.split(MODEL, {"1": 1.0, "3": 1.0})
        z = np.zeros((1, 4), np.float32)
        space1 = _info(stub).versions[0].latent_space
        assert {_decode(stub, z, space=space1).model_version for _ in range(40)} == {"1"}
        assert set(_versions_answering(stub, 100)) == {"1", "3"}
        admin.rollback(MODEL)  # back to the 1/2 split
        assert set(_versions_answering(stub, 100)) == {"1", "2"}
        admin.rollback(MODEL)  # back to version 1 alone
        assert _versions_answering(stub, 20) == {"1": 20}
        assert server.running.metrics.split_since.labels(MODEL)._value.get() == 0
        info = admin.set_default(MODEL, "2")
        assert info.default_version == "2" and _versions_answering(stub, 20) == {"2": 20}
        assert _versions_answering(stub, 5, model_version="1") == {"1": 5}  # a pinned request is not routed
        assert admin.rollback(MODEL).default_version == "1"
        with pytest.raises(grpc.RpcError) as bad:
            admin.split(MODEL, {"1": -1.0})
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as unknown:
            admin.set_default(MODEL, "7")
        assert unknown.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_unload_drains_and_load_brings_a_version_back(server: ServerThread) -> None:
    assert server.running is not None
    with stub_for(server) as stub, admin_for(server.address) as admin:
        with pytest.raises(grpc.RpcError) as routed:
            admin.unload(MODEL, "1")  # takes the unpinned traffic: refused
        assert routed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        admin.unload(MODEL, "2")
        _wait(lambda: states(_info(stub))["2"] == "UNLOADED", "version 2 to unload")
        _wait(lambda: _health(server, "vae.v1.VaeService/tiny:2") == "NOT_SERVING", "version 2's health")
        with pytest.raises(grpc.RpcError) as gone:
            _decode(stub, np.zeros((1, 4), np.float32), "2")
        assert gone.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "unloaded" in str(gone.value.details())
        assert _health(server, "vae.v1.VaeService") == "SERVING"  # "updating" is not "down"
        server.call(server.running.reload("admin"))  # a reload keeps an operator's unload
        assert states(_info(stub))["2"] == "UNLOADED"
        assert states(admin.load(MODEL, "2"))["2"] == "READY"
        assert _decode(stub, np.zeros((1, 4), np.float32), "2").model_version == "2"


def test_a_reload_loads_a_new_default_then_drains_the_old_one(server: ServerThread, repo: Path) -> None:
    assert server.running is not None
    running = server.running
    add_version(repo, MODEL, "2", "4", make_default=True)  # what `export --version 4` does
    changes = server.call(running.reload("sighup"))
    assert any("tiny:4: loaded" in line for line in changes) and any(
        "default version 1 -> 4" in line for line in changes
    )
    with stub_for(server) as stub:
        assert _versions_answering(stub, 10) == {"4": 10}
        # an in-flight request on version 1 finishes on it after version 1 leaves the repository
        images = V.Images(tensor=array_to_tensor(np.random.default_rng(2).random((64, 1, 28, 28), dtype=np.float32)))
        slow = V.ScoreRequest(model=MODEL, images=images, importance_samples=1000, model_version="1")
        answers: list[V.ScoreResponse] = []  # type: ignore[name-defined]
        worker = threading.Thread(target=lambda: answers.append(stub.Score(slow, timeout=60)))
        worker.start()
        _wait(lambda: running.registry.entries[MODEL].versions["1"].in_flight == 1, "the Score to start")
        remove(repo, MODEL, "1")
        changes = server.call(running.reload("sighup"))
        assert any("tiny:1: draining (1 in flight)" in line for line in changes), changes
        assert states(_info(stub))["1"] == "DRAINING"
        worker.join(60)
        assert answers and answers[0].model_version == "1" and len(answers[0].scores) == 64
        _wait(lambda: "1" not in states(_info(stub)), "version 1 to be unloaded")
        assert sorted(states(_info(stub))) == ["2", "3", "4"]


@pytest.mark.parametrize("how", ["digest", "garbage", "shapes"])
def test_a_broken_version_is_refused_and_what_serves_keeps_serving(server: ServerThread, repo: Path, how: str) -> None:
    assert server.running is not None
    running = server.running
    failed = running.metrics.loads.labels(MODEL, "failed")
    before = failed._value.get()
    add_broken_version(repo, MODEL, "1", "5", how)
    set_default(repo, MODEL, "5")  # even as the new default: it never takes traffic
    changes = server.call(running.reload("poll"))
    assert any("tiny:5: failed to load" in line for line in changes), changes
    assert any("kept routing 1" in line for line in changes), changes
    assert failed._value.get() == before + 1
    with stub_for(server) as stub:
        info = _info(stub)
        assert states(info)["5"] == "FAILED" and info.default_version == "1"
        (five,) = [v for v in info.versions if v.version == "5"]
        expected = {"digest": "sha256", "garbage": "cannot load", "shapes": ""}[how]
        assert expected in five.message and "tiny:5" in five.message
        assert _versions_answering(stub, 10) == {"1": 10}
    _wait(lambda: _health(server, "vae.v1.VaeService/tiny:5") == "NOT_SERVING", "version 5's health")
    # a failed load never blocks later changes: a good version after it loads and takes over
    add_version(repo, MODEL, "2", "6", make_default=True)
    changes = server.call(running.reload("poll"))
    assert any("tiny:6: loaded" in line for line in changes) and not any("tiny:5" in line for line in changes)
    with stub_for(server) as stub:
        assert _versions_answering(stub, 5) == {"6": 5}


def test_a_version_changed_in_place_is_refused_and_keeps_serving(server: ServerThread, repo: Path) -> None:
    assert server.running is not None
    from vaecore.repository import metadata_path, read_document, write_document

    document = read_document(metadata_path(repo, MODEL))
    document["versions"]["2"]["latent_space"] = "ls1-000000000000000000000000"  # "re-exported" under the same number
    write_document(repo, document)
    changes = server.call(server.running.reload("sighup"))
    assert any("tiny:2: refused, changed in place" in line for line in changes)
    with stub_for(server) as stub:
        assert _decode(stub, np.zeros((1, 4), np.float32), "2").model_version == "2"
        assert _info(stub).versions[1].latent_space != "ls1-000000000000000000000000"


def test_the_typed_client_keeps_the_stamp_and_sends_it_back(server: ServerThread) -> None:
    images = np.random.default_rng(3).random((3, 1, 28, 28), dtype=np.float32)
    with VaeClient(server.address, MODEL, model_version="3") as v3, VaeClient(server.address, MODEL) as routed:
        posterior = v3.encode(images)
        assert posterior.model_version == "3" and posterior.mean.latent_space == posterior.latent_space != ""
        z = posterior.mean[1:] * 0.5  # slices and arithmetic keep the stamp
        assert isinstance(z, Latents) and z.latent_space == posterior.latent_space
        assert v3.decode(z).shape == (2, 1, 28, 28)
        with pytest.raises(grpc.RpcError) as refused:  # the routing (version 1) has another space
            routed.decode(z)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert routed.decode(np.asarray(z)).shape == (2, 1, 28, 28)  # a plain array goes unstamped
        sampled = routed.sample(2, seed=1)
        assert sampled.model_version == "1" and sampled.latents.latent_space == sampled.latent_space
        with pytest.raises(grpc.RpcError):
            v3.interpolate(sampled.latents[0], sampled.latents[1], steps=3)  # version 1's latents, version 3
        assert routed.interpolate(sampled.latents[0], sampled.latents[1], steps=3).model_version == "1"


def test_the_cli_keeps_the_stamp_beside_the_npy_and_drives_the_admin_service(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(4).random((28, 28)) * 255).astype(np.uint8)).save(picture)
    target = ["--target", server.address, "--model", MODEL]
    z = tmp_path / "z.npy"
    assert cli.main([*target, "--model-version", "3", "encode", str(picture), "--out", str(z)]) == 0
    stamp = json.loads((tmp_path / "z.npy.json").read_text())
    assert stamp["model_version"] == "3" and stamp["latent_space"].startswith("ls1-")
    assert cli.main([*target, "decode", str(z), "--out", str(tmp_path / "d.png")]) == 1  # version 1: refused
    assert "FAILED_PRECONDITION" in capsys.readouterr().err
    assert cli.main([*target, "--model-version", "3", "decode", str(z), "--out", str(tmp_path / "d.png")]) == 0
    token = tmp_path / "admin-tokens"  # written by _settings
    admin = [*target, "admin", "--admin-token-file", str(token)]
    assert cli.main([*admin, "default", MODEL, "3"]) == 0
    assert "tiny: default version 3" in capsys.readouterr().out
    assert cli.main([*target, "decode", str(z), "--out", str(tmp_path / "d.png")]) == 0  # now routed to 3
    assert cli.main([*admin, "index"]) == 0
    assert "version 3: ready, 100% of unpinned traffic" in capsys.readouterr().out
    assert cli.main([*admin, "split", MODEL, "1=3", "3=1"]) == 0
    assert "version 1: ready, 75% of unpinned traffic" in capsys.readouterr().out
    assert cli.main([*admin, "rollback", MODEL]) == 0
    assert cli.main([*target, "admin", "index"]) == 2  # no admin token given
