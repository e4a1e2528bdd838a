"""The shipped default model (deploy/model_repository): complete, self-describing, evaluated as promised,
and served by the service with no flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from service.config import Settings
from vaecore.repository import load_repository

REPO = Path(__file__).resolve().parents[1] / "deploy" / "model_repository"


def test_default_settings_serve_the_shipped_repository() -> None:
    assert Settings().model_repository == REPO
    models = load_repository(REPO)
    assert list(models) == ["mnist"]
    mnist = models["mnist"]
    assert mnist.latent_dim == 32 and mnist.image_shape == (1, 28, 28) and mnist.likelihood == "bernoulli"
    assert {f"class_{d}" for d in range(10)} | {"thickness", "slant"} == set(mnist.attributes)


def test_metadata_records_the_published_evaluation() -> None:
    metadata = json.loads((REPO / "mnist.vae.json").read_text())
    evaluation = metadata["evaluation"]
    assert evaluation["importance_samples"] == 5000 and evaluation["images"] == 10000
    assert evaluation["dataset"] == "mnist" and evaluation["split"] == "test"
    assert 70.0 < evaluation["test_nll"] < -evaluation["test_elbo"]  # the IWAE estimate is tighter than the ELBO
    assert metadata["training"]["train_seconds"] > 0 and metadata["dataset"] == "mnist"


def test_configs_parse_and_networks_run() -> None:
    for name, example in (("mnist_encoder", torch.rand(3, 1, 28, 28)), ("mnist_decoder", torch.randn(3, 32))):
        config = text_format.Parse((REPO / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert (
            config.platform == "pytorch_libtorch" and config.instance_group[0].kind == config.instance_group[0].KIND_GPU
        )
        module = torch.jit.load(str(REPO / name / "1" / "model.pt"))
        with torch.no_grad():
            outputs = module(example)
        assert [list(o.shape[1:]) for o in outputs] == [list(t.dims) for t in config.output]
        assert all(np.isfinite(o.numpy()).all() for o in outputs)
