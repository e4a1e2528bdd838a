"""Transport security against real servers over loopback (docs/operations.md "Security"): TLS, mutual TLS, bearer tokens.

The certificates are made here, at test time: a CA, a server certificate for 127.0.0.1/localhost signed by it, a
client certificate signed by it, and a second CA (with its own client certificate) that nobody trusts. Two servers
serve the whole module: TLS + bearer tokens, and mutual TLS.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.config import Settings
from service.metrics import METHODS
from service.security import TokenVerifier, auth_interceptor, server_credentials
from tests.pki import LOOPBACK, certificate, new_key, write
from tests.service.harness import ServerThread, serving
from vae_client.cli import main as cli
from vae_client.client import VaeClient
from vae_client.credentials import SecurityError, channel_credentials, read_tokens
from vae_client.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
TOKEN, OTHER_TOKEN, RETIRED_TOKEN = "s3cret-token-A", "s3cret-token-B", "retired-token-C"
SAMPLE = "/vae.v1.VaeService/Sample"


# --- certificates (tests/pki.py) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    folder: Path
    ca: Path  # the CA everybody trusts
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path  # a CA nobody trusts, and a client certificate it signed
    rogue_client_cert: Path
    rogue_client_key: Path
    tokens: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    keys = {name: new_key() for name in ("ca", "server", "client", "rogue", "rogue-c")}
    ca = certificate("test CA", keys["ca"])
    rogue = certificate("rogue CA", keys["rogue"])
    server = certificate("localhost", keys["server"], (ca, keys["ca"]), ExtendedKeyUsageOID.SERVER_AUTH, LOOPBACK)
    client = certificate("client", keys["client"], (ca, keys["ca"]), ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue_client = certificate("client", keys["rogue-c"], (rogue, keys["rogue"]), ExtendedKeyUsageOID.CLIENT_AUTH)
    tokens = folder / "tokens"
    tokens.write_text(f"# tokens of the test clients\n\n{TOKEN}\n  {OTHER_TOKEN}  \n# {RETIRED_TOKEN}\n")
    return Pki(
        folder,
        ca=write(folder, "ca", ca),
        server_cert=write(folder, "server", server, keys["server"]),
        server_key=folder / "server.key",
        client_cert=write(folder, "client", client, keys["client"]),
        client_key=folder / "client.key",
        rogue_ca=write(folder, "rogue-ca", rogue),
        rogue_client_cert=write(folder, "rogue-client", rogue_client, keys["rogue-c"]),
        rogue_client_key=folder / "rogue-client.key",
        tokens=tokens,
    )


# --- servers -------------------------------------------------------------------------------------------------------


def _settings(model_repository: Path, **security: str) -> Settings:
    return Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=model_repository, torch_threads=1,
                    **security)  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture(scope="module")
def tls_server(pki: Pki, model_repository: Path) -> Iterator[ServerThread]:
    """TLS and bearer tokens."""
    settings = _settings(model_repository, tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key),
                         auth_token_file=str(pki.tokens))  # fmt: skip
    with serving(settings) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, model_repository: Path) -> Iterator[ServerThread]:
    """Mutual TLS, no tokens."""
    settings = _settings(model_repository, tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key),
                         tls_client_ca_file=str(pki.ca))  # fmt: skip
    with serving(settings) as running:
        yield running


def _channel(server: ServerThread, pki: Pki, ca: Path | None = None) -> grpc.Channel:
    return grpc.secure_channel(server.address, channel_credentials(ca or pki.ca))


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return raised.value.code()  # type: ignore[no-any-return,attr-defined]


def _count(server: ServerThread, method: str, code: str) -> float:
    assert server.running is not None
    value = server.running.metrics.registry.get_sample_value("vae_requests_total", {"method": method, "code": code})
    return value or 0.0


def _total(server: ServerThread, method: str) -> float:
    return sum(_count(server, method, code.name) for code in grpc.StatusCode)


# --- TLS -----------------------------------------------------------------------------------------------------------


def test_plaintext_client_against_a_tls_server_fails(tls_server: ServerThread) -> None:
    with grpc.insecure_channel(tls_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert _code(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10)) == grpc.StatusCode.UNAVAILABLE
    with VaeClient(tls_server.address, timeout_s=10, token=TOKEN) as vae:
        assert _code(vae.list_models) == grpc.StatusCode.UNAVAILABLE


def test_client_that_does_not_trust_the_ca_fails(tls_server: ServerThread, pki: Pki) -> None:
    with VaeClient(tls_server.address, timeout_s=10, tls_ca_file=pki.rogue_ca, token=TOKEN) as vae:
        assert _code(vae.list_models) == grpc.StatusCode.UNAVAILABLE


def test_every_rpc_works_over_tls_with_the_right_ca_and_token(tls_server: ServerThread, pki: Pki) -> None:
    before = {m: _count(tls_server, m, "OK") for m in METHODS}
    with VaeClient(tls_server.address, tls_ca_file=pki.ca, token=TOKEN) as vae:
        assert [m.name for m in vae.list_models()] == ["tiny", "tiny2"] and vae.info().name == "tiny"
        generated = vae.sample(3, seed=1)
        assert generated.images.shape == (3, 1, 28, 28)
        assert vae.encode(generated.images).mean.shape == (3, 4)
        np.testing.assert_allclose(vae.decode(generated.latents), generated.images, atol=1e-6)
        assert vae.reconstruct(generated.images).images.shape == (3, 1, 28, 28)
        assert [len(c.images) for c in vae.sample_stream(5, chunk_size=3, seed=1)] == [3, 2]
        assert vae.interpolate(generated.latents[0], generated.latents[1], steps=3).latents.shape == (3, 4)
        assert vae.arithmetic([(1.0, generated.latents[0]), (1.0, "slant")]).latents.shape == (1, 4)
        assert len(vae.score((generated.images > 0.5).astype(np.float32), samples=5)) == 3
    # every method of the service was called once, and counted once as OK
    assert {m: _count(tls_server, m, "OK") - before[m] for m in METHODS} == dict.fromkeys(METHODS, 1.0)


# --- mutual TLS ----------------------------------------------------------------------------------------------------


def test_mtls_without_a_client_certificate_fails(mtls_server: ServerThread, pki: Pki) -> None:
    with VaeClient(mtls_server.address, timeout_s=10, tls_ca_file=pki.ca) as vae:
        assert _code(vae.list_models) == grpc.StatusCode.UNAVAILABLE


def test_mtls_with_an_untrusted_client_certificate_fails(mtls_server: ServerThread, pki: Pki) -> None:
    client = VaeClient(mtls_server.address, timeout_s=10, tls_ca_file=pki.ca, tls_cert_file=pki.rogue_client_cert,
                       tls_key_file=pki.rogue_client_key)  # fmt: skip
    with client as vae:
        assert _code(vae.list_models) == grpc.StatusCode.UNAVAILABLE


def test_mtls_with_the_right_client_certificate_works(mtls_server: ServerThread, pki: Pki) -> None:
    client = VaeClient(mtls_server.address, tls_ca_file=pki.ca, tls_cert_file=pki.client_cert,
                       tls_key_file=pki.client_key)  # fmt: skip
    with client as vae:
        assert [m.name for m in vae.list_models()] == ["tiny", "tiny2"]
        assert vae.sample(2, seed=4).images.shape == (2, 1, 28, 28)
        assert len(list(vae.sample_stream(4, chunk_size=2, seed=4))) == 2


# --- bearer tokens -------------------------------------------------------------------------------------------------


def test_tokens_missing_malformed_or_wrong_are_unauthenticated_and_never_echoed(
    tls_server: ServerThread, pki: Pki
) -> None:
    request = vae_pb2.SampleRequest(n=1)
    with _channel(tls_server, pki) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        cases = {
            "missing `authorization: Bearer <token>`": (),
            "malformed `authorization`": (("authorization", f"Basic {TOKEN}"),),
            "invalid bearer token": _bearer("not-" + TOKEN),
        }
        for expected, metadata in cases.items():
            with pytest.raises(grpc.RpcError) as raised:
                stub.Sample(request, metadata=metadata, timeout=10)
            error = raised.value
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, expected  # type: ignore[attr-defined]
            assert expected in error.details() and TOKEN not in error.details()  # type: ignore[attr-defined]
        # a commented-out line is not a token; a line's surrounding spaces are not part of it
        assert _code(lambda: stub.Sample(request, metadata=_bearer(RETIRED_TOKEN), timeout=10)).name == (
            "UNAUTHENTICATED"
        )
        for token in (TOKEN, OTHER_TOKEN):
            assert len(stub.Sample(request, metadata=_bearer(token), timeout=10).latents.shape) == 2
        # the streaming method is guarded the same way
        assert _code(lambda: list(stub.SampleStream(vae_pb2.SampleStreamRequest(n=2), timeout=10))).name == (
            "UNAUTHENTICATED"
        )
        assert len(list(stub.SampleStream(vae_pb2.SampleStreamRequest(n=2), metadata=_bearer(TOKEN)))) == 1


def test_unauthenticated_bytes_are_never_parsed_and_unknown_methods_stay_hidden(
    tls_server: ServerThread, pki: Pki
) -> None:
    with _channel(tls_server, pki) as channel:
        raw_sample = channel.unary_unary(SAMPLE)  # no serializers: raw bytes
        assert _code(lambda: raw_sample(b"\xff\xff not a protobuf", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        unknown = channel.unary_unary("/vae.v1.VaeService/NoSuchMethod")
        assert _code(lambda: unknown(b"", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: unknown(b"", metadata=_bearer(TOKEN), timeout=10)) == grpc.StatusCode.UNIMPLEMENTED


def test_refused_calls_are_counted_once_as_unauthenticated(tls_server: ServerThread, pki: Pki) -> None:
    before_refused, before_all = _count(tls_server, "Sample", "UNAUTHENTICATED"), _total(tls_server, "Sample")
    stream_before = _count(tls_server, "SampleStream", "UNAUTHENTICATED")
    with _channel(tls_server, pki) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        for metadata in [(), _bearer("wrong")] * 3 + [(("authorization", "Bearer"),)]:
            assert _code(lambda m=metadata: stub.Sample(vae_pb2.SampleRequest(n=1), metadata=m, timeout=10)).name == (
                "UNAUTHENTICATED"
            )
        assert _code(lambda: channel.unary_unary(SAMPLE)(b"\x08", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        stub.Sample(vae_pb2.SampleRequest(n=1), metadata=_bearer(TOKEN), timeout=10)
        assert _code(lambda: list(stub.SampleStream(vae_pb2.SampleStreamRequest(n=1), timeout=10))).name == (
            "UNAUTHENTICATED"
        )
    assert _count(tls_server, "Sample", "UNAUTHENTICATED") - before_refused == 8
    assert _total(tls_server, "Sample") - before_all == 9  # the 8 refused and the 1 answered, each exactly once
    assert _count(tls_server, "SampleStream", "UNAUTHENTICATED") - stream_before == 1


def test_health_is_open_without_a_token_and_reflection_needs_one(tls_server: ServerThread, pki: Pki) -> None:
    with _channel(tls_server, pki) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        assert _code(lambda: list(reflect.ServerReflectionInfo(iter([ask]), timeout=10))) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        (reply,) = reflect.ServerReflectionInfo(iter([ask]), metadata=_bearer(TOKEN), timeout=10)
        assert "vae.v1.VaeService" in {s.name for s in reply.list_services_response.service}


# --- CLI -----------------------------------------------------------------------------------------------------------


def test_cli_with_token_file_and_ca_file(
    tls_server: ServerThread,
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VAE_CLIENT_TOKEN", raising=False)
    target = ["--target", tls_server.address, "--tls-ca-file", str(pki.ca)]
    assert cli([*target, "--token-file", str(pki.tokens), "--seed", "1", "sample", "--n", "4",
                "--out", str(tmp_path / "grid.png")]) == 0  # fmt: skip
    assert (tmp_path / "grid.png").stat().st_size > 100
    assert cli([*target, "models"]) == 1
    assert capsys.readouterr().err.startswith("error: UNAUTHENTICATED: missing `authorization")
    monkeypatch.setenv("VAE_CLIENT_TOKEN", OTHER_TOKEN)
    assert cli([*target, "models"]) == 0
    assert "tiny: latent 4" in capsys.readouterr().out
    assert cli([*target, "--tls-cert-file", str(pki.client_cert), "models"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: a client certificate needs both --tls-cert-file and --tls-key-file"
    ]


# --- start-up refusals ---------------------------------------------------------------------------------------------


def test_settings_that_cannot_work_are_refused(pki: Pki, tmp_path: Path) -> None:
    def refusal(**security: str) -> str:
        with pytest.raises(SecurityError) as raised:
            settings = Settings(**security)  # type: ignore[arg-type]
            server_credentials(settings)
            auth_interceptor(settings)
        message = str(raised.value)
        assert "\n" not in message and TOKEN not in message
        return message

    cert, key = str(pki.server_cert), str(pki.server_key)
    assert refusal(tls_cert_file=cert).startswith("tls_cert_file is set but tls_key_file is not")
    assert refusal(tls_key_file=key).startswith("tls_key_file is set but tls_cert_file is not")
    assert refusal(tls_client_ca_file=str(pki.ca)).startswith("tls_client_ca_file is set without TLS")
    missing = str(tmp_path / "nope.pem")
    assert refusal(tls_cert_file=missing, tls_key_file=key) == (
        f"tls_cert_file {missing}: cannot read it (No such file or directory)"
    )
    assert "do not load together" in refusal(tls_cert_file=cert, tls_key_file=str(pki.client_key))  # wrong key
    assert "not a PEM certificate bundle" in refusal(tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=key)
    empty = tmp_path / "empty-tokens"
    empty.write_text("# nothing yet\n\n")
    assert refusal(auth_token_file=str(empty)).endswith("holds no token (one per line; blank lines and # comments "
                                                        "are ignored)")  # fmt: skip
    spaced = tmp_path / "spaced-tokens"
    spaced.write_text(f"{TOKEN} {TOKEN}\n")
    assert refusal(auth_token_file=str(spaced)) == (
        f"auth_token_file {spaced} line 1: a token may not contain spaces or control characters"
    )


def test_server_process_refuses_in_one_line(pki: Pki, model_repository: Path, tmp_path: Path) -> None:
    empty = tmp_path / "tokens"
    empty.write_text("\n")
    cases = {
        "error: tls_cert_file is set but tls_key_file is not": ["--tls-cert-file", str(pki.server_cert)],
        "error: tls_client_ca_file is set without TLS": ["--tls-client-ca-file", str(pki.ca)],
        f"error: auth_token_file {empty} holds no token": ["--auth-token-file", str(empty)],
    }
    env = {**os.environ, "VAE_MODEL_REPOSITORY": str(model_repository), "VAE_METRICS_PORT": "-1"}
    processes = {
        expected: subprocess.Popen([sys.executable, "-m", "service", "--port", "0", "--host", "127.0.0.1", *flags],
                                   cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for expected, flags in cases.items()
    }  # fmt: skip
    for expected, process in processes.items():
        _, err = process.communicate(timeout=60)
        assert process.returncode == 2 and len(err.strip().splitlines()) == 1 and err.startswith(expected), err


def test_token_verifier_accepts_exactly_the_listed_tokens(pki: Pki) -> None:
    tokens = read_tokens(str(pki.tokens))
    assert tokens == [TOKEN, OTHER_TOKEN]
    verifier = TokenVerifier(tokens)
    assert verifier.accepts(TOKEN) and verifier.accepts(OTHER_TOKEN)
    for wrong in ("", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), RETIRED_TOKEN, f" {TOKEN}"):
        assert not verifier.accepts(wrong), wrong


def test_healthcheck_command_speaks_mutual_tls(mtls_server: ServerThread, pki: Pki) -> None:
    from service import healthcheck

    assert healthcheck.main(["--target", mtls_server.address, "--timeout", "5"]) == 1  # plaintext: refused
    mtls = [
        "--tls-ca-file",
        str(pki.ca),
        "--tls-cert-file",
        str(pki.client_cert),
        "--tls-key-file",
        str(pki.client_key),
    ]
    assert healthcheck.main(["--target", mtls_server.address, "--timeout", "5", *mtls]) == 0
