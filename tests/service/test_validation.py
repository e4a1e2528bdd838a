"""Hostile and buggy inputs, over real gRPC: each is refused with INVALID_ARGUMENT naming the field and the limit
(with a google.rpc.BadRequest field violation attached), before any backend work, and is counted once; what is
accepted (every PNG mode) means what it says; no reply ever carries a non-finite number."""

from __future__ import annotations

import io
import struct
import time
import urllib.request
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from tests.datasets import stroke_images
from tests.service.harness import ServerThread, serving, stub_for
from vae_client.client import describe_error
from vae_client.codecs import array_to_tensor, tensor_to_array
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub


@pytest.fixture(scope="module")
def server(model_repository: Path) -> Iterator[ServerThread]:
    settings = Settings(host="127.0.0.1", port=0, metrics_port=0, model_repository=model_repository,
                        max_batch_size=16, torch_threads=1, max_message_mb=4)  # fmt: skip
    with serving(settings) as running:
        yield running


def _metrics(server: ServerThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert server.running is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{server.running.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text)
            for s in f.samples}  # fmt: skip


def _count(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)  # type: ignore[no-any-return]


def _refused(call, request, field: str, message: str) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert error.value.details().startswith(field), error.value.details()
    assert message in error.value.details(), error.value.details()
    status = rpc_status.from_call(error.value)
    assert status is not None
    violation = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(violation) and violation.field_violations[0].field == field
    return error.value


def _images(n: int) -> np.ndarray:
    return stroke_images(n, 0)[0][:, None].astype(np.float32)


