"""The HTTP/JSON front over real HTTP with a plain HTTP client (urllib): every RPC by its google.api.http mapping,
proto3 JSON bodies (as buf curl sends them), the same numbers as gRPC, errors the google.rpc way (status, and a
google.rpc.Status body with field violations), bearer tokens, PNG replies, NDJSON streaming, deadlines, metrics
counted once, the admin service with its own token, and TLS."""

from __future__ import annotations

import base64
import io
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from PIL import Image

from service.config import Settings
from service.http.transcode import HTTP_STATUS
from service.inprocess import ServerThread, serving, stub_for
from tests import pki
from tests.service.versions import ADMIN_TOKEN, copy_repository
from vae_client.proto_gen.vae.v1 import vae_pb2 as V

TOKEN = "caller-token-for-http-tests"


@pytest.fixture(scope="module")
def server(versioned_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("http")
    (tmp / "tokens").write_text(f"{TOKEN}\n")
    (tmp / "admin").write_text(f"{ADMIN_TOKEN}\n")
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, http_port=0, torch_threads=1, max_batch_size=16,
                        model_repository=copy_repository(versioned_repository, tmp / "repo"),
                        auth_token_file=str(tmp / "tokens"), admin_token_file=str(tmp / "admin"))  # fmt: skip
    with serving(settings) as running:
        yield running


@pytest.fixture(scope="module")
def base(server: ServerThread) -> str:
    assert server.running is not None and server.running.http_port
    return f"http://127.0.0.1:{server.running.http_port}"


