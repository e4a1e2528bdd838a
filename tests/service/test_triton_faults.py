"""Triton faults, against a real tritonserver (nvidia-pytriton's) reached over mutual TLS: frozen (SIGSTOP) and
killed (SIGKILL) mid-load, then back. Every request ends well before the 30 s per-call timeout (UNAVAILABLE, or
DEADLINE_EXCEEDED for a shorter deadline of its own); while Triton is known down new requests fail at once;
readiness follows; the service serves again about 1 s after Triton answers ready. Measured bounds are generous
(the machine is small and shared) and each measurement is printed (`pytest -s`).

Plus the pieces underneath: the batcher hands the latest deadline of a batch to the backend and answers each
request at its own deadline; the TLS settings are refused in one line when they cannot work, and a client
without the right CA or certificate never gets a ready Triton."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.backends.triton import TritonBackend, TritonTls
from service.batching import DynamicBatcher, call_deadline
from service.config import Settings
from tests.pki import LOOPBACK, certificate, new_key, write
from tests.service.harness import ServerThread, python_triton, serving, stub_for
from training.triton_local import GrpcTls, TritonServer
from vae_client.errors import DeadlineExceeded, Unavailable
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vaecore.repository import load_repository

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
OK, UNAVAILABLE, DEADLINE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED
TRITON_TIMEOUT_S = 30.0  # large on purpose: whatever ends a request sooner is the fail-fast path
END_BOUND_S = 6.0  # every request in flight when Triton fails ends within this (detection is ~1.5 s)
FAIL_FAST_BOUND_S = 1.0  # a request while Triton is known down
RECOVERY_BOUND_S = 3.0  # Triton ready -> first OK reply through the service (the aim is about 1 s)
CRASH_WAIT_S = 10.0  # a thawed Triton whose Python backend answered with an error shows its abort within this


# --- certificates, made here (tests/pki.py) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # signed nothing here


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    keys = {name: new_key() for name in ("ca", "server", "client", "other-ca")}
    ca = certificate("ca", keys["ca"])
    server = certificate("localhost", keys["server"], (ca, keys["ca"]), san=LOOPBACK)
    client = certificate("client", keys["client"], (ca, keys["ca"]))
    return Pki(
        ca=write(folder, "ca", ca),
        server_cert=write(folder, "server", server, keys["server"]),
        server_key=folder / "server.key",
        client_cert=write(folder, "client", client, keys["client"]),
        client_key=folder / "client.key",
        other_ca=write(folder, "other-ca", certificate("other-ca", keys["other-ca"])),
    )


# --- one tritonserver (mutual TLS on gRPC) and one service for the module ------------------------------------


@pytest.fixture(scope="module")
def one_model(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only "tiny" of the shared repository: each Python-backend model costs Triton a process importing torch
    (seconds each), and this module starts Triton twice."""
    target = tmp_path_factory.mktemp("one_model")
    shutil.copy2(model_repository / "tiny.vae.json", target)
    for network in ("tiny_encoder", "tiny_decoder"):
        shutil.copytree(model_repository / network, target / network)
    return target


@pytest.fixture(scope="module")
def triton(one_model: Path, tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TritonServer]:
    tls = GrpcTls(pki.server_cert, pki.server_key, client_ca=pki.ca)
    with python_triton(one_model, tmp_path_factory, tls=tls) as server:
        yield server


def _settings(repository: Path, triton: TritonServer, pki: Pki) -> Settings:
    return Settings(
        host="127.0.0.1", port=0, metrics_port=-1, model_repository=repository, max_batch_size=16,
        torch_threads=1, backend="triton", triton_url=triton.grpc_url, triton_timeout_s=TRITON_TIMEOUT_S,
        triton_tls_ca_file=str(pki.ca), triton_tls_cert_file=str(pki.client_cert),
        triton_tls_key_file=str(pki.client_key),
    )  # fmt: skip


