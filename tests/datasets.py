"""Tiny datasets the tests make themselves: IDX folders and an mnist.pkl.gz-format pickle.

Images are strokes (a line per label at a label-dependent angle, random width and position), so that
a model can learn something and the attribute measures (thickness, slant) have something to measure.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def stroke_images(n: int, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """n float32 images [n, size, size] in [0, 1] and int64 labels 0..9."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.zeros((n, size, size), dtype=np.float32)
    for i, label in enumerate(labels):
        angle = np.pi * label / 10.0 + rng.normal(0, 0.05)
        width = rng.uniform(0.8, 2.5)
        cr, cc = size / 2 + rng.normal(0, 1.5, size=2)
        # distance of each pixel to the line through (cr, cc) with direction angle, limited in length
        dr, dc = rows - cr, cols - cc
        along = dr * np.cos(angle) + dc * np.sin(angle)
        across = -dr * np.sin(angle) + dc * np.cos(angle)
        images[i] = np.clip(width - np.abs(across), 0, 1) * (np.abs(along) < 9)
    return images, labels.astype(np.int64)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">f4"): 0x0D}
    data = np.ascontiguousarray(array)
    header = struct.pack(">BBBB", 0, 0, codes[data.dtype], data.ndim) + struct.pack(f">{data.ndim}I", *data.shape)
    payload = header + data.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_idx_dir(folder: Path, n_train: int = 240, n_test: int = 60, gz: bool = True, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = stroke_images(n, s)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", (images * 255).round().astype(np.uint8), gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8), gz)
    return folder


def make_mnist_pickle(path: Path, sizes: tuple[int, int, int] = (120, 40, 40)) -> Path:
    splits = []
    for seed, n in enumerate(sizes):
        images, labels = stroke_images(n, seed)
        splits.append((images.reshape(n, 784), labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple(splits), f)
    return path
