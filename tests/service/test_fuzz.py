"""Property-based bad-input suite (issue 7, part 3): Hypothesis over the message fields of every RPC
(tests/service/strategies.py), then any tensor in each tensor field and any PNG list in each PNG field of an
otherwise valid request, then random bytes to every method over a raw channel, all against one real in-process
server (loopback gRPC, the tiny models).

For every example:
- the status is OK, INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED, nothing else (no UNKNOWN, INTERNAL,
  DEADLINE_EXCEEDED: a call gets CALL_TIMEOUT_S, so a stalled server fails the property too);
- INVALID_ARGUMENT carries a google.rpc.BadRequest field violation, and its message starts with that field's
  path, whose first name is a field of the request (or "request" when the bytes do not parse);
- NOT_FOUND only for an unknown model or attribute, and an unknown model is always NOT_FOUND;
- RESOURCE_EXHAUSTED only for a request over the transport's message limit (one call at a time here, so the
  queues never fill, and a reply too large must have been refused up front as INVALID_ARGUMENT);
- an OK reply has the shapes the request implies, only finite numbers, float32 images in [0, 1], uint8
  tensors or PNG files of the model's size and channels, echoes the seed it was given and the model it used,
  and Score's values are finite with KL >= 0 and ELBO = reconstruction - KL; a refused SampleStream sent
  nothing before its status.
After each test's examples: a health Check and a small valid Sample succeed. At the end: the server's own
`vae_requests_total` holds no code outside the allowed set, and the process's resident memory (VmRSS of
/proc/self/status: server, client and Hypothesis together, measured after a warm-up of every RPC and again
after all the examples) grew by less than RSS_GROWTH_LIMIT_MB.

Reproducible: `derandomize=True` (the examples are a function of the test's code, the same on every run and
machine) and `database=None` (nothing written to .hypothesis/). The server runs with small limits, so each
limit +-1 is cheap to hit; `test_limits_plus_minus_one` sends a few exact ones through the same checks.
Bugs found by this suite are pinned as plain `xfail(strict=True)` regression tests at the end of the file, and
the inputs that hit them are kept out of the strategies (`strategies.KNOWN_BUGS`) until they are fixed.
"""

from __future__ import annotations

import io
import math
import re
import threading
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from tests.service import strategies as S
from tests.service.harness import ServerThread, serving
from vae_client.codecs import array_to_tensor
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub

SERVICE = V.DESCRIPTOR.services_by_name["VaeService"]
METHODS = [m.name for m in SERVICE.methods]
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED}  # fmt: skip
CALL_TIMEOUT_S = 30.0
RSS_GROWTH_LIMIT_MB = 300
CLIENT_LIMIT = 64 * 1024 * 1024

# Small limits: every limit +-1 is cheap to reach. max_message_mb=1 puts the reply-size limit (1 MiB - 64 KiB)
# inside the per-field limits: Sample of 400 float32 images, Interpolate of 400 steps, Decode of 400 latents and
# Encode of many posterior samples are refused for their reply size.
LIMITS = dict(max_items=400, max_posterior_samples=2048, max_temperature=10.0, max_interpolation_steps=400,
              max_terms=8, max_weight_abs=1000.0, max_latent_abs=1000.0, max_stream_items=100, stream_chunk=16,
              default_score_samples=10, max_score_samples=50, max_score_rows=120, max_message_mb=1,
              score_chunk_rows=64)  # fmt: skip
EXAMPLES = {"ListModels": 5, "GetModelInfo": 50, "Encode": 140, "Decode": 140, "Reconstruct": 120, "Sample": 100,
            "SampleStream": 90, "Interpolate": 140, "Arithmetic": 140, "Score": 120}  # fmt: skip


def fuzz_settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])  # fmt: skip


