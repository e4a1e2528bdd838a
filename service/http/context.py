"""What the RPC handlers see of their call when it came over HTTP: the parts of `grpc.aio.ServicerContext` the
service uses (its deadline, abort with a status, the call's metadata)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc


class HttpAbort(Exception):
    """A handler ended the call with a status (`context.abort`); the HTTP front turns it into the error reply."""

    def __init__(self, code: grpc.StatusCode, message: str, details: bytes = b"") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details  # a serialized google.rpc.Status (grpc-status-details-bin), when one was attached


class HttpContext:
    def __init__(self, deadline: float | None, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self._deadline = deadline  # monotonic seconds, from the request's grpc-timeout header
        self._metadata = tuple(metadata)

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[tuple[str, bytes | str]] = ()
    ) -> None:
        rich = next((v for k, v in trailing_metadata if k == "grpc-status-details-bin"), b"")
        raise HttpAbort(code, details, rich if isinstance(rich, bytes) else rich.encode())
