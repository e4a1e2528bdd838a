from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.datasets import stroke_images
from training import plots
from training.model import ConvVAE
from vaecore.images import tile


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
