"""What a client needs of transport security, and what the server shares with it: TLS channel credentials (the
server verified against a CA bundle, a client certificate for mutual TLS), bearer tokens on every call, and the
file checks both sides make (PEM key pairs, CA bundles, token files: one per line). The server side is
service/security.py."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

AUTHORIZATION = "authorization"


class SecurityError(ValueError):
    """A security setting that cannot work; the message is one line naming the setting and the fix."""


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityError(f"{setting} {path}: cannot read it ({exc.strerror or exc})") from None


def _no_password() -> bytes:
    raise SecurityError("encrypted private keys are not supported: give an unencrypted PEM key (file mode 0600)")


def _check_key_pair(cert_file: str, key_file: str, who: str) -> None:
    """Both PEM, the key unencrypted and matching the certificate: caught here rather than at the first handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if who == "server" else ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except SecurityError:
        raise
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise SecurityError(
            f"{who} certificate {cert_file} and key {key_file} do not load together ({reason}): "
            "both must be PEM, the key unencrypted and the certificate's own"
        ) from None


def _check_ca(ca_file: str, setting: str) -> bytes:
    data = _read(ca_file, setting)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise SecurityError(f"{setting} {ca_file}: not a PEM certificate bundle ({reason})") from None
    return data


def _parse_tokens(raw: bytes, path: str, setting: str) -> list[str]:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise SecurityError(f"{setting} {path}: tokens must be printable ASCII") from None
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if any(not ("!" <= ch <= "~") for ch in token):
            raise SecurityError(f"{setting} {path} line {number}: a token may not contain spaces or control characters")
        tokens.append(token)
    if not tokens:
        raise SecurityError(f"{setting} {path} holds no token (one per line; blank lines and # comments are ignored)")
    return tokens


def read_tokens(path: str, setting: str = "auth_token_file") -> list[str]:
    """Tokens, one per line; blank lines and `#` comments are ignored. Refuses an empty file and tokens that
    cannot travel in gRPC metadata (whitespace, non-printable or non-ASCII). Never puts a token in a message."""
    return _parse_tokens(_read(path, setting), path, setting)


# Channels ---------------------------------------------------------------------------------------------------


def channel_credentials(
    ca_file: str | Path | None = None, cert_file: str | Path | None = None, key_file: str | Path | None = None
) -> grpc.ChannelCredentials:
    """TLS channel credentials: the server verified against `ca_file` (the system's roots when None), and a client
    certificate for mutual TLS when `cert_file` and `key_file` are given (both or neither)."""
    if bool(cert_file) != bool(key_file):
        raise SecurityError("a client certificate needs both --tls-cert-file and --tls-key-file")
    ca = _check_ca(str(ca_file), "tls_ca_file") if ca_file else None
    cert = key = None
    if cert_file and key_file:
        cert, key = _read(str(cert_file), "tls_cert_file"), _read(str(key_file), "tls_key_file")
        _check_key_pair(str(cert_file), str(key_file), "client")
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def read_client_token(path: str | Path) -> str:
    """The first token of a token file (same format as the server's)."""
    return read_tokens(str(path), "token file")[0]


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying the token (empty without one); sent on every call, over TLS or a mesh's plaintext."""
    return ((AUTHORIZATION, f"Bearer {token}"),) if token else ()


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = tuple(base.metadata or ()) + metadata
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


class BearerTokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call of a (synchronous) channel."""

    def __init__(self, token: str) -> None:
        self._metadata = bearer_metadata(token)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details, self._metadata)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


def client_channel(
    target: str,
    options: Sequence[tuple[str, Any]] = (),
    *,
    tls: bool = False,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    server_name: str | None = None,
    token: str | None = None,
) -> grpc.Channel:
    """A channel to `target`: TLS when `tls` or any TLS file is given (the server checked against `ca_file`, or the
    system's roots), a client certificate when `cert_file`/`key_file` are, `server_name` overriding the name the
    server's certificate must carry, and the bearer token on every call when `token` is given."""
    options = list(options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if tls or ca_file or cert_file or key_file:
        channel = grpc.secure_channel(target, channel_credentials(ca_file, cert_file, key_file), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, BearerTokenClientInterceptor(token)) if token else channel
