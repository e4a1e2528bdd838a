"""A typed Python client: numpy in, numpy out, over a real gRPC channel.

with VaeClient("localhost:50051") as vae:
    images = vae.sample(16, seed=1).images          # float32 [16, C, H, W] in [0, 1] (C = 1 gray, 3 colour)
    z = vae.encode(images).mean                      # [16, latent_dim]
    row = vae.interpolate(images[0], images[1], steps=8).images
    thicker = vae.arithmetic([(1.0, images[0]), (1.5, "thickness")]).images
    z = vae.encode([Path("a.png").read_bytes()]).mean    # PNG files go as they are; the server reads them
    files = vae.sample(4, png=True).png              # PNG files back (8-bit gray or RGB, as the model's channels)

Images go in as float32 (or uint8) arrays [N, C, H, W] or as PNG files (`bytes`, one per image; the server
applies its PNG rules: docs/operations.md "Limits"). Replies come back as float32 arrays; with `png=True` the server
encodes them as PNG files, kept in `Generated.png`, and `Generated.images` holds their pixels.

Latents come back as `Latents`: float32 arrays that remember the latent space they live in (`.latent_space`, the
server's stamp). Slices and arithmetic keep it, and the client sends it back with them (decode, interpolate,
arithmetic), so a server whose model's encoder changed refuses them (FAILED_PRECONDITION) instead of decoding
them into wrong pictures. A plain array is sent unstamped. `model_version` pins every call to one version.

A call the server cancelled before answering, or a replica refused, is tried again by gRPC (vae_client/retry.py):
every RPC is free of side effects, and a request without a seed then gets a fresh one, which the reply reports.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np
from google.rpc import error_details_pb2, status_pb2

from vae_client.codecs import array_to_tensor, png_to_array, tensor_to_array
from vae_client.credentials import client_channel
from vae_client.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_client.retry import retry_options

MESSAGE_LIMIT = 64 * 1024 * 1024


# Images sent to the server: an array [N, C, H, W] (float32 in [0, 1], or uint8), or PNG files, one `bytes` each.
ImageInput = np.ndarray | bytes | Sequence[bytes]


class Latents(np.ndarray):
    """A float32 array of latents that remembers the latent space it came from (`latent_space`, "" if unknown).
    Views, slices and arithmetic results keep the stamp of the array they came from."""

    latent_space: str

    def __new__(cls, values: np.ndarray, latent_space: str = "") -> Latents:
        stamped = np.asarray(values, np.float32).view(cls)
        stamped.latent_space = latent_space
        return stamped

    def __array_finalize__(self, obj: object) -> None:
        self.latent_space = getattr(obj, "latent_space", "")

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """Arithmetic keeps the stamp its operands share; latents of two spaces cannot be combined (the sum would
        mean nothing to either model, and would carry a stamp that hides it)."""
        stamps = {x.latent_space for x in (*inputs, *kwargs.get("out", ())) if isinstance(x, Latents)}
        stamps.discard("")
        if len(stamps) > 1:
            raise ValueError(f"latents of different latent spaces cannot be combined: {', '.join(sorted(stamps))}")
        plain = [np.asarray(x) if isinstance(x, Latents) else x for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(x) if isinstance(x, Latents) else x for x in kwargs["out"])
        result = getattr(ufunc, method)(*plain, **kwargs)
        stamp = next(iter(stamps), "")
        if isinstance(result, tuple):
            return tuple(Latents(r, stamp) if isinstance(r, np.ndarray) else r for r in result)
        return Latents(result, stamp) if isinstance(result, np.ndarray) and result.dtype == np.float32 else result


def stamp_of(value: object) -> str:
    """The latent space a value says it comes from: a `Latents`' stamp, "" for anything else."""
    return getattr(value, "latent_space", "") if isinstance(value, np.ndarray) else ""


@dataclass(frozen=True)
class Generated:
    images: np.ndarray  # float32 [N, C, H, W] in [0, 1]
    latents: Latents  # float32 [N, D], stamped with their latent space
    seed: int
    png: tuple[bytes, ...] = ()  # the PNG files the server sent, when asked for (`png=True`)
    model_version: str = ""  # the version that answered
    latent_space: str = ""


@dataclass(frozen=True)
class Posterior:
    mean: Latents
    log_variance: np.ndarray
    samples: Latents | None
    seed: int
    model_version: str = ""
    latent_space: str = ""


@dataclass(frozen=True)
class Score:
    elbo: float
    reconstruction: float
    kl: float
    log_likelihood: float


