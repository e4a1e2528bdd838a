"""End to end on the CelebA-layout fixture: a Gaussian 64x64 RGB VAE trains, exports with attribute vectors from
the labels, is served by the real gRPC service, and does attribute arithmetic ("a woman with glasses")."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.config import Settings
from tests.celeba_fixture import make_celeba_dir
from tests.service.harness import serving, stub_for
from training.config import ModelConfig, TrainConfig
from training.data import DatasetSplits, load_dataset
from training.export import export_repository
from training.model import load_checkpoint
from training.train import train
from vae_client.codecs import array_to_tensor, tensor_to_array
from vae_client.proto_gen.vae.v1 import vae_pb2
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub
from vaecore.repository import read_metadata

V = vae_pb2
RGB_MODEL = ModelConfig(latent_dim=4, hidden_channels=4, hidden_units=16, image_channels=3, image_size=64,
                        likelihood="gaussian", stages=4)  # fmt: skip


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, DatasetSplits]]:
    """(the exported repository, the dataset) with the data cache inside the test's own folder."""
    root = tmp_path_factory.mktemp("celeba_e2e")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAE_DATA_CACHE", str(root / "cache"))
        folder = make_celeba_dir(root / "celeba")
        config = TrainConfig(dataset="celeba", data_dir=str(folder), epochs=2, batch_size=16, model=RGB_MODEL,
                             threads=1, learning_rate=3e-3, ema_decay=0.5)  # fmt: skip
        model, checkpoint = load_checkpoint(train(config, root / "run"))
        export_repository(model, checkpoint, root / "repo", "faces", max_batch_size=16)
        yield root / "repo", load_dataset("celeba", folder)


@pytest.fixture(scope="module")
def stub(faces: tuple[Path, DatasetSplits]) -> Iterator[VaeServiceStub]:
    settings = Settings(host="127.0.0.1", port=0, metrics_port=0, model_repository=faces[0], max_batch_size=16,
                        max_wait_ms=5, torch_threads=1)  # fmt: skip
    with serving(settings) as server, stub_for(server) as s:
        yield s


def _metadata(repo: Path) -> dict:
    return read_metadata(repo / "faces.vae.json")


def _vector(repo: Path, name: str) -> np.ndarray:
    return np.asarray(_metadata(repo)["attributes"][name]["vector"], np.float32)


def _network(repo: Path, part: str) -> torch.jit.ScriptModule:
    return torch.jit.load(str(repo / f"faces_{part}" / "1" / "model.pt"))


def test_export_describes_an_rgb_gaussian_model_with_label_attributes(faces: tuple[Path, DatasetSplits]) -> None:
    metadata = _metadata(faces[0])
    assert metadata["image_shape"] == [3, 64, 64] and metadata["likelihood"] == "gaussian"
    assert metadata["dataset"] == "celeba" and metadata["label_names"] == []
    expected = {"Eyeglasses", "Male", "Smiling", "Young", "mean_Eyeglasses", "mean_not_Eyeglasses", "mean_Male",
                "mean_Female", "mean_Smiling", "mean_not_Smiling", "mean_Young", "mean_Old", "mean"}  # fmt: skip
    assert set(metadata["attributes"]) == expected
    assert (
        metadata["attributes"]["Eyeglasses"]["positives"] == 16
        and metadata["attributes"]["Eyeglasses"]["negatives"] == 32
    )


def test_attribute_vectors_are_mean_latent_differences(faces: tuple[Path, DatasetSplits]) -> None:
    repo, data = faces
    with torch.no_grad():
        means = _network(repo, "encoder")(torch.from_numpy(data.train.images))[0].numpy()
    assert data.train.attributes is not None
    glasses = data.train.attributes[:, data.attribute_names.index("Eyeglasses")].astype(bool)
    male = data.train.attributes[:, data.attribute_names.index("Male")].astype(bool)
    np.testing.assert_allclose(_vector(repo, "Eyeglasses"), means[glasses].mean(0) - means[~glasses].mean(0), atol=1e-5)
    np.testing.assert_allclose(_vector(repo, "mean_Female"), means[~male].mean(0), atol=1e-5)
    np.testing.assert_allclose(_vector(repo, "mean"), means.mean(0), atol=1e-5)


