"""Colour (RGB) data and a tiny colour model for tests: coloured strokes on a tinted background, 64x64.

Each label has its own stroke colour (and the strokes' angle, as in `tests.datasets.stroke_images`), so a colour
model has something to learn and the attribute measures still find strokes in the first channel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.datasets import stroke_images, write_idx

COLOUR_SIZE = 64
# One stroke colour per label 0..9 (RGB in [0, 1]); the red channel is never dark, so strokes show in channel 0.
STROKE_COLOURS = np.array(
    [[1.0, 0.2, 0.2], [0.9, 0.6, 0.1], [0.9, 0.9, 0.2], [0.6, 1.0, 0.3], [0.5, 0.9, 0.9],
     [0.6, 0.5, 1.0], [0.9, 0.4, 0.9], [1.0, 1.0, 1.0], [0.7, 0.8, 0.5], [1.0, 0.6, 0.6]],
    np.float32,
)  # fmt: skip


def colour_images(n: int, seed: int = 0, size: int = COLOUR_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """n float32 images [n, 3, size, size] in [0, 1] and int64 labels 0..9."""
    strokes, labels = stroke_images(n, seed, size)
    rng = np.random.default_rng(seed + 1000)
    background = rng.uniform(0.0, 0.3, size=(n, 3, 1, 1)).astype(np.float32)
    ink = strokes[:, None]
    images = background * (1.0 - ink) + STROKE_COLOURS[labels][:, :, None, None] * ink
    return np.clip(images, 0.0, 1.0).astype(np.float32), labels


def make_colour_idx_dir(folder: Path, n_train: int = 96, n_test: int = 24, seed: int = 0) -> Path:
    """The four standard IDX files, images as uint8 [N, H, W, 3] (what `training.data` reads as colour)."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = colour_images(n, s)
        pixels = (images.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", pixels)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    return folder
