"""The benchmark's requests, serialized once: what the load generator sends, byte for byte, on every call.

Service requests carry float32 tensors (not PNG) and a fixed seed, so every reply to one request has the same
size (an unseeded request gets a fresh seed echoed back, whose varint length varies). Triton-direct requests
are `ModelInfer` calls asking the network for the same outputs the service's Triton backend asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_client.codecs import array_to_tensor
from vae_client.proto_gen.vae.v1 import vae_pb2
from vaecore.repository import ModelSpec, NetworkSpec

SERVICE = "/vae.v1.VaeService/"
TRITON_INFER = "/inference.GRPCInferenceService/ModelInfer"
METHODS = ("Sample", "Decode", "Encode")
NETWORK_OF = {"Sample": "decoder", "Decode": "decoder", "Encode": "encoder"}  # what one request runs
SEED = vae_pb2.Seed(value=20260101)
FLOAT32 = vae_pb2.OutputOptions(format=vae_pb2.IMAGE_FORMAT_FLOAT32)


@dataclass(frozen=True)
class Payload:
    path: str  # full gRPC method path
    body: bytes  # the serialized request
    items: int = 1  # images (or latents) the request asks for
    stream: bool = False

    def save(self, folder: Path, name: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        file = folder / f"{name}.bin"
        file.write_bytes(self.body)
        return file


def _latents(model: ModelSpec, n: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, model.latent_dim), dtype=np.float32)


def _images(model: ModelSpec, n: int) -> np.ndarray:
    return np.random.default_rng(2).random((n, *model.image_shape), dtype=np.float32)


def service_request(method: str, model: ModelSpec, n: int = 1) -> Payload:
    """Sample, Decode or Encode of `n` items (images out as float32, Encode without posterior samples)."""
    if method == "Sample":
        message = vae_pb2.SampleRequest(model=model.name, n=n, output=FLOAT32, seed=SEED)
    elif method == "Decode":
        latents = array_to_tensor(_latents(model, n))
        message = vae_pb2.DecodeRequest(model=model.name, latents=latents, output=FLOAT32, seed=SEED)
    elif method == "Encode":
        images = vae_pb2.Images(tensor=array_to_tensor(_images(model, n)))
        message = vae_pb2.EncodeRequest(model=model.name, images=images, seed=SEED)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return Payload(SERVICE + method, message.SerializeToString(), n)


def sample_stream(model: ModelSpec, n: int) -> Payload:
    """SampleStream of `n` images in the server's default chunks."""
    message = vae_pb2.SampleStreamRequest(model=model.name, n=n, output=FLOAT32, seed=SEED)
    return Payload(SERVICE + "SampleStream", message.SerializeToString(), n, stream=True)


def triton_request(method: str, model: ModelSpec, n: int = 1) -> Payload:
    """The Triton call one service request of `method` makes: the network, its input, both outputs."""
    # Imported here: a machine without the Triton client (a GPU box with `--no-triton`) still runs the suite.
    from tritonclient.grpc import service_pb2 as triton_pb2

    network: NetworkSpec = model.decoder if NETWORK_OF[method] == "decoder" else model.encoder
    rows = _latents(model, n) if network is model.decoder else _images(model, n)
    tensor = triton_pb2.ModelInferRequest.InferInputTensor(
        name=network.input_name, datatype="FP32", shape=list(rows.shape)
    )
    outputs = [triton_pb2.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in network.output_names]
    message = triton_pb2.ModelInferRequest(
        model_name=network.model_name, inputs=[tensor], outputs=outputs, raw_input_contents=[rows.tobytes()]
    )
    return Payload(TRITON_INFER, message.SerializeToString(), n)
