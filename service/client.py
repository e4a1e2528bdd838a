"""A typed Python client: numpy in, numpy out, over a real gRPC channel.

with VaeClient("localhost:50051") as vae:
    images = vae.sample(16, seed=1).images          # float32 [16, 1, 28, 28] in [0, 1]
    z = vae.encode(images).mean                      # [16, latent_dim]
    row = vae.interpolate(images[0], images[1], steps=8).images
    thicker = vae.arithmetic([(1.0, images[0]), (1.5, "thickness")]).images
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from service.codecs import array_to_tensor, tensor_to_array
from service.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc
from service.security import client_channel

MESSAGE_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True)
class Generated:
    images: np.ndarray  # float32 [N, C, H, W] in [0, 1]
    latents: np.ndarray  # float32 [N, D]
    seed: int


@dataclass(frozen=True)
class Posterior:
    mean: np.ndarray
    log_variance: np.ndarray
    samples: np.ndarray | None
    seed: int


@dataclass(frozen=True)
class Score:
    elbo: float
    reconstruction: float
    kl: float
    log_likelihood: float


def describe_error(error: grpc.RpcError) -> str:
    """`CODE: message`, plus one line per field violation the server attached (google.rpc.BadRequest)."""
    lines = [f"{error.code().name}: {error.details()}"]  # type: ignore[attr-defined]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            lines += [f"  field {v.field}: {v.description}" for v in bad_request.field_violations]
    return "\n".join(lines)


def _images(images: np.ndarray) -> vae_pb2.Images:
    return vae_pb2.Images(tensor=array_to_tensor(np.asarray(images, np.float32)))


def _array(tensor: vae_pb2.Tensor) -> np.ndarray:
    return tensor_to_array(tensor, "reply").copy()


def _seed(seed: int | None) -> vae_pb2.Seed | None:
    return None if seed is None else vae_pb2.Seed(value=seed)


def _output(sample: bool) -> vae_pb2.OutputOptions:
    return vae_pb2.OutputOptions(mode=vae_pb2.DECODE_MODE_SAMPLE if sample else vae_pb2.DECODE_MODE_MEAN)


def _endpoint(value: np.ndarray | str) -> vae_pb2.Endpoint:
    """A string is an attribute name, a 1-D array a latent, a [C, H, W] array an image."""
    if isinstance(value, str):
        return vae_pb2.Endpoint(attribute=value)
    array = np.asarray(value, np.float32)
    if array.ndim == 1:
        return vae_pb2.Endpoint(latent=array_to_tensor(array))
    return vae_pb2.Endpoint(image=_images(array[None] if array.ndim == 3 else array))


class VaeClient:
    def __init__(
        self,
        target: str,
        model: str = "",
        timeout_s: float | None = 60.0,
        *,
        tls: bool = False,
        tls_ca_file: str | Path | None = None,
        tls_cert_file: str | Path | None = None,
        tls_key_file: str | Path | None = None,
        tls_server_name: str | None = None,
        token: str | None = None,
    ) -> None:
        """TLS when `tls` or any `tls_*` file is given (README "Security"): the server verified against
        `tls_ca_file` (else the system's roots), a client certificate for mutual TLS from `tls_cert_file` and
        `tls_key_file`; `token` is sent as `authorization: Bearer <token>` on every call."""
        options = [("grpc.max_send_message_length", MESSAGE_LIMIT), ("grpc.max_receive_message_length", MESSAGE_LIMIT)]
        self._channel = client_channel(target, options, tls=tls, ca_file=tls_ca_file, cert_file=tls_cert_file,
                                       key_file=tls_key_file, server_name=tls_server_name, token=token)  # fmt: skip
        self._stub = vae_pb2_grpc.VaeServiceStub(self._channel)
        self.model = model
        self.timeout_s = timeout_s

    def __enter__(self) -> VaeClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def list_models(self) -> list[vae_pb2.ModelInfo]:
        return list(self._stub.ListModels(vae_pb2.ListModelsRequest(), timeout=self.timeout_s).models)

    def info(self) -> vae_pb2.ModelInfo:
        return self._stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model=self.model), timeout=self.timeout_s).info

    def encode(self, images: np.ndarray, samples: int = 0, seed: int | None = None) -> Posterior:
        request = vae_pb2.EncodeRequest(model=self.model, images=_images(images), samples_per_image=samples,
                                        seed=_seed(seed))  # fmt: skip
        reply = self._stub.Encode(request, timeout=self.timeout_s)
        drawn = _array(reply.samples) if reply.HasField("samples") else None
        return Posterior(_array(reply.mean), _array(reply.log_variance), drawn, reply.seed)

    def decode(self, latents: np.ndarray, sample: bool = False, seed: int | None = None) -> np.ndarray:
        request = vae_pb2.DecodeRequest(model=self.model, latents=array_to_tensor(np.asarray(latents, np.float32)),
                                        output=_output(sample), seed=_seed(seed))  # fmt: skip
        return _array(self._stub.Decode(request, timeout=self.timeout_s).images.tensor)

    def reconstruct(self, images: np.ndarray, sample_latent: bool = False, seed: int | None = None) -> Generated:
        request = vae_pb2.ReconstructRequest(model=self.model, images=_images(images), sample_latent=sample_latent,
                                             seed=_seed(seed))  # fmt: skip
        reply = self._stub.Reconstruct(request, timeout=self.timeout_s)
        return Generated(_array(reply.images.tensor), _array(reply.latents), reply.seed)

    def sample(self, n: int, temperature: float = 1.0, sample: bool = False, seed: int | None = None) -> Generated:
        request = vae_pb2.SampleRequest(model=self.model, n=n, temperature=temperature, output=_output(sample),
                                        seed=_seed(seed))  # fmt: skip
        reply = self._stub.Sample(request, timeout=self.timeout_s)
        return Generated(_array(reply.images.tensor), _array(reply.latents), reply.seed)

    def sample_stream(
        self, n: int, chunk_size: int = 0, temperature: float = 1.0, seed: int | None = None
    ) -> Iterator[Generated]:
        request = vae_pb2.SampleStreamRequest(model=self.model, n=n, chunk_size=chunk_size, temperature=temperature,
                                              seed=_seed(seed))  # fmt: skip
        for reply in self._stub.SampleStream(request):
            yield Generated(_array(reply.images.tensor), _array(reply.latents), reply.seed)

    def interpolate(
        self, start: np.ndarray, end: np.ndarray, steps: int = 8, spherical: bool = True, seed: int | None = None
    ) -> Generated:
        method = vae_pb2.INTERPOLATION_METHOD_SPHERICAL if spherical else vae_pb2.INTERPOLATION_METHOD_LINEAR
        request = vae_pb2.InterpolateRequest(model=self.model, start=_endpoint(start), end=_endpoint(end), steps=steps,
                                             method=method, seed=_seed(seed))  # fmt: skip
        reply = self._stub.Interpolate(request, timeout=self.timeout_s)
        return Generated(_array(reply.images.tensor), _array(reply.latents), reply.seed)

    def arithmetic(self, terms: list[tuple[float, np.ndarray | str]], seed: int | None = None) -> Generated:
        """Decode sum(weight * value): values are images [C, H, W], latents [D] or attribute names."""
        request = vae_pb2.ArithmeticRequest(
            model=self.model, terms=[vae_pb2.Term(weight=w, value=_endpoint(v)) for w, v in terms], seed=_seed(seed)
        )
        reply = self._stub.Arithmetic(request, timeout=self.timeout_s)
        return Generated(_array(reply.images.tensor), _array(reply.latent), reply.seed)

    def score(self, images: np.ndarray, samples: int = 0, seed: int | None = None) -> list[Score]:
        request = vae_pb2.ScoreRequest(model=self.model, images=_images(images), importance_samples=samples,
                                       seed=_seed(seed))  # fmt: skip
        reply = self._stub.Score(request, timeout=self.timeout_s)
        return [Score(s.elbo, s.reconstruction, s.kl, s.log_likelihood) for s in reply.scores]
