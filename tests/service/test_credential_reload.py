"""Credential reload (SIGHUP, `ServerSecurity.reload`) against real grpc.aio servers over loopback.

Each server here is small: the standard health service plus one raw-bytes method under the API's and the admin
service's names, behind `ServerSecurity`'s interceptor and dynamic TLS credentials. The certificates are made at
test time (tests/pki.py): two CAs that each sign a server certificate for 127.0.0.1, and two client CAs that each
sign a client certificate. Rotating means rewriting the configured files in place, then calling `reload()`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from service.config import Settings
from service.security import ADMIN_SERVICE, ServerSecurity
from tests.pki import LOOPBACK, certificate, new_key
from vae_client.credentials import SecurityError

API_SERVICE = "vae.v1.VaeService"
CALLER, CALLER_2, CALLER_3 = "caller-token-1", "caller-token-2", "caller-token-3"
ADMIN, ADMIN_2 = "admin-token-1", "admin-token-2"
OK = grpc.StatusCode.OK
T = TypeVar("T")
UNAUTHENTICATED, UNAVAILABLE = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE


# --- certificates (tests/pki.py), as PEM bytes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: bytes
    key: bytes
    ca: bytes  # the certificate of the CA that signed it


def _issue(ca_name: str, subject: str, usage: object, san: list | None = None) -> Issued:  # type: ignore[type-arg]
    ca_key, key = new_key(), new_key()
    ca = certificate(ca_name, ca_key)
    cert = certificate(subject, key, (ca, ca_key), usage, san)  # type: ignore[arg-type]
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return Issued(cert.public_bytes(pem), key_pem, ca.public_bytes(pem))


@dataclass(frozen=True)
class Pki:
    server_a: Issued  # signed by CA1
    server_b: Issued  # signed by CA2
    client_1: Issued  # signed by client CA 1
    client_2: Issued  # signed by client CA 2


@pytest.fixture(scope="module")
def pki() -> Pki:
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    return Pki(_issue("CA1", "localhost", server, LOOPBACK), _issue("CA2", "localhost", server, LOOPBACK),
               _issue("client CA 1", "client 1", client), _issue("client CA 2", "client 2", client))  # fmt: skip


def _install(path: Path, content: bytes | str) -> None:
    """Rewrites `path` as a rotation would: the new content appears whole (rename over the old file)."""
    data = content.encode() if isinstance(content, str) else content
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


@dataclass(frozen=True)
class Files:
    cert: Path
    key: Path
    client_ca: Path
    tokens: Path
    admin_tokens: Path


@pytest.fixture
def files(tmp_path: Path, pki: Pki) -> Files:
    """The live files a server is configured with: certificate A, client CA 1, caller and admin tokens."""
    live = Files(*(tmp_path / name for name in ("server.pem", "server.key", "client-ca.pem", "tokens", "admin")))
    _install(live.cert, pki.server_a.cert)
    _install(live.key, pki.server_a.key)
    _install(live.client_ca, pki.client_1.ca)
    _install(live.tokens, f"# callers\n{CALLER}\n{CALLER_2}\n")
    _install(live.admin_tokens, f"{ADMIN}\n")
    return live


def _settings(
    files: Files, *, tls: bool = True, mutual: bool = False, tokens: bool = True, admin: bool = True
) -> Settings:
    return Settings(
        tls_cert_file=str(files.cert) if tls else "",
        tls_key_file=str(files.key) if tls else "",
        tls_client_ca_file=str(files.client_ca) if mutual else "",
        auth_token_file=str(files.tokens) if tokens else "",
        admin_token_file=str(files.admin_tokens) if admin else "",
    )


# --- a small real grpc.aio server on a background event loop -------------------------------------------------------


class Loop:
    """An event loop on its own thread; the tests call the servers with ordinary synchronous channels."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


def _ping_handler(service: str) -> grpc.GenericRpcHandler:
    async def ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"pong from " + service.encode()

    return grpc.method_handlers_generic_handler(service, {"Ping": grpc.unary_unary_rpc_method_handler(ping)})


