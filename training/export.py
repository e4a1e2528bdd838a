"""Export a checkpoint to a Triton model repository: TorchScript encoder and decoder, their config.pbtxt,
and `<name>.vae.json`, the self-describing metadata (shapes, likelihood, tensor names, dataset, training
settings, test NLL, attribute vectors) that lets the service serve a new model with no flags.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.attributes import compute_attributes
from training.config import TrainConfig
from training.data import fixed_binarization, load_dataset
from training.model import ConvVAE
from training.train import total_train_seconds
from training.triton_repo import InstanceKind, Variant, set_version_policy, write_model
from vaecore.latent_space import STANDARD_NORMAL, latent_space_id
from vaecore.repository import (
    DEFAULT_MODEL_FILE,
    METADATA_SUFFIX,
    MODEL_FILE,
    VERSION,
    NetworkSpec,
    check_version,
    decoder_spec,
    encoder_spec,
    metadata_files,
    metadata_path,
    network_dir,
    read_document,
    record_digests,
    write_document,
    write_metadata,
)


class TorchScriptEncoder(nn.Module):
    """image [B, C, H, W] float32 in [0, 1] -> (mu [B, D], logvar [B, D])."""

    def __init__(self, model: ConvVAE) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(image)
        return mu.contiguous(), logvar.contiguous()  # chunk() gives strided views; servers want dense rows


class TorchScriptDecoder(nn.Module):
    """latent [B, D] -> (mean [B, C, H, W] in [0, 1], logits [B, C, H, W])."""

    def __init__(self, model: ConvVAE) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.decoder(latent)
        return torch.sigmoid(logits), logits


def script_modules(model: ConvVAE) -> tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]:
    model = model.cpu().eval()
    return torch.jit.script(TorchScriptEncoder(model).eval()), torch.jit.script(TorchScriptDecoder(model).eval())


def encoder_latent_space(encoder: torch.nn.Module, latent_dim: int, prior: str = STANDARD_NORMAL) -> str:
    """`vaecore.latent_space` of an encoder (the exported TorchScript one, or one loaded back from a repository:
    the same state, the same names, the same identity)."""
    state = [(name, tensor.detach().cpu().numpy()) for name, tensor in encoder.state_dict().items()]
    return latent_space_id(state, latent_dim, prior)


def build_metadata(
    name: str,
    model: ConvVAE,
    checkpoint: dict[str, Any],
    encoder: NetworkSpec,
    decoder: NetworkSpec,
    attributes: dict[str, Any],
    evaluation: dict[str, Any] | None,
) -> dict[str, Any]:
    cfg = model.config
    log_scale = model.decoder_log_scale()
    history = checkpoint.get("history", [])
    return {
        "name": name,
        "latent_dim": cfg.latent_dim,
        "image_shape": [cfg.image_channels, cfg.image_size, cfg.image_size],
        "value_range": [0.0, 1.0],
        "likelihood": cfg.likelihood,
        "gaussian_log_scale": None if log_scale is None else [float(v) for v in log_scale.detach()],
        "prior": STANDARD_NORMAL,
        "encoder": encoder.to_json(),
        "decoder": decoder.to_json(),
        "dataset": checkpoint.get("dataset"),
        "label_names": checkpoint.get("label_names", []),
        "model_config": cfg.to_dict(),
        "training": {
            "config": checkpoint.get("train_config"),
            "epochs_completed": checkpoint.get("epoch"),
            "train_seconds": round(total_train_seconds(checkpoint), 1),  # including runs it was tuned from
            "final_valid_elbo": history[-1]["valid_elbo"] if history else None,
            "init_from": checkpoint.get("init_from"),
        },
        "evaluation": evaluation,
        "attributes": attributes,
    }


def export_repository(
    model: ConvVAE,
    checkpoint: dict[str, Any],
    repo: Path,
    name: str,
    variant: Variant = "libtorch",
    instance_kind: InstanceKind = "KIND_GPU",
    max_batch_size: int = 256,
    evaluation: dict[str, Any] | None = None,
    attribute_images: int | None = None,
    version: str = VERSION,
    make_default: bool = True,
) -> Path:
    """Write version `version` of `repo/<name>_encoder` and `repo/<name>_decoder` and add it to
    `repo/<name>.vae.json`, keeping the model's other versions (the default one when `make_default`); the
    metadata file is replaced last, so a service polling the repository never sees half a version. Returns the
    metadata path."""
    check_version(version)
    existing = read_document(metadata_path(repo, name))["versions"] if metadata_path(repo, name).is_file() else {}
    cfg = model.config
    image_shape = (cfg.image_channels, cfg.image_size, cfg.image_size)
    enc_spec = encoder_spec(name, image_shape, cfg.latent_dim)
    dec_spec = decoder_spec(name, image_shape, cfg.latent_dim)

    train_config = TrainConfig.from_dict(checkpoint["train_config"])
    data = load_dataset(train_config.dataset, train_config.data_dir)
    images = data.train.images[:attribute_images]
    labels = data.train.labels[:attribute_images]
    binary = None if data.train.attributes is None else data.train.attributes[:attribute_images]
    inputs = fixed_binarization(images, seed=0) if cfg.likelihood == "bernoulli" else torch.from_numpy(images)
    computed = compute_attributes(model, images, inputs, labels, data.label_names, binary, data.attribute_names)
    attributes = {a.name: a.to_dict() for a in computed}

    repo.mkdir(parents=True, exist_ok=True)
    encoder_ts, decoder_ts = script_modules(model)
    with tempfile.TemporaryDirectory() as tmp:
        for spec, module in ((enc_spec, encoder_ts), (dec_spec, decoder_ts)):
            path = Path(tmp) / f"{spec.name}.pt"
            module.save(str(path))
            write_model(repo, spec, path, variant, max_batch_size, instance_kind, version, existing)
    metadata = build_metadata(name, model, checkpoint, enc_spec, dec_spec, attributes, evaluation)
    metadata["latent_space"] = encoder_latent_space(encoder_ts, cfg.latent_dim)
    return write_metadata(repo, record_digests(repo, metadata, version=version), version, make_default)


def derive_python_variant(source: Path, target: Path, max_batch_size: int = 256) -> list[Path]:
    """Copy every VAE of a (libtorch) repository into a Python-backend repository (KIND_CPU), sharing the
    same TorchScript files and metadata: for Triton servers built without the libtorch backend. The copied
    metadata records the copies' SHA-256 digests; a source file that does not match the digest its metadata
    records fails the derivation (`RepositoryError`) before that model's metadata is written."""
    written = []
    for path in metadata_files(source):
        document = read_document(path)
        versions = dict(document["versions"])
        for version, body in versions.items():
            for part in ("encoder", "decoder"):
                spec = NetworkSpec.from_json(body[part])
                write_model(target, spec, network_dir(source, spec) / version / MODEL_FILE, "python", max_batch_size,
                            "KIND_CPU", version, versions)  # fmt: skip
            versions[version] = record_digests(target, body, version=version)
        written.append(write_document(target, {**document, "versions": versions}))
    if not written:
        raise FileNotFoundError(f"no *{METADATA_SUFFIX} model metadata in {source}")
    if (source / DEFAULT_MODEL_FILE).is_file():  # the same default in the derived repository
        shutil.copyfile(source / DEFAULT_MODEL_FILE, target / DEFAULT_MODEL_FILE)
    return written


def restamp(repo: Path, path: Path, replace: bool = False) -> Path:
    """Rewrite one model's metadata in the current format: each version's network digests recorded (`replace`:
    overwrite digests the files no longer match) and its `latent_space` computed from its encoder's weights where
    none is recorded; the configs' `version_policy` lists the metadata's versions."""
    document = read_document(path)
    versions = {}
    for version, body in document["versions"].items():
        body = record_digests(repo, body, replace, version)
        if not body.get("latent_space"):
            encoder = NetworkSpec.from_json(body["encoder"])
            module = torch.jit.load(str(network_dir(repo, encoder) / version / MODEL_FILE), map_location="cpu")
            body["latent_space"] = encoder_latent_space(module, int(body["latent_dim"]), body.get("prior") or
                                                        STANDARD_NORMAL)  # fmt: skip
        versions[version] = body
    written = write_document(repo, {**document, "versions": versions})
    first = next(iter(versions.values()))
    for part in ("encoder", "decoder"):
        model_dir = network_dir(repo, NetworkSpec.from_json(first[part]))
        if (model_dir / "config.pbtxt").is_file():
            set_version_policy(model_dir, versions)
    return written
