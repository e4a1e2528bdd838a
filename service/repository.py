"""Reads a model repository written by `python -m training export`: one `<name>.vae.json` per VAE.

The metadata is the whole contract: tensor names, shapes, likelihood and attribute vectors, so the service
needs no flags to serve a new model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.triton_repo import METADATA_SUFFIX, MODEL_FILE, VERSION


class RepositoryError(RuntimeError):
    pass


@dataclass(frozen=True)
class NetworkSpec:
    """One Triton model (encoder or decoder): its name, input tensor and output tensors."""

    model_name: str
    input_name: str
    output_names: tuple[str, ...]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    latent_dim: int
    image_shape: tuple[int, int, int]
    likelihood: str
    encoder: NetworkSpec
    decoder: NetworkSpec
    directory: Path
    gaussian_log_scale: np.ndarray | None = None
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    label_names: tuple[str, ...] = ()
    dataset: str = ""
    test_nll: float = 0.0
    test_nll_samples: int = 0

    def torchscript_path(self, network: NetworkSpec) -> Path:
        return self.directory / network.model_name / VERSION / MODEL_FILE


def _network(data: dict[str, Any]) -> NetworkSpec:
    return NetworkSpec(data["model_name"], data["inputs"][0]["name"], tuple(t["name"] for t in data["outputs"]))


def parse_metadata(path: Path) -> ModelSpec:
    try:
        data = json.loads(path.read_text())
        evaluation = data.get("evaluation") or {}
        log_scale = data.get("gaussian_log_scale")
        return ModelSpec(
            name=data["name"],
            latent_dim=int(data["latent_dim"]),
            image_shape=tuple(int(d) for d in data["image_shape"]),  # type: ignore[arg-type]
            likelihood=data["likelihood"],
            encoder=_network(data["encoder"]),
            decoder=_network(data["decoder"]),
            directory=path.parent,
            gaussian_log_scale=None if log_scale is None else np.asarray(log_scale, np.float32),
            attributes={k: np.asarray(v["vector"], np.float32) for k, v in data.get("attributes", {}).items()},
            label_names=tuple(data.get("label_names", [])),
            dataset=data.get("dataset") or "",
            test_nll=float(evaluation.get("test_nll", 0.0)),
            test_nll_samples=int(evaluation.get("importance_samples", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise RepositoryError(f"model metadata {path} is unreadable: {exc}") from exc


def load_repository(directory: Path) -> dict[str, ModelSpec]:
    """Every model of the repository by name; fails when there is none."""
    paths = sorted(directory.glob(f"*{METADATA_SUFFIX}"))
    if not paths:
        raise RepositoryError(f"no *{METADATA_SUFFIX} model metadata in {directory}")
    models = [parse_metadata(p) for p in paths]
    return {m.name: m for m in models}
