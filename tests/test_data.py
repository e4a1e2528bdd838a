"""Loaders on tiny generated files, including corrupt and missing ones (clear errors, no tracebacks)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.datasets import make_idx_dir, make_mnist_pickle
from training import data
from training.__main__ import main
from training.data import DatasetError, load_dataset, load_idx_dir, load_mnist_pickle, read_idx


def test_idx_dir_loads_gzipped_and_raw_files_identically(tmp_path: Path) -> None:
    gz = load_dataset("idx", make_idx_dir(tmp_path / "gz", gz=True))
    raw = load_dataset("idx", make_idx_dir(tmp_path / "raw", gz=False))
    assert gz.image_shape == (1, 28, 28)
    assert (len(gz.train), len(gz.valid), len(gz.test)) == (200, 40, 60)
    np.testing.assert_array_equal(gz.train.images, raw.train.images)
    assert gz.train.images.dtype == np.float32 and gz.train.images.min() >= 0.0 and gz.train.images.max() <= 1.0
    assert gz.train.labels.dtype == np.int64 and set(np.unique(gz.train.labels)) <= set(range(10))
    assert gz.label_names == tuple(str(i) for i in range(10))


def test_mnist_pickle_has_three_splits_in_nchw(tmp_path: Path) -> None:
    splits = load_mnist_pickle(make_mnist_pickle(tmp_path / "mnist.pkl.gz"))
    assert [len(s) for s in (splits.train, splits.valid, splits.test)] == [120, 40, 40]
    assert splits.train.images.shape == (120, 1, 28, 28)


def test_mnist_data_dir_reads_idx_files(tmp_path: Path) -> None:
    splits = load_dataset("mnist", make_idx_dir(tmp_path / "mnist"))
    assert splits.name == "mnist" and len(splits.test) == 60


def test_missing_idx_file_names_the_file(tmp_path: Path) -> None:
    folder = make_idx_dir(tmp_path / "d")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        load_idx_dir(folder, "idx", None)


def test_missing_folder_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="--data-dir"):
        load_dataset("fashion-mnist", tmp_path / "nowhere")


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"\x08\x03\x00\x00", "bad magic"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "promises 5 data bytes"),
        (b"\x00\x00\x42\x01\x00\x00\x00\x01\x00", "unknown type"),
    ],
    ids=["magic", "header", "short-data", "dtype"],
)
def test_corrupt_idx_files_raise_clear_errors(tmp_path: Path, payload: bytes, message: str) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match=message):
        read_idx(path)


def test_truncated_gzip_is_reported_as_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x03abc")[:-6])
    with pytest.raises(DatasetError, match="unreadable"):
        read_idx(path)


def test_corrupt_pickle_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(b"not a pickle"))
    with pytest.raises(DatasetError, match="unreadable"):
        load_mnist_pickle(path)


def test_cache_is_used_when_checksum_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = make_mnist_pickle(tmp_path / "cache" / "mnist.pkl.gz")
    monkeypatch.setattr(data, "MNIST_SHA256", data.sha256_of(cached))
    monkeypatch.setattr(data, "_download_mnist_pickle", lambda _: pytest.fail("must not fetch"))
    assert data.locate_mnist_pickle(tmp_path / "cache") == cached


def test_cache_with_wrong_checksum_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = make_mnist_pickle(tmp_path / "source" / "mnist.pkl.gz")
    stale = tmp_path / "cache" / "mnist.pkl.gz"
    stale.parent.mkdir()
    stale.write_bytes(b"truncated")
    monkeypatch.setattr(data, "MNIST_SHA256", data.sha256_of(good))
    monkeypatch.setattr(data, "_installed_mnist_pickle", lambda: good)
    assert data.sha256_of(data.locate_mnist_pickle(tmp_path / "cache")) == data.sha256_of(good)


def test_source_with_wrong_checksum_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_installed_mnist_pickle", lambda: make_mnist_pickle(tmp_path / "m.pkl.gz"))
    with pytest.raises(DatasetError, match="SHA-256"):
        data.locate_mnist_pickle(tmp_path / "cache")


def test_cli_prints_one_clear_message_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--dataset", "idx", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: dataset folder") and "Traceback" not in err


def test_binarization_is_bernoulli_of_intensity() -> None:
    images = torch.full((20000,), 0.3)
    draws = data.binarize(images, torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) == {0.0, 1.0}
    assert abs(float(draws.mean()) - 0.3) < 0.02
    fixed_a = data.fixed_binarization(np.full((5, 1, 2, 2), 0.5, np.float32), seed=3)
    fixed_b = data.fixed_binarization(np.full((5, 1, 2, 2), 0.5, np.float32), seed=3)
    assert torch.equal(fixed_a, fixed_b)