@pytest.fixture(scope="module")
def service(one_model: Path, triton: TritonServer, pki: Pki) -> Iterator[ServerThread]:
    settings = _settings(one_model, triton, pki)
    backend = TritonBackend.from_settings(load_repository(one_model), settings)
    with serving(settings, backend) as server:
        yield server


@pytest.fixture
def serving_again(service: ServerThread, triton: TritonServer) -> Iterator[ServerThread]:
    """Each test starts with Triton running and serving through the service, and leaves Triton running."""
    _ensure_serving(service, triton)
    yield service
    triton.resume()
    _restart_if_down(triton)


def _ensure_serving(service: ServerThread, triton: TritonServer) -> None:
    """Triton alive, the service SERVING and one request answered OK through it; a Triton that answers ready but
    does not serve (a thawed one dying, see `_first_ok_after`) is killed and started afresh, once."""
    for _ in range(2):
        _restart_if_down(triton)
        _wait_health(service, SERVING, timeout=60)
        with stub_for(service) as stub:
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                if _call(stub, timeout=5.0)[2] == OK:
                    return
                time.sleep(0.05)
        triton.kill()
    raise AssertionError("Triton, started afresh, did not serve through the service within 10 s")


# --- helpers ---------------------------------------------------------------------------------------------------


def _health(server: ServerThread) -> int:
    with grpc.insecure_channel(server.address) as channel:
        request = health_pb2.HealthCheckRequest(service="vae.v1.VaeService")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def _wait_health(server: ServerThread, status: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if _health(server) == status:
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"health did not become {status} within {timeout}s")


def _call(stub: object, timeout: float, seed: int = 0) -> tuple[float, float, grpc.StatusCode]:
    started = time.monotonic()
    try:
        stub.Sample(V.SampleRequest(n=4, seed=V.Seed(value=seed)), timeout=timeout)  # type: ignore[attr-defined]
        code = OK
    except grpc.RpcError as error:
        code = error.code()
    return started, time.monotonic(), code