def test_model_info_lists_the_attributes(stub: VaeServiceStub) -> None:
    info = stub.GetModelInfo(V.GetModelInfoRequest(model="faces")).info
    assert list(info.image_shape) == [3, 64, 64] and info.likelihood == "gaussian" and info.dataset == "celeba"
    assert {"Eyeglasses", "Male", "mean_Female"} <= set(info.attribute_names)


def test_a_woman_with_glasses_is_mean_female_plus_eyeglasses(
    stub: VaeServiceStub, faces: tuple[Path, DatasetSplits]
) -> None:
    repo = faces[0]
    terms = [V.Term(weight=1, value=V.Endpoint(attribute="mean_Female")),
             V.Term(weight=1, value=V.Endpoint(attribute="Eyeglasses"))]  # fmt: skip
    reply = stub.Arithmetic(V.ArithmeticRequest(model="faces", terms=terms))
    expected = _vector(repo, "mean_Female") + _vector(repo, "Eyeglasses")
    np.testing.assert_allclose(tensor_to_array(reply.latent, "latent")[0], expected, atol=1e-5)
    image = tensor_to_array(reply.images.tensor, "images")
    assert image.shape == (1, 3, 64, 64) and image.min() >= 0 and image.max() <= 1
    with torch.no_grad():
        local = _network(repo, "decoder")(torch.from_numpy(expected[None]))[0].numpy()
    np.testing.assert_allclose(image, local, atol=1e-5)

    png = stub.Arithmetic(V.ArithmeticRequest(model="faces", terms=terms,
                                              output=V.OutputOptions(format=V.IMAGE_FORMAT_PNG)))  # fmt: skip
    (data,) = png.images.png.images
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.size == (64, 64) and picture.mode == "RGB"
        np.testing.assert_allclose(np.asarray(picture).transpose(2, 0, 1) / 255.0, image[0], atol=1 / 255 + 1e-6)


def test_an_rgb_picture_as_a_term_gets_glasses(stub: VaeServiceStub, faces: tuple[Path, DatasetSplits]) -> None:
    repo, data = faces
    assert data.test.attributes is not None
    picture = data.test.images[:1]
    terms = [V.Term(weight=1, value=V.Endpoint(image=V.Images(tensor=array_to_tensor(picture)))),
             V.Term(weight=1, value=V.Endpoint(attribute="Eyeglasses"))]  # fmt: skip
    reply = stub.Arithmetic(V.ArithmeticRequest(model="faces", terms=terms))
    with torch.no_grad():
        mu = _network(repo, "encoder")(torch.from_numpy(picture))[0].numpy()
    np.testing.assert_allclose(
        tensor_to_array(reply.latent, "latent")[0], mu[0] + _vector(repo, "Eyeglasses"), atol=1e-5
    )
    assert tensor_to_array(reply.images.tensor, "images").shape == (1, 3, 64, 64)


def test_the_attribute_picture_sweeps_binary_attributes_of_a_colour_model(
    faces: tuple[Path, DatasetSplits], tmp_path: Path
) -> None:
    """`python -m training plots` draws attribute sweeps for CelebA-layout data too (it once knew only MNIST's
    thickness and slant, and crashed on a colour model): 3 test images x the swept attributes, 9 strengths each."""
    from training.__main__ import SWEPT_ATTRIBUTES, _attribute_picture

    repo, data = faces
    model, _ = load_checkpoint(repo.parent / "run" / "best.pt")
    swept = [name for name in SWEPT_ATTRIBUTES if name in data.attribute_names][:3]
    assert swept, "the fixture's attributes include CelebA's Eyeglasses, Smiling and Male"
    with Image.open(_attribute_picture(model, data, tmp_path / "attributes.png")) as picture:
        assert picture.mode == "RGB"
        rows = round(picture.height / (picture.width / 9))  # square cells, 9 strengths per row
        assert rows == 3 * len(swept)
