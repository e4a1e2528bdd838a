"""Image grids as PNG, with numpy and Pillow only: exact pixels, no plotting library, so the service's CLI
and the training plots draw the same grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def tile(images: np.ndarray, cols: int, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """[N, C, H, W] in [0, 1] -> one [rows*(H+pad)+pad, cols*(W+pad)+pad, C] uint8 canvas."""
    n, c, h, w = images.shape
    rows = -(-n // cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, dtype=np.float32)
    for index in range(n):
        r, k = divmod(index, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        canvas[top : top + h, left : left + w] = images[index].transpose(1, 2, 0)
    return (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_grid(images: np.ndarray, cols: int, path: Path, scale: int = 3) -> Path:
    canvas = tile(images, cols)
    mode = "L" if canvas.shape[-1] == 1 else "RGB"
    picture = Image.fromarray(canvas[..., 0] if mode == "L" else canvas, mode=mode)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
