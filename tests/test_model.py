"""The network's shapes: the original shallow layout keeps its parameter names (old checkpoints load), and
residual blocks and stride-2 stages give the right shapes for 28x28 grey and 64x64 colour images."""

from __future__ import annotations

import pytest
import torch

from training.config import ModelConfig
from training.model import ConvVAE

# The parameter names and shapes of every checkpoint written before blocks and stages existed.
SHALLOW_LAYOUT = {
    "log_scale": (1,),
    "encoder.features.0.weight": (32, 1, 4, 4),
    "encoder.features.0.bias": (32,),
    "encoder.features.2.weight": (64, 32, 4, 4),
    "encoder.features.2.bias": (64,),
    "encoder.features.5.weight": (256, 64 * 7 * 7),
    "encoder.features.5.bias": (256,),
    "encoder.head.weight": (64, 256),
    "encoder.head.bias": (64,),
    "decoder.net.0.weight": (256, 32),
    "decoder.net.0.bias": (256,),
    "decoder.net.2.weight": (64 * 7 * 7, 256),
    "decoder.net.2.bias": (64 * 7 * 7,),
    "decoder.net.5.weight": (64, 32, 4, 4),
    "decoder.net.5.bias": (32,),
    "decoder.net.7.weight": (32, 1, 4, 4),
    "decoder.net.7.bias": (1,),
}


def test_the_default_network_keeps_the_layout_of_checkpoints_written_before_blocks_existed() -> None:
    state = ConvVAE(ModelConfig()).state_dict()
    assert {name: tuple(t.shape) for name, t in state.items()} == SHALLOW_LAYOUT


@pytest.mark.parametrize(
    ("config", "image"),
    [
        (ModelConfig(latent_dim=4, hidden_channels=4, hidden_units=16, encoder_blocks=2, decoder_blocks=1), (1, 28, 28)),
        (ModelConfig(latent_dim=4, hidden_channels=4, hidden_units=16, image_channels=3, image_size=64, stages=4,
                     likelihood="gaussian", decoder_blocks=1), (3, 64, 64)),
    ],
)  # fmt: skip
def test_blocks_and_stages_give_the_image_shape_back(config: ModelConfig, image: tuple[int, int, int]) -> None:
    model = ConvVAE(config).eval()
    mu, logvar = model.encoder(torch.rand(2, *image))
    assert mu.shape == logvar.shape == (2, config.latent_dim)
    assert model.decoder(mu).shape == (2, *image)
    blocks = sum(1 for m in model.modules() if type(m).__name__ == "ResidualBlock")
    assert blocks == config.stages * (config.encoder_blocks + config.decoder_blocks)


def test_an_image_size_the_stages_cannot_halve_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 2\\*\\*stages"):
        ConvVAE(ModelConfig(image_size=28, stages=3))