@dataclass
class Load:
    """Threads sending Sample requests back to back (30 s client deadlines) until stopped; every outcome kept."""

    server: ServerThread
    threads: int = 6
    outcomes: list[tuple[float, float, grpc.StatusCode]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, index: int) -> None:
        with stub_for(self.server) as stub:
            while not self._stop.is_set():
                self.outcomes.append(_call(stub, timeout=TRITON_TIMEOUT_S, seed=index))

    def wait_for_ok(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(code == OK for *_, code in self.outcomes) < count:
            assert time.monotonic() < deadline, f"no {count} OK replies within {timeout}s: {self.outcomes[-5:]}"
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(TRITON_TIMEOUT_S + 10)
            assert not worker.is_alive(), "a request never ended"


def _first_ok_after(
    server: ServerThread, since: float, thawed: TritonServer | None = None, timeout: float = 30.0
) -> tuple[float, bool]:
    """Seconds from `since` to the end of the first OK reply (requests sent back to back until one is OK), and
    whether `thawed` had to be restarted first.

    `thawed`: a Triton just resumed from SIGSTOP. The tritonserver here (nvidia-pytriton's, Python backend) aborts
    within a second of being thawed under load about one time in three (`std::length_error` or
    `boost::interprocess::lock_exception` in libtriton_python.so, in its log; seen with and without this service
    cancelling its abandoned calls): a crash in Triton, not in the service. While it dies (it may print its stack
    and stay alive for its 30 s exit timeout), its Python backend may answer a call with an error of its own
    (INTERNAL, relayed as such: the service cannot tell it from a model's error), so a code other than OK or
    UNAVAILABLE is accepted only from a thawed Triton whose log then shows it aborting. The thawed server never
    serves again, so it is killed and restarted, and the service must serve within the same bound of the
    restarted server's readiness."""
    restarted = False
    with stub_for(server) as stub:
        while time.monotonic() - since < timeout:
            if thawed is not None and not restarted and _restart_if_down(thawed):
                restarted = True
                since = time.monotonic()
                continue
            _, ended, code = _call(stub, timeout=5.0)
            if code == OK:
                return ended - since, restarted
            if code != UNAVAILABLE:
                crashing = thawed is not None and not restarted and _crashes_within(thawed, CRASH_WAIT_S)
                assert crashing, f"{code} through the service from a Triton that did not crash"
                print(f"\nthawed Triton answered {code.name} through the service, then aborted")
                continue  # the next turn restarts it
            time.sleep(0.01)
    raise AssertionError(f"no OK reply within {timeout}s (Triton restarted after a crash: {restarted})")


CRASH_SIGNS = ("Signal (6) received", "terminate called")  # tritonserver's own lines when it aborts


def _crashed(triton: TritonServer) -> bool:
    """The current tritonserver exited, or aborted: its log since it last started says so. An aborting server can
    stay alive for its exit timeout (30 s) after printing its stack, still holding its ports."""
    if triton.process is None or triton.process.poll() is not None:
        return True
    log = triton.log_path.read_text(errors="replace")
    since_start = log[log.rfind("Started GRPCInferenceService") :]
    return any(sign in since_start for sign in CRASH_SIGNS)


def _restart_if_down(triton: TritonServer) -> bool:
    """Kill what is left of a crashed tritonserver and start a fresh one; whether it had to."""
    if not _crashed(triton):
        return False
    triton.kill()
    triton.start()  # returns once Triton's readiness endpoint answers 200
    return True


def _crashes_within(triton: TritonServer, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not _crashed(triton):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _triton_ready_at(triton: TritonServer, timeout: float = 30.0) -> float:
    """When Triton's own readiness endpoint first answers 200 (polled every 10 ms)."""
    url = f"http://127.0.0.1:{triton.http_port}/v2/health/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"Triton not ready within {timeout}s")


def _check_outage(load: Load, failed_at: float, known_down_at: float, what: str) -> None:
    """Every request ends well before the Triton timeout; those running or queued at the failure end UNAVAILABLE;
    those sent once the outage is known fail at once."""
    outcomes = list(load.outcomes)
    codes = {code for *_, code in outcomes}
    assert codes <= {OK, UNAVAILABLE}, codes
    caught = [(s, e, c) for s, e, c in outcomes if e > failed_at and s < known_down_at]
    assert any(c == UNAVAILABLE and s < failed_at for s, _, c in caught), "no request was in flight at the failure"
    longest = max(e - max(s, failed_at) for s, e, _ in caught)
    late = [e - s for s, e, c in outcomes if s > known_down_at]
    assert late, "no request was sent while the outage was known"
    print(f"\n{what}: {len(caught)} requests in flight or queued at the failure ended within {longest:.2f} s of it "
          f"(readiness NOT_SERVING after {known_down_at - failed_at:.2f} s); {len(late)} requests during the "
          f"outage failed fast, slowest {max(late) * 1000:.0f} ms")  # fmt: skip
    assert all(c == UNAVAILABLE for s, _, c in outcomes if s > known_down_at)
    assert longest < END_BOUND_S
    assert max(late) < FAIL_FAST_BOUND_S


# --- the faults --------------------------------------------------------------------------------------------------


def test_frozen_triton_fails_requests_fast_and_serving_resumes_when_it_thaws(
    serving_again: ServerThread, triton: TritonServer
) -> None:
    service = serving_again
    with Load(service) as load:
        load.wait_for_ok(20)
        frozen_at = time.monotonic()
        triton.pause()
        known_down_at = _wait_health(service, NOT_SERVING, timeout=END_BOUND_S)
        time.sleep(0.5)  # the load keeps sending while Triton is known down
    _check_outage(load, frozen_at, known_down_at, "SIGSTOP")
    triton.resume()
    recovery, crashed = _first_ok_after(service, _triton_ready_at(triton), thawed=triton)
    after = "restarted after its Python backend aborted on thaw" if crashed else "answered ready"
    print(f"SIGCONT: first OK reply {recovery:.2f} s after Triton {after}")
    assert recovery < RECOVERY_BOUND_S
    _wait_health(service, SERVING, timeout=RECOVERY_BOUND_S)


def test_killed_triton_fails_requests_fast_and_serving_resumes_after_restart(
    serving_again: ServerThread, triton: TritonServer
) -> None:
    service = serving_again
    with Load(service) as load:
        load.wait_for_ok(20)
        killed_at = time.monotonic()
        triton.kill()
        known_down_at = _wait_health(service, NOT_SERVING, timeout=END_BOUND_S)
        time.sleep(0.5)
    _check_outage(load, killed_at, known_down_at, "SIGKILL")
    triton.start()  # returns once Triton's readiness endpoint answers 200 (polled every 50 ms)
    recovery, _ = _first_ok_after(service, time.monotonic())
    print(f"restart: first OK reply {recovery:.2f} s after Triton answered ready")
    assert recovery < RECOVERY_BOUND_S
    _wait_health(service, SERVING, timeout=RECOVERY_BOUND_S)


def test_short_deadline_against_a_frozen_triton_ends_by_that_deadline(
    serving_again: ServerThread, triton: TritonServer, one_model: Path, pki: Pki
) -> None:
    """With the probe effectively off (it would end the call within ~1.5 s anyway), only the request's own 300 ms
    deadline can end it: the client sees DEADLINE_EXCEEDED, and on the server both the request and the Triton call
    under it end at that deadline, not at the 30 s per-call timeout."""
    settings = _settings(one_model, triton, pki)
    backend = TritonBackend(load_repository(one_model), triton.grpc_url, TRITON_TIMEOUT_S,
                            probe_interval_s=3600, tls=TritonTls.from_files(str(pki.ca), str(pki.client_cert),
                                                                             str(pki.client_key)))  # fmt: skip
    with serving(settings, backend) as server, stub_for(server) as stub:
        _wait_health(server, SERVING, timeout=30)
        assert _call(stub, timeout=10)[2] == OK
        registry = server.running.metrics.registry  # type: ignore[union-attr]

        def backend_calls() -> float:
            return (
                registry.get_sample_value(
                    "vae_backend_duration_seconds_count", {"backend": "triton", "network": "decoder"}
                )
                or 0.0
            )

        def in_flight() -> float:
            return registry.get_sample_value("vae_requests_in_flight", {"method": "Sample"}) or 0.0

        calls_before = backend_calls()
        triton.pause()
        started, ended, code = _call(stub, timeout=0.3)
        assert code == DEADLINE
        while backend_calls() == calls_before or in_flight() > 0:
            assert time.monotonic() - started < 5.0, "the server kept working past the request's deadline"
            time.sleep(0.005)
        server_done = time.monotonic() - started
        print(f"\n300 ms deadline, frozen Triton: client answered after {ended - started:.2f} s, the server's "
              f"request and Triton call ended {server_done:.2f} s after it was sent")  # fmt: skip
        assert server_done < 1.5
        assert backend.ready(), "a deadline is not an outage"
        triton.resume()


# --- TLS -----------------------------------------------------------------------------------------------------------


def test_triton_tls_settings_that_cannot_work_are_refused_in_one_line(pki: Pki, tmp_path: Path) -> None:
    def refusal(ca: str = "", cert: str = "", key: str = "") -> str:
        with pytest.raises(ValueError) as error:
            TritonTls.from_files(ca, cert, key)
        message = str(error.value)
        assert "\n" not in message
        return message

    assert TritonTls.from_files("", "", "") is None  # plaintext
    assert "--triton-tls-key-file is not" in refusal(str(pki.ca), cert=str(pki.client_cert))
    assert "--triton-tls-cert-file is not" in refusal(str(pki.ca), key=str(pki.client_key))
    assert "need --triton-tls-ca-file" in refusal("", str(pki.client_cert), str(pki.client_key))
    assert "cannot read" in refusal(str(tmp_path / "missing.crt"))
    (tmp_path / "garbage.crt").write_text("not a certificate")
    assert "not a PEM file" in refusal(str(tmp_path / "garbage.crt"))
    tls = TritonTls.from_files(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    assert tls is not None and tls.private_key == pki.client_key.read_bytes()


def test_triton_without_the_right_tls_credentials_is_never_ready(
    serving_again: ServerThread, triton: TritonServer, one_model: Path, pki: Pki
) -> None:
    models = load_repository(one_model)
    attempts = {
        "plaintext": None,
        "no client certificate": TritonTls(pki.ca.read_bytes()),
        "server not trusted": TritonTls(pki.other_ca.read_bytes(), pki.client_cert.read_bytes(),
                                        pki.client_key.read_bytes()),
        "right credentials": TritonTls(pki.ca.read_bytes(), pki.client_cert.read_bytes(), pki.client_key.read_bytes()),
    }  # fmt: skip

    async def ready(tls: TritonTls | None) -> bool:
        backend = TritonBackend(models, triton.grpc_url, probe_interval_s=3600, tls=tls)
        await backend.start()
        try:
            return backend.ready()
        finally:
            await backend.close()

    seen = {name: asyncio.run(ready(tls)) for name, tls in attempts.items()}
    assert seen == {"plaintext": False, "no client certificate": False, "server not trusted": False,
                    "right credentials": True}  # fmt: skip


# --- the batcher's part, no Triton: a fake backend call ----------------------------------------------------------


class FakeBackendCall:
    """Records the `call_deadline` each backend call sees; runs until `release` is set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.deadlines: list[float | None] = []
        self.rows: list[int] = []
        self.release = asyncio.Event()
        self.error = error

    async def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        self.deadlines.append(call_deadline.get())
        self.rows.append(len(rows))
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return (rows * 2,)


def test_batcher_gives_the_backend_the_latest_deadline_and_answers_each_request_at_its_own() -> None:
    async def scenario() -> None:
        fake = FakeBackendCall()
        batcher = DynamicBatcher(fake, max_batch_size=8, max_wait_s=0.05, max_queue=10)
        batcher.start()
        now = time.monotonic()
        short = asyncio.ensure_future(batcher.submit(np.ones((1, 2)), deadline=now + 0.2))
        long = asyncio.ensure_future(batcher.submit(np.ones((1, 2)), deadline=now + 30))
        with pytest.raises(DeadlineExceeded):
            await short  # at its deadline, while the batch is still running
        assert time.monotonic() - now < 1.0 and not long.done()
        fake.release.set()
        assert (await long)[0].tolist() == [[2.0, 2.0]]  # its batch-mate's deadline did not fail it
        assert fake.deadlines == [pytest.approx(now + 30)]
        fake.release.clear()
        unbounded = asyncio.ensure_future(batcher.submit(np.ones((1, 2))))
        bounded = asyncio.ensure_future(batcher.submit(np.ones((1, 2)), deadline=time.monotonic() + 30))
        await asyncio.sleep(0.1)
        fake.release.set()
        await asyncio.gather(unbounded, bounded)
        assert fake.deadlines[1] is None  # one request without a deadline: the call is not bounded
        assert call_deadline.get() is None
        await batcher.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("error", [Unavailable("Triton is down"), DeadlineExceeded("deadline passed")])
def test_batcher_fails_a_batch_at_once_when_the_backend_is_down_or_the_deadline_passed(error: Exception) -> None:
    async def scenario() -> None:
        fake = FakeBackendCall(error)
        fake.release.set()
        batcher = DynamicBatcher(fake, max_batch_size=8, max_wait_s=0.05, max_queue=10)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(np.ones((1, 2))) for _ in range(4)), return_exceptions=True)
        assert all(r is error for r in results)
        assert fake.rows == [4]  # one call for the batch, no retries one by one
        await batcher.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
