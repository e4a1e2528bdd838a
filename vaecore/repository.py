"""The model-repository contract, in one place: written by `python -m training export`, read by the service.

A repository holds, for each VAE named N, two Triton models and one metadata file at its root:

    N.vae.json                  metadata (this module's `ModelSpec`; Triton ignores the file)
    N_encoder/config.pbtxt      image__0 [B, C, H, W] in [0, 1] -> mu__0 [B, D], logvar__1 [B, D]
    N_encoder/1/model.pt        TorchScript
    N_decoder/config.pbtxt      latent__0 [B, D] -> mean__0 [B, C, H, W] in [0, 1], logits__1 [B, C, H, W]
    N_decoder/1/model.pt

Tensor names follow the libtorch backend's `<name>__<index>` rule. The metadata carries `format`
(`FORMAT_VERSION`): a reader refuses a format it does not know instead of misreading it.

Each network's JSON records `sha256`, the hex SHA-256 of its `model.pt` (`record_digests`; the service checks it
at load, service/integrity.py). It is an additive, optional field of format 1, not a new format: a reader that
does not know it loses nothing by ignoring it, and exports made before it existed still read (the service then
serves them as unverified, saying so; `python -m training rehash` records the digests).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
METADATA_SUFFIX = ".vae.json"
MODEL_FILE = "model.pt"
VERSION = "1"  # the one Triton model version an export writes
DEFAULT_MODEL_FILE = "default_model"  # one line: the model a request that names none gets (Triton ignores files)
DIGEST_CHUNK_BYTES = 1 << 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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
    sha256: str | None = None  # hex digest of the TorchScript file; None in exports made before digests existed

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

        document = {"model_name": self.name, "inputs": tensors(self.inputs), "outputs": tensors(self.outputs)}
        return document if self.sha256 is None else {**document, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkSpec:
        def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], tuple(int(d) for d in t["dims"]), t["data_type"]) for t in items)

        digest = data.get("sha256")
        if digest is not None and not (isinstance(digest, str) and _SHA256_HEX.fullmatch(digest)):
            raise ValueError(f"{data['model_name']}: sha256 must be 64 lowercase hex digits, got {digest!r}")
        return cls(data["model_name"], tensors(data["inputs"]), tensors(data["outputs"]), digest)


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
        return network_file(self.directory, network)


def network_dir(repository: Path, network: NetworkSpec) -> Path:
    return repository / network.name


def network_file(repository: Path, network: NetworkSpec) -> Path:
    """The TorchScript file of one network: `<repository>/<network>/1/model.pt`."""
    return network_dir(repository, network) / VERSION / MODEL_FILE


def file_sha256(path: Path, chunk_bytes: int = DIGEST_CHUNK_BYTES) -> str:
    """The hex SHA-256 of a file, read in chunks (never held whole in memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def record_digests(repository: Path, metadata: dict[str, Any], replace: bool = False) -> dict[str, Any]:
    """`metadata` with the SHA-256 of each network file under `repository` recorded in that network's JSON.

    A digest already recorded that its file does not match is an error (a copy or re-stamp must not launder a
    changed file), unless `replace`: the caller vouches for the files as they are now."""
    updated = dict(metadata)
    for part in ("encoder", "decoder"):
        network = NetworkSpec.from_json(metadata[part])
        path = network_file(repository, network)
        actual = file_sha256(path)
        if network.sha256 not in (None, actual) and not replace:
            raise RepositoryError(
                f"{path} has sha256 {actual}, but its metadata records {network.sha256}; refusing to re-stamp it"
            )
        updated[part] = {**metadata[part], "sha256": actual}
    return updated


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


def configured_default(directory: Path, override: str = "") -> str:
    """The default model someone chose: `override` (the service's --default-model), else the name in the
    repository's `default_model` file; "" when neither says."""
    if override:
        return override
    path = directory / DEFAULT_MODEL_FILE
    return path.read_text().strip() if path.is_file() else ""


def default_model(directory: Path, names: Iterable[str], override: str = "") -> str:
    """The model a request that names none gets: the configured default (see `configured_default`), else the
    first of `names` by name. Shipping a new model beside the default one must not silently change what callers
    that name no model get, hence the file."""
    names = sorted(names)
    chosen = configured_default(directory, override)
    if chosen and chosen not in names:
        raise RepositoryError(f"default model {chosen!r} is not in {directory} (models: {', '.join(names)})")
    return chosen or names[0]


def load_default(directory: Path, name: str = "") -> ModelSpec:
    """One model of a repository: `name`, else its default (what a request that names none gets)."""
    models = load_repository(directory)
    return models[default_model(directory, models, name)]
