"""HTTP <-> proto, by the proto3 JSON mapping (so a body `buf curl` accepts is accepted here), and statuses the
google.rpc way: the HTTP status of each gRPC code, and a google.rpc.Status body with its details (INVALID_ARGUMENT's
field violations) for every error."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2  # noqa: F401 (error_details: the Any types in details)

from service.api import Unparseable
from service.http.routes import Route
from vae_client.codecs import encode_png

# google/rpc/code.proto's HTTP mapping (what grpc-gateway and Envoy's transcoder use)
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])")
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def timeout_s(header: str | None) -> float | None:
    """A `grpc-timeout` header (what Envoy and grpc-gateway forward: `10S`, `250m`) in seconds; None without one."""
    if not header:
        return None
    found = _TIMEOUT.fullmatch(header.strip())
    if found is None:
        raise ValueError(f"grpc-timeout must be digits and a unit (H, M, S, m, u, n), got {header[:32]!r}")
    return int(found.group(1)) * _UNITS[found.group(2)]


def _set_field(message: Message, name: str, text: str) -> None:
    """A path or query parameter into a scalar field of `message` (proto3 JSON rules for its type)."""
    field = message.DESCRIPTOR.fields_by_name.get(name)
    if field is None or field.is_repeated or field.message_type is not None:
        raise ValueError(f"{name!r} is not a parameter of {message.DESCRIPTOR.name}")
    json_format.ParseDict({field.json_name: text}, message, ignore_unknown_fields=False)


def request_message(
    route: Route, request_type: type[Message], params: Mapping[str, str], query: Mapping[str, str], body: bytes
) -> Message | Unparseable:
    """The request of one HTTP call: the JSON body (when the route takes one), then the query parameters and the
    path variables; anything that does not parse becomes `Unparseable` (INVALID_ARGUMENT, counted like any)."""
    message = request_type()
    try:
        if route.body == "*" and body.strip():
            document = json.loads(body)
            if not isinstance(document, dict):
                raise ValueError("the body must be a JSON object")
            json_format.ParseDict(document, message, ignore_unknown_fields=False)
        elif body.strip():
            raise ValueError(f"{route.verb} {route.template} takes no body")
        for name, value in query.items():
            _set_field(message, name, value)
        for name, value in params.items():
            _set_field(message, name, value)
    except (ValueError, json_format.ParseError, UnicodeDecodeError) as exc:
        return Unparseable(request_type.DESCRIPTOR.full_name, str(exc)[:512])
    return message


def reply_json(message: Message) -> dict[str, Any]:
    """proto3 JSON (lowerCamelCase names, bytes as base64, int64 as strings, enums by name)."""
    return json_format.MessageToDict(message)


def error_json(code: grpc.StatusCode, message: str, details: bytes = b"") -> dict[str, Any]:
    """A google.rpc.Status as JSON: {"code": 3, "message": ..., "details": [...]} (details when the call had them)."""
    status = status_pb2.Status(code=getattr(code_pb2, code.name, code_pb2.UNKNOWN), message=message)
    if details:
        rich = status_pb2.Status.FromString(details)
        status.details.extend(rich.details)
    return json_format.MessageToDict(status)


def grid_png(images: np.ndarray, cols: int) -> bytes:
    """uint8 images [N, C, H, W] as one PNG: the image itself for one, else a grid of `cols` columns with one
    pixel of padding (a sample grid, an interpolation row)."""
    n, c, h, w = images.shape
    if n == 1:
        return encode_png(images[0])
    rows = math.ceil(n / cols)
    canvas = np.zeros((c, rows * (h + 1) + 1, cols * (w + 1) + 1), np.uint8)
    for i, image in enumerate(images):
        y, x = divmod(i, cols)
        canvas[:, 1 + y * (h + 1) : 1 + y * (h + 1) + h, 1 + x * (w + 1) : 1 + x * (w + 1) + w] = image
    return encode_png(canvas)
