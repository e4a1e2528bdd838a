"""One check of a model in a model repository: its metadata, its TorchScript networks and its Triton configs
agree with each other. Used for every shipped model (tests/test_shipped_model.py) and for exports the tests make.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from vaecore.repository import ModelSpec, NetworkSpec, file_sha256, metadata_path, parse_metadata, read_metadata

TRITON_TYPES = {model_config_pb2.TYPE_FP32: ("TYPE_FP32", torch.float32)}


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    """config.pbtxt by Triton's own schema (unknown fields are refused)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def check_network(model: ModelSpec, network: NetworkSpec, batch: int = 2) -> list[torch.Tensor]:
    """The network's config.pbtxt names its tensors as the metadata does, with the same dims and types; its
    TorchScript file has the recorded digest and, run on a batch, gives outputs of exactly the configured dims.
    Returns the outputs (of a random batch)."""
    directory = model.directory / network.model_name
    config = parse_config(directory / "config.pbtxt")
    assert config.name == network.model_name, f"{directory}: config names {config.name!r}"
    assert config.max_batch_size >= 1, f"{directory}: max_batch_size {config.max_batch_size}"
    for kind, declared, specs in (("input", config.input, network.inputs), ("output", config.output, network.outputs)):
        got = [(t.name, tuple(t.dims), TRITON_TYPES[t.data_type][0]) for t in declared]
        want = [(t.name, tuple(t.dims), t.data_type) for t in specs]
        assert got == want, f"{directory}/config.pbtxt {kind}s {got}, metadata says {want}"

    path = model.torchscript_path(network)
    if network.sha256 is not None:
        assert file_sha256(path) == network.sha256, f"{path} does not have the sha256 its metadata records"
    module = torch.jit.load(str(path), map_location="cpu").eval()
    (tensor,) = config.input
    generator = torch.Generator().manual_seed(0)
    example = torch.rand((batch, *tensor.dims), generator=generator, dtype=TRITON_TYPES[tensor.data_type][1])
    if network == model.decoder:
        example = torch.randn((batch, *tensor.dims), generator=generator)
    with torch.no_grad():
        outputs = module(example)
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    assert len(outputs) == len(config.output), f"{path}: {len(outputs)} outputs, config declares {len(config.output)}"
    for declared, value in zip(config.output, outputs, strict=True):
        assert list(value.shape) == [batch, *declared.dims], (
            f"{path}: output {declared.name} has shape {list(value.shape)}; config.pbtxt says [B, {list(declared.dims)}]"
        )
        assert value.dtype == TRITON_TYPES[declared.data_type][1] and torch.isfinite(value).all()
    return outputs


def check_model(repository: Path, name: str) -> ModelSpec:
    """Everything about model `name` of `repository` agrees: metadata fields with each other and with the training
    config it records, with the encoder's and decoder's tensor specs, with their config.pbtxt files and with what
    the TorchScript networks actually compute. Returns the parsed spec."""
    path = metadata_path(repository, name)
    model = parse_metadata(path)
    document = read_metadata(path)
    c, h, w = model.image_shape
    d = model.latent_dim
    assert model.name == name and c in (1, 3) and h >= 1 and w >= 1 and d >= 1, f"{path}: {model}"
    assert document.get("value_range", [0.0, 1.0]) == [0.0, 1.0]
    assert model.likelihood in ("bernoulli", "gaussian"), f"{path}: likelihood {model.likelihood!r}"
    if model.likelihood == "gaussian":
        assert model.gaussian_log_scale is not None and model.gaussian_log_scale.shape == (c,), (
            f"{path}: a Gaussian model needs one log scale per channel ({c}), got {document.get('gaussian_log_scale')}"
        )
        assert np.isfinite(model.gaussian_log_scale).all()
    else:
        assert model.gaussian_log_scale is None
    config = document.get("model_config")
    if config is not None:
        recorded = (config["image_channels"], config["image_size"], config["image_size"], config["latent_dim"])
        assert recorded == (c, h, w, d), f"{path}: model_config {config} disagrees with image_shape/latent_dim"
        assert config["likelihood"] == model.likelihood
    for attribute, vector in model.attributes.items():
        assert vector.shape == (d,) and np.isfinite(vector).all(), f"{path}: attribute {attribute} is not [{d}]"

    assert model.encoder.model_name == f"{name}_encoder" and model.decoder.model_name == f"{name}_decoder"
    assert [t.dims for t in model.encoder.inputs] == [(c, h, w)]
    assert [t.dims for t in model.encoder.outputs] == [(d,), (d,)]
    assert [t.dims for t in model.decoder.inputs] == [(d,)]
    assert [t.dims for t in model.decoder.outputs] == [(c, h, w), (c, h, w)]

    mu, logvar = check_network(model, model.encoder)
    mean, logits = check_network(model, model.decoder)
    assert mu.shape == logvar.shape == (2, d)
    assert mean.shape == logits.shape == (2, c, h, w) and float(mean.min()) >= 0.0 and float(mean.max()) <= 1.0
    torch.testing.assert_close(mean, torch.sigmoid(logits))
    return model
