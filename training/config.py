"""Configuration dataclasses, stored inside every checkpoint so a model can be rebuilt from the file alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Likelihood = Literal["bernoulli", "gaussian"]
Objective = Literal["elbo", "iwae"]


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network; everything the exporter and the service need to rebuild it."""

    latent_dim: int = 32
    image_channels: int = 1
    image_size: int = 28
    hidden_channels: int = 32
    hidden_units: int = 256
    likelihood: Likelihood = "bernoulli"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**data)

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
