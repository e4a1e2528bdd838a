"""The model lifecycle in real server processes, as operators drive it: `--workers 2` where an admin call reaching
one worker switches every worker, SIGHUP to the supervisor reloading every worker, `--repository-poll-s` picking
up a new export by itself, and SIGHUP rotating the TLS certificate and the tokens of a running server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests import pki
from tests.service.test_workers import ROOT, Service, _channel, _start
from tests.service.versions import ADMIN_TOKEN, Admin, add_version, copy_repository
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub

MODEL = "tiny"


def _single(repo: Path, tmp: Path, *args: str) -> Service:
    """`python -m service` (one process) on a free port; returns once it serves."""
    tmp.mkdir(exist_ok=True)
    log = tmp / "log"
    env = {**os.environ, "VAE_MODEL_REPOSITORY": str(repo), "VAE_TORCH_THREADS": "1"}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "0",
                                    "--metrics-port", "-1", *args], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    service = Service(process, log, tmp, 0, [process.pid], None)
    try:
        service.port = int(service.wait_for_log(r"serving \S+ on port (\d+)")[1])
    except BaseException:
        process.kill()
        raise
    return service


def _fresh_answers(port: int, count: int = 16) -> set[str]:
    """The versions answering unpinned Samples over `count` new connections (the kernel spreads new connections
    over the workers: SO_REUSEPORT), one call each."""
    seen = set()
    for _ in range(count):
        with _channel(port) as channel:
            seen.add(VaeServiceStub(channel).Sample(V.SampleRequest(model=MODEL, n=1), timeout=30).model_version)
    return seen


def _eventually(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.2)


@pytest.fixture
def repo(versioned_repository: Path, tmp_path: Path) -> Path:
    return copy_repository(versioned_repository, tmp_path / "repo")


@pytest.fixture(scope="module")
def workers_repo(versioned_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_repository(versioned_repository, tmp_path_factory.mktemp("workers") / "repo")


@pytest.fixture(scope="module")
def two_workers(workers_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One two-worker server for the module (two workers start in ~40 s here); each test leaves version 1 routed."""
    tmp = tmp_path_factory.mktemp("two_workers")
    (tmp / "admin-tokens").write_text(f"{ADMIN_TOKEN}\n")
    service = _start(workers_repo, tmp / "run", "--workers", "2", "--port", "0", "--metrics-port", "-1",
                     "--admin-token-file", str(tmp / "admin-tokens"), "--max-batch-size", "8")  # fmt: skip
    try:
        yield service
    finally:
        if service.process.poll() is None:
            assert service.stop() == 0, service.log.read_text()


def test_an_admin_call_on_one_worker_switches_every_worker(two_workers: Service) -> None:
    assert _fresh_answers(two_workers.port) == {"1"}
    with _channel(two_workers.port) as channel:
        Admin(channel).set_default(MODEL, "2")  # reaches one worker; the supervisor tells the other
    _eventually(lambda: _fresh_answers(two_workers.port) == {"2"}, "every worker to route to version 2")
    with _channel(two_workers.port) as channel:
        Admin(channel).rollback(MODEL)
    _eventually(lambda: _fresh_answers(two_workers.port) == {"1"}, "every worker to roll back to version 1")
    assert "SIGHUP: asked 2 workers to reload" in two_workers.log.read_text()


def test_sighup_to_the_supervisor_reloads_every_worker(two_workers: Service, workers_repo: Path) -> None:
    add_version(
        workers_repo, MODEL, "2", "4", make_default=True
    )  # a new export, as a repository volume update brings it
    assert _fresh_answers(two_workers.port) == {"1"}  # nothing changes until told (no poll configured)
    two_workers.process.send_signal(signal.SIGHUP)
    _eventually(lambda: _fresh_answers(two_workers.port) == {"4"}, "every worker to serve version 4")
    assert two_workers.log.read_text().count("default version 1 -> 4") == 2  # once per worker


