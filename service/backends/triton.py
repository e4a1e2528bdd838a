"""A real Triton Inference Server, reached with `tritonclient.grpc.aio`, optionally over (mutual) TLS.

Failure handling (each has a test against a real tritonserver, tests/service/test_triton_faults.py):
- A background probe asks Triton whether the server and every encoder/decoder model are ready, every
  PROBE_INTERVAL_UP_S while up and every PROBE_INTERVAL_DOWN_S while down, each probe bounded by PROBE_TIMEOUT_S,
  so a frozen Triton (stopped, not dead) is seen down within about 1.5 s. A call failing with UNAVAILABLE (the
  connection broke) marks it down at once.
- While the backend is down, a call fails at once with `Unavailable`; the calls in flight when it goes down are
  abandoned at that moment (their gRPC calls cancelled) with `Unavailable`, so nothing waits out the per-call
  timeout on a server that will not answer.
- A call's timeout is `timeout_s` or, if sooner, the latest deadline of the requests in the batch
  (`service.batching.call_deadline`): no Triton call outlives every request waiting for it. A call ended by that
  deadline is `DeadlineExceeded` and does not mark the backend down.
- Recovery: the channel's reconnect backoff is capped (CHANNEL_ARGS) and the probe runs every 0.25 s while
  down, so the service serves again well within 1 s of Triton answering ready (the gRPC default backoff grows
  to minutes; it was the 6 s seen after a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from service.batching import call_deadline
from service.errors import DeadlineExceeded, ServiceError, Unavailable
from vaecore.repository import ModelSpec, NetworkSpec

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)

PROBE_INTERVAL_UP_S = 0.5
PROBE_INTERVAL_DOWN_S = 0.25
PROBE_TIMEOUT_S = 1.0
MAX_MESSAGE = 2**31 - 1  # tritonclient's own default
CHANNEL_ARGS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    # Reconnect soon after Triton comes back: retry every 100-250 ms (gRPC's default grows 1 s -> 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 250),
    # gRPC reads this one as the shortest time a connection attempt is given (default 20 s).
    ("grpc.min_reconnect_backoff_ms", 2000),
]


@dataclass(frozen=True)
class TritonTls:
    """PEM bytes for the channel: Triton's certificate is verified against `root_certificates`; a client
    certificate (`certificate_chain` + `private_key`) is presented when Triton requires mutual TLS."""

    root_certificates: bytes
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    @classmethod
    def from_files(cls, ca_file: str, cert_file: str = "", key_file: str = "") -> TritonTls | None:
        """None when no file is named (plaintext); a ValueError with one clear line for a setting that can't work."""
        if not (ca_file or cert_file or key_file):
            return None
        if bool(cert_file) != bool(key_file):
            given, missing = "--triton-tls-cert-file", "--triton-tls-key-file"
            if key_file:
                given, missing = missing, given
            raise ValueError(f"{given} is set but {missing} is not: a client certificate needs both (mutual TLS)")
        if not ca_file:
            raise ValueError("--triton-tls-cert-file/--triton-tls-key-file need --triton-tls-ca-file (TLS to Triton)")
        ca = _read_pem("--triton-tls-ca-file", ca_file)
        if not cert_file:
            return cls(ca)
        return cls(ca, _read_pem("--triton-tls-cert-file", cert_file), _read_pem("--triton-tls-key-file", key_file))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


