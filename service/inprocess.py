"""The real server on a background thread with its own event loop, for programs that embed it: benchmarks, the
monitor, tests. Callers use ordinary (synchronous) gRPC clients over a real loopback channel; ports may be 0
(the OS picks, the server reports the port it got)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from service.backends.base import Backend
from service.config import Settings
from service.server import RunningServer, start_server
from vae_client.proto_gen.vae.v1 import vae_pb2_grpc


class ServerThread:
    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.backend = backend  # None: the one the settings name
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running: RunningServer | None = None

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> ServerThread:
        self.thread.start()
        self.running = self.call(start_server(self.settings, CollectorRegistry(), self.backend))
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        if self.running is not None:
            self.call(self.running.stop(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def address(self) -> str:
        assert self.running is not None
        return f"127.0.0.1:{self.running.port}"


@contextmanager
def serving(settings: Settings, backend: Backend | None = None) -> Iterator[ServerThread]:
    server = ServerThread(settings, backend).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def stub_for(server: ServerThread) -> Iterator[vae_pb2_grpc.VaeServiceStub]:
    limit = 64 * 1024 * 1024
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        yield vae_pb2_grpc.VaeServiceStub(channel)
