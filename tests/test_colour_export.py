"""A colour model's export (3x64x64, Gaussian) beside a grey one: the Triton configs declare [3, 64, 64] where
the TorchScript networks really produce and take [B, 3, 64, 64], for both Triton variants, and every other field
of the metadata agrees (tests/repository_checks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.repository_checks import check_model, parse_config
from training.export import derive_python_variant


@pytest.fixture(scope="module")
def python_repository(mixed_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mixed_python")
    derive_python_variant(mixed_repository, out, max_batch_size=16)
    return out


def test_colour_configs_declare_what_the_torchscript_computes(mixed_repository: Path) -> None:
    encoder = parse_config(mixed_repository / "tinyrgb_encoder" / "config.pbtxt")
    decoder = parse_config(mixed_repository / "tinyrgb_decoder" / "config.pbtxt")
    assert [list(t.dims) for t in encoder.input] == [[3, 64, 64]]
    assert [(t.name, list(t.dims)) for t in decoder.output] == [("mean__0", [3, 64, 64]), ("logits__1", [3, 64, 64])]
    network = torch.jit.load(str(mixed_repository / "tinyrgb_decoder" / "1" / "model.pt"))
    with torch.no_grad():
        mean, logits = network(torch.randn(5, *decoder.input[0].dims))
    assert list(mean.shape) == list(logits.shape) == [5, 3, 64, 64]
    network = torch.jit.load(str(mixed_repository / "tinyrgb_encoder" / "1" / "model.pt"))
    with torch.no_grad():
        mu, logvar = network(torch.rand(5, 3, 64, 64))
    assert [list(t.dims) for t in encoder.output] == [list(mu.shape[1:]), list(logvar.shape[1:])] == [[4], [4]]


@pytest.mark.parametrize("variant", ["libtorch", "python"])
def test_every_model_of_a_mixed_repository_agrees_with_itself(
    mixed_repository: Path, python_repository: Path, variant: str
) -> None:
    repository = mixed_repository if variant == "libtorch" else python_repository
    grey, colour = check_model(repository, "tiny"), check_model(repository, "tinyrgb")
    assert (grey.image_shape, grey.likelihood) == ((1, 28, 28), "bernoulli")
    assert (colour.image_shape, colour.likelihood) == ((3, 64, 64), "gaussian")
    assert colour.gaussian_log_scale is not None and colour.gaussian_log_scale.shape == (3,)
