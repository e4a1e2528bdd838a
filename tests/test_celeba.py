"""The colour readers (training/celeba.py): CelebA's layout and any image folder, on pictures made here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.celeba_fixture import ATTRIBUTE_NAMES, make_celeba_dir
from training import celeba
from training.data import DATASETS, DatasetError, dataset_image_shape, load_dataset


@pytest.fixture(scope="module")
def celeba_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_celeba_dir(tmp_path_factory.mktemp("celeba"))


def _attribute_rows(folder: Path) -> dict[str, list[int]]:
    lines = (folder / "list_attr_celeba.txt").read_text().splitlines()[2:]
    return {line.split()[0]: [int(v == "1") for v in line.split()[1:]] for line in lines}


def test_reader_gives_64px_rgb_with_attributes_and_the_official_split(celeba_dir: Path, tmp_path: Path) -> None:
    data = load_dataset("celeba", celeba_dir, cache_dir=tmp_path)
    assert data.name == "celeba" and data.image_shape == (3, 64, 64)
    assert data.attribute_names == ATTRIBUTE_NAMES and data.label_names == ()
    assert (len(data.train), len(data.valid), len(data.test)) == (48, 6, 6)
    rows = list(_attribute_rows(celeba_dir).values())
    for split, start in ((data.train, 0), (data.valid, 48), (data.test, 54)):
        assert split.images.dtype == np.float32 and split.images.min() >= 0 and split.images.max() <= 1
        assert split.attributes is not None and split.attributes.dtype == np.uint8
        np.testing.assert_array_equal(split.attributes, rows[start : start + len(split)])
        assert (split.labels == 0).all()
    assert data.train.images.std() > 0.1  # pictures, not blanks


def test_crop_box_is_celeba_148_or_the_largest_centred_square() -> None:
    assert celeba.crop_box(178, 218) == (15, 35, 163, 183)
    assert celeba.crop_box(100, 60) == (20, 0, 80, 60)
    assert celeba.crop_box(64, 64) == (0, 0, 64, 64)


def test_a_celeba_sized_picture_keeps_only_its_centre(tmp_path: Path) -> None:
    picture = Image.new("RGB", (178, 218), (255, 0, 0))
    picture.paste((0, 255, 0), (15, 35, 163, 183))
    picture.save(tmp_path / "p.png")
    pixels = celeba.load_picture(tmp_path / "p.png")
    assert pixels.shape == (3, 64, 64) and pixels.dtype == np.uint8
    assert (pixels[1] == 255).all() and (pixels[0] == 0).all()


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert (celeba.load_picture(tmp_path / "clear.png") == 255).all()


def test_second_load_reads_the_cache_and_a_changed_picture_is_decoded_again(tmp_path: Path) -> None:
    folder = make_celeba_dir(tmp_path / "data", n=12, partition=False)
    cache = tmp_path / "cache"
    first = celeba.load_celeba(folder, cache_dir=cache)
    assert len(list((cache / "images").glob("*.npy"))) == 1

    original = celeba.load_picture

    def refuse(path: Path, size: int = 64) -> np.ndarray:
        raise AssertionError(f"decoded {path} although nothing changed")

    celeba.load_picture = refuse  # type: ignore[assignment]
    try:
        second = celeba.load_celeba(folder, cache_dir=cache)
    finally:
        celeba.load_picture = original  # type: ignore[assignment]
    np.testing.assert_array_equal(first.train.images, second.train.images)

    target = folder / "img_align_celeba" / "000001.jpg"
    Image.new("RGB", (178, 218), (0, 0, 0)).save(target, quality=95)
    os.utime(target, ns=(1, 1))
    third = celeba.load_celeba(folder, cache_dir=cache)
    assert len(list((cache / "images").glob("*.npy"))) == 2
    assert not np.array_equal(np.concatenate([first.train.images, first.valid.images, first.test.images]),
                              np.concatenate([third.train.images, third.valid.images, third.test.images]))  # fmt: skip


def test_without_a_partition_file_the_split_is_seeded_80_10_10(tmp_path: Path) -> None:
    folder = make_celeba_dir(tmp_path / "data", n=40, partition=False)
    a = celeba.load_celeba(folder, cache_dir=tmp_path / "c1")
    b = celeba.load_celeba(folder, cache_dir=tmp_path / "c2")
    assert (len(a.train), len(a.valid), len(a.test)) == (32, 4, 4)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    np.testing.assert_array_equal(celeba.default_partition(40), celeba.default_partition(40))


def _rewrite(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing attribute file", "missing attribute file"),
        ("bad count", "line 1: expected the number of images"),
        ("wrong column count", "line 5: expected 5 columns"),
        ("bad value", "line 6: attribute values must be 1 or -1"),
        ("count mismatch", "line 1 promises 13 images, the file lists 12"),
        ("missing image", "line 4: image"),
        ("unreadable image", "000003.jpg is unreadable"),
        ("bad partition line", "list_eval_partition.txt line 2: expected '<file> <0|1|2>'"),
        ("missing image folder", "missing image folder"),
    ],
)
def test_bad_input_names_the_file_and_line(tmp_path: Path, case: str, expected: str) -> None:
    folder = make_celeba_dir(tmp_path / "data", n=12)
    attributes, images = folder / "list_attr_celeba.txt", folder / "img_align_celeba"
    if case == "missing attribute file":
        attributes.unlink()
    elif case == "bad count":
        _rewrite(attributes, 1, "twelve")
    elif case == "wrong column count":
        _rewrite(attributes, 5, "000003.jpg 1 -1 1")
    elif case == "bad value":
        _rewrite(attributes, 6, "000004.jpg 1 -1 yes 1")
    elif case == "count mismatch":
        _rewrite(attributes, 1, "13")
    elif case == "missing image":
        (images / "000002.jpg").unlink()
    elif case == "unreadable image":
        (images / "000003.jpg").write_bytes(b"not a jpeg at all")
    elif case == "bad partition line":
        _rewrite(folder / "list_eval_partition.txt", 2, "000002.jpg 7")
    elif case == "missing image folder":
        for picture in images.iterdir():
            picture.unlink()
        images.rmdir()
    with pytest.raises(DatasetError) as caught:
        celeba.load_celeba(folder, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert expected in message and str(folder) in message, message


def test_image_folder_labels_come_from_sub_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(10):
            noise = rng.integers(0, 30, size=(40, 50, 3))
            Image.fromarray((np.array(colour) * 0.8 + noise).astype(np.uint8)).save(
                tmp_path / "pets" / label / f"{i}.png"
            )
    data = load_dataset("folder", tmp_path / "pets", cache_dir=tmp_path / "cache")
    assert data.label_names == ("cats", "dogs") and data.image_shape == (3, 64, 64)
    assert data.train.attributes is None and data.attribute_names == ()
    everything = [data.train, data.valid, data.test]
    labels = np.concatenate([s.labels for s in everything])
    reds = np.concatenate([s.images[:, 0].mean((1, 2)) for s in everything])
    assert sorted(labels.tolist()) == [0] * 10 + [1] * 10
    assert ((reds > 0.5) == (labels == 0)).all()  # each picture kept its own label

    (tmp_path / "pets" / "loose.png").write_bytes((tmp_path / "pets" / "cats" / "0.png").read_bytes())
    unlabelled = load_dataset("folder", tmp_path / "pets", cache_dir=tmp_path / "cache")
    assert (
        unlabelled.label_names == ()
        and sum(len(s) for s in (unlabelled.train, unlabelled.valid, unlabelled.test)) == 21
    )


def test_dataset_names_and_shapes_without_loading(tmp_path: Path) -> None:
    assert {"celeba", "emoji", "folder"} <= set(DATASETS)
    for name in ("celeba", "folder"):
        with pytest.raises(DatasetError, match="needs --data-dir"):
            load_dataset(name)
    assert dataset_image_shape("celeba", "anywhere") == (3, 64, 64) == dataset_image_shape("emoji")
    assert dataset_image_shape("mnist") == (1, 28, 28)
    with pytest.raises(DatasetError, match=r"python -m training\.emoji"):
        load_dataset("emoji", tmp_path / "nothing")


def test_idx_shape_is_read_from_the_header(idx_dir: Path) -> None:
    assert dataset_image_shape("idx", idx_dir) == (1, 28, 28)
