"""The pictures people look at, as PNG: reconstructions, prior samples, interpolations, latent maps, curves.

Image grids are tiled with numpy and written with Pillow (exact pixels); the scatter and curve plots use
matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from training.model import ConvVAE
from vae_client.images import save_grid
from vaecore.latent import lerp, slerp


@torch.inference_mode()
def decode_mean(model: ConvVAE, z: np.ndarray | torch.Tensor) -> np.ndarray:
    return model.mean_image(model.decoder(torch.as_tensor(z, dtype=torch.float32))).numpy()


@torch.inference_mode()
def encode_mean(model: ConvVAE, images: np.ndarray) -> np.ndarray:
    return model.encoder(torch.as_tensor(images))[0].numpy()


def plot_reconstructions(model: ConvVAE, images: np.ndarray, path: Path, cols: int = 16) -> Path:
    """Rows alternate: inputs, then their reconstructions (decoder mean at the posterior mean)."""
    images = images[: (len(images) // cols) * cols]
    recon = decode_mean(model, encode_mean(model, images))
    rows = [
        block
        for start in range(0, len(images), cols)
        for block in (images[start : start + cols], recon[start : start + cols])
    ]
    return save_grid(np.concatenate(rows), cols, path)


def plot_samples(model: ConvVAE, path: Path, n: int = 100, seed: int = 0, temperature: float = 1.0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn((n, model.config.latent_dim), generator=generator) * temperature
    return save_grid(decode_mean(model, z), int(np.sqrt(n)), path)


def plot_interpolations(model: ConvVAE, images: np.ndarray, path: Path, pairs: int = 5, steps: int = 10) -> Path:
    """For each pair of test images: a linear row, then a spherical row, endpoints being reconstructions."""
    z = encode_mean(model, images[: 2 * pairs])
    rows = []
    for p in range(pairs):
        a, b = z[2 * p], z[2 * p + 1]
        rows += [lerp(a, b, steps), slerp(a, b, steps)]
    return save_grid(decode_mean(model, np.concatenate(rows)), steps, path)


def plot_attribute_sweeps(
    model: ConvVAE,
    images: np.ndarray,
    vectors: dict[str, np.ndarray],
    path: Path,
    strengths: tuple[float, ...] = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0),
) -> Path:
    """Latent arithmetic: for each attribute and each image, a row decoding z + s * vector for each strength s
    (the middle column, s = 0, is the plain reconstruction)."""
    z = encode_mean(model, images)
    rows = [z[i][None] + np.asarray(strengths, np.float32)[:, None] * vectors[name][None]
            for name in vectors for i in range(len(z))]  # fmt: skip
    return save_grid(decode_mean(model, np.concatenate(rows)), len(strengths), path)


def plot_latent_map(model: ConvVAE, images: np.ndarray, labels: np.ndarray, label_names: list[str], path: Path) -> Path:
    """Posterior means coloured by label: the plane itself for a 2-D latent, else the top-2 PCA projection."""
    z = encode_mean(model, images)
    if z.shape[1] == 2:
        points, xlabel, ylabel = z, "z1", "z2"
    else:
        centred = z - z.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        points, xlabel, ylabel = centred @ vt[:2].T, "PC 1", "PC 2"
    title = f"latent means of {len(z)} test images ({z.shape[1]}-D latent)"
    return _scatter_by_label(points, labels, label_names, xlabel, ylabel, title, path)


def tsne_points(z: np.ndarray, seed: int = 0) -> np.ndarray:
    """[N, D] -> [N, 2] t-SNE embedding (perplexity 30, or less for tiny N); the same seed gives the same points."""
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(z) - 1) / 3)
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
    return np.asarray(tsne.fit_transform(np.asarray(z, np.float64)), np.float32)


def plot_latent_tsne(
    model: ConvVAE,
    images: np.ndarray,
    labels: np.ndarray,
    label_names: list[str],
    path: Path,
    seed: int = 0,
    points: int = 3000,
) -> Path:
    """Posterior means of up to `points` images, embedded in 2-D by t-SNE and coloured by label.

    PCA (plot_latent_map) shows only the two directions of largest variance, so in a 32-D latent the classes
    pile on top of each other; t-SNE keeps neighbourhoods instead, so classes that the encoder separates show
    as separate clusters (distances between clusters and their sizes mean little)."""
    z = encode_mean(model, images[:points])
    title = f"t-SNE of the latent means of {len(z)} test images ({z.shape[1]}-D latent)"
    return _scatter_by_label(tsne_points(z, seed), labels[:points], label_names, "t-SNE 1", "t-SNE 2", title, path)


def _scatter_by_label(
    points: np.ndarray,
    labels: np.ndarray,
    label_names: list[str],
    xlabel: str,
    ylabel: str,
    title: str,
    path: Path,
) -> Path:
    """[N, 2] points, one colour per label with a legend; one colour and no legend when there are no labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    cmap = plt.get_cmap("tab10")
    for index, name in enumerate(label_names):
        mask = labels == index
        ax.scatter(points[mask, 0], points[mask, 1], s=2, color=cmap(index % 10), label=name, alpha=0.6)
    if label_names:
        ax.legend(markerscale=5, fontsize=7, loc="best")
    else:
        ax.scatter(points[:, 0], points[:, 1], s=2, color=cmap(0), alpha=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_manifold(model: ConvVAE, path: Path, side: int = 15, extent: float = 2.5) -> Path:
    """For a 2-D latent: decoded images on a regular grid over the plane."""
    axis = np.linspace(-extent, extent, side, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, -axis), axis=-1).reshape(-1, 2)
    return save_grid(decode_mean(model, grid), side, path, scale=2)


def read_metrics(path: Path) -> list[dict[str, float]]:
    with path.open() as f:
        return [
            {key: float(value) for key, value in row.items() if value not in ("", None)} for row in csv.DictReader(f)
        ]


def plot_loss_curves(metric_files: list[Path], path: Path) -> Path:
    """Train and validation ELBO per epoch; several runs (e.g. pre-training then fine-tuning) are chained."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    offset = 0
    for metrics_path in metric_files:
        rows = read_metrics(metrics_path)
        epochs = [offset + row["epoch"] for row in rows]
        label = metrics_path.parent.name
        ax.plot(epochs, [-row["train_elbo"] for row in rows], label=f"{label}: train bound (-)")
        ax.plot(epochs, [-row["valid_elbo"] for row in rows], label=f"{label}: valid ELBO (-)")
        if rows and "valid_bound" in rows[0] and rows[0]["valid_bound"] != rows[0]["valid_elbo"]:
            ax.plot(epochs, [-row["valid_bound"] for row in rows], label=f"{label}: valid IWAE bound (-)")
        offset = int(epochs[-1]) if epochs else offset
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image (lower is better)")
    lows = [-max(r["valid_elbo"], r["train_elbo"]) for m in metric_files for r in read_metrics(m)]
    if lows:
        ax.set_ylim(min(lows) - 2, min(lows) + 40)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
