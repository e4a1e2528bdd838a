"""The emoji dataset (training/emoji.py): names and attributes from Unicode names, and real colour renders of the
Noto Color Emoji font (scripts/install_system_deps.sh installs it), written in CelebA's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training import emoji
from training.celeba import load_celeba

ZWJ = 0x200D
WOMAN_TECHNOLOGIST = (0x1F469, ZWJ, 0x1F4BB)


@pytest.mark.parametrize(
    ("sequence", "name", "attributes"),
    [
        (WOMAN_TECHNOLOGIST, "woman technologist", {"Woman", "Human", "Technologist", "Profession"}),
        (
            (0x1F468, 0x1F3FD, ZWJ, 0x1F3EB),
            "man teacher: medium skin tone",
            {"Man", "Human", "Teacher", "Profession", "Glasses", "MediumSkin"},
        ),
        (
            (0x1F9D1, 0x1F3FF, ZWJ, 0x1F52C),
            "person scientist: dark skin tone",
            {"Person", "Human", "Scientist", "Profession", "Glasses", "DarkSkin"},
        ),
        (
            (0x1F46E, 0x1F3FB, ZWJ, 0x2640),
            "woman police officer: light skin tone",
            {"Woman", "Human", "PoliceOfficer", "Profession", "LightSkin"},
        ),
        ((0x1F935, ZWJ, 0x2642), "man in tuxedo", {"Man", "Human"}),
        ((0x1F469, ZWJ, 0x1F9B0), "woman: red hair", {"Woman", "Human", "RedHair"}),
        ((0x1F475,), "older woman", {"Woman", "Human", "Old"}),
        ((0x1F913,), "nerd face", {"Face", "Glasses"}),
        ((0x1F600,), "grinning face", {"Face", "Smiling"}),
        ((0x1F44D, 0x1F3FE), "thumbs up sign: medium-dark skin tone", {"Hand", "MediumDarkSkin"}),
        ((0x1F1EC, 0x1F1E7), "flag GB", {"Flag"}),
        ((0x1F431,), "cat face", {"Face"}),
        ((0x1F6B2,), "bicycle", set()),
    ],
)
def test_names_and_attributes_come_from_the_parts(sequence: tuple[int, ...], name: str, attributes: set[str]) -> None:
    assert emoji.describe(sequence) == (name, frozenset(attributes))
    assert attributes <= set(emoji.ATTRIBUTES)


@pytest.fixture(scope="module")
def font() -> Path:
    return emoji.find_font()


def test_the_font_gives_thousands_of_pictures_with_zwj_sequences(font: Path) -> None:
    found = emoji.enumerate_emoji(font)
    sequences = {e.sequence for e in found}
    assert len(found) > 3000 and len(sequences) == len(found)
    assert WOMAN_TECHNOLOGIST in sequences and (0x1F913,) in sequences
    assert sum(ZWJ in s for s in sequences) > 1000
    counts = {a: sum(a in e.attributes for e in found) for a in emoji.ATTRIBUTES}
    assert counts["Woman"] > 500 and counts["Glasses"] >= 30 and counts["Technologist"] == 18


def test_a_zwj_sequence_renders_as_one_colour_picture(font: Path) -> None:
    loaded = emoji.load_font(font)
    picture = emoji.render(loaded, "".join(map(chr, WOMAN_TECHNOLOGIST)))
    assert picture is not None and picture.size == (64, 64) and picture.mode == "RGB"
    pixels = np.asarray(picture, np.float32) / 255
    assert (pixels.max(-1) - pixels.min(-1)).mean() > 0.1  # coloured, not grey
    assert emoji.render(loaded, "\U0001f600\U0001f600") is None  # two glyphs are not one picture


def test_build_writes_celeba_layout_the_reader_loads(font: Path, tmp_path: Path) -> None:
    written = emoji.build_dataset(tmp_path / "emoji", font, limit=30, progress=False)
    assert len(written) == 30
    data = load_celeba(tmp_path / "emoji", "emoji", cache_dir=tmp_path / "cache")
    assert data.attribute_names == emoji.ATTRIBUTES and data.image_shape == (3, 64, 64)
    assert len(data.train) + len(data.valid) + len(data.test) == 30
    assert len((tmp_path / "emoji" / "emoji_names.txt").read_text().splitlines()) == 30
    sheet = emoji.contact_sheet(tmp_path / "emoji", tmp_path / "sheet.png", count=30, columns=10)
    assert sheet.exists()


def test_missing_font_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(emoji.EmojiError, match="fonts-noto-color-emoji"):
        emoji.find_font(tmp_path / "no.ttf")
