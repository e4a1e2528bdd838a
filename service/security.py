"""Transport security (README "Security", docs/security.md): TLS and mutual TLS on the gRPC port, bearer tokens.

Server side, from the settings, checked once at start-up (a bad setting is one `SecurityError` line, before the
model repository is even read):
- `tls_cert_file` + `tls_key_file`: the port speaks TLS only. `tls_client_ca_file` as well: every client must
  present a certificate signed by that CA (mutual TLS), checked in the handshake.
- `auth_token_file`: every RPC must carry `authorization: Bearer <token>` with one of the file's tokens (one per
  line; blank lines and `#` comments ignored). Read once at start: to change tokens, restart (roll) the replicas.
  The standard health service stays open so that probes need no secret; reflection needs a token like the API.

Client side: `channel_credentials` (for `VaeClient` and the CLI) and `read_client_token`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from service.config import Settings

log = logging.getLogger(__name__)

HEALTH_SERVICE = "grpc.health.v1.Health"
OPEN_SERVICES = (HEALTH_SERVICE,)  # answered without a token (probes); everything else needs one
AUTHORIZATION = "authorization"
SCHEME = "bearer"


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


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC port, or None for plaintext; raises SecurityError for a setting that can't work."""
    cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if bool(cert) != bool(key):
        have, missing = ("tls_cert_file", "tls_key_file") if cert else ("tls_key_file", "tls_cert_file")
        raise SecurityError(f"{have} is set but {missing} is not: TLS needs both (--tls-cert-file, --tls-key-file)")
    if not cert:
        if client_ca:
            raise SecurityError(
                "tls_client_ca_file is set without TLS: mutual TLS also needs --tls-cert-file and --tls-key-file"
            )
        return None
    cert_pem, key_pem = _read(cert, "tls_cert_file"), _read(key, "tls_key_file")
    _check_key_pair(cert, key, "server")
    ca_pem = _check_ca(client_ca, "tls_client_ca_file") if client_ca else None
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem,
                                       require_client_auth=ca_pem is not None)  # fmt: skip


def read_tokens(path: str, setting: str = "auth_token_file") -> list[str]:
    """Tokens, one per line; blank lines and `#` comments are ignored. Refuses an empty file and tokens that
    cannot travel in gRPC metadata (whitespace, non-printable or non-ASCII). Never puts a token in a message."""
    raw = _read(path, setting)
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


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenVerifier:
    """Checks a presented token against every accepted one in constant time: each comparison is of two SHA-256
    digests (equal length, so neither the token's length nor its prefix shows), and all of them are always made."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise SecurityError("no bearer tokens given")
        self._digests = [_digest(t) for t in tokens]

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, token: str) -> bool:
        presented = _digest(token)
        matched = False
        for accepted in self._digests:
            matched |= hmac.compare_digest(presented, accepted)
        return matched


def _metadata_value(metadata: Any, key: str) -> list[str]:
    values = []
    for item in metadata or ():
        name, value = (item.key, item.value) if hasattr(item, "key") else item
        if name.lower() == key:
            values.append(value.decode("latin-1") if isinstance(value, bytes) else value)
    return values


def refusal(metadata: Any, verifier: TokenVerifier) -> str | None:
    """Why a call's metadata is not authorized (a message for the client, never echoing the token), or None."""
    values = _metadata_value(metadata, AUTHORIZATION)
    if not values:
        return "missing `authorization: Bearer <token>` metadata: this server requires a bearer token"
    if len(values) > 1:
        return "more than one `authorization` metadata entry: send exactly one `authorization: Bearer <token>`"
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != SCHEME or not token:
        return "malformed `authorization` metadata: expected `Bearer <token>`"
    if not verifier.accepts(token):
        return "invalid bearer token"
    return None


def _split(method: str) -> tuple[str, str]:
    """`/vae.v1.VaeService/Sample` -> (`vae.v1.VaeService`, `Sample`)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _refusing_handler(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as the real one that answers UNAUTHENTICATED without reading the request: no
    deserializer, so an unauthenticated caller's bytes are never parsed."""

    async def refuse_unary(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover (never reached: makes this an async generator, as streaming replies need)

    request_streaming = True if handler is None else handler.request_streaming
    response_streaming = True if handler is None else handler.response_streaming
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse_unary)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse_unary)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every RPC without a valid bearer token with UNAUTHENTICATED, except those of `open_services`.

    `on_refused(service, method)` is called once per refused call (e.g. to count it: the servicer never sees it).
    An unknown method is refused too, so an unauthenticated caller learns nothing about what the server offers."""

    def __init__(
        self,
        verifier: TokenVerifier,
        on_refused: Callable[[str, str], None] | None = None,
        open_services: Sequence[str] = OPEN_SERVICES,
    ) -> None:
        self._verifier = verifier
        self._on_refused = on_refused
        self._open = frozenset(open_services)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        service, name = _split(handler_call_details.method)
        if service in self._open:
            return await continuation(handler_call_details)
        message = refusal(handler_call_details.invocation_metadata, self._verifier)
        if message is None:
            return await continuation(handler_call_details)
        if self._on_refused is not None:
            self._on_refused(service, name)
        log.debug("refused %s: %s", handler_call_details.method, message)
        return _refusing_handler(await continuation(handler_call_details), message)


def auth_interceptor(
    settings: Settings, on_refused: Callable[[str, str], None] | None = None
) -> BearerTokenInterceptor | None:
    """The bearer-token interceptor when `auth_token_file` is set (tokens read now, once), else None."""
    if not settings.auth_token_file:
        return None
    verifier = TokenVerifier(read_tokens(settings.auth_token_file))
    log.info("bearer-token auth on: %d token(s) read from %s (read once: restart to change them); health stays open",
             len(verifier), settings.auth_token_file)  # fmt: skip
    return BearerTokenInterceptor(verifier, on_refused)


def describe(settings: Settings) -> str:
    """One phrase for the start-up log line."""
    transport = "mutual TLS" if settings.tls_client_ca_file else "TLS"
    transport = transport if settings.tls_cert_file else "plaintext"
    return transport + (", bearer tokens" if settings.auth_token_file else "")


# Client side ---------------------------------------------------------------------------------------------------


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