def _read_pem(flag: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data


class TritonBackend:
    name = "triton"

    def __init__(
        self,
        models: dict[str, ModelSpec],
        url: str,
        timeout_s: float = 30.0,
        probe_interval_s: float = PROBE_INTERVAL_UP_S,
        *,
        probe_interval_down_s: float = PROBE_INTERVAL_DOWN_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        tls: TritonTls | None = None,
    ) -> None:
        self._models = models
        self._url = url
        self._timeout_s = timeout_s
        self._probe_interval_s = probe_interval_s
        self._probe_interval_down_s = probe_interval_down_s
        self._probe_timeout_s = probe_timeout_s
        self._tls = tls
        self._networks = sorted({n.model_name for m in models.values() for n in (m.encoder, m.decoder)})
        self._client: triton_grpc.InferenceServerClient | None = None
        self._ready = False
        self._outage: asyncio.Future[None] | None = None  # resolved when the backend goes down; fresh when up
        self._probe: asyncio.Task[None] | None = None
        self._down_reason = "not probed yet"

    @classmethod
    def from_settings(cls, models: dict[str, ModelSpec], settings: Settings) -> TritonBackend:
        """From the service settings; raises ValueError (one line) for TLS files that can't work."""
        tls = TritonTls.from_files(settings.triton_tls_ca_file, settings.triton_tls_cert_file,
                                   settings.triton_tls_key_file)  # fmt: skip
        return cls(models, settings.triton_url, settings.triton_timeout_s, tls=tls)

    async def start(self) -> None:
        creds = self._tls.credentials() if self._tls is not None else None
        self._client = triton_grpc.InferenceServerClient(self._url, creds=creds, channel_args=CHANNEL_ARGS)
        self._set_ready(await self._check())
        self._probe = asyncio.get_running_loop().create_task(self._watch())
        if not self._ready:
            log.warning("Triton at %s is not ready yet; serving NOT_SERVING until it is", self._url)

    def ready(self) -> bool:
        return self._ready

    def _set_ready(self, ready: bool, reason: str = "") -> None:
        if ready:
            if self._outage is None or self._outage.done():
                self._outage = asyncio.get_running_loop().create_future()
            if not self._ready:
                log.warning("Triton at %s is ready", self._url)
        else:
            if self._outage is not None and not self._outage.done():
                self._outage.set_result(None)  # abandons every call in flight
            if self._ready:
                log.warning("Triton at %s is down (%s): calls fail at once until it answers ready", self._url, reason)
        self._ready = ready

    async def _check(self) -> bool:
        assert self._client is not None
        client, timeout = self._client, self._probe_timeout_s
        try:
            async with asyncio.timeout(timeout):
                if not await client.is_server_ready(client_timeout=timeout):
                    self._down_reason = "server not ready"
                    return False
                answers = await asyncio.gather(
                    *(client.is_model_ready(n, client_timeout=timeout) for n in self._networks)
                )
        except Exception as exc:  # whatever it is, the probe must live on: down until Triton answers ready
            self._down_reason = f"readiness probe: {_describe(exc, timeout)}"
            log.debug("Triton readiness probe failed: %s", self._down_reason)
            return False
        not_ready = [n for n, ok in zip(self._networks, answers, strict=True) if not ok]
        self._down_reason = f"models not ready: {', '.join(not_ready)}"
        return not not_ready

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s if self._ready else self._probe_interval_down_s)
            ready = await self._check()
            self._set_ready(ready, "" if ready else self._down_reason)

    async def _infer(self, network: NetworkSpec, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._client is None:
            raise Unavailable("Triton backend is not started")
        outage = self._outage
        if not self._ready or outage is None or outage.done():
            raise Unavailable(f"Triton at {self._url} is down; retry when the service reports SERVING")
        timeout, by_deadline = self._timeout_s, False
        deadline = call_deadline.get()
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded("deadline passed before the Triton call")
            if left < timeout:
                timeout, by_deadline = left, True
        tensor = triton_grpc.InferInput(network.input_name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        outputs = [triton_grpc.InferRequestedOutput(name) for name in network.output_names]
        call = asyncio.ensure_future(
            self._client.infer(network.model_name, [tensor], outputs=outputs, client_timeout=timeout)
        )
        try:
            await asyncio.wait((call, outage), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not call.done():  # Triton went down, or our caller was cancelled: abandon the gRPC call
                call.cancel()
                call.add_done_callback(_retrieve)
        if not call.done():
            raise Unavailable(f"Triton at {self._url} went down during the call to {network.model_name}")
        try:
            result = call.result()
        except InferenceServerException as exc:
            raise self._error(exc, network.model_name, timeout, by_deadline) from exc
        first, second = (result.as_numpy(name) for name in network.output_names)
        return first, second

    def _error(self, exc: InferenceServerException, model: str, timeout: float, by_deadline: bool) -> ServiceError:
        status = exc.status() or ""
        if status.endswith("DEADLINE_EXCEEDED"):
            if by_deadline:
                return DeadlineExceeded(f"deadline passed while Triton ran {model}")
            return Unavailable(f"Triton did not answer {model} within {timeout:g} s")
        if status.endswith("UNAVAILABLE"):
            self._set_ready(False, f"call to {model}: {exc.message()}")  # the probe brings it back
            return Unavailable(f"Triton call to {model} failed: {exc.message()}")
        # Triton answered with an error of its own (e.g. the model raised): not an outage, and the batcher
        # retries a failed batch one request at a time, so a bad item fails only its own request.
        return ServiceError(f"Triton call to {model} failed ({status.removeprefix('StatusCode.')}): {exc.message()}")

    async def encode(self, model: ModelSpec, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self._infer(model.encoder, images)

    async def decode(self, model: ModelSpec, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self._infer(model.decoder, latents)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._outage is not None and not self._outage.done():
            self._outage.set_result(None)
        self._ready = False
        if self._client is not None:
            await self._client.close()


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, InferenceServerException):
        return f"{exc.status() or 'error'}: {exc.message()}"
    return str(exc) or type(exc).__name__


def _retrieve(task: asyncio.Future[object]) -> None:
    """Consume an abandoned call's outcome so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