def call(url: str, body: Any = None, token: str | None = TOKEN, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; a JSON body makes it a POST."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _floats(tensor: dict[str, Any]) -> np.ndarray:
    """A Tensor in proto3 JSON (shape as strings, data as base64) as a numpy array."""
    shape = [int(d) for d in tensor["shape"]]
    return np.frombuffer(base64.b64decode(tensor["data"]), "<f4").reshape(shape)


def test_every_rpc_has_a_route(server: ServerThread) -> None:
    from service.http.routes import routes
    from vae_client.proto_gen.vae.v1 import admin_pb2, vae_pb2

    table = routes([vae_pb2.DESCRIPTOR.services_by_name["VaeService"],
                    admin_pb2.DESCRIPTOR.services_by_name["ModelAdminService"]])  # fmt: skip
    methods = {m.name for s in ("VaeService",) for m in vae_pb2.DESCRIPTOR.services_by_name[s].methods}
    methods |= {m.name for m in admin_pb2.DESCRIPTOR.services_by_name["ModelAdminService"].methods}
    assert {r.method for r in table} == methods


def test_list_and_info(base: str) -> None:
    status, headers, body = call(f"{base}/v1/models")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    document = json.loads(body)
    assert document["defaultModel"] == "tiny" and document["models"][0]["name"] == "tiny"
    status, _, body = call(f"{base}/v1/models/tiny?model_version=3")
    info = json.loads(body)["info"]
    assert status == 200 and info["version"] == "3" and info["latentSpace"].startswith("ls1-")
    assert [v["state"] for v in info["versions"]] == ["VERSION_STATE_READY"] * 3


def test_sample_over_http_equals_sample_over_grpc(server: ServerThread, base: str) -> None:
    status, _, body = call(f"{base}/v1/models/tiny:sample", {"n": 4, "seed": {"value": "7"}})
    assert status == 200
    reply = json.loads(body)
    with stub_for(server) as stub:
        grpc_reply = stub.Sample(V.SampleRequest(model="tiny", n=4, seed=V.Seed(value=7)),
                                 metadata=(("authorization", f"Bearer {TOKEN}"),))  # fmt: skip
    expected = np.frombuffer(grpc_reply.images.tensor.data, "<f4").reshape(4, 1, 28, 28)
    np.testing.assert_array_equal(_floats(reply["images"]["tensor"]), expected)
    assert reply["seed"] == "7" and reply["modelVersion"] == "1" and reply["latentSpace"] == grpc_reply.latent_space
    # the default model's route, and snake_case field names (proto3 JSON accepts both)
    status, _, body = call(f"{base}/v1:sample", {"n": 4, "seed": {"value": "7"}, "model_version": "1"})
    assert status == 200 and json.loads(body)["images"] == reply["images"]


def test_latents_round_trip_with_their_stamp(base: str) -> None:
    _, _, body = call(f"{base}/v1/models/tiny:sample", {"n": 2, "seed": {"value": "1"}, "modelVersion": "3"})
    sampled = json.loads(body)
    decode = {"latents": sampled["latents"], "latentSpace": sampled["latentSpace"]}
    status, _, body = call(f"{base}/v1/models/tiny:decode", decode)  # routed to version 1: another space
    error = json.loads(body)
    assert status == 400 and error["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "versions that accept it: 3" in error["message"]
    status, _, body = call(f"{base}/v1/models/tiny:decode", {**decode, "modelVersion": "3"})
    assert status == 200 and json.loads(body)["modelVersion"] == "3"


def test_errors_map_the_google_rpc_way(base: str) -> None:
    status, _, body = call(f"{base}/v1/models/tiny:sample", {"n": 0})
    error = json.loads(body)
    assert status == 400 and error["code"] == 3 and "n: must be between 1" in error["message"]
    (detail,) = error["details"]
    assert detail["@type"].endswith("google.rpc.BadRequest") and detail["fieldViolations"][0]["field"] == "n"
    assert call(f"{base}/v1/models/nope:sample", {"n": 1})[0] == 404
    assert call(f"{base}/v1/models/tiny:sample", b"{not json")[0] == 400
    assert call(f"{base}/v1/models/tiny:sample", {"n": 1, "bogus": 1})[0] == 400
    status, headers, _ = call(f"{base}/v1/models/tiny:sample")  # a GET
    assert status == 405 and headers["Allow"] == "POST"
    assert call(f"{base}/v1/nothing")[0] == 404
    assert call(f"{base}/v1/models/tiny:score", {"images": {}}, grpc_timeout="1m")[0] == 400
    assert HTTP_STATUS[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429 and HTTP_STATUS[grpc.StatusCode.UNAVAILABLE] == 503


def test_tokens_are_required_and_counted(server: ServerThread, base: str) -> None:
    assert server.running is not None
    refused = server.running.metrics.requests.labels("ListModels", "UNAUTHENTICATED")
    before = refused._value.get()
    status, _, body = call(f"{base}/v1/models", token=None)
    assert status == 401 and "bearer token" in json.loads(body)["message"]
    assert call(f"{base}/v1/models", token="wrong")[0] == 401
    assert refused._value.get() == before + 2
    assert call(f"{base}/v1/admin/models")[0] == 401  # a caller's token is not an admin's
    status, _, body = call(f"{base}/v1/admin/models", token=ADMIN_TOKEN)
    assert status == 200 and json.loads(body)["models"][0]["name"] == "tiny"
    status, _, body = call(f"{base}/v1/admin/models/tiny/versions/2:setDefault", {}, token=ADMIN_TOKEN)
    assert status == 200 and json.loads(body)["info"]["defaultVersion"] == "2"
    assert call(f"{base}/v1/admin/models/tiny:rollback", {}, token=ADMIN_TOKEN)[0] == 200


def test_each_http_call_is_counted_once(server: ServerThread, base: str) -> None:
    assert server.running is not None
    metrics = server.running.metrics
    ok, http_ok = metrics.requests.labels("Sample", "OK"), metrics.http_responses.labels("Sample", "200")
    bad = metrics.http_responses.labels("Sample", "400")
    before = (ok._value.get(), http_ok._value.get(), bad._value.get())
    call(f"{base}/v1:sample", {"n": 1})
    call(f"{base}/v1:sample", {"n": -1})
    assert (ok._value.get(), http_ok._value.get(), bad._value.get()) == (before[0] + 1, before[1] + 1, before[2] + 1)


def test_png_replies(base: str) -> None:
    status, headers, body = call(f"{base}/v1/models/tiny:sample", {"n": 4, "seed": {"value": "2"}}, Accept="image/png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(body)) as grid:
        assert grid.size == (2 * 29 + 1, 2 * 29 + 1) and grid.mode == "L"
    status, _, body = call(f"{base}/v1/models/tiny:interpolate", Accept="image/png", body={
        "steps": 5, "start": {"latent": _tensor([0.0] * 4)}, "end": {"latent": _tensor([1.0] * 4)}})  # fmt: skip
    with Image.open(io.BytesIO(body)) as row:
        assert status == 200 and row.size == (5 * 29 + 1, 29 + 1)
    _, headers, body = call(f"{base}/v1/models/tiny:sample", {"n": 1}, Accept="image/png")
    with Image.open(io.BytesIO(body)) as one:
        assert one.size == (28, 28)  # one picture: the picture itself


def _tensor(values: list[float]) -> dict[str, Any]:
    data = np.asarray(values, "<f4")
    return {"shape": [str(len(values))], "dtype": "ELEMENT_TYPE_FLOAT32", "data": base64.b64encode(data).decode()}


def test_sample_stream_is_newline_delimited_json(base: str) -> None:
    status, headers, body = call(
        f"{base}/v1/models/tiny:sampleStream", {"n": 10, "chunkSize": 4, "seed": {"value": "3"}}
    )
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in body.splitlines()]
    assert [line["result"].get("offset", "0") for line in lines] == ["0", "4", "8"]
    assert sum(len(_floats(line["result"]["images"]["tensor"])) for line in lines) == 10


def test_a_deadline_in_grpc_timeout_is_honoured(base: str) -> None:
    images = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    score = {"images": {"tensor": {"shape": ["64", "1", "28", "28"], "dtype": "ELEMENT_TYPE_FLOAT32",
                                   "data": base64.b64encode(images.astype("<f4")).decode()}},
             "importanceSamples": 1000}  # fmt: skip
    status, _, body = call(f"{base}/v1/models/tiny:score", score, grpc_timeout="20m")
    assert status == 504 and json.loads(body)["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert call(f"{base}/v1/models", grpc_timeout="soon")[0] == 400


def test_https_with_the_grpc_ports_certificate(versioned_repository: Path, tmp_path: Path) -> None:
    ca_key = pki.new_key()
    ca = pki.certificate("test CA", ca_key)
    key = pki.new_key()
    cert = pki.certificate("server", key, (ca, ca_key), ExtendedKeyUsageOID.SERVER_AUTH, pki.LOOPBACK)
    ca_file, cert_file = pki.write(tmp_path, "ca", ca), pki.write(tmp_path, "server", cert, key)
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, http_port=0, torch_threads=1,
                        model_repository=copy_repository(versioned_repository, tmp_path / "repo"),
                        tls_cert_file=str(cert_file), tls_key_file=str(tmp_path / "server.key"))  # fmt: skip
    with serving(settings) as running:
        assert running.running is not None
        url = f"https://127.0.0.1:{running.running.http_port}/v1/models"
        context = ssl.create_default_context(cafile=str(ca_file))
        with urllib.request.urlopen(url, context=context, timeout=30) as reply:
            assert reply.status == 200 and json.loads(reply.read())["defaultModel"] == "tiny"
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext is refused
            urllib.request.urlopen(url.replace("https", "http"), timeout=10)