def _png(pixels: np.ndarray, mode: str) -> bytes:
    picture = Image.fromarray(pixels)  # Pillow infers L, LA, RGB, RGBA or I;16 from the array's shape and dtype
    assert picture.mode == mode, picture.mode
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header (IHDR, CRC fixed) claims width x height pixels."""
    data = bytearray(_png(np.zeros((1, 1), np.uint8), "L"))
    ihdr = 8 + 8  # signature, then the chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


# --- tensors and PNGs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "field"),
    [
        ([2**62, 2**62, 1, 1], "images.tensor.data"),  # element count overflows 64 bits
        ([2**63 - 1, 2, 1, 1], "images.tensor.data"),  # byte count overflows 64 bits
        ([1, 1, 28, 28, 1, 1, 1, 1, 1], "images.tensor.shape"),
        ([-1, 1, 28, 28], "images.tensor.shape"),
    ],
)
def test_tensor_shapes_that_overflow_or_lie_are_invalid(stub: VaeServiceStub, shape: list[int], field: str) -> None:
    tensor = V.Tensor(shape=shape, dtype=V.ELEMENT_TYPE_FLOAT32, data=b"\0" * 3136)
    _refused(stub.Encode, V.EncodeRequest(images=V.Images(tensor=tensor)), field, "")


@pytest.mark.parametrize("size", [(100_000, 100_000), (13_000, 13_000)])  # above / just below Pillow's bomb limit
def test_a_png_claiming_huge_dimensions_is_refused_from_its_header(stub: VaeServiceStub, size: tuple[int, int]) -> None:
    request = V.EncodeRequest(images=V.Images(png=V.PngImages(images=[_png_claiming(*size)])))
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # the server (same process) never asks Pillow
        _refused(stub.Encode, request, "images.png.images[0]", f"is {size[0]}x{size[1]}; the model takes 28x28")
    assert time.perf_counter() - started < 5  # refused from the header, not after decoding 169 M pixels


def _eight_bit_twins(gray: np.ndarray) -> dict[str, bytes]:
    """The same picture in every accepted PNG mode (alpha opaque or not: it is ignored)."""
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    alpha = np.full_like(gray, 77)
    palette = Image.fromarray(gray, mode="L").convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    return {
        "L": _png(gray, "L"),
        "I;16": _png(gray.astype(np.uint16) * 257, "I;16"),
        "LA": _png(np.stack([gray, alpha], -1), "LA"),
        "RGB": _png(rgb, "RGB"),
        "RGBA": _png(np.concatenate([rgb, alpha[..., None]], -1), "RGBA"),
        "P": buffer.getvalue(),
    }


def test_every_png_mode_reads_like_its_8_bit_twin(stub: VaeServiceStub) -> None:
    gray = (np.linspace(0, 255, 28 * 28).reshape(28, 28)).astype(np.uint8)
    twins = _eight_bit_twins(gray)
    for mode, data in twins.items():
        assert Image.open(io.BytesIO(data)).mode == mode
    request = V.EncodeRequest(model="tiny", images=V.Images(png=V.PngImages(images=list(twins.values()))))
    means = tensor_to_array(stub.Encode(request).mean, "mean")
    expected = tensor_to_array(
        stub.Encode(V.EncodeRequest(model="tiny", images=V.Images(tensor=array_to_tensor(gray[None, None])))).mean,
        "mean",
    )
    for mode, mean in zip(twins, means, strict=True):
        np.testing.assert_allclose(mean, expected[0], rtol=1e-5, atol=1e-6, err_msg=mode)


def test_a_sixteen_bit_png_is_scaled_not_clipped(stub: VaeServiceStub) -> None:
    mid_gray = np.full((28, 28), 32768, np.uint16)  # half of 65535: must stay mid-gray, not become white
    request = V.ReconstructRequest(model="tiny", images=V.Images(png=V.PngImages(images=[_png(mid_gray, "I;16")])))
    via_png = tensor_to_array(stub.Reconstruct(request).latents, "latents")
    half = np.full((1, 1, 28, 28), 32768 / 65535, np.float32)
    direct = tensor_to_array(stub.Reconstruct(V.ReconstructRequest(model="tiny", images=V.Images(
        tensor=array_to_tensor(half)))).latents, "latents")  # fmt: skip
    np.testing.assert_allclose(via_png, direct, rtol=1e-5, atol=1e-6)


def test_non_png_and_wrong_size_pictures_are_refused(stub: VaeServiceStub) -> None:
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(jpeg, format="JPEG")
    for data, message in ((jpeg.getvalue(), "not a readable PNG"), (_png(np.zeros((27, 28), np.uint8), "L"), "28x27")):
        request = V.EncodeRequest(images=V.Images(png=V.PngImages(images=[data])))
        _refused(stub.Encode, request, "images.png.images[0]", message)


# --- latents, weights, non-finite outputs --------------------------------------------------------------


def test_huge_finite_latents_are_refused_by_name_and_limit(stub: VaeServiceStub) -> None:
    latents = np.full((2, 4), 1e30, np.float32)
    _refused(stub.Decode, V.DecodeRequest(model="tiny", latents=array_to_tensor(latents)), "latents.data",
             "the limit is 1000")  # fmt: skip
    term = V.Term(weight=1.0, value=V.Endpoint(latent=array_to_tensor(np.full(4, -1e9, np.float32))))
    _refused(stub.Arithmetic, V.ArithmeticRequest(model="tiny", terms=[term]), "terms[0].value.latent.data", "limit")


def test_the_largest_allowed_latents_and_weights_still_give_finite_images(stub: VaeServiceStub) -> None:
    """At every limit at once (64 terms of weight 1000 times latents of 1000): the reply is finite and in range."""
    corner = np.array([1000.0, -1000.0, 1000.0, -1000.0], np.float32)
    terms = [V.Term(weight=1000.0, value=V.Endpoint(latent=array_to_tensor(corner))) for _ in range(64)]
    for mode in (V.DECODE_MODE_MEAN, V.DECODE_MODE_SAMPLE):
        reply = stub.Arithmetic(V.ArithmeticRequest(model="tiny", terms=terms, output=V.OutputOptions(mode=mode)))
        images = tensor_to_array(reply.images.tensor, "images")
        assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
        assert np.isfinite(tensor_to_array(reply.latent, "latent")).all()
    decoded = stub.Decode(V.DecodeRequest(model="tiny", latents=array_to_tensor(np.stack([corner, -corner]))))
    assert np.isfinite(tensor_to_array(decoded.images.tensor, "images")).all()


# --- reply size, unparseable bytes, counting ------------------------------------------------------------


def test_a_reply_over_the_message_limit_is_refused_before_any_work(server: ServerThread, stub: VaeServiceStub) -> None:
    """4 MiB message limit here: 512 images x 1024 posterior samples x 4 floats is 8 MiB of reply."""
    before = _metrics(server)
    request = V.EncodeRequest(model="tiny", images=V.Images(tensor=array_to_tensor(_images(512))),
                              samples_per_image=1024)  # fmt: skip
    _refused(stub.Encode, request, "samples_per_image", "the limit is 4 MiB per reply (--max-message-mb)")
    for mode, n, field in ((V.IMAGE_FORMAT_FLOAT32, 4096, "n"), (V.IMAGE_FORMAT_PNG, 4096, "n")):
        _refused(stub.Sample, V.SampleRequest(model="tiny", n=n, output=V.OutputOptions(format=mode)), field, "MiB")
    after = _metrics(server)
    encoder_calls = ("vae_backend_duration_seconds_count", (("backend", "local"), ("network", "encoder")))
    decoder_calls = ("vae_backend_duration_seconds_count", (("backend", "local"), ("network", "decoder")))
    assert after[encoder_calls] == before[encoder_calls] and after[decoder_calls] == before[decoder_calls]
    assert _count(after, "vae_requests_total", method="Encode", code="INVALID_ARGUMENT") == (
        _count(before, "vae_requests_total", method="Encode", code="INVALID_ARGUMENT") + 1
    )


@pytest.mark.parametrize("method", ["Encode", "Score", "SampleStream"])
def test_unparseable_request_bytes_are_invalid_argument_and_counted(server: ServerThread, method: str) -> None:
    before = _metrics(server)
    with grpc.insecure_channel(server.address) as channel:
        call = (channel.unary_stream if method == "SampleStream" else channel.unary_unary)(
            f"/vae.v1.VaeService/{method}"
        )
        with pytest.raises(grpc.RpcError) as error:
            result = call(b"\xff\xff\xff\xff\x0f garbage", timeout=10)
            list(result) if method == "SampleStream" else None
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("request: is not a valid vae.v1.")
    after = _metrics(server)
    assert _count(after, "vae_requests_total", method=method, code="INVALID_ARGUMENT") == (
        _count(before, "vae_requests_total", method=method, code="INVALID_ARGUMENT") + 1
    )
    assert _count(after, "vae_requests_total", method=method, code="UNKNOWN") == 0


def test_client_and_cli_show_the_field_violation(stub: VaeServiceStub) -> None:
    error = _refused(stub.Sample, V.SampleRequest(model="tiny", n=0), "n", "must be between 1 and 4096")
    assert describe_error(error).splitlines() == ["INVALID_ARGUMENT: n: must be between 1 and 4096, got 0",
                                                  "  field n: must be between 1 and 4096, got 0"]  # fmt: skip


# --- one batched encoder call for every image endpoint --------------------------------------------------


def test_image_endpoints_are_encoded_in_one_backend_call(server: ServerThread, stub: VaeServiceStub) -> None:
    images = _images(3)
    terms = [V.Term(weight=w, value=V.Endpoint(image=V.Images(tensor=array_to_tensor(x[None]))))
             for w, x in zip((1.0, -1.0, 1.0), images, strict=True)]  # fmt: skip
    key = ("vae_batch_requests_count", (("model", "tiny"), ("network", "encoder"), ("version", "1")))
    before = _metrics(server)[key]
    stub.Arithmetic(V.ArithmeticRequest(model="tiny", terms=terms))
    start = V.Endpoint(image=V.Images(tensor=array_to_tensor(images[:1])))
    end = V.Endpoint(image=V.Images(tensor=array_to_tensor(images[1:2])))
    stub.Interpolate(V.InterpolateRequest(model="tiny", start=start, end=end, steps=3))
    assert _metrics(server)[key] == before + 2  # one encoder batch per request, not one per endpoint


# --- Score in chunks ------------------------------------------------------------------------------------


def test_score_in_small_chunks_equals_score_in_one(model_repository: Path) -> None:
    request = V.ScoreRequest(model="tiny", images=V.Images(tensor=array_to_tensor(_images(7))),
                             importance_samples=50, seed=V.Seed(value=3))  # fmt: skip
    replies = []
    for chunk in (16, 8192):  # 350 rows: 22 chunks, or one
        settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=model_repository,
                            torch_threads=1, max_batch_size=16, score_chunk_rows=chunk)  # fmt: skip
        with serving(settings) as running, stub_for(running) as s:
            replies.append(s.Score(request).scores)
    for a, b in zip(*replies, strict=True):
        assert a.log_likelihood == pytest.approx(b.log_likelihood, rel=1e-6)
        assert a.elbo == pytest.approx(b.elbo, rel=1e-6) and a.kl == b.kl
