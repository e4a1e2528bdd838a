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
from training.triton_repo import InstanceKind, Variant, write_model
from vaecore.repository import (
    DEFAULT_MODEL_FILE,
    METADATA_SUFFIX,
    MODEL_FILE,
    VERSION,
    NetworkSpec,
    decoder_spec,
    encoder_spec,
    metadata_files,
    network_dir,
    read_metadata,
    record_digests,
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
        "prior": "standard_normal",
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
) -> Path:
    """Write `repo/<name>_encoder`, `repo/<name>_decoder` and `repo/<name>.vae.json`; returns the metadata path."""
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
            write_model(repo, spec, path, variant, max_batch_size, instance_kind)
    metadata = build_metadata(name, model, checkpoint, enc_spec, dec_spec, attributes, evaluation)
    return write_metadata(repo, record_digests(repo, metadata))


def derive_python_variant(source: Path, target: Path, max_batch_size: int = 256) -> list[Path]:
    """Copy every VAE of a (libtorch) repository into a Python-backend repository (KIND_CPU), sharing the
    same TorchScript files and metadata: for Triton servers built without the libtorch backend. The copied
    metadata records the copies' SHA-256 digests; a source file that does not match the digest its metadata
    records fails the derivation (`RepositoryError`) before that model's metadata is written."""
    written = []
    for metadata_path in metadata_files(source):
        metadata = read_metadata(metadata_path)
        for part in ("encoder", "decoder"):
            spec = NetworkSpec.from_json(metadata[part])
            write_model(
                target, spec, network_dir(source, spec) / VERSION / MODEL_FILE, "python", max_batch_size, "KIND_CPU"
            )
        written.append(write_metadata(target, record_digests(target, metadata)))
    if not written:
        raise FileNotFoundError(f"no *{METADATA_SUFFIX} model metadata in {source}")
    if (source / DEFAULT_MODEL_FILE).is_file():  # the same default in the derived repository
        shutil.copyfile(source / DEFAULT_MODEL_FILE, target / DEFAULT_MODEL_FILE)
    return written
