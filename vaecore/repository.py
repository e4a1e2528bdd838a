"""The model-repository contract, in one place: written by `python -m training export`, read by the service.

A repository holds, for each VAE named N, two Triton models and one metadata file at its root:

    N.vae.json                  metadata: every version of N (this module's `ModelVersions`; Triton ignores it)
    N_encoder/config.pbtxt      image__0 [B, C, H, W] in [0, 1] -> mu__0 [B, D], logvar__1 [B, D]
    N_encoder/<v>/model.pt      TorchScript, one folder per version v (Triton's layout)
    N_decoder/config.pbtxt      latent__0 [B, D] -> mean__0 [B, C, H, W] in [0, 1], logits__1 [B, C, H, W]
    N_decoder/<v>/model.pt

Tensor names follow the libtorch backend's `<name>__<index>` rule. The metadata carries `format`
(`FORMAT_VERSION`): a reader refuses a format it does not know instead of misreading it.

Format 2 (versions) is `{"format": 2, "name": N, "default_version": "2", "versions": {"1": {...}, "2": {...}}}`:
each version's document is what format 1 held at the top level (shapes, likelihood, networks and digests,
evaluation, attributes), plus `latent_space` (`vaecore.latent_space`). Every version of a model keeps the same
tensors (one config.pbtxt serves them all; a new latent size is a new model name), and the configs'
`version_policy` lists exactly the versions the metadata lists, so Triton and the service serve the same set.
Format 1 (one version, "1", at the top level) is still read. A writer lays the version's files down first and
replaces the metadata file last, atomically, so a reader polling the repository never sees a version whose files
are not all there.

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

from vaecore.latent_space import STANDARD_NORMAL, fallback_latent_space

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
METADATA_SUFFIX = ".vae.json"
MODEL_FILE = "model.pt"
VERSION = "1"  # the version an export writes unless told otherwise, and format 1's only version
_VERSION_NAME = re.compile(r"[1-9][0-9]{0,8}")  # Triton's version folders are positive integers
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
    version: str = VERSION
    latent_space: str = ""  # the identity of the space its latents live in ("" when unknown: unstamped)

    def torchscript_path(self, network: NetworkSpec) -> Path:
        return network_file(self.directory, network, self.version)

    @property
    def key(self) -> str:
        """`name:version`, for logs and messages."""
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class ModelVersions:
    """Every version of one model that its metadata lists, and the one a request naming no version gets."""

    name: str
    versions: dict[str, ModelSpec]
    default_version: str
    path: Path

    @property
    def default(self) -> ModelSpec:
        return self.versions[self.default_version]


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_NAME.fullmatch(version):
        raise ValueError(f"a version is a positive integer without leading zeros (Triton's folders), got {version!r}")
    return version


def version_order(version: str) -> int:
    return int(version)


def network_dir(repository: Path, network: NetworkSpec) -> Path:
    return repository / network.name


def network_file(repository: Path, network: NetworkSpec, version: str = VERSION) -> Path:
    """The TorchScript file of one network version: `<repository>/<network>/<version>/model.pt`."""
    return network_dir(repository, network) / version / MODEL_FILE


def file_sha256(path: Path, chunk_bytes: int = DIGEST_CHUNK_BYTES) -> str:
    """The hex SHA-256 of a file, read in chunks (never held whole in memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def record_digests(
    repository: Path, metadata: dict[str, Any], replace: bool = False, version: str = VERSION
) -> dict[str, Any]:
    """`metadata` (one version's document) with the SHA-256 of each network file of `version` under `repository`
    recorded in that network's JSON.

    A digest already recorded that its file does not match is an error (a copy or re-stamp must not launder a
    changed file), unless `replace`: the caller vouches for the files as they are now."""
    updated = dict(metadata)
    for part in ("encoder", "decoder"):
        network = NetworkSpec.from_json(metadata[part])
        path = network_file(repository, network, version)
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


def write_metadata(
    repository: Path, metadata: dict[str, Any], version: str = VERSION, make_default: bool = True
) -> Path:
    """Add (or replace) `version` of the model `metadata["name"]` (one version's document), keeping its other
    versions; it becomes the default when `make_default` or when the model had none. Written to a temporary file
    and renamed over `<name>.vae.json` (atomic: a poller sees the old document or the new one), in format 2; it
    must parse back."""
    check_version(version)
    name = metadata["name"]
    body = {k: v for k, v in metadata.items() if k not in ("format", "name", "version")}
    path = metadata_path(repository, name)
    document = read_document(path) if path.is_file() else {"name": name, "versions": {}}
    others = [v for v in document["versions"] if v != version]
    if others:
        _same_tensors(path, document["versions"][others[0]], body, version)
    versions = {**document["versions"], version: body}
    default = version if make_default or not document.get("default_version") else document["default_version"]
    return write_document(repository, {"name": name, "default_version": default, "versions": versions})


def _same_tensors(path: Path, existing: dict[str, Any], new: dict[str, Any], version: str) -> None:
    """Versions of one model share one config.pbtxt per network, hence their tensors."""
    for part in ("encoder", "decoder"):
        old, fresh = NetworkSpec.from_json(existing[part]), NetworkSpec.from_json(new[part])
        if (old.name, old.inputs, old.outputs) != (fresh.name, fresh.inputs, fresh.outputs):
            raise RepositoryError(
                f"{path}: version {version}'s {part} has other tensors than the model's other versions "
                f"({fresh.inputs + fresh.outputs} vs {old.inputs + old.outputs}); a new latent size or image shape is "
                "a new model: export it under another --name"
            )


def write_document(repository: Path, document: dict[str, Any]) -> Path:
    """Write a whole format-2 document atomically (temporary file, then rename); it must parse back."""
    document = {"format": FORMAT_VERSION, **{k: v for k, v in document.items() if k != "format"}}
    repository.mkdir(parents=True, exist_ok=True)
    path = metadata_path(repository, document["name"])
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n")
    try:
        parse_versions(temporary, document["name"])  # the writer never produces what the reader refuses
    except RepositoryError:
        temporary.unlink()
        raise
    temporary.replace(path)
    return path


def remove_version(repository: Path, name: str, version: str) -> Path:
    """Drop `version` from the model's metadata (its files stay until someone deletes them); the default moves to
    the newest remaining version when it was the one removed. The last version cannot be removed."""
    path = metadata_path(repository, name)
    document = read_document(path)
    if version not in document["versions"]:
        raise RepositoryError(f"{path} has no version {version!r} (it has {', '.join(document['versions'])})")
    versions = {v: body for v, body in document["versions"].items() if v != version}
    if not versions:
        raise RepositoryError(f"{path}: version {version} is the model's last; remove the model instead")
    default = document["default_version"]
    if default == version:
        default = max(versions, key=version_order)
    return write_document(repository, {**document, "versions": versions, "default_version": default})


def set_default_version(repository: Path, name: str, version: str) -> Path:
    path = metadata_path(repository, name)
    document = read_document(path)
    if version not in document["versions"]:
        raise RepositoryError(f"{path} has no version {version!r} (it has {', '.join(document['versions'])})")
    return write_document(repository, {**document, "default_version": version})


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"model metadata {path} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise RepositoryError(f"model metadata {path} is not a JSON object")
    return data


def read_document(path: Path) -> dict[str, Any]:
    """The metadata as a format-2 document (`name`, `default_version`, `versions`), whatever format is on disk
    (format 1 reads as its one version, "1"); a format this code does not know is refused by name."""
    data = _load_json(path)
    fmt = data.get("format")
    if fmt not in READABLE_FORMATS:
        raise RepositoryError(
            f"model metadata {path} has format {fmt!r}; this code reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))} (re-export the model, or upgrade the service)"
        )
    if fmt == 1:
        body = {k: v for k, v in data.items() if k not in ("format", "name")}
        return {"format": 1, "name": data.get("name"), "default_version": VERSION, "versions": {VERSION: body}}
    versions = data.get("versions")
    if not isinstance(versions, dict) or not versions:
        raise RepositoryError(f"model metadata {path}: `versions` must be an object holding at least one version")
    if data.get("default_version") not in versions:
        raise RepositoryError(
            f"model metadata {path}: default_version {data.get('default_version')!r} is not one of its versions "
            f"({', '.join(versions)})"
        )
    return data


def read_metadata(path: Path, version: str | None = None) -> dict[str, Any]:
    """One version's document (the default one when `version` is None) in the flat shape format 1 had, with
    `name` and `version` set: what training's tools read."""
    document = read_document(path)
    chosen = version or document["default_version"]
    if chosen not in document["versions"]:
        raise RepositoryError(f"{path} has no version {chosen!r} (it has {', '.join(document['versions'])})")
    return {"name": document["name"], "version": chosen, **document["versions"][chosen]}


def _spec(data: dict[str, Any], directory: Path, name: str, version: str) -> ModelSpec:
    evaluation = data.get("evaluation") or {}
    log_scale = data.get("gaussian_log_scale")
    shape = tuple(int(d) for d in data["image_shape"])
    if len(shape) != 3:
        raise ValueError(f"image_shape must be [C, H, W], got {list(shape)}")
    encoder = NetworkSpec.from_json(data["encoder"])
    latent_dim = int(data["latent_dim"])
    prior = data.get("prior") or STANDARD_NORMAL
    space = data.get("latent_space") or fallback_latent_space(encoder.sha256, latent_dim, prior)
    return ModelSpec(
        name=name,
        latent_dim=latent_dim,
        image_shape=(shape[0], shape[1], shape[2]),
        likelihood=data["likelihood"],
        encoder=encoder,
        decoder=NetworkSpec.from_json(data["decoder"]),
        directory=directory,
        gaussian_log_scale=None if log_scale is None else np.asarray(log_scale, np.float32),
        attributes={k: np.asarray(v["vector"], np.float32) for k, v in data.get("attributes", {}).items()},
        label_names=tuple(data.get("label_names", [])),
        dataset=data.get("dataset") or "",
        test_nll=float(evaluation.get("test_nll", 0.0)),
        test_nll_samples=int(evaluation.get("importance_samples", 0)),
        version=check_version(version),
        latent_space=space,
    )


def parse_versions(path: Path, name: str | None = None) -> ModelVersions:
    """Every version of the model a metadata file describes (`name`: the model's name when `path` is not
    `<name>.vae.json`, as for a temporary file)."""
    document = read_document(path)
    model = name or document.get("name")
    if not isinstance(model, str) or not model:
        raise RepositoryError(f"model metadata {path} has no name")
    specs = {}
    for version, body in document["versions"].items():
        try:
            specs[version] = _spec(body, path.parent, model, version)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise RepositoryError(
                f"model metadata {path} is unreadable: version {version}: {type(exc).__name__}: {exc}"
            ) from exc
    return ModelVersions(model, specs, document["default_version"], path)


def parse_metadata(path: Path) -> ModelSpec:
    """The default version of the model a metadata file describes."""
    return parse_versions(path).default


def load_versions(directory: Path) -> dict[str, ModelVersions]:
    """Every model of the repository, all its versions, by name; fails when there is none."""
    paths = metadata_files(directory)
    if not paths:
        raise RepositoryError(f"no *{METADATA_SUFFIX} model metadata in {directory}")
    return {m.name: m for m in (parse_versions(p) for p in paths)}


def load_repository(directory: Path) -> dict[str, ModelSpec]:
    """Every model of the repository by name, each in its default version; fails when there is none."""
    return {name: model.default for name, model in load_versions(directory).items()}


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
