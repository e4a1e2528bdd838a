"""The aiohttp application of the HTTP/JSON front, on the server's event loop.

A call goes: route (service/http/routes.py, from the proto's annotations) -> auth (the same bearer-token check as
gRPC, `authorization: Bearer` header) -> request message (proto3 JSON body, query and path fields) -> the same
instrumented handler gRPC calls (service/api.py `instrumented`: validation, limits, metrics counted once with the
gRPC code) -> JSON reply, or an error with the HTTP status of its gRPC code and a google.rpc.Status body.

- `Accept: image/png` on an RPC that returns images answers with one PNG: the image, or a grid of them (an
  interpolation as one row).
- SampleStream answers newline-delimited JSON (`application/x-ndjson`): one `{"result": {...}}` line per message,
  an `{"error": {...}}` line if it fails after its first message (grpc-gateway's framing).
- `grpc-timeout` (the header transcoders forward) is the call's deadline; a client that disconnects cancels its call.
- With TLS configured the port speaks TLS with the same certificate, key and client CA as gRPC; SIGHUP's reload
  re-reads them (`reload_tls`: a new listener with the new files takes over the port, open connections are kept).
- `vae_http_responses_total{method, status}` counts each answer by HTTP status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from aiohttp import web
from google.protobuf.message import Message

from service.admin import ADMIN_SERVICE_NAME, AdminServicer
from service.api import SERVICE as VAE_SERVICE
from service.api import Instrumented, Unparseable
from service.config import Settings
from service.http import routes as routing
from service.http.context import HttpAbort, HttpContext
from service.http.transcode import HTTP_STATUS, error_json, grid_png, reply_json, request_message, timeout_s
from service.metrics import ServiceMetrics
from service.security import ServerSecurity
from vae_client.codecs import tensor_to_array
from vae_client.proto_gen.vae.v1 import admin_pb2, vae_pb2

log = logging.getLogger(__name__)
EXPLORER = Path(__file__).resolve().parent / "explorer"  # the latent explorer page (static files, no build step)
OPENAPI = Path(__file__).resolve().parent / "openapi.json"  # generated from the proto by tools/openapi.py
IMAGE_METHODS = frozenset({"Decode", "Reconstruct", "Sample", "Interpolate", "Arithmetic"})
MAX_BODY_BYTES_SLACK = 1024 * 1024  # JSON (base64) is about 4/3 of the binary message; the limit adds this


@dataclass(frozen=True)
class Method:
    service: str
    name: str
    call: Callable[..., Any]
    streaming: bool
    request_type: type[Message]


def _methods(vae: Mapping[str, Instrumented], admin: AdminServicer | None) -> dict[tuple[str, str], Method]:
    methods = {(VAE_SERVICE.full_name, n): Method(VAE_SERVICE.full_name, n, r.call, r.streaming, r.request_type)
               for n, r in vae.items()}  # fmt: skip
    if admin is not None:
        service = admin_pb2.DESCRIPTOR.services_by_name["ModelAdminService"]
        for method in service.methods:
            methods[(ADMIN_SERVICE_NAME, method.name)] = Method(
                ADMIN_SERVICE_NAME, method.name, getattr(admin, method.name), False,
                getattr(admin_pb2, method.input_type.name),
            )  # fmt: skip
    return methods


def server_ssl(settings: Settings) -> ssl.SSLContext | None:
    """The HTTP port's TLS: the gRPC port's certificate, key and client CA (mutual TLS when set)."""
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file:
        context.load_verify_locations(cafile=settings.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class HttpFront:
    def __init__(
        self,
        settings: Settings,
        vae: Mapping[str, Instrumented],
        admin: AdminServicer | None,
        security: ServerSecurity,
        metrics: ServiceMetrics,
        static_dir: Path | None = None,
        openapi: Path | None = None,
    ) -> None:
        self.settings = settings
        self._methods = _methods(vae, admin)
        services = [VAE_SERVICE] + ([admin_pb2.DESCRIPTOR.services_by_name["ModelAdminService"]] if admin else [])
        self.table = routing.routes(services)
        self._security = security
        self._metrics = metrics
        self._static_dir = static_dir
        self._openapi = openapi
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.limit = settings.max_message_mb * 1024 * 1024 * 4 // 3 + MAX_BODY_BYTES_SLACK

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> int:
        app = web.Application(client_max_size=self.limit)
        if self._openapi is not None and self._openapi.is_file():
            app.router.add_get("/openapi.json", self._openapi_document)
        if self._static_dir is not None and self._static_dir.is_dir():
            app.router.add_get("/", self._index)
            app.router.add_static("/static/", self._static_dir)
        app.router.add_route("*", "/v1{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        self._site = await self._bind(server_ssl(self.settings), self.settings.http_port)
        return self.port

    async def _bind(self, context: ssl.SSLContext | None, port: int) -> web.TCPSite:
        assert self._runner is not None
        host = self.settings.http_host or self.settings.host
        site = web.TCPSite(self._runner, host, port, ssl_context=context, reuse_port=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return site

    async def reload_tls(self) -> None:
        """New TLS files for new connections: a listener with them binds the port too (SO_REUSEPORT), then the
        old one stops listening; connections already open keep theirs."""
        if self._site is None or not self.settings.tls_cert_file:
            return
        try:
            context = server_ssl(self.settings)
        except (OSError, ssl.SSLError) as exc:
            log.warning("HTTP port: keeping the current TLS files: %s", exc)
            return
        old, self._site = self._site, await self._bind(context, self.port)
        await old.stop()

    def reload_tls_soon(self) -> None:
        """`reload_tls` in the background (called from the SIGHUP handler)."""
        task = asyncio.get_running_loop().create_task(self.reload_tls())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- static ---------------------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        assert self._static_dir is not None
        return web.FileResponse(self._static_dir / "index.html")

    async def _openapi_document(self, request: web.Request) -> web.StreamResponse:
        assert self._openapi is not None
        return web.Response(body=self._openapi.read_bytes(), content_type="application/json")

    # --- calls ----------------------------------------------------------------------------------------------

    def _count(self, method: Method | None, status: int) -> None:
        if method is not None and method.service == VAE_SERVICE.full_name:
            self._metrics.http_responses.labels(method.name, str(status)).inc()

    def _error(self, method: Method | None, code: grpc.StatusCode, message: str, details: bytes = b"") -> web.Response:
        status = HTTP_STATUS.get(code, 500)
        self._count(method, status)
        return web.json_response(error_json(code, message, details), status=status)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route, params, allowed = routing.find(self.table, request.method, request.path)
        if route is None:
            if allowed:
                takes = f"{request.path[:200]} takes {', '.join(allowed)}"
                response = self._error(None, grpc.StatusCode.UNIMPLEMENTED, takes)
                response.set_status(405)
                response.headers["Allow"] = ", ".join(allowed)
                return response
            return self._error(None, grpc.StatusCode.NOT_FOUND, f"no route {request.method} {request.path[:200]}")
        method = self._methods.get((route.service, route.method))
        if method is None:
            return self._error(None, grpc.StatusCode.UNIMPLEMENTED, f"{route.service}/{route.method} is not served")
        refused = self._refusal(route.service, request)
        if refused is not None:
            if method.service == VAE_SERVICE.full_name:
                self._metrics.requests.labels(method.name, grpc.StatusCode.UNAUTHENTICATED.name).inc()
            return self._error(method, grpc.StatusCode.UNAUTHENTICATED, refused)
        try:
            deadline_s = timeout_s(request.headers.get("grpc-timeout"))
        except ValueError as exc:
            return self._error(method, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        message = request_message(route, method.request_type, params, dict(request.query), await request.read())
        wants_png = "image/png" in request.headers.get("Accept", "") and method.name in IMAGE_METHODS
        if wants_png and isinstance(message, vae_pb2.DecodeRequest | vae_pb2.ReconstructRequest | vae_pb2.SampleRequest
                                    | vae_pb2.InterpolateRequest | vae_pb2.ArithmeticRequest):  # fmt: skip
            message.output.format = vae_pb2.IMAGE_FORMAT_UINT8
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        context = HttpContext(deadline, _authorization(request))
        if method.streaming:
            return await self._stream(request, method, message, context, deadline_s)
        try:
            async with asyncio.timeout(deadline_s):
                reply = await method.call(message, context)
        except HttpAbort as abort:
            return self._error(method, abort.code, abort.message, abort.details)
        except TimeoutError:
            return self._error(method, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded (grpc-timeout)")
        self._count(method, 200)
        if wants_png:
            return web.Response(body=_png(method.name, reply), content_type="image/png")
        return web.json_response(reply_json(reply))

    def _refusal(self, service: str, request: web.Request) -> str | None:
        interceptor = self._security.interceptor
        if interceptor is None:
            return None
        return interceptor.refusal_for(service, _authorization(request))

    async def _stream(
        self,
        request: web.Request,
        method: Method,
        message: Message | Unparseable,
        context: HttpContext,
        deadline_s: float | None,
    ) -> web.StreamResponse:
        """NDJSON; an error before the first message is an ordinary error reply (its status is still free)."""
        replies: AsyncIterator[Message] = method.call(message, context)
        try:
            async with asyncio.timeout(deadline_s):
                first = await anext(replies)
        except HttpAbort as abort:
            return self._error(method, abort.code, abort.message, abort.details)
        except TimeoutError:
            return self._error(method, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded (grpc-timeout)")
        except StopAsyncIteration:
            first = None
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        self._count(method, 200)
        try:
            async with asyncio.timeout(deadline_s):
                if first is not None:
                    await response.write(_line({"result": reply_json(first)}))
                    async for reply in replies:
                        await response.write(_line({"result": reply_json(reply)}))
        except HttpAbort as abort:
            await response.write(_line({"error": error_json(abort.code, abort.message, abort.details)}))
        except TimeoutError:
            error = error_json(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded (grpc-timeout)")
            await response.write(_line({"error": error}))
        await response.write_eof()
        return response


def _authorization(request: web.Request) -> list[tuple[str, str]]:
    """The call's metadata as gRPC would see it: the `authorization` header, when there is one."""
    values = request.headers.getall("Authorization", [])
    return [("authorization", value) for value in values]


def _line(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def _png(method: str, reply: Any) -> bytes:
    """A reply's uint8 images as one PNG: an interpolation as one row, anything else as a square-ish grid."""
    images = tensor_to_array(reply.images.tensor, "images")
    cols = len(images) if method == "Interpolate" else max(1, math.ceil(math.sqrt(len(images))))
    return grid_png(np.asarray(images, np.uint8), cols)
