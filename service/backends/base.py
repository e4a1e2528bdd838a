"""The one small interface every backend implements. Inputs and outputs are numpy float32 arrays."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vaecore.repository import ModelSpec


class Backend(Protocol):
    name: str

    async def start(self) -> None:
        """Load or connect; raise `Unavailable` if it cannot serve at all."""

    def ready(self) -> bool:
        """Whether calls are expected to succeed now (drives the health service)."""

    async def encode(self, model: ModelSpec, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images [B, C, H, W] in [0, 1] -> (mu [B, D], logvar [B, D])."""

    async def decode(self, model: ModelSpec, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """latents [B, D] -> (mean [B, C, H, W] in [0, 1], logits [B, C, H, W])."""

    async def close(self) -> None:
        """Release threads, connections and models."""
