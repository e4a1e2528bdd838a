"""The OpenAPI document: generated from the proto (tools/openapi.py), committed and not stale, served at
/openapi.json, every route of the mapping in it, every reference resolving."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.config import Settings
from service.http.routes import routes
from service.http.server import OPENAPI
from service.inprocess import serving
from tools import openapi


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_the_committed_document_is_what_the_proto_gives() -> None:
    assert openapi.main(["--check"]) == 0, "run python -m tools.openapi"


def test_every_route_is_documented_and_every_reference_resolves() -> None:
    document = json.loads(OPENAPI.read_text())
    documented = {(path, verb.upper()) for path, operations in document["paths"].items() for verb in operations}
    assert documented == {(r.template, r.verb) for r in routes(openapi.SERVICES)}
    schemas = document["components"]["schemas"]
    for ref in set(_refs(document)):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    sample = schemas["vae.v1.SampleRequest"]["properties"]
    assert sample["modelVersion"]["type"] == "string" and sample["n"] == {"type": "integer", "format": "int32"}
    assert schemas["vae.v1.Seed"]["properties"]["value"]["type"] == "string"  # uint64: a JSON string
    assert "draws n images" in document["paths"]["/v1/models/{model}:sample"]["post"]["summary"]  # proto comments


def test_it_is_served(model_repository: Path) -> None:
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, http_port=0, model_repository=model_repository,
                        torch_threads=1)  # fmt: skip
    with serving(settings) as server:
        assert server.running is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{server.running.http_port}/openapi.json", timeout=30) as reply:
            assert json.loads(reply.read()) == json.loads(OPENAPI.read_text())