def test_the_repository_poll_picks_up_a_new_version(repo: Path, tmp_path: Path) -> None:
    service = _single(repo, tmp_path / "run", "--repository-poll-s", "0.2")
    try:
        add_version(repo, MODEL, "2", "4", make_default=True)
        _eventually(lambda: _fresh_answers(service.port, 4) == {"4"}, "the poll to switch to version 4")
    finally:
        assert service.stop() == 0, service.log.read_text()


def _issue(folder: Path, ca: str, subject: str, usage: object) -> tuple[Path, Path, Path]:
    """A CA and a certificate it signs for `subject` (loopback names): (ca.pem, cert.pem, cert.key)."""
    ca_key = pki.new_key()
    ca_cert = pki.certificate(ca, ca_key)
    key = pki.new_key()
    cert = pki.certificate(subject, key, (ca_cert, ca_key), usage, pki.LOOPBACK)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    return pki.write(folder, "ca", ca_cert), pki.write(folder, "cert", cert, key), folder / "cert.key"


def _tls_channel(port: int, ca: Path, token: str) -> tuple[grpc.Channel, VaeServiceStub, tuple[tuple[str, str]]]:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, VaeServiceStub(channel), (("authorization", f"Bearer {token}"),)


def _models(stub: VaeServiceStub, metadata: tuple[tuple[str, str]]) -> grpc.StatusCode:
    try:
        stub.ListModels(V.ListModelsRequest(), metadata=metadata, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_sighup_rotates_the_certificate_and_the_tokens_of_a_running_server(repo: Path, tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    old_ca, cert, key = _issue(tmp_path / "old", "old CA", "server", ExtendedKeyUsageOID.SERVER_AUTH)
    new_ca, new_cert, new_key = _issue(tmp_path / "new", "new CA", "server", ExtendedKeyUsageOID.SERVER_AUTH)
    (live / "cert.pem").write_bytes(cert.read_bytes())
    (live / "cert.key").write_bytes(key.read_bytes())
    (live / "tokens").write_text("old-token\n")
    service = _single(repo, tmp_path / "run", "--tls-cert-file", str(live / "cert.pem"), "--tls-key-file",
                      str(live / "cert.key"), "--auth-token-file", str(live / "tokens"))  # fmt: skip
    try:
        opened, opened_stub, old_token = _tls_channel(service.port, old_ca, "old-token")
        assert _models(opened_stub, old_token) == grpc.StatusCode.OK  # a connection open before the rotation
        (live / "cert.pem").write_bytes(new_cert.read_bytes())
        (live / "cert.key").write_bytes(new_key.read_bytes())
        (live / "tokens").write_text("new-token\n")
        service.process.send_signal(signal.SIGHUP)
        service.wait_for_log("credential reload: 1 token")

        def rotated() -> bool:
            channel, stub, token = _tls_channel(service.port, new_ca, "new-token")
            with channel:
                return _models(stub, token) == grpc.StatusCode.OK

        _eventually(rotated, "new connections to get the new certificate and token", 10)
        channel, stub, token = _tls_channel(service.port, old_ca, "old-token")
        with channel:
            assert _models(stub, token) == grpc.StatusCode.UNAVAILABLE  # the old CA no longer verifies it
        assert _models(opened_stub, (("authorization", "Bearer new-token"),)) == grpc.StatusCode.OK  # not dropped
        assert _models(opened_stub, old_token) == grpc.StatusCode.UNAUTHENTICATED  # the removed token
        opened.close()
        (live / "tokens").write_text("")  # a bad new file keeps the tokens in force
        service.process.send_signal(signal.SIGHUP)
        service.wait_for_log("keeping")
        channel, stub, token = _tls_channel(service.port, new_ca, "new-token")
        with channel:
            assert _models(stub, token) == grpc.StatusCode.OK
    finally:
        assert service.stop() == 0, service.log.read_text()
