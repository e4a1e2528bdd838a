"""The one small interface every backend implements. Inputs and outputs are numpy float32 arrays.

A backend serves versions of models (`ModelSpec`, whose `version` names one): those it is constructed with are
loaded by `start`, and the model registry (service/registry) adds and removes others while serving with `load` and
`unload`. Every call names the version it is for, so two versions of one model serve side by side."""

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

    async def load(self, model: ModelSpec) -> None:
        """Make one version servable (load its networks, or have Triton load them); raise `Unavailable` with the
        reason when it cannot be. Loading a version that is already loaded does nothing."""

    async def unload(self, model: ModelSpec) -> None:
        """Release one version; calls naming it fail afterwards. Unloading a version not loaded does nothing."""

    async def encode(self, model: ModelSpec, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images [B, C, H, W] in [0, 1] -> (mu [B, D], logvar [B, D])."""

    async def decode(self, model: ModelSpec, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """latents [B, D] -> (mean [B, C, H, W] in [0, 1], logits [B, C, H, W])."""

    async def close(self) -> None:
        """Release threads, connections and models."""
