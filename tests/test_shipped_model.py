"""The shipped models (deploy/model_repository): every one complete and self-describing (its metadata agrees
with its networks and Triton configs), all of them served at once by name with no flags; the default MNIST
model evaluated as promised. A model added to the repository is covered by these tests with no edit here."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from tests.repository_checks import check_model, parse_config
from tests.service.harness import serving, stub_for
from vae_client.codecs import array_to_tensor, tensor_to_array
from vae_client.proto_gen.vae.v1 import vae_pb2
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub
from vaecore.repository import load_repository, metadata_files, read_metadata

REPO = Path(__file__).resolve().parents[1] / "deploy" / "model_repository"
SHIPPED = sorted(path.name.removesuffix(".vae.json") for path in metadata_files(REPO))
V = vae_pb2


def test_default_settings_serve_the_shipped_repository() -> None:
    assert Settings().model_repository == REPO
    models = load_repository(REPO)
    assert "mnist" in models and sorted(models) == SHIPPED
    mnist = models["mnist"]
    assert mnist.latent_dim == 32 and mnist.image_shape == (1, 28, 28) and mnist.likelihood == "bernoulli"
    assert {f"class_{d}" for d in range(10)} | {"thickness", "slant"} == set(mnist.attributes)


def test_metadata_records_the_published_evaluation() -> None:
    metadata = read_metadata(REPO / "mnist.vae.json")
    evaluation = metadata["evaluation"]
    assert evaluation["importance_samples"] == 5000 and evaluation["images"] == 10000
    assert evaluation["dataset"] == "mnist" and evaluation["split"] == "test"
    assert 70.0 < evaluation["test_nll"] < -evaluation["test_elbo"]  # the IWAE estimate is tighter than the ELBO
    assert metadata["training"]["train_seconds"] > 0 and metadata["dataset"] == "mnist"


@pytest.mark.parametrize("name", SHIPPED)
def test_metadata_agrees_with_networks_and_triton_configs(name: str) -> None:
    model = check_model(REPO, name)
    for network in (model.encoder, model.decoder):
        config = parse_config(REPO / network.model_name / "config.pbtxt")
        assert config.platform == "pytorch_libtorch", f"{network.model_name}: the shipped repository is libtorch"
        assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU


@pytest.fixture(scope="module")
def shipped_stub() -> Iterator[VaeServiceStub]:
    """The service with default settings but its ports: every shipped model at once."""
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, torch_threads=1)
    with serving(settings) as server, stub_for(server) as stub:
        yield stub


def test_mnist_stays_the_default_model(shipped_stub: VaeServiceStub) -> None:
    """Requests that name no model go to the first model by name unless --default-model says otherwise: a model
    shipped beside MNIST must not silently take its place (name it after "mnist", or set the default)."""
    assert shipped_stub.ListModels(V.ListModelsRequest()).default_model == "mnist"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_model_serves_by_name(shipped_stub: VaeServiceStub, name: str) -> None:
    listed = {m.name: m for m in shipped_stub.ListModels(V.ListModelsRequest()).models}
    assert sorted(listed) == SHIPPED
    info = shipped_stub.GetModelInfo(V.GetModelInfoRequest(model=name)).info
    shape = tuple(info.image_shape)
    assert info == listed[name] and info.latent_dim >= 1 and len(shape) == 3
    sample = shipped_stub.Sample(V.SampleRequest(model=name, n=3, seed=V.Seed(value=1)))
    images = tensor_to_array(sample.images.tensor, "images")
    assert images.shape == (3, *shape) and np.isfinite(images).all() and 0.0 <= images.min() <= images.max() <= 1.0
    encoded = shipped_stub.Encode(V.EncodeRequest(model=name, images=V.Images(tensor=array_to_tensor(images))))
    assert tensor_to_array(encoded.mean, "mean").shape == (3, info.latent_dim)
    pngs = shipped_stub.Decode(V.DecodeRequest(model=name, latents=sample.latents,
                                               output=V.OutputOptions(format=V.IMAGE_FORMAT_PNG))).images.png.images  # fmt: skip
    with Image.open(io.BytesIO(pngs[0])) as picture:
        assert picture.mode == ("L" if shape[0] == 1 else "RGB") and picture.size == (shape[2], shape[1])
    scores = shipped_stub.Score(V.ScoreRequest(model=name, images=V.Images(tensor=array_to_tensor(images)),
                                               importance_samples=4, seed=V.Seed(value=1))).scores  # fmt: skip
    assert len(scores) == 3 and all(np.isfinite([s.elbo, s.log_likelihood]).all() for s in scores)
