"""The convolutional VAE: encoder q(z|x) = N(mu, diag(sigma^2)) and decoder p(x|z).

Importing this module has no side effects; `ConvVAE(ModelConfig(...))` builds the network, and the
config is saved with every checkpoint so `load_checkpoint` can rebuild it from the file alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from training import losses
from training.config import ModelConfig
from vaecore.repository import METADATA_SUFFIX, NetworkSpec, network_file, read_metadata


class ResidualBlock(nn.Module):
    """x + conv3x3(ELU(conv3x3(ELU(x)))): depth without losing the signal path (He et al. 2016)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    """x [B, C, H, W] in [0, 1] -> (mu, logvar), each [B, latent_dim]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = config.image_channels
        for stage in range(1, config.stages + 1):
            out_channels = config.channels(stage)
            layers += [nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1)]
            layers += [ResidualBlock(out_channels) for _ in range(config.encoder_blocks)]
            layers += [nn.ELU()]
            in_channels = out_channels
        side = config.bottom_side
        self.features = nn.Sequential(
            *layers,
            nn.Flatten(),
            nn.Linear(in_channels * side * side, config.hidden_units),
            nn.ELU(),
        )
        self.head = nn.Linear(config.hidden_units, 2 * config.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.features(x)).chunk(2, dim=-1)
        return mu, logvar


class Decoder(nn.Module):
    """z [B, latent_dim] -> pixel logits [B, C, H, W] (Bernoulli log-odds, or the Gaussian mean pre-sigmoid)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        side, bottom = config.bottom_side, config.channels(config.stages)
        layers: list[nn.Module] = [
            nn.Linear(config.latent_dim, config.hidden_units),
            nn.ELU(),
            nn.Linear(config.hidden_units, bottom * side * side),
            nn.Unflatten(1, (bottom, side, side)),
        ]
        for stage in range(config.stages, 0, -1):
            in_channels = config.channels(stage)
            out_channels = config.channels(stage - 1) if stage > 1 else config.image_channels
            layers += [ResidualBlock(in_channels) for _ in range(config.decoder_blocks)]
            layers += [nn.ELU(), nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ConvVAE(nn.Module):
    """Encoder + decoder + (for the Gaussian likelihood) a learned per-channel log standard deviation."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.stages < 1 or config.image_size % 2**config.stages != 0:
            raise ValueError(f"image_size must be a multiple of 2**stages, got {config.image_size}, {config.stages}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.log_scale = nn.Parameter(torch.full((config.image_channels,), -2.0))

    def decoder_log_scale(self) -> torch.Tensor | None:
        """The Gaussian likelihood's log sigma, clamped to keep the density finite; None for Bernoulli."""
        if self.config.likelihood != "gaussian":
            return None
        return self.log_scale.clamp(min=-6.0, max=2.0)

    def log_likelihood(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return losses.log_likelihood(x, logits, self.config.likelihood, self.decoder_log_scale())

    def mean_image(self, logits: torch.Tensor) -> torch.Tensor:
        """E[x|z] in [0, 1] for both likelihoods."""
        return torch.sigmoid(logits)

    def log_importance_weights(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """[samples, B] log weights log p(x, z_k) - log q(z_k|x), z_k ~ q(z|x) reparameterized."""
        mu, logvar = self.encoder(x)
        z = losses.reparameterize(mu, logvar, samples)
        logits = self.decoder(z.flatten(0, 1)).unflatten(0, (samples, x.shape[0]))
        return losses.log_importance_weights(x, z, mu, logvar, logits, self.config.likelihood, self.decoder_log_scale())

    def elbo_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p(x|z) with one reparameterized sample, KL per dimension, mu) per example."""
        mu, logvar = self.encoder(x)
        z = losses.reparameterize(mu, logvar, 1)[0]
        reconstruction = self.log_likelihood(x, self.decoder(z))
        return reconstruction, losses.kl_to_standard_normal(mu, logvar), mu


def save_checkpoint(path: Path, model: ConvVAE, extra: dict[str, Any]) -> None:
    """Write atomically so an interrupted save never leaves a truncated checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model_config": model.config.to_dict(), "model_state": model.state_dict(), **extra}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, map_location: str = "cpu") -> tuple[ConvVAE, dict[str, Any]]:
    """Rebuild the model from the checkpoint alone; returns (model in eval mode, the whole checkpoint dict).

    Loads the EMA weights when the checkpoint has them: they are the ones evaluated and exported. A model
    repository's `<name>.vae.json` is accepted too (`load_exported`).
    """
    if path.name.endswith(METADATA_SUFFIX):
        return load_exported(path)
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    model = ConvVAE(ModelConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint.get("ema_state") or checkpoint["model_state"])
    model.eval()
    return model, checkpoint


def load_exported(metadata_file: Path) -> tuple[ConvVAE, dict[str, Any]]:
    """Rebuild the training model from an exported model: its `.vae.json` and the weights of its two TorchScript
    networks. So a shipped model can be evaluated or fine-tuned further (`--init-from`) without its training
    checkpoint, which is not kept in git. Returns what `load_checkpoint` does; the dict carries the metadata's
    training record, not optimizer state."""
    metadata = read_metadata(metadata_file)
    model = ConvVAE(ModelConfig.from_dict(metadata["model_config"]))
    state: dict[str, torch.Tensor] = {}
    for part in ("encoder", "decoder"):
        network = NetworkSpec.from_json(metadata[part])
        path = network_file(metadata_file.parent, network, metadata["version"])
        state.update(torch.jit.load(str(path), map_location="cpu").state_dict())
    # The decoder's Gaussian scale is in the metadata (clamped as served); a Bernoulli model never uses it.
    scale = metadata.get("gaussian_log_scale")
    state["log_scale"] = torch.tensor(scale) if scale is not None else model.log_scale.detach().clone()
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ValueError(f"{metadata_file}: the exported networks lack {sorted(missing)}")
    model.load_state_dict(state)  # strict: every parameter comes from the export, and no extra one
    model.eval()
    training = metadata.get("training", {})
    checkpoint = {
        "model_config": metadata["model_config"],
        "train_config": training.get("config"),
        "earlier_train_seconds": training.get("train_seconds", 0.0),
        "history": [],
        "label_names": metadata.get("label_names", []),
        "exported_from": str(metadata_file),
    }
    return model, checkpoint
