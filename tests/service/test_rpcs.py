"""Every RPC through a real gRPC server on a loopback port, on the local (TorchScript) backend."""

from __future__ import annotations

import io
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from service.config import Settings
from tests.datasets import stroke_images
from tests.service.harness import ServerThread, serving
from vae_client.codecs import array_to_tensor, encode_png, tensor_to_array
from vae_client.proto_gen.vae.v1 import vae_pb2
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub
from vaecore.repository import read_metadata

V = vae_pb2


@pytest.fixture(scope="module")
def server(model_repository: Path) -> Iterator[ServerThread]:
    settings = Settings(host="127.0.0.1", port=0, metrics_port=0, model_repository=model_repository,
                        max_batch_size=16, max_wait_ms=5, max_items=512, max_score_rows=20000, torch_threads=1)  # fmt: skip
    with serving(settings) as running:
        yield running


@pytest.fixture(scope="module")
def networks(model_repository: Path) -> dict[str, torch.jit.ScriptModule]:
    return {
        part: torch.jit.load(str(model_repository / f"tiny_{part}" / "1" / "model.pt"))
        for part in ("encoder", "decoder")
    }


def images(n: int, seed: int = 0) -> np.ndarray:
    return stroke_images(n, seed)[0][:, None].astype(np.float32)


def as_tensor_images(x: np.ndarray) -> V.Images:
    return V.Images(tensor=array_to_tensor(x))


def array(tensor: V.Tensor) -> np.ndarray:
    return tensor_to_array(tensor, "reply").copy()


def seed(value: int) -> V.Seed:
    return V.Seed(value=value)


def local(networks: dict, part: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        a, b = networks[part](torch.from_numpy(x))
    return a.numpy(), b.numpy()


# --- models ----------------------------------------------------------------------------------------------


def test_list_models_and_info(stub: VaeServiceStub) -> None:
    reply = stub.ListModels(V.ListModelsRequest())
    assert [m.name for m in reply.models] == ["tiny", "tiny2"] and reply.default_model == "tiny"
    info = stub.GetModelInfo(V.GetModelInfoRequest(model="tiny2")).info
    assert info.latent_dim == 4 and list(info.image_shape) == [1, 28, 28] and info.likelihood == "bernoulli"
    assert "thickness" in info.attribute_names and "class_3" in info.attribute_names
    assert info.test_nll == pytest.approx(321.5) and info.test_nll_samples == 50 and info.backend == "local"


def test_unknown_model_is_not_found(stub: VaeServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelInfo(V.GetModelInfoRequest(model="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "tiny" in error.value.details()


# --- encode / decode / reconstruct ------------------------------------------------------------------------


def test_encode_equals_torchscript_for_every_input_encoding(stub: VaeServiceStub, networks: dict) -> None:
    x = images(5)
    mu, logvar = local(networks, "encoder", x)
    reply = stub.Encode(V.EncodeRequest(images=as_tensor_images(x)))
    np.testing.assert_allclose(array(reply.mean), mu, atol=1e-5)
    np.testing.assert_allclose(array(reply.log_variance), logvar, atol=1e-5)
    as_uint8 = (x * 255).round().astype(np.uint8)
    from_uint8 = stub.Encode(V.EncodeRequest(images=V.Images(tensor=array_to_tensor(as_uint8))))
    pngs = V.Images(png=V.PngImages(images=[encode_png(image) for image in as_uint8]))
    from_png = stub.Encode(V.EncodeRequest(images=pngs))
    expected, _ = local(networks, "encoder", as_uint8.astype(np.float32) / 255)
    np.testing.assert_allclose(array(from_uint8.mean), expected, atol=1e-5)
    np.testing.assert_allclose(array(from_png.mean), expected, atol=1e-5)


def test_encode_samples_follow_the_posterior_and_the_seed(stub: VaeServiceStub) -> None:
    x = images(2)
    request = V.EncodeRequest(images=as_tensor_images(x), samples_per_image=1000, seed=seed(11))
    reply = stub.Encode(request)
    samples, mu, logvar = array(reply.samples), array(reply.mean), array(reply.log_variance)
    assert samples.shape == (2, 1000, 4) and reply.seed == 11
    np.testing.assert_allclose(samples.mean(1), mu, atol=5 * np.exp(0.5 * logvar).max() / np.sqrt(1000))
    np.testing.assert_allclose(samples.std(1), np.exp(0.5 * logvar), rtol=0.1)
    np.testing.assert_array_equal(array(stub.Encode(request).samples), samples)


def test_decode_mean_equals_torchscript_and_formats_agree(stub: VaeServiceStub, networks: dict) -> None:
    z = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    mean, _ = local(networks, "decoder", z)
    as_float = array(stub.Decode(V.DecodeRequest(latents=array_to_tensor(z))).images.tensor)
    np.testing.assert_allclose(as_float, mean, atol=1e-5)
    as_uint8 = array(
        stub.Decode(
            V.DecodeRequest(latents=array_to_tensor(z), output=V.OutputOptions(format=V.IMAGE_FORMAT_UINT8))
        ).images.tensor
    )
    assert as_uint8.dtype == np.uint8
    np.testing.assert_array_less(np.abs(as_uint8.astype(np.float32) / 255 - mean), 0.5 / 255 + 1e-4)
    pngs = stub.Decode(
        V.DecodeRequest(latents=array_to_tensor(z), output=V.OutputOptions(format=V.IMAGE_FORMAT_PNG))
    ).images.png.images
    assert len(pngs) == 7
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(p))) for p in pngs])
    np.testing.assert_array_equal(decoded, as_uint8[:, 0])


