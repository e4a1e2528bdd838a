"""Transport security (docs/security.md): TLS and mutual TLS on the gRPC port, bearer tokens.

Server side, `ServerSecurity.from_settings`, checked at start-up (a bad setting is one `SecurityError` line, before
the model repository is even read):
- `tls_cert_file` + `tls_key_file`: the port speaks TLS only. `tls_client_ca_file` as well: every client must
  present a certificate signed by that CA (mutual TLS), checked in the handshake.
- `auth_token_file`: every RPC must carry `authorization: Bearer <token>` with one of the file's tokens (one per
  line; blank lines and `#` comments ignored). The standard health service stays open so that probes need no
  secret; reflection needs a token like the API.
- `admin_token_file`: the admin service (`vae.v1.ModelAdminService`) needs one of these tokens instead, a
  credential of its own: callers' tokens are refused there, admin tokens everywhere else. Without the file the
  admin service is off.

SIGHUP re-reads all of these files (`ServerSecurity.reload`), so certificates and tokens rotate without a restart:
new connections get the new certificate, key and client CA (open connections keep theirs until they close or age
out), new calls the new tokens. A rewritten file that fails the start-up checks is not taken: one warning line, and
the old credentials stay in force.

Client side: `channel_credentials` (for `VaeClient` and the CLI) and `read_client_token`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from service.config import Settings
from vae_client.credentials import (
    AUTHORIZATION,
    SecurityError,
    _check_ca,
    _check_key_pair,
    _parse_tokens,
    _read,
)

log = logging.getLogger(__name__)

HEALTH_SERVICE = "grpc.health.v1.Health"
ADMIN_SERVICE = "vae.v1.ModelAdminService"  # needs an admin token (admin_token_file), never a caller's
OPEN_SERVICES = (HEALTH_SERVICE,)  # answered without a token (probes); everything else needs one
SCHEME = "bearer"
ADMIN_OFF = "the admin service is off: the server must be started with --admin-token-file to enable it"
OK, UNCHANGED, FAILED = "ok", "unchanged", "failed"  # what `ServerSecurity.reload` reports per kind


def _tls_on(settings: Settings) -> bool:
    """Whether the settings ask for TLS; refuses the combinations that cannot work."""
    cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if bool(cert) != bool(key):
        have, missing = ("tls_cert_file", "tls_key_file") if cert else ("tls_key_file", "tls_cert_file")
        raise SecurityError(f"{have} is set but {missing} is not: TLS needs both (--tls-cert-file, --tls-key-file)")
    if not cert and client_ca:
        raise SecurityError(
            "tls_client_ca_file is set without TLS: mutual TLS also needs --tls-cert-file and --tls-key-file"
        )
    return bool(cert)


@dataclass(frozen=True)
class _TlsFiles:
    """One checked read of the server certificate, its key and the client CA: the bytes gRPC is given."""

    cert: bytes
    key: bytes
    client_ca: bytes | None

    @classmethod
    def read(cls, settings: Settings) -> _TlsFiles:
        """The files' bytes, checked as they are on disk; the check reads by path, so the bytes are read before and
        after it and must match: a rotation caught half-written is refused rather than half taken."""
        cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
        before = cls._read(settings)
        _check_key_pair(cert, key, "server")
        if client_ca:
            _check_ca(client_ca, "tls_client_ca_file")
        if cls._read(settings) != before:
            raise SecurityError(f"tls_cert_file {cert}, tls_key_file {key} or tls_client_ca_file changed while being "
                                "read (a rotation in progress?): try again once the files are written")  # fmt: skip
        return before

    @classmethod
    def _read(cls, settings: Settings) -> _TlsFiles:
        client_ca = settings.tls_client_ca_file
        return cls(_read(settings.tls_cert_file, "tls_cert_file"), _read(settings.tls_key_file, "tls_key_file"),
                   _read(client_ca, "tls_client_ca_file") if client_ca else None)  # fmt: skip

    def configuration(self) -> Any:
        """A `grpc.ServerCertificateConfiguration`, what a dynamic-credentials fetcher hands to gRPC."""
        return grpc.ssl_server_certificate_configuration([(self.key, self.cert)], root_certificates=self.client_ca)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Fixed TLS credentials for the gRPC port, or None for plaintext; raises SecurityError for a setting that can't
    work. `ServerSecurity.credentials` is the same, but takes rotated files on `reload`."""
    if not _tls_on(settings):
        return None
    files = _TlsFiles.read(settings)
    return grpc.ssl_server_credentials([(files.key, files.cert)], root_certificates=files.client_ca,
                                       require_client_auth=files.client_ca is not None)  # fmt: skip


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

    def shares_a_token_with(self, other: TokenVerifier) -> bool:
        """Whether a token is in both (compared as digests): admin and caller tokens must be separate credentials."""
        return not set(self._digests).isdisjoint(other._digests)


@dataclass(frozen=True)
class _TokenFile:
    """A token file as read: its bytes (to tell an unchanged file on reload) and the verifier of its tokens."""

    raw: bytes
    verifier: TokenVerifier

    @classmethod
    def read(cls, path: str, setting: str) -> _TokenFile:
        raw = _read(path, setting)
        return cls(raw, TokenVerifier(_parse_tokens(raw, path, setting)))


