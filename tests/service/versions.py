"""Helpers for the model-lifecycle tests: versions added to a repository copy the way an export adds them (files
first, metadata last), broken versions of three kinds, and an admin client."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np

from vae_client.codecs import tensor_to_array
from vae_client.proto_gen.vae.v1 import admin_pb2, admin_pb2_grpc
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vaecore.repository import (
    metadata_path,
    network_file,
    read_metadata,
    record_digests,
    remove_version,
    set_default_version,
    write_metadata,
)

ADMIN_TOKEN = "admin-token-for-tests"
NETWORKS = ("encoder", "decoder")


def copy_repository(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def add_version(repo: Path, name: str, source: str, version: str, make_default: bool = False) -> None:
    """Version `version` of `name` as a copy of version `source`'s files and metadata (a re-export of the same
    weights): its files are written before its metadata, as the exporter does."""
    body = read_metadata(metadata_path(repo, name), source)
    for part in NETWORKS:
        spec_file = network_file(repo, _network(body, part), source)
        target = network_file(repo, _network(body, part), version)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(spec_file, target)
    write_metadata(repo, record_digests(repo, body, version=version), version, make_default)


def add_broken_version(repo: Path, name: str, source: str, version: str, how: str) -> None:
    """A version that must be refused: "digest" (a file changed after its digest was recorded), "garbage" (a file
    that is not TorchScript, its digest recorded), "shapes" (the encoder is the decoder's file: wrong shapes)."""
    body = read_metadata(metadata_path(repo, name), source)
    files = {part: network_file(repo, _network(body, part), version) for part in NETWORKS}
    for part, target in files.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(network_file(repo, _network(body, part), source), target)
    if how == "garbage":
        files["decoder"].write_bytes(b"this is not a TorchScript archive\n" * 100)
    elif how == "shapes":
        shutil.copyfile(files["decoder"], files["encoder"])
    recorded = record_digests(repo, body, replace=True, version=version)  # the files as they are now
    if how == "digest":
        data = bytearray(files["decoder"].read_bytes())
        data[len(data) // 2] ^= 0xFF
        files["decoder"].write_bytes(bytes(data))
    write_metadata(repo, recorded, version, make_default=False)


def _network(body: dict[str, object], part: str):  # type: ignore[no-untyped-def]
    from vaecore.repository import NetworkSpec

    return NetworkSpec.from_json(body[part])  # type: ignore[arg-type]


def set_default(repo: Path, name: str, version: str) -> None:
    set_default_version(repo, name, version)


def remove(repo: Path, name: str, version: str) -> None:
    remove_version(repo, name, version)


class Admin:
    """A `vae.v1.ModelAdminService` client with the admin token on every call."""

    def __init__(self, channel: grpc.Channel, token: str = ADMIN_TOKEN) -> None:
        self._stub = admin_pb2_grpc.ModelAdminServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),)

    def index(self) -> admin_pb2.RepositoryIndexResponse:
        return self._stub.RepositoryIndex(admin_pb2.RepositoryIndexRequest(), metadata=self._metadata, timeout=60)

    def reload(self) -> admin_pb2.ReloadResponse:
        return self._stub.Reload(admin_pb2.ReloadRequest(), metadata=self._metadata, timeout=120)

    def load(self, model: str, version: str) -> V.ModelInfo:
        request = admin_pb2.LoadVersionRequest(model=model, model_version=version)
        return self._stub.LoadVersion(request, metadata=self._metadata, timeout=120).info

    def unload(self, model: str, version: str) -> V.ModelInfo:
        request = admin_pb2.UnloadVersionRequest(model=model, model_version=version)
        return self._stub.UnloadVersion(request, metadata=self._metadata, timeout=60).info

    def set_default(self, model: str, version: str) -> V.ModelInfo:
        request = admin_pb2.SetDefaultVersionRequest(model=model, model_version=version)
        return self._stub.SetDefaultVersion(request, metadata=self._metadata, timeout=60).info

    def split(self, model: str, weights: dict[str, float]) -> V.ModelInfo:
        request = admin_pb2.SetTrafficSplitRequest(model=model, weights=weights)
        return self._stub.SetTrafficSplit(request, metadata=self._metadata, timeout=60).info

    def rollback(self, model: str) -> V.ModelInfo:
        return self._stub.Rollback(admin_pb2.RollbackRequest(model=model), metadata=self._metadata, timeout=60).info


@contextmanager
def admin_for(address: str, token: str = ADMIN_TOKEN) -> Iterator[Admin]:
    with grpc.insecure_channel(address) as channel:
        yield Admin(channel, token)


def states(info: V.ModelInfo) -> dict[str, str]:
    """version -> state name (READY, FAILED, ...) of a ModelInfo."""
    return {v.version: V.VersionState.Name(v.state).removeprefix("VERSION_STATE_") for v in info.versions}


def array(tensor: V.Tensor) -> np.ndarray:
    return tensor_to_array(tensor, "reply").copy()