def test_decode_sample_mode_draws_binary_pixels_reproducibly(stub: VaeServiceStub) -> None:
    z = np.zeros((3, 4), np.float32)
    request = V.DecodeRequest(
        latents=array_to_tensor(z), output=V.OutputOptions(mode=V.DECODE_MODE_SAMPLE), seed=seed(5)
    )
    first = stub.Decode(request)
    pixels = array(first.images.tensor)
    assert set(np.unique(pixels)) <= {0.0, 1.0} and first.seed == 5
    np.testing.assert_array_equal(array(stub.Decode(request).images.tensor), pixels)


def test_reconstruct_is_decode_of_encode(stub: VaeServiceStub, networks: dict) -> None:
    x = images(4)
    reply = stub.Reconstruct(V.ReconstructRequest(images=as_tensor_images(x)))
    mu, _ = local(networks, "encoder", x)
    np.testing.assert_allclose(array(reply.latents), mu, atol=1e-5)
    np.testing.assert_allclose(array(reply.images.tensor), local(networks, "decoder", mu)[0], atol=1e-5)


# --- sampling ------------------------------------------------------------------------------------------


def test_sample_is_seeded_and_echoes_a_fresh_seed(stub: VaeServiceStub, networks: dict) -> None:
    a = stub.Sample(V.SampleRequest(n=6, seed=seed(42)))
    b = stub.Sample(V.SampleRequest(n=6, seed=seed(42)))
    c = stub.Sample(V.SampleRequest(n=6, seed=seed(43)))
    np.testing.assert_array_equal(array(a.latents), array(b.latents))
    np.testing.assert_array_equal(array(a.images.tensor), array(b.images.tensor))
    assert not np.allclose(array(a.latents), array(c.latents))
    np.testing.assert_allclose(array(a.images.tensor), local(networks, "decoder", array(a.latents))[0], atol=1e-5)
    fresh = stub.Sample(V.SampleRequest(n=2))
    again = stub.Sample(V.SampleRequest(n=2, seed=seed(fresh.seed)))
    np.testing.assert_array_equal(array(fresh.latents), array(again.latents))


def test_temperature_scales_the_prior(stub: VaeServiceStub) -> None:
    hot = array(stub.Sample(V.SampleRequest(n=3, seed=seed(1))).latents)
    cool = array(stub.Sample(V.SampleRequest(n=3, seed=seed(1), temperature=0.25)).latents)
    np.testing.assert_allclose(cool, 0.25 * hot, rtol=1e-6)


