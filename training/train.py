"""The training loop: minibatch ELBO (or IWAE bound, or MMD-VAE loss) with Adam, cosine learning rate, EMA
weights, per-epoch validation, checkpoints every epoch with exact resume, and a metrics CSV.

`train(config, out_dir)` is the whole job; the CLI in `training.__main__` only parses flags into a
`TrainConfig`. The EMA weights are what gets evaluated and exported (`load_checkpoint` picks them).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from training import losses, mmd
from training.config import TrainConfig
from training.data import DatasetSplits, binarize, fixed_binarization, load_dataset
from training.model import ConvVAE, load_checkpoint, save_checkpoint

METRIC_FIELDS = (
    "epoch", "train_loss", "train_elbo", "valid_elbo", "valid_recon", "valid_kl", "valid_bound", "lr", "seconds",
)  # fmt: skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def kl_weight(config: TrainConfig, progress_epochs: float) -> float:
    """beta, ramped linearly from 0 over the first `kl_warmup_epochs` (fractional epochs count)."""
    if config.kl_warmup_epochs <= 0:
        return config.beta
    return config.beta * min(1.0, progress_epochs / config.kl_warmup_epochs)


def training_loss(
    model: ConvVAE, x: torch.Tensor, config: TrainConfig, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to minimise, per-example ELBO or IWAE bound for reporting), both averaged over the batch.

    `mmd` is the MMD-VAE (InfoVAE with alpha = 1, Zhao et al. 2017): -log p(x|z) with one reparameterized
    z ~ q(z|x) per example (the ELBO's reconstruction term) plus `mmd_weight` * MMD^2_u between the batch's z and
    as many N(0, I) draws (training/mmd.py: Gaussian kernel, sigma^2 = latent_dim, unbiased). No KL term, so
    `beta`, `kl_warmup_epochs` and `free_bits` do not apply; what it reports is still the ELBO (same z, analytic KL)
    so its curves compare with the other objectives'. The default weight 1000: the reconstruction is a sum over
    784 pixels (about 65-100 nats on MNIST) while MMD^2 under this kernel is small (at latent_dim 32, 0.0036 for a
    10% error in the aggregate posterior's scale, 0.0028 for a half-unit shift of one coordinate); times 1000 those
    cost about 3 nats, the order of an ELBO model's KL per latent dimension, whereas at weight 1 they would be lost
    in the reconstruction. The estimate's own noise at batch 128 (standard deviation 0.0014 when q(z) = p(z)) is
    then about 1.4 nats per batch, below the reconstruction's batch noise; much larger weights let it dominate.
    """
    if config.objective == "iwae":
        bound = losses.iwae_bound(model.log_importance_weights(x, config.train_samples))
        return -bound.mean(), bound.mean().detach()
    if config.objective == "mmd":
        mu, logvar = model.encoder(x)
        z = losses.reparameterize(mu, logvar, 1)[0]
        reconstruction = model.log_likelihood(x, model.decoder(z))
        divergence = mmd.mmd2(z, torch.randn_like(z))
        elbo = reconstruction - losses.kl_to_standard_normal(mu, logvar).sum(-1)
        return -reconstruction.mean() + config.mmd_weight * divergence, elbo.mean().detach()
    reconstruction, kl_per_dim, _ = model.elbo_terms(x)
    kl = losses.free_bits_kl(kl_per_dim, config.free_bits)
    elbo = reconstruction - kl_per_dim.sum(-1)
    return -(reconstruction - beta * kl).mean(), elbo.mean().detach()