@dataclass(frozen=True)
class Verifiers:
    """The tokens accepted now. Replaced whole (one reference assignment) on reload, so every call sees either the
    old sets or the new ones, never a moment with none."""

    callers: TokenVerifier | None = None  # auth_token_file; None: the API needs no token
    admins: TokenVerifier | None = None  # admin_token_file; None: the admin service is refused


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
    """Refuses with UNAUTHENTICATED every RPC without a valid bearer token: an admin token for `ADMIN_SERVICE`, a
    caller's token for the rest except `open_services` (when caller tokens are configured at all).

    `on_refused(service, method)` is called once per refused call (e.g. to count it: the servicer never sees it).
    An unknown method is refused too, so an unauthenticated caller learns nothing about what the server offers.
    `verifiers` may be replaced while serving (credential reload): each call reads it once."""

    def __init__(
        self,
        verifiers: Verifiers | TokenVerifier,
        on_refused: Callable[[str, str], None] | None = None,
        open_services: Sequence[str] = OPEN_SERVICES,
    ) -> None:
        self.verifiers = verifiers if isinstance(verifiers, Verifiers) else Verifiers(callers=verifiers)
        self._on_refused = on_refused
        self._open = frozenset(open_services)

    def refusal_for(self, service: str, metadata: Any) -> str | None:
        """Why a call to `service` with this metadata is refused, or None (the HTTP front asks the same)."""
        verifiers = self.verifiers  # read once: a reload swaps the whole set, never half of it
        if service == ADMIN_SERVICE:
            return ADMIN_OFF if verifiers.admins is None else refusal(metadata, verifiers.admins)
        if service in self._open or verifiers.callers is None:
            return None
        return refusal(metadata, verifiers.callers)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        service, name = _split(handler_call_details.method)
        message = self.refusal_for(service, handler_call_details.invocation_metadata)
        if message is None:
            return await continuation(handler_call_details)
        if self._on_refused is not None:
            self._on_refused(service, name)
        log.debug("refused %s: %s", handler_call_details.method, message)
        return _refusing_handler(await continuation(handler_call_details), message)


def _overlap(callers: _TokenFile | None, admins: _TokenFile | None) -> bool:
    return callers is not None and admins is not None and callers.verifier.shares_a_token_with(admins.verifier)


def _token_files(settings: Settings) -> tuple[_TokenFile | None, _TokenFile | None]:
    """The caller and admin token files, read and checked (never the same token in both); None where not set."""
    callers = _TokenFile.read(settings.auth_token_file, "auth_token_file") if settings.auth_token_file else None
    admins = _TokenFile.read(settings.admin_token_file, "admin_token_file") if settings.admin_token_file else None
    if _overlap(callers, admins):
        raise SecurityError(f"auth_token_file {settings.auth_token_file} and admin_token_file "
                            f"{settings.admin_token_file} share a token: admin tokens must be their own")  # fmt: skip
    if callers is not None:
        log.info("bearer-token auth on: %d token(s) read from %s (re-read on SIGHUP); health stays open",
                 len(callers.verifier), settings.auth_token_file)  # fmt: skip
    if admins is not None:
        log.info("admin service on: %d admin token(s) read from %s (re-read on SIGHUP)",
                 len(admins.verifier), settings.admin_token_file)  # fmt: skip
    return callers, admins


def _verifiers(callers: _TokenFile | None, admins: _TokenFile | None) -> Verifiers:
    return Verifiers(callers.verifier if callers else None, admins.verifier if admins else None)


def auth_interceptor(
    settings: Settings, on_refused: Callable[[str, str], None] | None = None
) -> BearerTokenInterceptor | None:
    """The bearer-token interceptor when `auth_token_file` or `admin_token_file` is set (tokens read now, and not
    re-read: `ServerSecurity` is the one that reloads), else None."""
    callers, admins = _token_files(settings)
    if callers is None and admins is None:
        return None
    return BearerTokenInterceptor(_verifiers(callers, admins), on_refused)


def describe(settings: Settings) -> str:
    """One phrase for the start-up log line."""
    transport = "mutual TLS" if settings.tls_client_ca_file else "TLS"
    transport = transport if settings.tls_cert_file else "plaintext"
    tokens = ", bearer tokens" if settings.auth_token_file else ""
    return transport + tokens + (", admin tokens" if settings.admin_token_file else "")


