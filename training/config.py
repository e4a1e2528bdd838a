"""Configuration dataclasses, stored inside every checkpoint so a model can be rebuilt from the file alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Likelihood = Literal["bernoulli", "gaussian"]
Objective = Literal["elbo", "iwae", "mmd"]


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network; everything the exporter and the service need to rebuild it."""

    latent_dim: int = 32
    image_channels: int = 1
    image_size: int = 28
    hidden_channels: int = 32
    hidden_units: int = 256
    likelihood: Likelihood = "bernoulli"
    # Stride-2 stages (channels double at each): 2 for 28x28 (-> 7x7), 4 for 64x64 (-> 4x4).
    stages: int = 2
    # Pre-activation residual blocks (two 3x3 convs) after each encoder stage / before each decoder stage.
    # 0 and 0 is the original shallow network, which is what checkpoints without these keys were.
    encoder_blocks: int = 0
    decoder_blocks: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**data)

    @property
    def bottom_side(self) -> int:
        """Side of the smallest feature map, after all stride-2 stages."""
        return self.image_size // 2**self.stages

    def channels(self, stage: int) -> int:
        """Feature channels after stride-2 stage `stage` (1-based): hidden_channels doubling per stage."""
        return self.hidden_channels * 2 ** (stage - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainConfig:
    """Optimisation settings; defaults are the ones the shipped MNIST model was trained with."""

    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int = 50
    batch_size: int = 128
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-5
    objective: Objective = "elbo"
    train_samples: int = 1
    beta: float = 1.0
    kl_warmup_epochs: float = 0.0
    free_bits: float = 0.0
    # lambda of the MMD-VAE objective (`objective="mmd"`): loss = -E log p(x|z) + mmd_weight * MMD^2(q(z), p(z)),
    # reconstruction in nats summed over pixels; see training/train.py::training_loss for why 1000.
    mmd_weight: float = 1000.0
    ema_decay: float = 0.999
    seed: int = 0
    threads: int = 0
    device: str = "cpu"
    model: ModelConfig = field(default_factory=ModelConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data["model"] = ModelConfig.from_dict(data["model"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
