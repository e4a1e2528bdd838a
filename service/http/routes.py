"""The HTTP mapping of vae.v1, read from the `google.api.http` annotations of the proto descriptors.

The same annotations drive Envoy's gRPC-JSON transcoder or grpc-gateway in front of any replica; this table is what
the service serves itself (service/http/server.py) and what the OpenAPI document describes (tools/openapi.py).
Templates use single-segment variables only (`{model}`), as vae.proto does; a variable matches one path segment,
which never holds `/` or `:`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

VERBS = ("get", "put", "post", "delete", "patch")
_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


@dataclass(frozen=True)
class Route:
    service: str  # full name: vae.v1.VaeService
    method: str  # Sample
    verb: str  # GET, POST
    template: str  # /v1/models/{model}:sample
    body: str  # "*": the whole request is the JSON body; "": none (GET: query parameters)
    params: tuple[str, ...]  # the template's variables, in order
    pattern: re.Pattern[str]
    streaming: bool

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.fullmatch(path)
        return None if found is None else found.groupdict()


def _rules(rule: http_pb2.HttpRule) -> Iterator[tuple[str, str, str]]:
    pattern = rule.WhichOneof("pattern")
    if pattern in VERBS:
        yield pattern.upper(), getattr(rule, pattern), rule.body
    for extra in rule.additional_bindings:
        yield from _rules(extra)


def compile_template(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """`/v1/models/{model}:sample` -> a regex with one named group per variable, and the variables."""
    parts, params, last = [], [], 0
    for found in _VARIABLE.finditer(template):
        parts.append(re.escape(template[last : found.start()]))
        parts.append(f"(?P<{found.group(1)}>[^/:]+)")
        params.append(found.group(1))
        last = found.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts)), tuple(params)


def method_routes(service: ServiceDescriptor, method: MethodDescriptor) -> list[Route]:
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    routes = []
    for verb, template, body in _rules(rule):
        pattern, params = compile_template(template)
        routes.append(Route(service.full_name, method.name, verb, template, body, params, pattern,
                            method.server_streaming))  # fmt: skip
    return routes


def routes(services: Iterable[ServiceDescriptor]) -> list[Route]:
    """Every route of every method of `services` (a method without an annotation has none)."""
    return [route for service in services for method in service.methods for route in method_routes(service, method)]


def find(table: Iterable[Route], verb: str, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
    """(the route, its path variables, []) for a request; (None, {}, the verbs this path takes) when none matches
    the verb (an empty list: no such path)."""
    allowed = []
    for route in table:
        params = route.match(path)
        if params is None:
            continue
        if route.verb == verb:
            return route, params, []
        allowed.append(route.verb)
    return None, {}, sorted(set(allowed))