class ServerSecurity:
    """The gRPC port's credentials and token check, built from the settings, and `reload` to take rotated files
    (SIGHUP) without a restart. Build it with `from_settings`."""

    def __init__(
        self,
        settings: Settings,
        tls: _TlsFiles | None,
        tokens: tuple[_TokenFile | None, _TokenFile | None],
        on_refused: Callable[[str, str], None] | None = None,
        on_reload: Callable[[str, str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._tls = tls
        # (generation, configuration): one tuple, so gRPC's threads read both in one reference
        self._published: tuple[int, Any] = (0, tls.configuration() if tls else None)
        self._callers, self._admins = tokens
        self._on_reload = on_reload
        self._reloading = threading.Lock()  # one reload at a time, whichever thread calls it
        self._interceptor = None if tokens == (None, None) else BearerTokenInterceptor(_verifiers(*tokens), on_refused)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        on_refused: Callable[[str, str], None] | None = None,
        on_reload: Callable[[str, str], None] | None = None,
    ) -> ServerSecurity:
        """Checks and reads every file now (a setting that can't work raises SecurityError, one line).
        `on_refused(service, method)`: once per refused call; `on_reload(kind, result)`: once per kind reloaded."""
        tls = _TlsFiles.read(settings) if _tls_on(settings) else None
        return cls(settings, tls, _token_files(settings), on_refused, on_reload)

    @property
    def credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials for one `add_secure_port`, None for plaintext. A fresh object on every access: gRPC takes
        a dynamic credentials object's initial configuration once, so a second port given the same one fails to
        bind, and each port's fetcher must track on its own which configuration it has handed out."""
        if self._tls is None:
            return None
        mutual = self._tls.client_ca is not None  # fixed for the process: a reload changes files, not settings
        generation, initial = self._published  # read once: the fetcher starts from the configuration gRPC gets
        fetcher = self._fetcher(generation)
        return grpc.dynamic_ssl_server_credentials(initial, fetcher, require_client_authentication=mutual)

    def _fetcher(self, handed_out: int) -> Callable[[], Any]:
        """gRPC core calls this before every new connection's handshake, on one of its own threads: it returns the
        newest configuration once after each reload (gRPC then rebuilds its TLS context), None (keep) otherwise."""

        def fetch() -> Any:
            nonlocal handed_out
            generation, configuration = self._published
            if generation == handed_out:
                return None
            handed_out = generation  # two racing handshakes may both hand it out: harmless, gRPC just rebuilds twice
            return configuration

        return fetch

    @property
    def interceptor(self) -> BearerTokenInterceptor | None:
        """The token check (`grpc.aio.server(interceptors=[...])`), None when neither token file is set: the admin
        service is then unguarded, so serve it only with `admin_token_file`."""
        return self._interceptor

    def describe(self) -> str:
        """One phrase for the start-up log line."""
        return describe(self._settings)

    def reload(self) -> dict[str, str]:
        """Re-reads the files of each configured kind ("tls", "tokens", "admin_tokens") and swaps in those that pass
        the start-up checks: {kind: "ok" | "unchanged" | "failed"}. A failed kind keeps its old credentials and logs
        one warning line naming the file and the problem. Blocking file reads of a few kB: fine on the event loop."""
        with self._reloading:
            results = {"tls": self._reload_tls()} if self._tls is not None else {}
            results.update(self._reload_tokens())
        for kind, result in results.items():
            if self._on_reload is not None:
                self._on_reload(kind, result)
        return results

    def _reload_tls(self) -> str:
        try:
            files = _TlsFiles.read(self._settings)
        except SecurityError as exc:
            log.warning("credential reload: keeping the current TLS certificate, key and client CA: %s", exc)
            return FAILED
        if files == self._tls:
            return UNCHANGED
        self._tls = files
        self._published = (self._published[0] + 1, files.configuration())
        log.info("credential reload: new TLS files from %s for new connections (open ones keep theirs)",
                 self._settings.tls_cert_file)  # fmt: skip
        return OK

    def _reload_tokens(self) -> dict[str, str]:
        settings, results = self._settings, {}
        files = {"tokens": (settings.auth_token_file, "auth_token_file", self._callers),
                 "admin_tokens": (settings.admin_token_file, "admin_token_file", self._admins)}  # fmt: skip
        new: dict[str, _TokenFile | None] = {}
        for kind, (path, setting, old) in files.items():
            new[kind], results[kind] = _reread_tokens(path, setting, old) if path else (None, "")
        if _overlap(new["tokens"], new["admin_tokens"]):  # refuse whichever change made them share a token
            for kind, (path, setting, old) in files.items():
                if results[kind] == OK:
                    log.warning("credential reload: keeping the current tokens of %s %s: a token in it is also in "
                                "the other token file (admin tokens must be their own)", setting, path)  # fmt: skip
                    new[kind], results[kind] = old, FAILED
        for kind, (path, _, _) in files.items():
            if results[kind] == OK and (taken := new[kind]) is not None:
                log.info("credential reload: %d token(s) now accepted from %s", len(taken.verifier), path)
        self._callers, self._admins = new["tokens"], new["admin_tokens"]
        if self._interceptor is not None:
            self._interceptor.verifiers = _verifiers(self._callers, self._admins)  # one assignment: atomic swap
        return {kind: result for kind, result in results.items() if result}


def _reread_tokens(path: str, setting: str, old: _TokenFile | None) -> tuple[_TokenFile | None, str]:
    """A token file read again: (the file now in force, "ok" | "unchanged" | "failed")."""
    try:
        new = _TokenFile.read(path, setting)
    except SecurityError as exc:
        log.warning("credential reload: keeping the current tokens: %s", exc)
        return old, FAILED
    if old is not None and new.raw == old.raw:
        return old, UNCHANGED
    return new, OK
