"""A tiny dataset in CelebA's layout, drawn at test time: faces whose attributes show in the picture.

Each picture is a face on a coloured background, 178x218 like CelebA's aligned images (a few are PNG of other
sizes): `Male` gives short dark hair and a blue collar (long orange hair otherwise), `Eyeglasses` two dark
rings and a bridge, `Smiling` a curved mouth (a straight one otherwise); `Young` is random and unseen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ATTRIBUTE_NAMES = ("Eyeglasses", "Male", "Smiling", "Young")


def draw_face(rng: np.random.Generator, glasses: bool, male: bool, smiling: bool, size: tuple[int, int]) -> Image.Image:
    w, h = size
    background = tuple(int(v) for v in rng.integers(120, 230, size=3))
    picture = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(picture)
    cx, cy = w / 2 + rng.normal(0, 2), h / 2 + rng.normal(0, 2)
    r = min(w, h) * 0.3
    skin = tuple(int(v) for v in np.array([230, 190, 160]) * rng.uniform(0.55, 1.0))
    if male:
        draw.rectangle((cx - r, cy + r * 0.9, cx + r, h), fill=(40, 60, 170))  # collar
        draw.ellipse((cx - r * 1.05, cy - r * 1.15, cx + r * 1.05, cy + r * 0.2), fill=(40, 30, 20))  # short hair
    else:
        draw.ellipse((cx - r * 1.4, cy - r * 1.3, cx + r * 1.4, cy + r * 1.6), fill=(200, 110, 40))  # long hair
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=skin)
    eye_y, eye_dx = cy - r * 0.2, r * 0.4
    for sign in (-1, 1):
        ex = cx + sign * eye_dx
        draw.ellipse((ex - 4, eye_y - 4, ex + 4, eye_y + 4), fill=(20, 20, 20))
        if glasses:
            draw.ellipse((ex - 14, eye_y - 12, ex + 14, eye_y + 12), outline=(10, 10, 10), width=5)
    if glasses:
        draw.line((cx - eye_dx + 14, eye_y, cx + eye_dx - 14, eye_y), fill=(10, 10, 10), width=5)
    mouth_y = cy + r * 0.45
    if smiling:
        draw.arc(
            (cx - r * 0.5, mouth_y - r * 0.35, cx + r * 0.5, mouth_y + r * 0.25), 10, 170, fill=(170, 30, 40), width=6
        )
    else:
        draw.line((cx - r * 0.35, mouth_y, cx + r * 0.35, mouth_y), fill=(120, 40, 40), width=5)
    return picture


def make_celeba_dir(folder: Path, n: int = 60, seed: int = 0, partition: bool = True) -> Path:
    """`folder` with img_align_celeba/ (JPEG 178x218, every seventh a PNG of another size),
    list_attr_celeba.txt and, if `partition`, list_eval_partition.txt (the first 80% train, then valid, test)."""
    rng = np.random.default_rng(seed)
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    rows, files = [], []
    for i in range(n):
        values = {
            "Eyeglasses": i % 3 == 0,
            "Male": i % 2 == 0,
            "Smiling": i % 5 in (1, 3),
            "Young": bool(rng.random() < 0.5),
        }
        png = i % 7 == 6
        size = (96, 80) if png else (178, 218)
        picture = draw_face(rng, values["Eyeglasses"], values["Male"], values["Smiling"], size)
        name = f"{i + 1:06d}.{'png' if png else 'jpg'}"
        picture.save(images / name, **({} if png else {"quality": 95}))
        files.append(name)
        rows.append(" ".join([name, *("1" if values[a] else "-1" for a in ATTRIBUTE_NAMES)]))
    (folder / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(ATTRIBUTE_NAMES)}\n" + "\n".join(rows) + "\n")
    if partition:
        cut_train, cut_valid = int(n * 0.8), int(n * 0.9)
        parts = [0 if i < cut_train else 1 if i < cut_valid else 2 for i in range(n)]
        (folder / "list_eval_partition.txt").write_text(
            "".join(f"{f} {p}\n" for f, p in zip(files, parts, strict=True))
        )
    return folder
