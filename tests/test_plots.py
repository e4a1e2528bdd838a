from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.datasets import make_idx_dir, stroke_images
from training import plots
from training.model import ConvVAE
from vae_client.images import tile


def test_tile_places_images_on_a_padded_canvas() -> None:
    images = np.zeros((5, 1, 4, 4), np.float32)
    images[3] = 1.0
    canvas = tile(images, cols=3, pad=1, pad_value=0.5)
    assert canvas.shape == (2 * 5 + 1, 3 * 5 + 1, 1)
    assert canvas[6:10, 1:5].min() == 255 and canvas[1:5, 1:5].max() == 0


def test_every_picture_is_a_real_png(trained_model: ConvVAE, trained_run: Path, tmp_path: Path) -> None:
    images, labels = stroke_images(40, seed=5)
    images = images[:, None]
    written = [
        plots.plot_reconstructions(trained_model, images[:32], tmp_path / "r.png"),
        plots.plot_samples(trained_model, tmp_path / "s.png", n=16),
        plots.plot_interpolations(trained_model, images, tmp_path / "i.png", pairs=2, steps=6),
        plots.plot_latent_map(trained_model, images, labels, [str(i) for i in range(10)], tmp_path / "m.png"),
        plots.plot_latent_tsne(trained_model, images, labels, [str(i) for i in range(10)], tmp_path / "t.png"),
        plots.plot_latent_tsne(trained_model, images, labels, [], tmp_path / "t1.png", points=30),  # no labels
        plots.plot_loss_curves([trained_run / "metrics.csv"], tmp_path / "c.png"),
        plots.plot_attribute_sweeps(trained_model, images[:2], {"up": np.ones(4, np.float32)}, tmp_path / "a.png"),
    ]
    for path in written:
        with Image.open(path) as picture:
            assert picture.format == "PNG"
            pixels = np.asarray(picture.convert("L"))
        assert pixels.std() > 1.0, path  # not a blank canvas
    with Image.open(written[2]) as picture:
        assert picture.size == (3 * (6 * 30 + 2), 3 * (4 * 30 + 2))  # 6 steps wide, 2 rows per pair


def test_two_dimensional_latent_trains_and_gets_map_and_manifold(idx_dir: Path, tmp_path: Path) -> None:
    from training.config import ModelConfig, TrainConfig
    from training.data import load_dataset
    from training.model import load_checkpoint
    from training.train import train

    config = TrainConfig(dataset="idx", data_dir=str(idx_dir), epochs=1, batch_size=16, threads=1,
                         model=ModelConfig(latent_dim=2, hidden_channels=4, hidden_units=16))  # fmt: skip
    model, _ = load_checkpoint(train(config, tmp_path / "run"))
    test = load_dataset("idx", idx_dir).test
    plots.plot_latent_map(model, test.images, test.labels, [str(i) for i in range(10)], tmp_path / "map.png")
    with Image.open(plots.plot_manifold(model, tmp_path / "manifold.png", side=5)) as picture:
        assert picture.size == (2 * (5 * 30 + 2), 2 * (5 * 30 + 2))


def test_tsne_keeps_separated_clusters_apart_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    offset = np.zeros(16, np.float32)
    offset[:4] = 6.0  # two unit-variance Gaussian clusters in 16-D, ~12 standard deviations apart
    z = np.concatenate([rng.standard_normal((60, 16)), rng.standard_normal((60, 16)) + offset]).astype(np.float32)
    labels = np.repeat([0, 1], 60)
    points = plots.tsne_points(z, seed=3)
    assert points.shape == (120, 2) and np.isfinite(points).all()
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    agreement = (labels[distances.argmin(1)] == labels).mean()
    assert agreement > 0.95
    np.testing.assert_array_equal(plots.tsne_points(z, seed=3), points)


def test_plots_command_draws_tsne_for_a_larger_latent(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import data
    from training.__main__ import main

    # the command's interpolations take test images 100-109: the same data with a longer test split
    longer = make_idx_dir(tmp_path / "idx", n_test=120)
    load_dataset = data.load_dataset
    monkeypatch.setattr(data, "load_dataset", lambda name, _: load_dataset(name, longer))
    out = tmp_path / "plots"
    assert main(["plots", "--checkpoint", str(trained_run / "best.pt"), "--out", str(out), "--threads", "1"]) == 0
    with Image.open(out / "latent_tsne.png") as picture:
        assert picture.format == "PNG"
    assert (out / "latent_map.png").exists() and not (out / "manifold.png").exists()