def test_large_sample_is_split_not_refused(stub: VaeServiceStub) -> None:
    reply = stub.Sample(V.SampleRequest(n=300, seed=seed(3)))  # batch size is 16
    assert array(reply.images.tensor).shape == (300, 1, 28, 28)


def test_sample_stream_chunks_concatenate_to_the_same_samples(stub: VaeServiceStub) -> None:
    chunks = list(stub.SampleStream(V.SampleStreamRequest(n=250, chunk_size=100, seed=seed(9))))
    assert [c.offset for c in chunks] == [0, 100, 200] and all(c.seed == 9 for c in chunks)
    streamed = np.concatenate([array(c.latents) for c in chunks])
    whole = array(stub.Sample(V.SampleRequest(n=250, seed=seed(9))).latents)
    np.testing.assert_array_equal(streamed, whole)


def test_seeded_samples_do_not_depend_on_batch_mates(stub: VaeServiceStub) -> None:
    solo = array(stub.Sample(V.SampleRequest(n=3, seed=seed(77))).images.tensor)
    with ThreadPoolExecutor(16) as pool:
        crowd = [pool.submit(stub.Sample, V.SampleRequest(n=1 + i % 5, seed=seed(1000 + i))) for i in range(40)]
        mine = [pool.submit(stub.Sample, V.SampleRequest(n=3, seed=seed(77))) for _ in range(5)]
        for future in crowd:
            future.result()
        for future in mine:
            np.testing.assert_allclose(array(future.result().images.tensor), solo, atol=1e-6)


# --- interpolation and arithmetic --------------------------------------------------------------------------