def describe_error(error: grpc.RpcError) -> str:
    """`CODE: message`, plus one line per field violation the server attached (google.rpc.BadRequest)."""
    lines = [f"{error.code().name}: {error.details()}"]  # type: ignore[attr-defined]
    status = _rich_status(error)
    for detail in status.details if status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            lines += [f"  field {v.field}: {v.description}" for v in bad_request.field_violations]
    return "\n".join(lines)


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a call's trailers carry (`grpc-status-details-bin`), as grpcio-status reads it."""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return None


def _is_png(value: object) -> bool:
    return isinstance(value, bytes | bytearray | memoryview)


def _images(images: ImageInput) -> vae_pb2.Images:
    if _is_png(images):
        images = [images]  # type: ignore[list-item]
    if isinstance(images, list | tuple) and images and all(_is_png(i) for i in images):
        return vae_pb2.Images(png=vae_pb2.PngImages(images=[bytes(i) for i in images]))
    array = np.asarray(images)
    return vae_pb2.Images(tensor=array_to_tensor(array if array.dtype == np.uint8 else array.astype(np.float32)))


def _array(tensor: vae_pb2.Tensor) -> np.ndarray:
    return tensor_to_array(tensor, "reply").copy()


def _pixels(images: vae_pb2.Images) -> tuple[np.ndarray, tuple[bytes, ...]]:
    """float32 [N, C, H, W] in [0, 1] from a reply's images, and the PNG files when they came as PNG."""
    if images.WhichOneof("encoding") != "png":
        return _array(images.tensor), ()
    files = tuple(images.png.images)
    return np.stack([png_to_array(f) for f in files]).astype(np.float32) / np.float32(255.0), files


def _generated(images: vae_pb2.Images, latents: vae_pb2.Tensor, reply: Any) -> Generated:
    pixels, files = _pixels(images)
    stamped = Latents(_array(latents), reply.latent_space)
    return Generated(pixels, stamped, reply.seed, files, reply.model_version, reply.latent_space)


def _seed(seed: int | None) -> vae_pb2.Seed | None:
    return None if seed is None else vae_pb2.Seed(value=seed)


def _output(sample: bool, png: bool = False) -> vae_pb2.OutputOptions:
    return vae_pb2.OutputOptions(mode=vae_pb2.DECODE_MODE_SAMPLE if sample else vae_pb2.DECODE_MODE_MEAN,
                                 format=vae_pb2.IMAGE_FORMAT_PNG if png else vae_pb2.IMAGE_FORMAT_FLOAT32)  # fmt: skip


