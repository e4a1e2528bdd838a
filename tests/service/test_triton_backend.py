"""The service on its Triton backend, against a real tritonserver (nvidia-pytriton's, on the Python-backend
variant of the exported repository): same answers as the local backend, and health follows Triton's life."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.config import Settings
from tests.datasets import stroke_images
from tests.service.harness import ServerThread, python_triton, serving, stub_for
from training.triton_local import TritonServer
from vae_client.codecs import array_to_tensor, tensor_to_array
from vae_client.proto_gen.vae.v1 import vae_pb2 as V

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def triton(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with python_triton(model_repository, tmp_path_factory) as server:
        yield server


def _settings(repo: Path, **extra: object) -> Settings:
    return Settings(
        host="127.0.0.1", port=0, metrics_port=-1, model_repository=repo, max_batch_size=16, torch_threads=1, **extra
    )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def both(model_repository: Path, triton: TritonServer) -> Iterator[tuple[ServerThread, ServerThread]]:
    with (
        serving(_settings(model_repository)) as local,
        serving(_settings(model_repository, backend="triton", triton_url=triton.grpc_url)) as remote,
    ):
        yield local, remote


def _health(server: ServerThread, name: str = "vae.v1.VaeService") -> int:
    with grpc.insecure_channel(server.address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name)).status


def _wait_for(server: ServerThread, status: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _health(server) == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"health did not become {status} within {timeout}s")


def test_triton_backend_answers_like_the_local_backend(both: tuple[ServerThread, ServerThread]) -> None:
    local, remote = both
    _wait_for(remote, SERVING)
    x = stroke_images(5, seed=1)[0][:, None].astype(np.float32)
    requests = {
        "Sample": V.SampleRequest(n=40, seed=V.Seed(value=4)),
        "Encode": V.EncodeRequest(images=V.Images(tensor=array_to_tensor(x)), samples_per_image=3, seed=V.Seed(value=1)),
        "Decode": V.DecodeRequest(latents=array_to_tensor(np.random.default_rng(2).normal(size=(9, 4)).astype(np.float32))),
        "Score": V.ScoreRequest(images=V.Images(tensor=array_to_tensor((x > 0.5).astype(np.float32))), importance_samples=64, seed=V.Seed(value=3)),
        "Interpolate": V.InterpolateRequest(start=V.Endpoint(image=V.Images(tensor=array_to_tensor(x[:1]))),
                                            end=V.Endpoint(image=V.Images(tensor=array_to_tensor(x[1:2]))), steps=5),
    }  # fmt: skip
    with stub_for(local) as local_stub, stub_for(remote) as remote_stub:
        info = remote_stub.GetModelInfo(V.GetModelInfoRequest()).info
        assert info.backend == "triton"
        for method, request in requests.items():
            a, b = getattr(local_stub, method)(request), getattr(remote_stub, method)(request)
            if method == "Score":
                for sa, sb in zip(a.scores, b.scores, strict=True):
                    assert sa.log_likelihood == pytest.approx(sb.log_likelihood, abs=1e-3)
                    assert sa.elbo == pytest.approx(sb.elbo, abs=1e-3)
                continue
            for field in ("images", "mean", "log_variance", "samples", "latents"):
                if field in a.DESCRIPTOR.fields_by_name:
                    ta = getattr(a, field).tensor if field == "images" else getattr(a, field)
                    tb = getattr(b, field).tensor if field == "images" else getattr(b, field)
                    np.testing.assert_allclose(
                        tensor_to_array(ta, field), tensor_to_array(tb, field), atol=1e-5, err_msg=f"{method}.{field}"
                    )


def test_readiness_follows_triton_down_and_back_liveness_stays(
    both: tuple[ServerThread, ServerThread], triton: TritonServer
) -> None:
    _, remote = both
    _wait_for(remote, SERVING)
    triton.stop()
    with stub_for(remote) as stub:
        with pytest.raises(grpc.RpcError) as error:
            stub.Sample(V.SampleRequest(n=2))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    _wait_for(remote, NOT_SERVING)
    assert _health(remote, "") == SERVING  # liveness stays up: restarting the service would not bring Triton back
    triton.start()
    _wait_for(remote, SERVING)
    with stub_for(remote) as stub:
        assert tensor_to_array(stub.Sample(V.SampleRequest(n=2)).images.tensor, "images").shape == (2, 1, 28, 28)