def test_interpolate_between_images_includes_both_endpoints(stub: VaeServiceStub, networks: dict) -> None:
    x = images(2, seed=4)
    for method in (V.INTERPOLATION_METHOD_LINEAR, V.INTERPOLATION_METHOD_SPHERICAL):
        reply = stub.Interpolate(V.InterpolateRequest(
            start=V.Endpoint(image=as_tensor_images(x[:1])), end=V.Endpoint(image=as_tensor_images(x[1:])),
            steps=7, method=method))  # fmt: skip
        latents = array(reply.latents)
        mu, _ = local(networks, "encoder", x)
        assert latents.shape == (7, 4) and array(reply.images.tensor).shape == (7, 1, 28, 28)
        np.testing.assert_allclose(latents[0], mu[0], atol=1e-5)
        np.testing.assert_allclose(latents[-1], mu[1], atol=1e-5)
    linear_mid = array(stub.Interpolate(V.InterpolateRequest(
        start=V.Endpoint(latent=array_to_tensor(np.array([2, 0, 0, 0], np.float32))),
        end=V.Endpoint(latent=array_to_tensor(np.array([0, 2, 0, 0], np.float32))),
        steps=3, method=V.INTERPOLATION_METHOD_LINEAR)).latents)[1]  # fmt: skip
    spherical_mid = array(stub.Interpolate(V.InterpolateRequest(
        start=V.Endpoint(latent=array_to_tensor(np.array([2, 0, 0, 0], np.float32))),
        end=V.Endpoint(latent=array_to_tensor(np.array([0, 2, 0, 0], np.float32))), steps=3)).latents)[1]  # fmt: skip
    np.testing.assert_allclose(linear_mid, [1, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(spherical_mid, [np.sqrt(2), np.sqrt(2), 0, 0], atol=1e-5)


def test_arithmetic_analogy_and_attribute(stub: VaeServiceStub, networks: dict, model_repository: Path) -> None:

    a, b, c = (np.full(4, v, np.float32) for v in (1.0, 0.5, -2.0))
    x = images(1, seed=8)
    thickness = np.asarray(
        read_metadata(model_repository / "tiny.vae.json")["attributes"]["thickness"]["vector"], np.float32
    )
    terms = [V.Term(weight=1, value=V.Endpoint(latent=array_to_tensor(a))),
             V.Term(weight=-1, value=V.Endpoint(latent=array_to_tensor(b))),
             V.Term(weight=1, value=V.Endpoint(latent=array_to_tensor(c))),
             V.Term(weight=1, value=V.Endpoint(image=as_tensor_images(x))),
             V.Term(weight=1.5, value=V.Endpoint(attribute="thickness"))]  # fmt: skip
    reply = stub.Arithmetic(V.ArithmeticRequest(terms=terms))
    mu, _ = local(networks, "encoder", x)
    expected = a - b + c + mu[0] + 1.5 * thickness
    np.testing.assert_allclose(array(reply.latent)[0], expected, atol=1e-5)
    np.testing.assert_allclose(array(reply.images.tensor), local(networks, "decoder", expected[None])[0], atol=1e-5)


# --- score ---------------------------------------------------------------------------------------------


def test_score_splits_the_elbo_and_bounds_it_by_log_likelihood(stub: VaeServiceStub) -> None:
    x = (images(6, seed=2) > 0.5).astype(np.float32)
    reply = stub.Score(V.ScoreRequest(images=as_tensor_images(x), importance_samples=500, seed=seed(2)))
    assert reply.importance_samples == 500 and len(reply.scores) == 6
    for s in reply.scores:
        assert s.elbo == pytest.approx(s.reconstruction - s.kl, abs=1e-6) and s.kl >= 0
        assert s.log_likelihood >= s.elbo - 1.0 and s.log_likelihood < 0
    noise = np.random.default_rng(0).integers(0, 2, size=(6, 1, 28, 28)).astype(np.float32)
    noisy = stub.Score(V.ScoreRequest(images=as_tensor_images(noise), importance_samples=50))
    assert max(s.log_likelihood for s in noisy.scores) < min(s.log_likelihood for s in reply.scores)  # OOD flagged


# --- bad input -----------------------------------------------------------------------------------------

BAD = {
    "wrong-shape": (lambda: V.EncodeRequest(images=V.Images(tensor=array_to_tensor(np.zeros((2, 1, 27, 28), np.float32)))), "images.tensor.shape"),
    "bytes-mismatch": (lambda: V.EncodeRequest(images=V.Images(tensor=V.Tensor(shape=[1, 1, 28, 28], dtype=V.ELEMENT_TYPE_FLOAT32, data=b"\0" * 10))), "images.tensor.data"),
    "no-dtype": (lambda: V.EncodeRequest(images=V.Images(tensor=V.Tensor(shape=[1, 1, 28, 28], data=b"\0" * 3136))), "images.tensor.dtype"),
    "nan": (lambda: V.EncodeRequest(images=V.Images(tensor=array_to_tensor(np.full((1, 1, 28, 28), np.nan, np.float32)))), "finite"),
    "out-of-range": (lambda: V.EncodeRequest(images=V.Images(tensor=array_to_tensor(np.full((1, 1, 28, 28), 3.0, np.float32)))), "[0, 1]"),
    "empty": (lambda: V.EncodeRequest(images=V.Images(tensor=array_to_tensor(np.zeros((0, 1, 28, 28), np.float32)))), "at least one"),
    "missing-images": (lambda: V.EncodeRequest(), "images: is required"),
    "oversized": (lambda: V.SampleRequest(n=513), "n: must be between 1 and 512"),
    "bad-png": (lambda: V.EncodeRequest(images=V.Images(png=V.PngImages(images=[b"not a png"]))), "images.png.images[0]"),
    "png-size": (lambda: V.EncodeRequest(images=V.Images(png=V.PngImages(images=[encode_png(np.zeros((1, 10, 10), np.uint8))]))), "takes 28x28"),
    "latent-dim": (lambda: V.DecodeRequest(latents=array_to_tensor(np.zeros((2, 5), np.float32))), "latents.shape"),
    "latent-nan": (lambda: V.DecodeRequest(latents=array_to_tensor(np.full((1, 4), np.inf, np.float32))), "latents.data"),
    "steps": (lambda: V.InterpolateRequest(start=V.Endpoint(latent=array_to_tensor(np.zeros(4, np.float32))), end=V.Endpoint(latent=array_to_tensor(np.ones(4, np.float32))), steps=1), "steps"),
    "attribute-endpoint": (lambda: V.InterpolateRequest(start=V.Endpoint(attribute="thickness"), end=V.Endpoint(latent=array_to_tensor(np.ones(4, np.float32))), steps=3), "start"),
    "temperature": (lambda: V.SampleRequest(n=1, temperature=-1), "temperature"),
    "score-samples": (lambda: V.ScoreRequest(images=as_tensor_images(images(1)), importance_samples=6000), "importance_samples"),
    "no-terms": (lambda: V.ArithmeticRequest(), "terms"),
}  # fmt: skip
METHODS = {V.EncodeRequest: "Encode", V.SampleRequest: "Sample", V.DecodeRequest: "Decode",
           V.InterpolateRequest: "Interpolate", V.ScoreRequest: "Score", V.ArithmeticRequest: "Arithmetic"}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_invalid_argument_naming_the_field(stub: VaeServiceStub, case: str) -> None:
    make, fragment = BAD[case]
    request = make()
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, METHODS[type(request)])(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert fragment in error.value.details()
    assert stub.ListModels(V.ListModelsRequest()).models  # and the server keeps serving


def test_unknown_attribute_is_not_found(stub: VaeServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stub.Arithmetic(V.ArithmeticRequest(terms=[V.Term(weight=1, value=V.Endpoint(attribute="glasses"))]))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "thickness" in error.value.details()


def test_server_keeps_serving_after_a_deadline_passes_mid_request(stub: VaeServiceStub) -> None:
    """The client sees DEADLINE_EXCEEDED whatever the server does; what this checks is that the abandoned work does
    not break the server. Dropping expired requests before their batch runs is tested in test_batching.py."""
    with pytest.raises(grpc.RpcError) as error:
        stub.Score(V.ScoreRequest(images=as_tensor_images(images(20)), importance_samples=1000), timeout=0.001)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub.Sample(V.SampleRequest(n=1)).images.tensor.shape == [1, 1, 28, 28]


# --- health, reflection, metrics -------------------------------------------------------------------------


def test_health_is_serving_for_the_server_and_the_service(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline and status != health_pb2.HealthCheckResponse.SERVING:
            status = health.Check(health_pb2.HealthCheckRequest(service="vae.v1.VaeService")).status
            time.sleep(0.05)
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(server: ServerThread) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.address) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "vae.v1.VaeService" in services and "grpc.health.v1.Health" in services


def _scrape(server: ServerThread) -> str:
    assert server.running is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{server.running.metrics_port}/metrics", timeout=5) as response:
        return response.read().decode()


def _value(text: str, prefix: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_metrics_move_as_requests_are_served(server: ServerThread, stub: VaeServiceStub) -> None:
    before = _scrape(server)
    stub.Sample(V.SampleRequest(n=20))
    with pytest.raises(grpc.RpcError):
        stub.Sample(V.SampleRequest(n=0))
    after = _scrape(server)
    ok = 'vae_requests_total{code="OK",method="Sample"}'
    bad = 'vae_requests_total{code="INVALID_ARGUMENT",method="Sample"}'
    assert _value(after, ok) == _value(before, ok) + 1
    assert _value(after, bad) == _value(before, bad) + 1
    assert (
        _value(after, 'vae_items_processed_total{method="Sample"}')
        >= _value(before, 'vae_items_processed_total{method="Sample"}') + 20
    )
    assert _value(after, 'vae_batch_size_count{model="tiny",network="decoder",version="1"}') > _value(
        before, 'vae_batch_size_count{model="tiny",network="decoder",version="1"}'
    )
    assert _value(after, 'vae_backend_duration_seconds_count{backend="local",network="decoder"}') > 0
    assert 'vae_request_duration_seconds_bucket{le="0.005",method="Sample"}' in after
    assert 'vae_queue_wait_seconds_count{model="tiny",network="decoder",version="1"}' in after
    space = stub.GetModelInfo(V.GetModelInfoRequest(model="tiny")).info.latent_space
    info = (
        f'vae_model_info{{backend="local",dataset="idx",latent_dim="4",latent_space="{space}",likelihood="bernoulli",'
        'model="tiny",version="1"} 1.0'
    )
    assert space.startswith("ls1-") and info in after
    assert 'vae_backend_up{backend="local"} 1.0' in after
    assert "vae_requests_in_flight" in after and "vae_queue_depth" in after