def _endpoint(value: np.ndarray | bytes | str) -> vae_pb2.Endpoint:
    """A string is an attribute name, `bytes` a PNG file, a 1-D array a latent, a [C, H, W] array an image."""
    if isinstance(value, str):
        return vae_pb2.Endpoint(attribute=value)
    if _is_png(value):
        return vae_pb2.Endpoint(image=_images([value]))  # type: ignore[list-item]
    array = np.asarray(value, np.float32)
    if array.ndim == 1:
        return vae_pb2.Endpoint(latent=array_to_tensor(array), latent_space=stamp_of(value))
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
        model_version: str = "",
        retries: bool = True,
    ) -> None:
        """`model_version` pins every call to one version of `model` ("": the server's routing). TLS when `tls` or
        any `tls_*` file is given (docs/operations.md "Security"): the server verified against
        `tls_ca_file` (else the system's roots), a client certificate for mutual TLS from `tls_cert_file` and
        `tls_key_file`; `token` is sent as `authorization: Bearer <token>` on every call. `retries`: a call the
        server cancelled or refused (CANCELLED, UNAVAILABLE) is tried again, as vae_client/retry.py says."""
        options = [("grpc.max_send_message_length", MESSAGE_LIMIT), ("grpc.max_receive_message_length", MESSAGE_LIMIT)]
        if retries:
            options += retry_options(MESSAGE_LIMIT)
        self._channel = client_channel(target, options, tls=tls, ca_file=tls_ca_file, cert_file=tls_cert_file,
                                       key_file=tls_key_file, server_name=tls_server_name, token=token)  # fmt: skip
        self._stub = vae_pb2_grpc.VaeServiceStub(self._channel)
        self.model = model
        self.model_version = model_version
        self.timeout_s = timeout_s

    def __enter__(self) -> VaeClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    @property
    def channel(self) -> grpc.Channel:
        """The channel (TLS and token as configured), for other services of the same server."""
        return self._channel

    @property
    def _names(self) -> dict[str, str]:
        """The model and version every request names."""
        return {"model": self.model, "model_version": self.model_version}

    def list_models(self) -> list[vae_pb2.ModelInfo]:
        return list(self._stub.ListModels(vae_pb2.ListModelsRequest(), timeout=self.timeout_s).models)

    def info(self) -> vae_pb2.ModelInfo:
        request = vae_pb2.GetModelInfoRequest(**self._names)
        return self._stub.GetModelInfo(request, timeout=self.timeout_s).info

    def encode(self, images: ImageInput, samples: int = 0, seed: int | None = None) -> Posterior:
        request = vae_pb2.EncodeRequest(**self._names, images=_images(images), samples_per_image=samples,
                                        seed=_seed(seed))  # fmt: skip
        reply = self._stub.Encode(request, timeout=self.timeout_s)
        drawn = Latents(_array(reply.samples), reply.latent_space) if reply.HasField("samples") else None
        return Posterior(Latents(_array(reply.mean), reply.latent_space), _array(reply.log_variance), drawn,
                         reply.seed, reply.model_version, reply.latent_space)  # fmt: skip

    def decode(self, latents: np.ndarray, sample: bool = False, seed: int | None = None) -> np.ndarray:
        """Images of `latents`; a `Latents`' stamp goes with them (a plain array is sent unstamped)."""
        request = vae_pb2.DecodeRequest(model=self.model, model_version=self.model_version,
                                        latents=array_to_tensor(np.asarray(latents, np.float32)),
                                        latent_space=stamp_of(latents), output=_output(sample),
                                        seed=_seed(seed))  # fmt: skip
        return _array(self._stub.Decode(request, timeout=self.timeout_s).images.tensor)

    def reconstruct(
        self, images: ImageInput, sample_latent: bool = False, seed: int | None = None, *, png: bool = False
    ) -> Generated:
        request = vae_pb2.ReconstructRequest(**self._names, images=_images(images), sample_latent=sample_latent,
                                             seed=_seed(seed), output=_output(False, png))  # fmt: skip
        reply = self._stub.Reconstruct(request, timeout=self.timeout_s)
        return _generated(reply.images, reply.latents, reply)

    def sample(
        self, n: int, temperature: float = 1.0, sample: bool = False, seed: int | None = None, *, png: bool = False
    ) -> Generated:
        request = vae_pb2.SampleRequest(**self._names, n=n, temperature=temperature, output=_output(sample, png),
                                        seed=_seed(seed))  # fmt: skip
        reply = self._stub.Sample(request, timeout=self.timeout_s)
        return _generated(reply.images, reply.latents, reply)

    def sample_stream(
        self, n: int, chunk_size: int = 0, temperature: float = 1.0, seed: int | None = None, *, png: bool = False
    ) -> Iterator[Generated]:
        request = vae_pb2.SampleStreamRequest(**self._names, n=n, chunk_size=chunk_size, temperature=temperature,
                                              seed=_seed(seed), output=_output(False, png))  # fmt: skip
        for reply in self._stub.SampleStream(request):
            yield _generated(reply.images, reply.latents, reply)

    def interpolate(
        self,
        start: np.ndarray | bytes,
        end: np.ndarray | bytes,
        steps: int = 8,
        spherical: bool = True,
        seed: int | None = None,
        *,
        png: bool = False,
    ) -> Generated:
        method = vae_pb2.INTERPOLATION_METHOD_SPHERICAL if spherical else vae_pb2.INTERPOLATION_METHOD_LINEAR
        request = vae_pb2.InterpolateRequest(**self._names, start=_endpoint(start), end=_endpoint(end), steps=steps,
                                             method=method, seed=_seed(seed), output=_output(False, png))  # fmt: skip
        reply = self._stub.Interpolate(request, timeout=self.timeout_s)
        return _generated(reply.images, reply.latents, reply)

    def arithmetic(
        self, terms: Sequence[tuple[float, np.ndarray | bytes | str]], seed: int | None = None, *, png: bool = False
    ) -> Generated:
        """Decode sum(weight * value): values are images [C, H, W] or PNG files, latents [D] or attribute names."""
        request = vae_pb2.ArithmeticRequest(
            **self._names, terms=[vae_pb2.Term(weight=w, value=_endpoint(v)) for w, v in terms], seed=_seed(seed),
            output=_output(False, png),
        )  # fmt: skip
        reply = self._stub.Arithmetic(request, timeout=self.timeout_s)
        return _generated(reply.images, reply.latent, reply)

    def score(self, images: ImageInput, samples: int = 0, seed: int | None = None) -> list[Score]:
        request = vae_pb2.ScoreRequest(**self._names, images=_images(images), importance_samples=samples,
                                       seed=_seed(seed))  # fmt: skip
        reply = self._stub.Score(request, timeout=self.timeout_s)
        return [Score(s.elbo, s.reconstruction, s.kl, s.log_likelihood) for s in reply.scores]
