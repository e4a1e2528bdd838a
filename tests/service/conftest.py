"""Fixtures the service tests share: a module's `server` fixture (its own settings) gets a client stub here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.inprocess import ServerThread, stub_for
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[VaeServiceStub]:
    """A stub on the module's own `server` fixture, open for the whole module."""
    with stub_for(server) as s:
        yield s