def rss_mb() -> float:
    """Resident set size of this process (server, client and Hypothesis share it), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# --- the server, its facts, the channels -----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model_repository: Path) -> Iterator[ServerThread]:
    config = Settings(host="127.0.0.1", port=0, metrics_port=0, model_repository=model_repository, torch_threads=1,
                      max_batch_size=16, max_wait_ms=1, **LIMITS)  # type: ignore[arg-type]  # fmt: skip
    with serving(config) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", CLIENT_LIMIT), ("grpc.max_receive_message_length", CLIENT_LIMIT)]
    with grpc.insecure_channel(server.address, options=options) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> VaeServiceStub:
    return VaeServiceStub(channel)


@pytest.fixture(scope="module")
def facts(server: ServerThread, stub: VaeServiceStub) -> S.Facts:
    models = stub.ListModels(V.ListModelsRequest(), timeout=CALL_TIMEOUT_S)
    info = next(m for m in models.models if m.name == models.default_model)
    assert all(m.latent_dim == info.latent_dim and m.image_shape == info.image_shape for m in models.models)
    c, h, w = info.image_shape
    return S.Facts(tuple(m.name for m in models.models), info.latent_dim, (c, h, w), tuple(info.attribute_names),
                   server.settings)  # fmt: skip


@pytest.fixture(scope="module")
def rss_at_start(server: ServerThread, stub: VaeServiceStub, channel: grpc.Channel, facts: S.Facts) -> float:
    """VmRSS once the server is ready and every RPC has run once (lazy allocations are part of the baseline)."""
    wait_until_serving(channel)
    for request in warm_up_requests(facts):
        outcome = call(stub, request)
        assert outcome.code == grpc.StatusCode.OK, (type(request).__name__, outcome.details)
    return rss_mb()


@pytest.fixture
def run(rss_at_start: float, stub: VaeServiceStub, channel: grpc.Channel, facts: S.Facts) -> Callable[..., None]:
    """run(name, cases, examples, expected): the properties over `examples` drawn (method, request) cases; then
    the server must still serve, and the outcomes must cover `expected` (strategies that only ever produce
    refusals, or only successes, test little)."""

    def fuzz(name: str, cases: st.SearchStrategy, examples: int, expected: set[str]) -> None:
        seen: Counter[str] = Counter()

        @fuzz_settings(examples)
        @given(case=cases)
        def one(case: tuple[str, Message]) -> None:
            method, request = case
            outcome = call(stub, request)
            seen[outcome.code.name] += 1
            check(method, request, outcome, facts)

        one()
        assert_still_serving(stub, channel)
        assert expected <= set(seen), f"{name}: outcomes {dict(seen)}"
        print(f"{name}: {sum(seen.values())} requests: {dict(seen)}")

    return fuzz


# --- calling, and the properties -------------------------------------------------------------------------


class Outcome:
    def __init__(self, code: grpc.StatusCode, details: str, error: Any = None, replies: list | None = None):
        self.code, self.details, self.error, self.replies = code, details, error, replies or []


def call(stub: VaeServiceStub, request: Message) -> Outcome:
    method = type(request).__name__.removesuffix("Request")
    replies: list = []
    try:
        if method == "SampleStream":
            for reply in stub.SampleStream(request, timeout=CALL_TIMEOUT_S):
                replies.append(reply)
        else:
            replies.append(getattr(stub, method)(request, timeout=CALL_TIMEOUT_S))
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "", error, replies)  # type: ignore[attr-defined]
    return Outcome(grpc.StatusCode.OK, "", None, replies)


def check(method: str, request: Message, outcome: Outcome, facts: S.Facts) -> None:
    code, details = outcome.code, outcome.details
    assert code in ALLOWED, f"{method}: {code.name}: {details}"
    model = getattr(request, "model", "")
    unknown_model = bool(model) and model not in facts.models
    too_big = request.ByteSize() > facts.limits.max_message_mb * 2**20
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert too_big, f"{method}: RESOURCE_EXHAUSTED for a {request.ByteSize()}-byte request: {details}"
    elif unknown_model:
        assert code == grpc.StatusCode.NOT_FOUND, f"{method} named unknown model {model!r}: {code.name}: {details}"
    if code == grpc.StatusCode.NOT_FOUND:
        assert unknown_model or "attribute" in details, f"{method}: NOT_FOUND: {details}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        check_bad_request(request, outcome)
    if code != grpc.StatusCode.OK and method == "SampleStream":
        assert not outcome.replies, f"SampleStream sent {len(outcome.replies)} messages, then {code.name}: {details}"
    if code == grpc.StatusCode.OK:
        check_ok(method, request, outcome.replies, facts)


def check_bad_request(request: Message, outcome: Outcome) -> None:
    status = rpc_status.from_call(outcome.error)
    assert status is not None and status.code == code_pb2.INVALID_ARGUMENT, outcome.details
    assert status.message == outcome.details
    bad = error_details_pb2.BadRequest()
    assert status.details and status.details[0].Unpack(bad), f"no BadRequest detail: {outcome.details}"
    field = bad.field_violations[0].field
    assert outcome.details.startswith(f"{field}: "), (field, outcome.details)
    root = re.match(r"[a-z_]+", field)
    assert root is not None and (root.group() in request.DESCRIPTOR.fields_by_name or field == "request"), field


def array(tensor: V.Tensor, dtype: type = np.float32) -> np.ndarray:
    assert tensor.dtype == (V.ELEMENT_TYPE_UINT8 if dtype is np.uint8 else V.ELEMENT_TYPE_FLOAT32)
    values: np.ndarray = np.frombuffer(tensor.data, np.dtype(dtype).newbyteorder("<"))
    assert values.size == math.prod(tensor.shape), list(tensor.shape)
    return values.reshape(tuple(tensor.shape))


def check_latents(tensor: V.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    latents = array(tensor)
    assert latents.shape == shape and np.isfinite(latents).all(), (latents.shape, shape)
    return latents


def check_images(images: V.Images, n: int, output: V.OutputOptions, facts: S.Facts) -> None:
    c, h, w = facts.image_shape
    if output.format == V.IMAGE_FORMAT_PNG:
        files = images.png.images
        assert images.WhichOneof("encoding") == "png" and len(files) == n
        for data in files:
            with Image.open(io.BytesIO(data), formats=("PNG",)) as picture:
                assert picture.size == (w, h) and picture.mode == ("L" if c == 1 else "RGB")
                picture.load()
        return
    assert images.WhichOneof("encoding") == "tensor"
    if output.format == V.IMAGE_FORMAT_UINT8:
        assert array(images.tensor, np.uint8).shape == (n, c, h, w)
        return
    pixels = array(images.tensor)
    assert pixels.shape == (n, c, h, w), pixels.shape
    assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0


def count_images(images: V.Images) -> int:
    if images.WhichOneof("encoding") == "png":
        return len(images.png.images)
    return int(images.tensor.shape[0])


def check_ok(method: str, request: Any, replies: list, facts: S.Facts) -> None:
    d = facts.latent_dim
    model = request.model if hasattr(request, "model") else ""
    if method == "ListModels":
        assert sorted(m.name for m in replies[0].models) == sorted(facts.models)
        return
    if method == "GetModelInfo":
        assert replies[0].info.name == (model or replies[0].info.name) and replies[0].info.latent_dim == d
        return
    for each in replies:  # the model it used (the default is the first by name), the seed it was given
        assert each.model == (model or facts.models[0]) and each.model in facts.models
        if request.HasField("seed"):
            assert each.seed == request.seed.value
    reply: Any = replies[0] if replies else None
    if method == "Encode":
        n, k = count_images(request.images), request.samples_per_image
        check_latents(reply.mean, (n, d))
        check_latents(reply.log_variance, (n, d))
        if k:
            check_latents(reply.samples, (n, k, d))
        else:
            assert not reply.HasField("samples")
    elif method == "Decode":
        n = request.latents.shape[0] if len(request.latents.shape) == 2 else 1
        check_images(reply.images, n, request.output, facts)
    elif method == "Reconstruct":
        n = count_images(request.images)
        check_images(reply.images, n, request.output, facts)
        check_latents(reply.latents, (n, d))
    elif method == "Sample":
        check_images(reply.images, request.n, request.output, facts)
        check_latents(reply.latents, (request.n, d))
    elif method == "SampleStream":
        chunk = request.chunk_size or min(facts.limits.stream_chunk, request.n)
        offset = 0
        for part in replies:
            size = count_images(part.images)
            assert part.offset == offset and 1 <= size <= chunk, (part.offset, offset, size, chunk)
            check_images(part.images, size, request.output, facts)
            check_latents(part.latents, (size, d))
            offset += size
        assert offset == request.n
    elif method == "Interpolate":
        check_images(reply.images, request.steps, request.output, facts)
        check_latents(reply.latents, (request.steps, d))
    elif method == "Arithmetic":
        check_images(reply.images, 1, request.output, facts)
        check_latents(reply.latent, (1, d))
    elif method == "Score":
        n = count_images(request.images)
        k = request.importance_samples or facts.limits.default_score_samples
        assert len(reply.scores) == n and reply.importance_samples == k
        for score in reply.scores:
            values = (score.elbo, score.reconstruction, score.kl, score.log_likelihood)
            assert all(math.isfinite(v) for v in values), values
            assert score.kl >= -1e-9 and score.elbo == pytest.approx(
                score.reconstruction - score.kl, rel=1e-6, abs=1e-6
            )
    else:
        raise AssertionError(method)


def wait_until_serving(channel: grpc.Channel) -> None:
    """Readiness (`vae.v1.VaeService`) turns SERVING once the backend is up: wait for it, with a deadline."""
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=SERVICE.full_name)
    watch = health.Watch(request, timeout=60)
    for reply in watch:
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            watch.cancel()
            return
    raise AssertionError("the server never became ready")


def assert_still_serving(stub: VaeServiceStub, channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE.full_name):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    sample = stub.Sample(V.SampleRequest(n=2, seed=V.Seed(value=1)), timeout=10)
    assert len(sample.latents.shape) == 2 and sample.latents.shape[0] == 2


def warm_up_requests(facts: S.Facts) -> list[Message]:
    c, h, w = facts.image_shape
    image = V.Images(tensor=array_to_tensor(np.full((1, c, h, w), 0.5, np.float32)))
    latent = V.Endpoint(latent=array_to_tensor(np.zeros(facts.latent_dim, np.float32)))
    return [V.ListModelsRequest(), V.GetModelInfoRequest(), V.EncodeRequest(images=image, samples_per_image=2),
            V.DecodeRequest(latents=array_to_tensor(np.zeros((2, facts.latent_dim), np.float32))),
            V.ReconstructRequest(images=image), V.SampleRequest(n=3, output=V.OutputOptions(format=V.IMAGE_FORMAT_PNG)),
            V.SampleStreamRequest(n=3, chunk_size=2), V.ScoreRequest(images=image, importance_samples=3),
            V.InterpolateRequest(start=V.Endpoint(image=image), end=latent, steps=3),
            V.ArithmeticRequest(terms=[V.Term(weight=1.0, value=latent)])]  # fmt: skip


# --- Hypothesis over the message fields of every RPC -------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_every_field_of_every_rpc(run: Callable[..., None], facts: S.Facts, method: str) -> None:
    expected = {"ListModels": {"OK"}, "GetModelInfo": {"OK", "NOT_FOUND"}}.get(
        method, {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}
    )
    run(method, S.requests_for(method, facts).map(lambda request: (method, request)), EXAMPLES[method], expected)


def test_any_tensor_in_every_tensor_field(run: Callable[..., None], facts: S.Facts) -> None:
    """Every tensor field (images and latents, endpoints and terms) of an otherwise valid request, in turn."""
    run("tensor fields", S.one_hostile_tensor(facts), 250, {"OK", "INVALID_ARGUMENT"})


def test_any_png_list_in_every_png_field(run: Callable[..., None], facts: S.Facts) -> None:
    """Every PNG list (images, endpoints and terms) of an otherwise valid request, in turn."""
    run("PNG fields", S.one_hostile_png_list(facts), 200, {"OK", "INVALID_ARGUMENT"})


# --- random bytes to every method ---------------------------------------------------------------------------


def test_random_bytes_to_every_method(
    rss_at_start: float, channel: grpc.Channel, stub: VaeServiceStub, facts: S.Facts
) -> None:
    """Arbitrary bytes, hand-built wire format and mangled real requests, over a raw channel: INVALID_ARGUMENT
    when they do not parse; when they do, exactly the properties of the message they parse as."""
    calls = {m.name: (channel.unary_stream if m.server_streaming else channel.unary_unary)(
        f"/{SERVICE.full_name}/{m.name}") for m in SERVICE.methods}  # fmt: skip
    strategy = st.sampled_from(METHODS).flatmap(lambda m: st.tuples(st.just(m), S.request_bytes(m, facts)))

    @fuzz_settings(500)
    @given(case=strategy)
    def one(case: tuple[str, bytes]) -> None:
        method, data = case
        request_type = getattr(V, SERVICE.methods_by_name[method].input_type.name)
        response_type = getattr(V, SERVICE.methods_by_name[method].output_type.name)
        replies: list = []
        try:
            if method == "SampleStream":
                replies += [response_type.FromString(r) for r in calls[method](data, timeout=CALL_TIMEOUT_S)]
            else:
                replies.append(response_type.FromString(calls[method](data, timeout=CALL_TIMEOUT_S)))
            outcome = Outcome(grpc.StatusCode.OK, "", None, replies)
        except grpc.RpcError as error:
            outcome = Outcome(error.code(), error.details() or "", error, replies)  # type: ignore[attr-defined]
        try:
            request = request_type.FromString(data)
        except DecodeError:
            assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, f"{method}: {outcome.code.name}: {outcome.details}"
            assert outcome.details.startswith(f"request: is not a valid {request_type.DESCRIPTOR.full_name} message")
            check_bad_request(request_type(), outcome)
            return
        check(method, request, outcome, facts)

    one()
    assert_still_serving(stub, channel)


# --- each limit +-1, exactly ----------------------------------------------------------------------------------


def _limit_cases(facts: S.Facts) -> list[tuple[str, Message, grpc.StatusCode]]:
    c, h, w = facts.image_shape
    d = facts.latent_dim
    lim = facts.limits
    ok, invalid, exhausted = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED

    def images(n: int, dtype: type = np.uint8) -> V.Images:
        return V.Images(tensor=array_to_tensor(np.ones((n, c, h, w), dtype)))

    def latents(n: int, value: float = 0.0) -> V.Tensor:
        return array_to_tensor(np.full((n, d), value, np.float32))

    latent = V.Endpoint(latent=latents(1, lim.max_latent_abs))
    per_image = c * h * w * 4 + 4 * d  # a float32 image and its latent in a reply
    reply_limit = lim.max_message_mb * 2**20 - 64 * 1024  # the limit less the headroom service/requests.py keeps
    fits = reply_limit // per_image  # float32 images with their latents
    fits_decode = reply_limit // (per_image - 4 * d)  # Decode's reply has no latents
    png = V.OutputOptions(format=V.IMAGE_FORMAT_PNG)
    return [
        ("items", V.EncodeRequest(images=images(lim.max_items)), ok),
        ("items+1", V.EncodeRequest(images=images(lim.max_items + 1)), invalid),
        ("request over the transport limit", V.EncodeRequest(images=images(lim.max_items, np.float32)), exhausted),
        ("posterior samples", V.EncodeRequest(images=images(1), samples_per_image=lim.max_posterior_samples), ok),
        ("posterior samples+1", V.EncodeRequest(images=images(1), samples_per_image=lim.max_posterior_samples + 1),
         invalid),
        ("posterior samples: reply size", V.EncodeRequest(images=images(50), samples_per_image=lim.max_posterior_samples),
         invalid),
        ("decode: reply fits", V.DecodeRequest(latents=latents(fits_decode)), ok),
        ("decode: reply size", V.DecodeRequest(latents=latents(fits_decode + 1)), invalid),
        ("latent abs", V.DecodeRequest(latents=latents(2, lim.max_latent_abs)), ok),
        ("latent abs+ulp", V.DecodeRequest(latents=latents(2, S.up(lim.max_latent_abs))), invalid),
        ("sample: items as PNG", V.SampleRequest(n=lim.max_items, output=png), ok),
        ("sample: items+1", V.SampleRequest(n=lim.max_items + 1, output=png), invalid),
        ("sample: reply size", V.SampleRequest(n=fits + 1), invalid),
        ("temperature", V.SampleRequest(n=1, temperature=lim.max_temperature), ok),
        ("temperature+ulp", V.SampleRequest(n=1, temperature=S.up(lim.max_temperature)), invalid),
        ("stream items", V.SampleStreamRequest(n=lim.max_stream_items), ok),
        ("stream items+1", V.SampleStreamRequest(n=lim.max_stream_items + 1), invalid),
        ("stream chunk: reply size", V.SampleStreamRequest(n=fits + 1, chunk_size=fits + 1), invalid),
        ("steps: reply fits", V.InterpolateRequest(start=latent, end=latent, steps=fits), ok),
        ("steps: reply size", V.InterpolateRequest(start=latent, end=latent, steps=fits + 1), invalid),
        ("steps+1", V.InterpolateRequest(start=latent, end=latent, steps=lim.max_interpolation_steps + 1), invalid),
        ("terms at every bound", V.ArithmeticRequest(terms=[V.Term(weight=lim.max_weight_abs, value=latent)]
                                                     * lim.max_terms), ok),
        ("terms+1", V.ArithmeticRequest(terms=[V.Term(weight=1.0, value=latent)] * (lim.max_terms + 1)), invalid),
        ("weight+ulp", V.ArithmeticRequest(terms=[V.Term(weight=S.up(lim.max_weight_abs), value=latent)]), invalid),
        ("score samples", V.ScoreRequest(images=images(1), importance_samples=lim.max_score_samples), ok),
        ("score samples+1", V.ScoreRequest(images=images(1), importance_samples=lim.max_score_samples + 1), invalid),
        ("score rows", V.ScoreRequest(images=images(lim.max_score_rows // 10), importance_samples=10), ok),
        ("score rows+1", V.ScoreRequest(images=images(lim.max_score_rows // 10 + 1), importance_samples=10), invalid),
    ]  # fmt: skip


def test_limits_plus_minus_one(rss_at_start: float, stub: VaeServiceStub, channel: grpc.Channel,
                               facts: S.Facts) -> None:  # fmt: skip
    for name, request, expected in _limit_cases(facts):
        method = type(request).__name__.removesuffix("Request")
        outcome = call(stub, request)
        assert outcome.code == expected, f"{name}: {outcome.code.name}: {outcome.details}"
        check(method, request, outcome, facts)
    assert_still_serving(stub, channel)


# --- after everything -----------------------------------------------------------------------------------------


def test_the_server_counted_no_status_outside_the_allowed_set(server: ServerThread) -> None:
    assert server.running is not None
    url = f"http://127.0.0.1:{server.running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    codes = {(s.labels["method"], s.labels["code"]) for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == "vae_requests_total" and s.value > 0}  # fmt: skip
    assert codes, "no requests counted"
    assert {code for _, code in codes} <= {c.name for c in ALLOWED}, sorted(codes)


def test_memory_stayed_bounded(rss_at_start: float) -> None:
    """Runs last (file order): the growth of VmRSS from after the warm-up to after every example above."""
    growth = rss_mb() - rss_at_start
    print(f"VmRSS: {rss_at_start:.0f} MB after the warm-up, grew by {growth:.0f} MB over the fuzz run")
    assert growth < RSS_GROWTH_LIMIT_MB, f"VmRSS grew by {growth:.0f} MB over the fuzz run"


# --- regression tests for bugs this suite found (fixed: an empty tensor with overflowing dimensions, long client
# text echoed past gRPC's metadata limit, PNG ancillary chunks inflated while reading the header). A new bug found
# here is pinned as `xfail(strict=True)` and its inputs kept out of the strategies (strategies.KNOWN_BUGS). -------


@pytest.fixture(scope="module")
def bug_stub(model_repository: Path) -> Iterator[tuple[VaeServiceStub, grpc.Channel]]:
    """A server of its own, so that the statuses these provoke stay out of the suite's request counters."""
    config = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=model_repository, torch_threads=1,
                      max_batch_size=16, max_wait_ms=1, **LIMITS)  # type: ignore[arg-type]  # fmt: skip
    options = [("grpc.max_send_message_length", CLIENT_LIMIT), ("grpc.max_receive_message_length", CLIENT_LIMIT)]
    with serving(config) as running, grpc.insecure_channel(running.address, options=options) as ch:
        wait_until_serving(ch)
        yield VaeServiceStub(ch), ch