async def _start(security: ServerSecurity, ports: int) -> tuple[grpc.aio.Server, list[int]]:
    interceptor = security.interceptor
    server = grpc.aio.server(interceptors=[interceptor] if interceptor else None)
    server.add_generic_rpc_handlers([_ping_handler(API_SERVICE), _ping_handler(ADMIN_SERVICE)])
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    bound = []
    for _ in range(ports):
        credentials = security.credentials  # a fresh one per port
        address = "127.0.0.1:0"
        bound.append(server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address))
    await server.start()
    return server, bound


Serve = Callable[..., list[int]]


@pytest.fixture
def serve(loop: Loop) -> Iterator[Serve]:
    """`serve(security, ports=1)` starts a server and returns its ports; every server stops at the test's end."""
    servers: list[grpc.aio.Server] = []

    def start(security: ServerSecurity, ports: int = 1) -> list[int]:
        server, bound = loop.run(_start(security, ports))
        servers.append(server)
        return bound

    yield start
    for server in servers:
        loop.run(server.stop(None))


# --- clients --------------------------------------------------------------------------------------------------------


def _channel(port: int, ca: bytes | None = None, client: Issued | None = None) -> grpc.Channel:
    """A new channel with a connection of its own (no sharing of subchannels between channels): a new handshake."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    if ca is None:
        return grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
    credentials = grpc.ssl_channel_credentials(ca, client.key if client else None, client.cert if client else None)
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options)


def _call(channel: grpc.Channel, service: str = API_SERVICE, token: str | None = None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        reply = channel.unary_unary(f"/{service}/Ping")(b"", metadata=metadata, timeout=5)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return,attr-defined]
    assert reply == b"pong from " + service.encode()
    return OK


def _once(port: int, ca: bytes | None = None, client: Issued | None = None, **call: str) -> grpc.StatusCode:
    with _channel(port, ca, client) as channel:
        return _call(channel, **call)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


# --- TLS -------------------------------------------------------------------------------------------------------------


def test_certificate_rotation_reaches_new_connections_and_spares_open_ones(
    pki: Pki, files: Files, serve: Serve
) -> None:
    reloads: list[tuple[str, str]] = []
    security = ServerSecurity.from_settings(_settings(files, tokens=False, admin=False),
                                            on_reload=lambda kind, result: reloads.append((kind, result)))  # fmt: skip
    ports = serve(security, ports=2)  # two ports: each has its own credentials and fetcher
    ca1, ca2 = pki.server_a.ca, pki.server_b.ca
    open_channels = [_channel(port, ca1) for port in ports]
    try:
        assert [_call(channel) for channel in open_channels] == [OK, OK]
        assert [(_once(port, ca1), _once(port, ca2)) for port in ports] == [(OK, UNAVAILABLE)] * 2

        _install(files.cert, pki.server_b.cert)
        _install(files.key, pki.server_b.key)
        assert security.reload() == {"tls": "ok"} and reloads == [("tls", "ok")]

        # new connections get certificate B: trusting CA2 works, trusting only CA1 fails, on both ports
        assert [(_once(port, ca2), _once(port, ca1)) for port in ports] == [(OK, UNAVAILABLE)] * 2
        # the connections opened before keep working (they were not dropped: reconnecting to B would fail for CA1)
        assert [_call(channel) for channel in open_channels for _ in range(3)] == [OK] * 6
        # a server started after the reload begins with B
        (late,) = serve(security)
        assert (_once(late, ca2), _once(late, ca1)) == (OK, UNAVAILABLE)
    finally:
        for channel in open_channels:
            channel.close()
    assert security.reload() == {"tls": "unchanged"} and reloads[-1] == ("tls", "unchanged")


def test_client_ca_rotation_trusts_the_new_client_ca_only(pki: Pki, files: Files, serve: Serve) -> None:
    security = ServerSecurity.from_settings(_settings(files, mutual=True, tokens=False, admin=False))
    (port,) = serve(security)
    ca = pki.server_a.ca
    assert (_once(port, ca, pki.client_1), _once(port, ca, pki.client_2), _once(port, ca)) == (
        OK,
        UNAVAILABLE,
        UNAVAILABLE,
    )
    with _channel(port, ca, pki.client_1) as open_channel:
        assert _call(open_channel) == OK
        _install(files.client_ca, pki.client_2.ca)
        assert security.reload() == {"tls": "ok"}
        assert (_once(port, ca, pki.client_2), _once(port, ca, pki.client_1), _once(port, ca)) == (
            OK,
            UNAVAILABLE,
            UNAVAILABLE,
        )
        assert _call(open_channel) == OK  # already authenticated: an open connection is not re-checked


# --- bad new files ----------------------------------------------------------------------------------------------------


BAD_FILES: dict[str, tuple[str, bytes | str, str, str]] = {
    # case: (file to rewrite, its new content, the kind that fails, words the warning must hold)
    "garbage key": ("key", b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n", "tls", "do not load"),
    "certificate rotated, key not yet": ("cert", "server_b.cert", "tls", "do not load together"),
    "key of another certificate": ("key", "server_b.key", "tls", "do not load together"),
    "client CA not a certificate": ("client_ca", b"not a certificate\n", "tls", "not a PEM certificate bundle"),
    "empty token file": ("tokens", b"# all tokens revoked?\n\n", "tokens", "holds no token"),
    "token with a space": ("tokens", b"two words\n", "tokens", "may not contain spaces"),
    "empty admin token file": ("admin_tokens", b"", "admin_tokens", "holds no token"),
    "admin token shared with callers": ("admin_tokens", f"{CALLER}\n".encode(), "admin_tokens", "also in the other"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_new_file_keeps_the_old_credentials(
    case: str, pki: Pki, files: Files, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    which, content, failing, words = BAD_FILES[case]
    security = ServerSecurity.from_settings(_settings(files, mutual=True))
    (port,) = serve(security)
    ca, client = pki.server_a.ca, pki.client_1
    assert _once(port, ca, client, token=CALLER) == OK

    path: Path = getattr(files, which)
    original = path.read_bytes()
    if isinstance(content, str):  # a PEM of the test PKI, e.g. "server_b.key"
        issued, field = content.split(".")
        content = getattr(getattr(pki, issued), field)
    _install(path, content)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="service.security"):
        results = security.reload()

    assert results == {**dict.fromkeys(("tls", "tokens", "admin_tokens"), "unchanged"), failing: "failed"}
    (warning,) = _warnings(caplog)  # exactly one line, naming the file and the problem
    assert str(path) in warning and words in warning and "keeping the current" in warning, warning
    assert CALLER not in warning and ADMIN not in warning
    # the old certificate, client CA and tokens are all still in force, for new connections and calls
    assert _once(port, ca, client, token=CALLER) == OK
    assert _once(port, ca, client, service=ADMIN_SERVICE, token=ADMIN) == OK
    assert _once(port, ca, client, token="not-a-token") == UNAUTHENTICATED
    # once the file is put right, nothing has changed: the old credentials were kept all along
    _install(path, original)
    assert set(security.reload().values()) == {"unchanged"}


def test_start_up_refuses_what_a_reload_would(files: Files, pki: Pki) -> None:
    _install(files.key, pki.server_b.key)
    with pytest.raises(SecurityError, match="do not load together"):
        ServerSecurity.from_settings(_settings(files))
    _install(files.key, pki.server_a.key)
    _install(files.admin_tokens, f"{CALLER_2}\n")
    with pytest.raises(SecurityError, match="share a token: admin tokens must be their own"):
        ServerSecurity.from_settings(_settings(files))
    with pytest.raises(SecurityError, match="tls_client_ca_file is set without TLS"):
        ServerSecurity.from_settings(_settings(files, tls=False, mutual=True))


# --- tokens ----------------------------------------------------------------------------------------------------------


def test_token_rotation_takes_effect_without_a_restart(files: Files, serve: Serve) -> None:
    refused: list[tuple[str, str]] = []
    security = ServerSecurity.from_settings(_settings(files, tls=False, admin=False),
                                            on_refused=lambda service, method: refused.append((service, method)))  # fmt: skip
    (port,) = serve(security)
    with _channel(port) as channel:  # one connection throughout: tokens are checked per call
        assert [_call(channel, token=t) for t in (CALLER, CALLER_2, CALLER_3)] == [OK, OK, UNAUTHENTICATED]
        _install(files.tokens, f"{CALLER_2}\n{CALLER_3}\n")
        assert security.reload() == {"tokens": "ok"}
        assert [_call(channel, token=t) for t in (CALLER, CALLER_2, CALLER_3)] == [UNAUTHENTICATED, OK, OK]
        assert _call(channel) == UNAUTHENTICATED
    assert refused == [(API_SERVICE, "Ping")] * 3


def test_a_token_kept_across_reloads_is_never_refused(files: Files, serve: Serve) -> None:
    """Calls with a token present in both the old and the new file, while reloads swap the files under them."""
    security = ServerSecurity.from_settings(_settings(files, tls=False, admin=False))
    (port,) = serve(security)
    codes: list[grpc.StatusCode] = []
    done = threading.Event()

    def keep_calling() -> None:
        with _channel(port) as channel:
            while not done.is_set():
                codes.append(_call(channel, token=CALLER_2))

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        for n in range(40):
            _install(files.tokens, f"{CALLER_2}\n{CALLER if n % 2 else CALLER_3}\n")
            assert security.reload() == {"tokens": "ok"}
    finally:
        done.set()
        caller.join(10)
    assert codes and set(codes) == {OK}


def test_admin_tokens_are_a_credential_of_their_own(files: Files, serve: Serve) -> None:
    refused: list[tuple[str, str]] = []
    security = ServerSecurity.from_settings(_settings(files, tls=False),
                                            on_refused=lambda service, method: refused.append((service, method)))  # fmt: skip
    (port,) = serve(security)
    with _channel(port) as channel:
        assert _call(channel, ADMIN_SERVICE, ADMIN) == OK
        assert _call(channel, API_SERVICE, ADMIN) == UNAUTHENTICATED  # an admin token is not a caller's
        assert _call(channel, ADMIN_SERVICE, CALLER) == UNAUTHENTICATED  # nor a caller's an admin's
        assert _call(channel, ADMIN_SERVICE) == UNAUTHENTICATED
        assert _call(channel, API_SERVICE, CALLER) == OK
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        # the admin tokens rotate on their own
        _install(files.admin_tokens, f"{ADMIN_2}\n")
        assert security.reload() == {"tokens": "unchanged", "admin_tokens": "ok"}
        assert (_call(channel, ADMIN_SERVICE, ADMIN_2), _call(channel, ADMIN_SERVICE, ADMIN)) == (OK, UNAUTHENTICATED)
    assert refused == [(API_SERVICE, "Ping")] + [(ADMIN_SERVICE, "Ping")] * 3
    assert security.describe() == "plaintext, bearer tokens, admin tokens"


@pytest.mark.parametrize("tokens", [True, False], ids=["caller tokens", "no tokens"])
def test_without_an_admin_token_file_the_admin_service_is_refused(tokens: bool, files: Files, serve: Serve) -> None:
    settings = _settings(files, tls=False, tokens=tokens, admin=False)
    security = ServerSecurity.from_settings(settings)
    if not tokens:  # neither file: no interceptor at all, so the admin service must not be served (see .interceptor)
        assert security.interceptor is None and security.describe() == "plaintext"
        return
    (port,) = serve(security)
    with _channel(port) as channel, pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary(f"/{ADMIN_SERVICE}/Ping")(b"", metadata=(("authorization", f"Bearer {CALLER}"),), timeout=5)
    assert raised.value.code() == UNAUTHENTICATED  # type: ignore[attr-defined]
    assert "--admin-token-file" in raised.value.details()  # type: ignore[attr-defined]
    assert _once(port, token=CALLER) == OK and security.reload() == {"tokens": "unchanged"}


def test_admin_token_file_alone_leaves_the_api_open(files: Files, serve: Serve) -> None:
    security = ServerSecurity.from_settings(_settings(files, tls=False, tokens=False))
    (port,) = serve(security)
    assert _once(port) == OK and _once(port, token=ADMIN) == OK  # the API needs no token here
    assert _once(port, service=ADMIN_SERVICE) == UNAUTHENTICATED
    assert _once(port, service=ADMIN_SERVICE, token=ADMIN) == OK
    assert security.reload() == {"admin_tokens": "unchanged"}
