"""Colour image folders: CelebA's layout (images plus binary attribute labels) and any folder of images.

CelebA's layout, as the dataset ships it (and as `python -m training.emoji` writes it):

    <folder>/img_align_celeba/000001.jpg ...       the images (JPEG or PNG, any size)
    <folder>/list_attr_celeba.txt                   line 1: the number of images; line 2: the attribute names;
                                                    then `<file> <v1> ... <vA>` with values 1 / -1
    <folder>/list_eval_partition.txt  (optional)    `<file> <0|1|2>`: train / valid / test

Every picture is centre-cropped to a square and resized to `IMAGE_SIZE` x `IMAGE_SIZE` RGB with Pillow's
Lanczos filter (antialiased): real CelebA pictures (178x218) get the usual 148x148 centre crop (the face,
without most of the background), any other size the largest centred square. Pictures with transparency are
composited on white. Without a partition file the split is an 80/10/10 permutation seeded with 0.

Decoding is done once: the uint8 pictures are cached in the cache dir (`$VAE_DATA_CACHE`, default
~/.cache/vae-service) under a key made of the folder, the label files and every picture's size and mtime,
so a second load reads one array; a changed file means a fresh decode. Large folders show a progress bar.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from training.data import COLOUR_IMAGE_SIZE, DatasetError, DatasetSplits, Split, default_cache_dir

IMAGE_SIZE = COLOUR_IMAGE_SIZE  # one home: training.data, which also tells the CLI the shape without loading
CELEBA_IMAGES = "img_align_celeba"
CELEBA_ATTRIBUTES = "list_attr_celeba.txt"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_SHAPE = (178, 218)  # width, height of the aligned CelebA pictures
CELEBA_CROP = 148
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
PROGRESS_MIN_IMAGES = 500
CACHE_FORMAT = 1
CELEBA_HINT = (
    "A CelebA folder holds img_align_celeba/ and list_attr_celeba.txt (optionally list_eval_partition.txt), "
    "as in the 'Align&Cropped Images' download of https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html."
)


@dataclass(frozen=True)
class AttributeTable:
    files: tuple[str, ...]
    names: tuple[str, ...]
    values: np.ndarray  # uint8 [N, A], 1 where the attribute holds


def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The square to keep: CelebA's 148x148 centre for 178x218 pictures, else the largest centred square."""
    side = CELEBA_CROP if (width, height) == CELEBA_SHAPE else min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def load_picture(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """One picture as uint8 [3, size, size]: centre square, Lanczos resize, transparency on white."""
    try:
        with Image.open(path) as opened:
            picture = ImageOps.exif_transpose(opened)
            if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
                rgba = picture.convert("RGBA")
                picture = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            picture = picture.convert("RGB").crop(crop_box(*picture.size))
            picture = picture.resize((size, size), Image.Resampling.LANCZOS)
            return np.asarray(picture, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"image {path} is unreadable: {exc}") from exc


def _lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"missing {what} {path}. {CELEBA_HINT}")
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{what} {path} is unreadable: {exc}") from exc


def read_attribute_file(path: Path) -> AttributeTable:
    """Parse `list_attr_celeba.txt`; any malformed line is a `DatasetError` naming the file and line."""
    lines = _lines(path, "attribute file")
    if len(lines) < 2:
        raise DatasetError(f"{path}: expected the image count on line 1 and the attribute names on line 2")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise DatasetError(f"{path} line 1: expected the number of images, found {lines[0][:80]!r}") from None
    names = tuple(lines[1].split())
    if not names or len(set(names)) != len(names):
        raise DatasetError(f"{path} line 2: expected distinct attribute names, found {lines[1][:80]!r}")
    files: list[str] = []
    rows: list[list[int]] = []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 1 + len(names):
            raise DatasetError(
                f"{path} line {number}: expected {1 + len(names)} columns (a file name and {len(names)} "
                f"values for {' '.join(names[:3])} ...), found {len(fields)}"
            )
        if any(value not in ("1", "-1", "0") for value in fields[1:]):
            raise DatasetError(f"{path} line {number}: attribute values must be 1 or -1, found {line[:80]!r}")
        files.append(fields[0])
        rows.append([value == "1" for value in fields[1:]])
    if len(files) != count:
        raise DatasetError(f"{path}: line 1 promises {count} images, the file lists {len(files)}")
    if len(set(files)) != len(files):
        raise DatasetError(f"{path}: a file name is listed twice")
    values = np.asarray(rows, dtype=np.uint8).reshape(len(files), len(names))
    return AttributeTable(tuple(files), names, values)