def _empty_tensor(shape: list[int]) -> V.Tensor:
    return V.Tensor(shape=shape, dtype=V.ELEMENT_TYPE_FLOAT32, data=b"")


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("Decode", V.DecodeRequest(latents=_empty_tensor([0, 2**31, 2**31])), "latents"),
        ("Decode", V.DecodeRequest(latents=_empty_tensor([2**63 - 1, 0])), "latents"),
        ("Encode", V.EncodeRequest(images=V.Images(tensor=_empty_tensor([2**62, 2**62, 0]))), "images.tensor"),
    ],
)
def test_an_empty_tensor_with_a_huge_dimension_is_invalid_not_internal(
    bug_stub: tuple[VaeServiceStub, grpc.Channel], method: str, request_: Message, field: str
) -> None:
    outcome = call(bug_stub[0], request_)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, f"{outcome.code.name}: {outcome.details}"
    assert outcome.details.startswith(field)


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (V.GetModelInfoRequest(model="x" * 20_000), grpc.StatusCode.NOT_FOUND),
        (V.EncodeRequest(model="\u00e9" * 8_000), grpc.StatusCode.NOT_FOUND),
        (
            V.ArithmeticRequest(terms=[V.Term(weight=1.0, value=V.Endpoint(attribute="a" * 20_000))]),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            V.DecodeRequest(latents=V.Tensor(shape=[2**63 - 1] * 1000, dtype=V.ELEMENT_TYPE_FLOAT32)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
def test_a_long_model_name_or_shape_is_echoed_past_the_metadata_limit(
    bug_stub: tuple[VaeServiceStub, grpc.Channel], request_: Message, code: grpc.StatusCode
) -> None:
    outcome = call(bug_stub[0], request_)
    assert outcome.code == code, f"{outcome.code.name}: {outcome.details[:200]}"


def _png_with_iccp_chunks(count: int) -> bytes:
    """A valid 28x28 PNG carrying `count` iCCP chunks, each 1 KB that inflates to 1 MB (Pillow inflates every
    one while reading the header, before the size check; nothing caps their total)."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format="PNG")
    png = buffer.getvalue()
    iccp = S.chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(bytes(1_000_000), 9))
    return png[:33] + iccp * count + png[33:]  # after the signature and IHDR


def test_png_ancillary_chunks_cannot_stall_the_event_loop(bug_stub: tuple[VaeServiceStub, grpc.Channel]) -> None:
    stub, channel = bug_stub
    request = V.EncodeRequest(images=V.Images(png=V.PngImages(images=[_png_with_iccp_chunks(80)] * 11)))
    assert request.ByteSize() < LIMITS["max_message_mb"] * 2**20  # type: ignore[operator]
    health = health_pb2_grpc.HealthStub(channel)
    worst, done = [0.0], threading.Event()

    def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            worst[0] = max(worst[0], time.perf_counter() - started)
            done.wait(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        outcome = call(stub, request)
    finally:
        done.set()
        prober.join()
    assert outcome.code in ALLOWED, outcome.details
    # The bound is 100 ms (p99) for health while any request runs; 500 ms here is generous.
    assert worst[0] < 0.5, f"a health check waited {worst[0]:.2f} s while the PNGs were read"
