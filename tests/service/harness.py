"""The in-process server for tests (service/inprocess.py): a real server on a background thread, real loopback
gRPC channels, ports chosen by the OS; and a real tritonserver over a test repository."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from service.inprocess import ServerThread, serving, stub_for

if TYPE_CHECKING:  # the Triton tests' helper: the other service tests need not import training code
    from training.triton_local import GrpcTls, TritonServer

__all__ = ["ServerThread", "python_triton", "serving", "stub_for"]


@contextmanager
def python_triton(
    repository: Path, tmp: pytest.TempPathFactory, name: str = "triton", tls: GrpcTls | None = None
) -> Iterator[TritonServer]:
    """A real tritonserver serving `repository`'s Python-backend variant (dynamic batching, max batch 64)."""
    from training.export import derive_python_variant
    from training.triton_local import TritonServer

    python_repo = tmp.mktemp(f"{name}_python_repository")
    derive_python_variant(repository, python_repo, max_batch_size=64)
    server = TritonServer(python_repo, tmp.mktemp(name), tls=tls).start()
    try:
        yield server
    finally:
        server.stop()