def read_partition_file(path: Path, files: tuple[str, ...]) -> np.ndarray:
    """`list_eval_partition.txt` as int64 [N] (0/1/2 = train/valid/test), in the order of `files`."""
    partition: dict[str, int] = {}
    for number, line in enumerate(_lines(path, "partition file"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DatasetError(f"{path} line {number}: expected '<file> <0|1|2>', found {line[:80]!r}")
        partition[fields[0]] = int(fields[1])
    missing = [f for f in files if f not in partition]
    if missing:
        raise DatasetError(f"{path}: no split for {len(missing)} listed images, e.g. {missing[0]}")
    return np.array([partition[f] for f in files], dtype=np.int64)


def default_partition(count: int, seed: int = 0) -> np.ndarray:
    """0/1/2 (train/valid/test) for `count` items: an 80/10/10 permutation seeded with `seed`."""
    order = np.random.default_rng(seed).permutation(count)
    n_valid = round(count * SPLIT_FRACTIONS[1]) if count >= 10 else 0
    n_test = round(count * SPLIT_FRACTIONS[2]) if count >= 10 else 0
    partition = np.zeros(count, np.int64)
    partition[order[:n_valid]] = 1
    partition[order[n_valid : n_valid + n_test]] = 2
    return partition


def _listing(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    out = []
    for path in paths:
        stat = path.stat()
        out.append((path.name, stat.st_size, stat.st_mtime_ns))
    return out


def _cache_path(cache_dir: Path, name: str, key_parts: Mapping[str, object]) -> Path:
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / "images" / f"{name}-{key}.npy"


def decode_pictures(paths: list[Path], size: int, cache_dir: Path, name: str, key_parts: Mapping[str, object],
                    progress: bool | None = None) -> np.ndarray:  # fmt: skip
    """uint8 [N, 3, size, size] for `paths`, from the cache when nothing changed, else decoded and cached."""
    cached = _cache_path(cache_dir, name, {**key_parts, "size": size, "format": CACHE_FORMAT,
                                           "files": _listing(paths)})  # fmt: skip
    if cached.is_file():
        try:
            images = np.load(cached)
            if images.shape == (len(paths), 3, size, size) and images.dtype == np.uint8:
                return images
        except (OSError, ValueError):
            pass  # a damaged cache file: decode again and overwrite it
    images = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    show = len(paths) >= PROGRESS_MIN_IMAGES if progress is None else progress
    iterator: Iterable[tuple[int, Path]] = enumerate(paths)
    if show:
        from tqdm import tqdm

        print(f"decoding {len(paths)} images (once: cached in {cached.parent})", file=sys.stderr, flush=True)
        iterator = tqdm(iterator, total=len(paths), desc=name, unit="img", mininterval=1.0)
    for index, path in iterator:
        images[index] = load_picture(path, size)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.save(f, images)
        tmp.replace(cached)
    except OSError as exc:
        print(f"warning: could not cache decoded images in {cached}: {exc}", file=sys.stderr)
    return images


def _splits(name: str, images: np.ndarray, labels: np.ndarray, partition: np.ndarray, label_names: tuple[str, ...],
            attributes: np.ndarray | None = None, attribute_names: tuple[str, ...] = ()) -> DatasetSplits:  # fmt: skip
    def split(which: int) -> Split:
        index = np.flatnonzero(partition == which)
        pictures = images[index].astype(np.float32) / np.float32(255.0)
        return Split(pictures, labels[index], None if attributes is None else attributes[index])

    return DatasetSplits(name, split(0), split(1), split(2), label_names, attribute_names)


def load_celeba(
    folder: Path, name: str = "celeba", size: int = IMAGE_SIZE, cache_dir: Path | None = None,
    progress: bool | None = None,
) -> DatasetSplits:  # fmt: skip
    """A folder in CelebA's layout: RGB pictures, binary attributes, the official (or a seeded) split.
    There are no class labels: `labels` are all 0 and `label_names` is empty."""
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist. {CELEBA_HINT}")
    table = read_attribute_file(folder / CELEBA_ATTRIBUTES)
    partition_file = folder / CELEBA_PARTITION
    if partition_file.exists():
        partition = read_partition_file(partition_file, table.files)
    else:
        partition = default_partition(len(table.files))
    image_dir = folder / CELEBA_IMAGES
    if not image_dir.is_dir():
        raise DatasetError(f"missing image folder {image_dir}. {CELEBA_HINT}")
    present = {entry.name for entry in os.scandir(image_dir)}
    for number, file in enumerate(table.files, start=3):
        if file not in present:
            raise DatasetError(f"{folder / CELEBA_ATTRIBUTES} line {number}: image {image_dir / file} does not exist")
    paths = [image_dir / file for file in table.files]
    key = {"kind": "celeba", "folder": str(folder.resolve()),
           "labels": _listing(p for p in (folder / CELEBA_ATTRIBUTES, partition_file) if p.exists())}  # fmt: skip
    images = decode_pictures(paths, size, cache_dir or default_cache_dir(), name, key, progress)
    labels = np.zeros(len(paths), dtype=np.int64)
    return _splits(name, images, labels, partition, (), table.values, table.names)


def load_image_folder(
    folder: Path, name: str = "folder", size: int = IMAGE_SIZE, cache_dir: Path | None = None,
    progress: bool | None = None,
) -> DatasetSplits:  # fmt: skip
    """Every picture under `folder` (recursively). When all of them sit in sub-folders, the first-level
    sub-folder is the label (sorted names); otherwise there are no labels. Split 80/10/10, seeded."""
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    paths = sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip
    if not paths:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    groups = [p.relative_to(folder).parts for p in paths]
    if all(len(parts) > 1 for parts in groups):
        label_names = tuple(sorted({parts[0] for parts in groups}))
        labels = np.array([label_names.index(parts[0]) for parts in groups], dtype=np.int64)
    else:
        label_names, labels = (), np.zeros(len(paths), dtype=np.int64)
    key = {"kind": "folder", "folder": str(folder.resolve()), "relative": [str(p.relative_to(folder)) for p in paths]}
    images = decode_pictures(paths, size, cache_dir or default_cache_dir(), name, key, progress)
    return _splits(name, images, labels, default_partition(len(paths)), label_names)
