"""The model-repository contract, in one place: written by `python -m training export`, read by the service.

A repository holds, for each VAE named N, two Triton models and one metadata file at its root:

    N.vae.json                  metadata (this module's `ModelSpec`; Triton ignores the file)
    N_encoder/config.pbtxt      image__0 [B, C, H, W] in [0, 1] -> mu__0 [B, D], logvar__1 [B, D]
    N_encoder/1/model.pt        TorchScript
    N_decoder/config.pbtxt      latent__0 [B, D] -> mean__0 [B, C, H, W] in [0, 1], logits__1 [B, C, H, W]
    N_decoder/1/model.pt

Tensor names follow the libtorch backend's `<name>__<index>` rule. The metadata carries `format`
(`FORMAT_VERSION`): a reader refuses a format it does not know instead of misreading it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
METADATA_SUFFIX = ".vae.json"
MODEL_FILE = "model.pt"
VERSION = "1"  # the one Triton model version an export writes


class RepositoryError(RuntimeError):
    """A repository or metadata file that cannot be served; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dims: tuple[int, ...]  # without the batch dimension
    data_type: str = "TYPE_FP32"


@dataclass(frozen=True)
class NetworkSpec:
    """One Triton model (encoder or decoder): a TorchScript module, batch-first input, tuple outputs."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def to_json(self) -> dict[str, Any]:
        def tensors(items: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
            return [{"name": t.name, "dims": list(t.dims), "data_type": t.data_type} for t in items]

        return {"model_name": self.name, "inputs": tensors(self.inputs), "outputs": tensors(self.outputs)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkSpec:
        def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], tuple(int(d) for d in t["dims"]), t["data_type"]) for t in items)

        return cls(data["model_name"], tensors(data["inputs"]), tensors(data["outputs"]))


def encoder_spec(vae_name: str, image_shape: tuple[int, int, int], latent_dim: int) -> NetworkSpec:
    return NetworkSpec(
        f"{vae_name}_encoder",
        (TensorSpec("image__0", image_shape),),
        (TensorSpec("mu__0", (latent_dim,)), TensorSpec("logvar__1", (latent_dim,))),
    )


def decoder_spec(vae_name: str, image_shape: tuple[int, int, int], latent_dim: int) -> NetworkSpec:
    return NetworkSpec(
        f"{vae_name}_decoder",
        (TensorSpec("latent__0", (latent_dim,)),),
        (TensorSpec("mean__0", image_shape), TensorSpec("logits__1", image_shape)),
    )


@dataclass(frozen=True)
class ModelSpec:
    """What the service needs to serve one VAE, read from its metadata."""

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
    test_nll: float = 0.0  # 0 when the export carried no evaluation
    test_nll_samples: int = 0

    def torchscript_path(self, network: NetworkSpec) -> Path:
        return network_dir(self.directory, network) / VERSION / MODEL_FILE


def network_dir(repository: Path, network: NetworkSpec) -> Path:
    return repository / network.name


def metadata_path(repository: Path, vae_name: str) -> Path:
    return repository / f"{vae_name}{METADATA_SUFFIX}"


def metadata_files(repository: Path) -> list[Path]:
    return sorted(repository.glob(f"*{METADATA_SUFFIX}"))


def write_metadata(repository: Path, metadata: dict[str, Any]) -> Path:
    """Write `<name>.vae.json`, stamped with the format version; it must parse back as a `ModelSpec`."""
    document = {"format": FORMAT_VERSION, **{k: v for k, v in metadata.items() if k != "format"}}
    repository.mkdir(parents=True, exist_ok=True)
    path = metadata_path(repository, document["name"])
    path.write_text(json.dumps(document, indent=1) + "\n")
    parse_metadata(path)  # the writer never produces what the reader refuses
    return path


def read_metadata(path: Path) -> dict[str, Any]:
    """The raw metadata document, after checking its format version."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"model metadata {path} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise RepositoryError(f"model metadata {path} is not a JSON object")
    version = data.get("format")
    if version != FORMAT_VERSION:
        raise RepositoryError(
            f"model metadata {path} has format {version!r}; this code reads format {FORMAT_VERSION} "
            "(re-export the model, or upgrade the service)"
        )
    return data


def _spec(data: dict[str, Any], directory: Path) -> ModelSpec:
    evaluation = data.get("evaluation") or {}
    log_scale = data.get("gaussian_log_scale")
    shape = tuple(int(d) for d in data["image_shape"])
    if len(shape) != 3:
        raise ValueError(f"image_shape must be [C, H, W], got {list(shape)}")
    return ModelSpec(
        name=data["name"],
        latent_dim=int(data["latent_dim"]),
        image_shape=(shape[0], shape[1], shape[2]),
        likelihood=data["likelihood"],
        encoder=NetworkSpec.from_json(data["encoder"]),
        decoder=NetworkSpec.from_json(data["decoder"]),
        directory=directory,
        gaussian_log_scale=None if log_scale is None else np.asarray(log_scale, np.float32),
        attributes={k: np.asarray(v["vector"], np.float32) for k, v in data.get("attributes", {}).items()},
        label_names=tuple(data.get("label_names", [])),
        dataset=data.get("dataset") or "",
        test_nll=float(evaluation.get("test_nll", 0.0)),
        test_nll_samples=int(evaluation.get("importance_samples", 0)),
    )


def parse_metadata(path: Path) -> ModelSpec:
    data = read_metadata(path)
    try:
        return _spec(data, path.parent)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise RepositoryError(f"model metadata {path} is unreadable: {type(exc).__name__}: {exc}") from exc


def load_repository(directory: Path) -> dict[str, ModelSpec]:
    """Every model of the repository by name; fails when there is none."""
    paths = metadata_files(directory)
    if not paths:
        raise RepositoryError(f"no *{METADATA_SUFFIX} model metadata in {directory}")
    return {m.name: m for m in (parse_metadata(p) for p in paths)}
