"""The server ages client connections out (so clients re-resolve and reach replicas added by a scale-up), and a
client carries on over a new connection without seeing an error."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc

from service.config import Settings
from tests.service.harness import serving
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub


def test_connections_are_aged_out_and_clients_reconnect(model_repository: Path) -> None:
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=model_repository,
                        torch_threads=1, max_connection_age_s=0.5, max_connection_age_grace_s=0.5)  # fmt: skip
    states: list[grpc.ChannelConnectivity] = []
    seen_idle_after_ready = threading.Event()

    def record(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if state == grpc.ChannelConnectivity.IDLE and grpc.ChannelConnectivity.READY in states:
            seen_idle_after_ready.set()

    with serving(settings) as server, grpc.insecure_channel(server.address) as channel:
        channel.subscribe(record, try_to_connect=True)
        stub = VaeServiceStub(channel)
        assert stub.Sample(V.SampleRequest(n=1, seed=V.Seed(value=1)), timeout=30).seed == 1
        assert seen_idle_after_ready.wait(timeout=30), f"the server never closed the connection: {states}"
        assert stub.Sample(V.SampleRequest(n=1, seed=V.Seed(value=2)), timeout=30).seed == 2
        channel.unsubscribe(record)


def test_connection_age_can_be_turned_off() -> None:
    from service.server import server_options

    names = {name for name, _ in server_options(Settings(max_connection_age_s=0))}
    assert "grpc.max_connection_age_ms" not in names and "grpc.max_receive_message_length" in names
