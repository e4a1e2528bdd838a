"""The OpenAPI document of the HTTP/JSON API, generated from the proto: the paths of the `google.api.http` mapping
(service/http/routes.py, the table the server itself serves), the messages as JSON schemas by the proto3 JSON
mapping (lowerCamelCase names, 64-bit integers as strings, bytes as base64, enums by name), and the proto's own
comments as descriptions. Committed at service/http/openapi.json and served at /openapi.json.

    python -m tools.openapi            write it
    python -m tools.openapi --check    exit 1 if the committed one is stale (a test runs this)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from service.http.routes import Route, routes
from service.http.server import IMAGE_METHODS, OPENAPI
from vae_client.proto_gen.vae.v1 import admin_pb2, vae_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
SERVICES = (
    vae_pb2.DESCRIPTOR.services_by_name["VaeService"],
    admin_pb2.DESCRIPTOR.services_by_name["ModelAdminService"],
)
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "uint32"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}


def comments() -> dict[str, str]:
    """Each element's leading comment, by full name (`vae.v1.SampleRequest`, `vae.v1.SampleRequest.n`,
    `vae.v1.VaeService.Sample`), read from the proto sources by protoc with source info."""
    from grpc_tools import protoc

    include = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        files = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "vae").rglob("*.proto"))
        if protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", "--include_source_info",
                        f"--descriptor_set_out={out}", *files]) != 0:  # fmt: skip
            raise SystemExit("protoc failed")
        descriptors = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    found: dict[str, str] = {}
    for file in descriptors.file:
        for location in file.source_code_info.location:
            text = " ".join(line.strip() for line in location.leading_comments.strip().splitlines())
            name = _name_at(file, list(location.path))
            if text and name:
                found[name] = text
    return found


def _name_at(file: descriptor_pb2.FileDescriptorProto, path: list[int]) -> str | None:
    """The full name a source-info path points at (messages 4, their fields 2, services 6, their methods 2)."""
    package = file.package
    if len(path) >= 2 and path[0] == 4:
        message = file.message_type[path[1]]
        if len(path) == 2:
            return f"{package}.{message.name}"
        if len(path) == 4 and path[2] == 2:
            return f"{package}.{message.name}.{message.field[path[3]].name}"
    if len(path) >= 2 and path[0] == 6:
        service = file.service[path[1]]
        if len(path) == 2:
            return f"{package}.{service.name}"
        if len(path) == 4 and path[2] == 2:
            return f"{package}.{service.name}.{service.method[path[3]].name}"
    if len(path) == 2 and path[0] == 5:
        return f"{package}.{file.enum_type[path[1]].name}"
    return None


def _ref(full_name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{full_name}"}


def _field_schema(field: FieldDescriptor, notes: dict[str, str]) -> dict[str, Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        schema: dict[str, Any] = {"type": "object", "additionalProperties": _single(value)}
    elif field.is_repeated:
        schema = {"type": "array", "items": _single(field)}
    else:
        schema = _single(field)
    note = notes.get(field.full_name)
    return {**schema, "description": note} if note else schema


def _single(field: FieldDescriptor) -> dict[str, Any]:
    if field.message_type is not None:
        return _ref(field.message_type.full_name)
    if field.enum_type is not None:
        return _ref(field.enum_type.full_name)
    return dict(_SCALARS[field.type])


def _collect(message: Descriptor, seen: dict[str, Descriptor | EnumDescriptor]) -> None:
    if message.full_name in seen or message.GetOptions().map_entry:
        return
    seen[message.full_name] = message
    for field in message.fields:
        if field.enum_type is not None:
            seen[field.enum_type.full_name] = field.enum_type
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                _collect_map_value(field.message_type, seen)
            else:
                _collect(field.message_type, seen)


def _collect_map_value(entry: Descriptor, seen: dict[str, Descriptor | EnumDescriptor]) -> None:
    value = entry.fields_by_name["value"]
    if value.message_type is not None:
        _collect(value.message_type, seen)


def schemas(notes: dict[str, str]) -> dict[str, Any]:
    from google.rpc import status_pb2

    seen: dict[str, Descriptor | EnumDescriptor] = {}
    for service in SERVICES:
        for method in service.methods:
            _collect(method.input_type, seen)
            _collect(method.output_type, seen)
    _collect(status_pb2.Status.DESCRIPTOR, seen)
    out: dict[str, Any] = {}
    for name, item in sorted(seen.items()):
        if isinstance(item, EnumDescriptor):
            out[name] = {"type": "string", "enum": [v.name for v in item.values]}
        elif name == "google.protobuf.Any":
            out[name] = {"type": "object", "properties": {"@type": {"type": "string"}}, "additionalProperties": True}
        else:
            out[name] = {"type": "object", "properties": {f.json_name: _field_schema(f, notes) for f in item.fields}}
        if notes.get(name):
            out[name]["description"] = notes[name]
    return out


def _operation(route: Route, index: int, notes: dict[str, str]) -> dict[str, Any]:
    service = next(s for s in SERVICES if s.full_name == route.service)
    method = service.methods_by_name[route.method]
    parameters = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in route.params]
    if route.body != "*":
        parameters += [{"name": f.name, "in": "query", "schema": _single(f)} for f in method.input_type.fields
                       if f.name not in route.params and not f.is_repeated and f.message_type is None]  # fmt: skip
    reply = _ref(method.output_type.full_name)
    content: dict[str, Any] = {"application/json": {"schema": reply}}
    if route.streaming:
        line = {"type": "object", "properties": {"result": reply, "error": _ref("google.rpc.Status")}}
        content = {"application/x-ndjson": {"schema": line}}
    elif route.method in IMAGE_METHODS:
        content["image/png"] = {"schema": {"type": "string", "format": "binary"}}  # with Accept: image/png
    operation: dict[str, Any] = {
        "operationId": f"{service.name}_{route.method}" + (f"_{index}" if index else ""),
        "tags": [service.name],
        "summary": notes.get(method.full_name, route.method),
        "parameters": parameters,
        "responses": {
            "200": {"description": "the reply", "content": content},
            "default": {"description": "an error: the HTTP status of its gRPC code, a google.rpc.Status body",
                        "content": {"application/json": {"schema": _ref("google.rpc.Status")}}},
        },
    }  # fmt: skip
    if route.body == "*":
        schema = _ref(method.input_type.full_name)
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": schema}}}
    return operation


def document() -> dict[str, Any]:
    notes = comments()
    paths: dict[str, dict[str, Any]] = {}
    counts: dict[tuple[str, str], int] = {}
    for route in routes(SERVICES):
        key = (route.service, route.method)
        index = counts.get(key, 0)
        counts[key] = index + 1
        paths.setdefault(route.template, {})[route.verb.lower()] = _operation(route, index, notes)
    return {
        "openapi": "3.1.0",
        "info": {"title": "VAE serving (vae.v1)", "version": "v1",
                 "description": "The HTTP/JSON mapping of the vae.v1 gRPC API (proto/vae/v1), by tools/openapi.py."},
        "servers": [{"url": "/"}],
        "security": [{}, {"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": schemas(notes),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }  # fmt: skip


def render() -> str:
    return json.dumps(document(), indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.openapi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed document is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OPENAPI.is_file() or OPENAPI.read_text() != text:
            print(f"{OPENAPI.relative_to(ROOT)} is stale: run python -m tools.openapi", file=sys.stderr)
            return 1
        print("the OpenAPI document is up to date")
        return 0
    OPENAPI.write_text(text)
    print(OPENAPI.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
