"""The colour model on the Triton backend, against a real tritonserver (nvidia-pytriton's, Python-backend variant
of a repository holding a grey and a colour model): the same answers as the local backend for every RPC, in
float32 and PNG, with both models served by name from one Triton."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.config import Settings
from tests.colour import colour_images
from tests.service.harness import ServerThread, python_triton, serving, stub_for
from training.triton_local import TritonServer
from vae_client.codecs import array_to_tensor, encode_png, png_to_array, tensor_to_array
from vae_client.proto_gen.vae.v1 import vae_pb2 as V

RGB = "tinyrgb"


@pytest.fixture(scope="module")
def triton(mixed_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with python_triton(mixed_repository, tmp_path_factory, "triton_colour") as server:
        yield server


@pytest.fixture(scope="module")
def both(mixed_repository: Path, triton: TritonServer) -> Iterator[tuple[ServerThread, ServerThread]]:
    common = {"host": "127.0.0.1", "port": 0, "metrics_port": -1, "model_repository": mixed_repository,
              "max_batch_size": 16, "torch_threads": 1}  # fmt: skip
    with (
        serving(Settings(**common)) as local,  # type: ignore[arg-type]
        serving(Settings(**common, backend="triton", triton_url=triton.grpc_url)) as remote,  # type: ignore[arg-type]
    ):
        yield local, remote


def _wait_serving(server: ServerThread, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            status = health.Check(health_pb2.HealthCheckRequest(service="vae.v1.VaeService")).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.1)
    raise AssertionError(f"the Triton-backed service was not SERVING within {timeout}s")


def _images(reply: object) -> np.ndarray:
    images = reply.images  # type: ignore[attr-defined]
    if images.WhichOneof("encoding") == "png":
        return np.stack([png_to_array(f) for f in images.png.images]).astype(np.float32)
    return tensor_to_array(images.tensor, "images")


def test_colour_model_answers_on_triton_like_on_the_local_backend(both: tuple[ServerThread, ServerThread]) -> None:
    local, remote = both
    _wait_serving(remote)
    x = colour_images(4, seed=21)[0]
    pngs = V.Images(png=V.PngImages(images=[encode_png((image * 255).round().astype(np.uint8)) for image in x]))
    png = V.OutputOptions(format=V.IMAGE_FORMAT_PNG)
    z = np.random.default_rng(3).normal(size=(9, 4)).astype(np.float32)
    first = V.Images(png=V.PngImages(images=pngs.png.images[:1]))
    cases = [  # (method, request, image shape of the reply, PNG reply)
        ("Sample", V.SampleRequest(model=RGB, n=20, seed=V.Seed(value=4)), (3, 64, 64), False),
        ("Sample", V.SampleRequest(model=RGB, n=5, seed=V.Seed(value=4), output=png), (3, 64, 64), True),
        ("Sample", V.SampleRequest(model="tiny", n=3, seed=V.Seed(value=4)), (1, 28, 28), False),
        ("Encode", V.EncodeRequest(model=RGB, images=V.Images(tensor=array_to_tensor(x))), None, False),
        ("Encode", V.EncodeRequest(model=RGB, images=pngs), None, False),
        ("Decode", V.DecodeRequest(model=RGB, latents=array_to_tensor(z)), (3, 64, 64), False),
        ("Reconstruct", V.ReconstructRequest(model=RGB, images=pngs, output=png), (3, 64, 64), True),
        ("Interpolate", V.InterpolateRequest(model=RGB, start=V.Endpoint(image=V.Images(tensor=array_to_tensor(x[:1]))),
                                             end=V.Endpoint(latent=array_to_tensor(z[0])), steps=5), (3, 64, 64), False),
        ("Arithmetic", V.ArithmeticRequest(model=RGB, terms=[V.Term(weight=1.0, value=V.Endpoint(image=first)),
                                           V.Term(weight=0.5, value=V.Endpoint(latent=array_to_tensor(z[1])))]),
         (3, 64, 64), False),
        ("Score", V.ScoreRequest(model=RGB, images=pngs, importance_samples=32, seed=V.Seed(value=3)), None, False),
    ]  # fmt: skip
    with stub_for(local) as local_stub, stub_for(remote) as remote_stub:
        info = remote_stub.GetModelInfo(V.GetModelInfoRequest(model=RGB)).info
        assert info.backend == "triton" and list(info.image_shape) == [3, 64, 64]
        for method, request, shape, as_png in cases:
            label = f"{method}({request.model}{', PNG' if as_png else ''})"
            a, b = getattr(local_stub, method)(request), getattr(remote_stub, method)(request)
            if method == "Score":
                for sa, sb in zip(a.scores, b.scores, strict=True):
                    assert sa.log_likelihood == pytest.approx(sb.log_likelihood, rel=1e-5, abs=1e-2)
                    assert sa.elbo == pytest.approx(sb.elbo, rel=1e-5, abs=1e-2)
                continue
            if shape is not None:
                ia, ib = _images(a), _images(b)
                assert ia.shape[1:] == shape and (a.images.WhichOneof("encoding") == "png") == as_png, label
                # PNG replies hold 8-bit values: one level of difference where float noise crosses a rounding edge
                np.testing.assert_allclose(ia, ib, atol=1.0 if as_png else 1e-5, err_msg=label)
            for field in ("mean", "log_variance", "latents", "latent"):
                if field in a.DESCRIPTOR.fields_by_name:
                    np.testing.assert_allclose(tensor_to_array(getattr(a, field), field),
                                               tensor_to_array(getattr(b, field), field), atol=1e-5,
                                               err_msg=f"{label}.{field}")  # fmt: skip
