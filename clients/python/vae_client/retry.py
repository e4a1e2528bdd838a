"""The retry policy for vae.v1.VaeService, as a gRPC service config: the one the typed client uses, and the one the
README tells every other client to use (README.md, "Retries").

Why: a grpc.aio server that falls behind can cancel a call before any handler sees it (CANCELLED, after a few
milliseconds: docs/upstream/grpc-aio-pending-cancelled.md), and a replica that is going away refuses calls
(UNAVAILABLE). Every VaeService RPC is free of side effects, so trying again is safe; a request without a seed gets
a fresh one on the retry, and the reply says which (`seed`). gRPC itself does the retrying:
- up to 5 attempts (the first and 4 retries) within the call's deadline, waiting about 0.1, 0.2, 0.4, 0.8 s between
  them (gRPC adds +-20% jitter), at most 2 s;
- never once the call is committed: response headers or a message received (a stream that has begun), or a request
  larger than the retry buffer (`retry_buffer_bytes` below);
- never a call the caller cancelled (that is local, not a status);
- only while the channel's retry budget lasts (`retryThrottling`: 100 tokens, each failure takes 1, each success
  gives 0.1 back, no retries at 50 or fewer), so an overloaded server is not hit twice as hard.
The admin service and health are not covered.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

SERVICE_CONFIG_FILE = "service_config.json"
RETRY_SERVICE_CONFIG: str = resources.files("vae_client").joinpath(SERVICE_CONFIG_FILE).read_text()
RETRYABLE_CODES: tuple[str, ...] = tuple(
    json.loads(RETRY_SERVICE_CONFIG)["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"]
)


def retry_options(retry_buffer_bytes: int = 256 * 1024) -> list[tuple[str, Any]]:
    """Channel options that turn the policy on. A request larger than `retry_buffer_bytes` is never retried (gRPC
    keeps each attempt's request only up to that size; its default is 256 KiB): the typed client passes its message
    limit."""
    return [
        ("grpc.service_config", RETRY_SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.per_rpc_retry_buffer_size", retry_buffer_bytes),
    ]