@torch.no_grad()
def evaluate_elbo(model: ConvVAE, images: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Mean single-sample ELBO (analytic KL) and its two parts on a fixed, already binarized set."""
    model.eval()
    totals = {"elbo": 0.0, "recon": 0.0, "kl": 0.0}
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        reconstruction, kl_per_dim, _ = model.elbo_terms(x)
        kl = kl_per_dim.sum(-1)
        totals["recon"] += reconstruction.sum().item()
        totals["kl"] += kl.sum().item()
        totals["elbo"] += (reconstruction - kl).sum().item()
    return {key: value / len(images) for key, value in totals.items()}


@torch.no_grad()
def validation_iwae(model: ConvVAE, images: torch.Tensor, config: TrainConfig, batch_size: int = 500) -> float:
    """Mean IWAE bound with the training's number of samples on the fixed validation set."""
    model.eval()
    total = 0.0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        total += losses.iwae_bound(model.log_importance_weights(x, config.train_samples)).sum().item()
    return total / len(images)


class EMA:
    """Exponential moving average of the parameters; evaluating it beats the raw last iterate."""

    def __init__(self, model: ConvVAE, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: ConvVAE) -> None:
        ema_params: list[torch.Tensor] = list(self.model.parameters())
        params: list[torch.Tensor] = list(model.parameters())
        torch._foreach_mul_(ema_params, self.decay)
        torch._foreach_add_(ema_params, params, alpha=1.0 - self.decay)


def _prepare_images(data: DatasetSplits, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Training intensities (binarized per batch if Bernoulli) and the fixed validation set."""
    train = torch.from_numpy(data.train.images).to(config.device)
    if config.model.likelihood == "bernoulli":
        valid = fixed_binarization(data.valid.images, seed=config.seed + 1)
    else:
        valid = torch.from_numpy(data.valid.images)
    return train, valid.to(config.device)


def train(
    config: TrainConfig,
    out_dir: Path,
    resume: bool = False,
    init_from: Path | None = None,
    stop_after_epoch: int | None = None,
) -> Path:
    """Train to `config.epochs`, writing `last.pt`, `best.pt` and `metrics.csv` to `out_dir`; returns best.pt.

    `stop_after_epoch` ends this call early (the schedule still spans `config.epochs`), so a long run can be
    split across sessions and continued with `resume=True`, bit for bit as if it had never stopped.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path, metrics_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / "metrics.csv"
    checkpoint: dict[str, Any] | None = None
    if resume and last_path.exists():
        checkpoint = torch.load(last_path, map_location="cpu", weights_only=False)
        config = TrainConfig.from_dict(checkpoint["train_config"])  # the run's own settings win on resume
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    if config.device.startswith("cuda"):  # TF32 matrix products for training speed; evaluation uses float32
        torch.backends.cuda.matmul.allow_tf32 = True
    seed_everything(config.seed)

    data = load_dataset(config.dataset, config.data_dir)
    c, h, w = data.image_shape
    if (c, h) != (config.model.image_channels, config.model.image_size) or h != w:
        raise ValueError(f"dataset images are {c}x{h}x{w}; the model expects {config.model}")
    train_images, valid_images = _prepare_images(data, config)

    model = ConvVAE(config.model).to(config.device)
    earlier_seconds = 0.0  # what the run we fine-tune from cost, so the total cost stays on record
    if init_from is not None and checkpoint is None:
        start_model, start = load_checkpoint(init_from)  # fine-tuning starts from the EMA weights
        model.load_state_dict(start_model.state_dict())
        earlier_seconds = total_train_seconds(start)
    ema = EMA(model, config.ema_decay)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    steps_per_epoch = math.ceil(len(train_images) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs * steps_per_epoch, eta_min=config.min_learning_rate
    )
    history: list[dict[str, float]] = []
    start_epoch, best_valid = 1, -math.inf
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model_state"])
        ema.model.load_state_dict(checkpoint["ema_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        scheduler.load_state_dict(checkpoint["scheduler_state"])
        torch.set_rng_state(checkpoint["torch_rng_state"])
        history = checkpoint["history"]
        best_valid = checkpoint.get("best_valid_bound", checkpoint.get("best_valid_elbo", -math.inf))
        earlier_seconds = checkpoint.get("earlier_train_seconds", 0.0)
        start_epoch = checkpoint["epoch"] + 1
        print(f"resuming {last_path} at epoch {start_epoch}/{config.epochs}")

    last_epoch = min(config.epochs, stop_after_epoch or config.epochs)
    for epoch in range(start_epoch, last_epoch + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        sum_loss = sum_bound = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", leave=False, mininterval=1.0)
        for step in bar:
            batch = train_images[order[step * config.batch_size : (step + 1) * config.batch_size]]
            x = binarize(batch) if config.model.likelihood == "bernoulli" else batch
            beta = kl_weight(config, epoch - 1 + step / steps_per_epoch)
            loss, bound = training_loss(model, x, config, beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema.update(model)
            sum_loss += loss.item()
            sum_bound += bound.item()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.2f}")
        valid = evaluate_elbo(ema.model, valid_images)
        # The checkpoint-selection score is the bound being trained: an IWAE run can lower the ELBO while it
        # improves the likelihood, so it is judged by its own bound. MMD^2 is no bound on anything: an MMD-VAE
        # is judged by the validation ELBO, like an ELBO run. Nothing in its loss holds q(z|x)'s variances up, so
        # they shrink, its KL grows and its ELBO peaks early (MNIST, weight 1000: epoch 4 of 30 on the GPU).
        iwae = config.objective == "iwae"
        valid_bound = validation_iwae(ema.model, valid_images, config) if iwae else valid["elbo"]
        row = {
            "epoch": epoch,
            "train_loss": sum_loss / steps_per_epoch,
            "train_elbo": sum_bound / steps_per_epoch,
            "valid_elbo": valid["elbo"],
            "valid_recon": valid["recon"],
            "valid_kl": valid["kl"],
            "valid_bound": valid_bound,
            "lr": float(scheduler.get_last_lr()[0]),
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        reported = "iwae" if iwae else "elbo"  # what train_elbo holds
        print(
            f"epoch {epoch:4d}/{config.epochs}  train {reported} {row['train_elbo']:8.2f}  "
            f"valid elbo {valid['elbo']:8.2f} (recon {valid['recon']:.2f}, kl {valid['kl']:.2f}) "
            f"bound {valid_bound:8.2f}  "
            f"lr {row['lr']:.2e}  {row['seconds']:.0f}s",
            flush=True,
        )
        extra = {
            "train_config": config.to_dict(),
            "ema_state": ema.model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "scheduler_state": scheduler.state_dict(),
            "torch_rng_state": torch.get_rng_state(),
            "epoch": epoch,
            "history": history,
            "best_valid_bound": max(best_valid, valid_bound),
            "dataset": data.name,
            "label_names": list(data.label_names),
            "init_from": str(init_from) if init_from else None,
            "earlier_train_seconds": earlier_seconds,
        }
        save_checkpoint(last_path, model, extra)
        if valid_bound > best_valid:
            best_valid = valid_bound
            save_checkpoint(best_path, model, extra)
        write_metrics(metrics_path, history)
    (out_dir / "metrics.json").write_text(json.dumps(history, indent=1))
    return best_path if best_path.exists() else last_path


def total_train_seconds(checkpoint: dict[str, Any]) -> float:
    """Wall-clock seconds of this run's epochs plus those of the runs it was fine-tuned from."""
    own = sum(row["seconds"] for row in checkpoint.get("history", []))
    return float(own + checkpoint.get("earlier_train_seconds", 0.0))


def write_metrics(path: Path, history: list[dict[str, float]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(history)
