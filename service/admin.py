"""The admin gRPC service (`vae.v1.ModelAdminService`, proto/vae/v1/admin.proto): proto in, the registry's
operations, proto out. Registered only when an admin credential is configured (`--admin-token-file`); the auth
interceptor (service/security.py) lets only admin tokens reach it. Errors map like the API's (service/errors.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from service.model_info import model_info
from service.registry import ModelRegistry
from service.registry.state import ModelEntry
from service.registry.triggers import Reloads
from vae_client.errors import InvalidArgument, ServiceError, status_for
from vae_client.proto_gen.vae.v1 import admin_pb2, vae_pb2

log = logging.getLogger(__name__)
ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["ModelAdminService"].full_name
T = TypeVar("T")


def _required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    return value


class AdminServicer:
    def __init__(self, registry: ModelRegistry, reloads: Reloads, backend: str) -> None:
        self.registry = registry
        self.reloads = reloads
        self.backend = backend

    def _info(self, entry: ModelEntry) -> vae_pb2.ModelInfo:
        return model_info(entry, self.registry.default_spec(entry), self.backend)

    def _models(self) -> list[vae_pb2.ModelInfo]:
        return [self._info(e) for _, e in sorted(self.registry.entries.items())]

    async def _answer(self, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except ServiceError as exc:
            code, message = status_for(exc)
            log.info("admin call refused: %s", message)
            await context.abort(code, message)
            raise  # unreachable: abort raises

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return admin_pb2.RepositoryIndexResponse(models=self._models(), default_model=self.registry.default_model)

    async def Reload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # shielded: a caller that gives up (its deadline, Ctrl-C) must not interrupt the reload half-way
        changes = await self._answer(context, lambda: asyncio.shield(self.reloads.run("admin")))
        return admin_pb2.ReloadResponse(changes=changes, models=self._models())

    async def LoadVersion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        entry = await self._answer(
            context,
            lambda: self.registry.load_version(request.model, _required(request.model_version, "model_version")),
        )
        return admin_pb2.LoadVersionResponse(info=self._info(entry))

    async def UnloadVersion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        entry = await self._answer(
            context,
            lambda: self.registry.unload_version(request.model, _required(request.model_version, "model_version")),
        )
        return admin_pb2.UnloadVersionResponse(info=self._info(entry))

    async def SetDefaultVersion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        entry = await self._answer(
            context, lambda: self.registry.set_default(request.model, _required(request.model_version, "model_version"))
        )
        return admin_pb2.SetDefaultVersionResponse(info=self._info(entry))

    async def SetTrafficSplit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        weights = dict(request.weights)
        entry = await self._answer(context, lambda: self.registry.set_split(request.model, weights))
        return admin_pb2.SetTrafficSplitResponse(info=self._info(entry))

    async def Rollback(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        entry = await self._answer(context, lambda: self.registry.rollback(request.model))
        return admin_pb2.RollbackResponse(info=self._info(entry))
