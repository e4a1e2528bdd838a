"""A real colour dataset that can be built offline: every emoji of Debian's Noto Color Emoji font, rendered
with Pillow, written in CelebA's layout with binary attributes parsed from the emoji's Unicode names.

    python -m training.emoji --out data/emoji [--font PATH] [--contact-sheet sheet.png]

The font's character map gives the single code points; its GSUB ligatures give the sequences it draws as one
picture: zero-width-joiner (ZWJ) sequences (WOMAN + ZWJ + PERSONAL COMPUTER = woman technologist), skin-tone
modifiers, flags and keycaps. A picture the font can reach through several sequences (it keeps legacy orders as
aliases) is written once. Each is drawn at the font's bitmap size (109 px, `embedded_color=True`) with Pillow's
Raqm layout (which joins the sequences; one it does not join into a single glyph is skipped) on a transparent
canvas, cut to the smallest square centred on what was drawn, composited on white and resized to 64x64 RGB
(Lanczos).

Python's `unicodedata` names code points, not sequences: a sequence's name and attributes come from its parts
(`describe`). The attributes (columns of `list_attr_celeba.txt`, 1 / -1) are `ATTRIBUTES`: gender (Woman, Man,
Person = a human figure of neither), Human, Child, Old, Hand, Face, Smiling, Glasses (eyeglasses, sunglasses,
nerd, monocle, goggles; and teachers and scientists, whom Noto draws in glasses / goggles), hair (RedHair,
CurlyHair, WhiteHair, Bald, Beard), the five skin tones (LightSkin ... DarkSkin), Profession and the professions
(Technologist, Scientist, Cook, Teacher, ...), and Flag. The split is 80/10/10, seeded; `emoji_names.txt`
names every picture.
"""

from __future__ import annotations

import argparse
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from training.celeba import IMAGE_SIZE, default_partition

FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"),  # Debian, Ubuntu: fonts-noto-color-emoji
    Path("/usr/share/fonts/noto/NotoColorEmoji.ttf"),  # Arch
    Path("/usr/share/fonts/google-noto-color-emoji/NotoColorEmoji.ttf"),  # Fedora
    Path("/System/Library/Fonts/NotoColorEmoji.ttf"),
)
FONT_SIZE = 109  # Noto Color Emoji's only bitmap strike (136x128 px glyphs); other sizes fail to load
CANVAS = (160, 160)
BACKGROUND = (255, 255, 255)

ZWJ, VS16, KEYCAP = 0x200D, 0xFE0F, 0x20E3
TONES = {0x1F3FB: "LightSkin", 0x1F3FC: "MediumLightSkin", 0x1F3FD: "MediumSkin", 0x1F3FE: "MediumDarkSkin",
         0x1F3FF: "DarkSkin"}  # fmt: skip
TONE_WORDS = {0x1F3FB: "light", 0x1F3FC: "medium-light", 0x1F3FD: "medium", 0x1F3FE: "medium-dark", 0x1F3FF: "dark"}
HAIR = {0x1F9B0: "RedHair", 0x1F9B1: "CurlyHair", 0x1F9B2: "Bald", 0x1F9B3: "WhiteHair"}
FEMALE_SIGN, MALE_SIGN = 0x2640, 0x2642
# ZWJ professions: a person + ZWJ + an object (Unicode's emoji-zwj-sequences.txt); and single-code-point ones.
PROFESSION_OBJECTS = {
    0x1F4BB: "Technologist", 0x1F52C: "Scientist", 0x1F373: "Cook", 0x1F3EB: "Teacher", 0x2695: "HealthWorker",
    0x1F33E: "Farmer", 0x1F3A4: "Singer", 0x1F3A8: "Artist", 0x2708: "Pilot", 0x1F680: "Astronaut",
    0x1F692: "Firefighter", 0x1F527: "Mechanic", 0x1F3ED: "FactoryWorker", 0x1F4BC: "OfficeWorker",
    0x1F393: "Student", 0x2696: "Judge",
}  # fmt: skip
PROFESSION_PEOPLE = {0x1F46E: "PoliceOfficer", 0x1F477: "ConstructionWorker", 0x1F482: "Guard", 0x1F575: "Detective"}
PROFESSIONS = tuple(dict.fromkeys([*PROFESSION_OBJECTS.values(), *PROFESSION_PEOPLE.values()]))
# Legacy Unicode names whose emoji are now drawn (and named by CLDR) differently; used for names and attributes.
RENAMED = {
    0x1F935: "PERSON IN TUXEDO", 0x1F473: "PERSON WEARING TURBAN", 0x1F472: "PERSON WITH SKULLCAP",
    0x1F470: "PERSON WITH VEIL", 0x1F574: "PERSON IN SUIT LEVITATING", 0x1F46F: "PEOPLE WITH BUNNY EARS",
    0x1F385: "SANTA CLAUS", 0x1F936: "MRS CLAUS", 0x1F9D5: "WOMAN WITH HEADSCARF",
    0x1F483: "WOMAN DANCING", 0x1F481: "PERSON TIPPING HAND", 0x1F645: "PERSON GESTURING NO",
    0x1F646: "PERSON GESTURING OK", 0x1F486: "PERSON GETTING MASSAGE", 0x1F487: "PERSON GETTING HAIRCUT",
    0x1F926: "PERSON FACEPALMING", 0x1F937: "PERSON SHRUGGING", 0x1F64B: "PERSON RAISING HAND",
    0x1F64E: "PERSON POUTING", 0x1F6B6: "PERSON WALKING", 0x1F3C3: "PERSON RUNNING", 0x1F3C4: "PERSON SURFING",
    0x1F3CA: "PERSON SWIMMING", 0x1F6A3: "PERSON ROWING BOAT", 0x1F3CB: "PERSON LIFTING WEIGHTS",
    0x1F6B4: "PERSON BIKING", 0x1F6B5: "PERSON MOUNTAIN BIKING", 0x1F3CC: "PERSON GOLFING",
    0x1F93C: "PEOPLE WRESTLING", 0x1F93D: "PERSON PLAYING WATER POLO", 0x1F93E: "PERSON PLAYING HANDBALL",
    0x1F939: "PERSON JUGGLING", 0x26F9: "PERSON BOUNCING BALL", 0x1F6C0: "PERSON TAKING BATH",
    0x1F6CC: "PERSON IN BED", 0x1F647: "PERSON BOWING", 0x1F64C: "RAISING HANDS", 0x1F64F: "FOLDED HANDS",
    0x1F482: "GUARD", 0x1F575: "DETECTIVE", 0x1F931: "PERSON BREAST-FEEDING",
}  # fmt: skip
GENDERED = {0x1F385: "MAN", 0x1F934: "MAN", 0x1F936: "WOMAN", 0x1F478: "WOMAN"}  # names without the word
# Noto draws these professions wearing glasses (teacher) or goggles (scientist): seen in the pictures.
DRAWN_WITH_GLASSES = {"Teacher", "Scientist"}
# Shorter names for parts of ZWJ sequences (names only; attributes come from the words above and below).
JOINED_NAMES = {0x27A1: "FACING RIGHT", 0x2764: "HEART", 0x1F48B: "KISS", 0x1F91D: "HOLDING HANDS"}
WOMAN_WORDS = {"WOMAN", "WOMEN", "GIRL"}
MAN_WORDS = {"MAN", "MEN", "BOY"}
HUMAN_WORDS = WOMAN_WORDS | MAN_WORDS | {"PERSON", "PEOPLE", "ADULT", "CHILD", "BABY", "FAMILY", "COUPLE"}
BODY_PART_WORDS = {"HAND", "HANDS", "FINGER", "FINGERS", "THUMBS", "FIST", "PALM", "EAR", "NOSE", "LEG", "FOOT",
                   "ARM", "BICEPS", "NAIL", "HORNS", "GESTURE", "HANDSHAKE", "SELFIE", "INDEX", "BACKHAND"}  # fmt: skip
GLASSES_WORDS = {"EYEGLASSES", "SUNGLASSES", "NERD", "MONOCLE", "GOGGLES"}
SMILING_WORDS = {"SMILING", "GRINNING", "SMILE", "LAUGHING", "BEAMING"}

ATTRIBUTES = (
    "Woman", "Man", "Person", "Human", "Child", "Old", "Hand", "Face", "Smiling", "Glasses",
    "RedHair", "CurlyHair", "WhiteHair", "Bald", "Beard", *TONES.values(), "Profession", *PROFESSIONS, "Flag",
)  # fmt: skip


class EmojiError(RuntimeError):
    """The font is missing or cannot be read; the message says how to get it."""


@dataclass(frozen=True)
class Emoji:
    sequence: tuple[int, ...]  # the code points, in the order the font's ligature expects them
    name: str
    attributes: frozenset[str] = field(default_factory=frozenset)

    @property
    def text(self) -> str:
        return "".join(map(chr, self.sequence))

    @property
    def codepoints(self) -> str:
        return "-".join(f"{c:04X}" for c in self.sequence)


def find_font(path: str | Path | None = None) -> Path:
    candidates = [Path(path)] if path else list(FONT_CANDIDATES)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = str(path) if path else ", ".join(map(str, FONT_CANDIDATES))
    raise EmojiError(
        f"Noto Color Emoji font not found ({where}). On Debian/Ubuntu: `apt-get install fonts-noto-color-emoji` "
        "(scripts/install_system_deps.sh installs it), or pass --font PATH."
    )


def _unit_name(codepoint: int) -> str:
    return RENAMED.get(codepoint) or JOINED_NAMES.get(codepoint) or unicodedata.name(chr(codepoint), "") or ""


def describe(sequence: Sequence[int]) -> tuple[str, frozenset[str]]:
    """(a readable name, the attribute set) of one emoji sequence, from the names of its parts."""
    parts = [c for c in sequence if c not in (ZWJ, VS16)]
    tones = [c for c in parts if c in TONES]
    hair = [HAIR[c] for c in parts if c in HAIR]
    gender_signs = [c for c in parts if c in (FEMALE_SIGN, MALE_SIGN)]
    objects = [PROFESSION_OBJECTS[c] for c in parts if c in PROFESSION_OBJECTS and len(parts) > 1]
    regional = [c for c in parts if 0x1F1E6 <= c <= 0x1F1FF]
    tags = [c for c in parts if 0xE0020 <= c <= 0xE007E]
    attributes: set[str] = {TONES[c] for c in tones} | set(hair)

    if len(regional) == 2 or tags:  # flags: a regional-indicator pair, or a tag sequence (England, Scotland)
        code = "".join(chr(c - 0x1F1E6 + ord("A")) for c in regional) or "".join(chr(c - 0xE0000) for c in tags)
        return f"flag {code.upper()}", frozenset({"Flag"})
    if KEYCAP in parts:
        return f"keycap {''.join(chr(c) for c in parts if c < 0x80)}", frozenset()

    base = [c for c in parts if c not in TONES and c not in HAIR and c not in gender_signs]
    names = [_unit_name(c) for c in base if not (c in PROFESSION_OBJECTS and objects)]
    words = set(re.findall(r"[A-Z]+", " ".join(names))) | {GENDERED[c] for c in base if c in GENDERED}
    if gender_signs and len(parts) > 1:  # a gender sign joined to a figure makes it a woman / a man
        words -= WOMAN_WORDS | MAN_WORDS
        words |= {"WOMAN"} if FEMALE_SIGN in gender_signs else set()
        words |= {"MAN"} if MALE_SIGN in gender_signs else set()
    professions = set(objects) | {PROFESSION_PEOPLE[c] for c in base if c in PROFESSION_PEOPLE}

    if words & WOMAN_WORDS:
        attributes.add("Woman")
    if words & MAN_WORDS or ("BEARDED" in words and not words & WOMAN_WORDS):
        attributes.add("Man")
    human = bool(words & HUMAN_WORDS or (tones and not words & BODY_PART_WORDS) or professions or hair)
    if words & BODY_PART_WORDS and not words & HUMAN_WORDS:
        attributes.add("Hand")
        human = False
    if human:
        attributes.add("Human")
        if not attributes & {"Woman", "Man"}:
            attributes.add("Person")
    if words & {"CHILD", "BOY", "GIRL", "BABY"}:
        attributes.add("Child")
    if "OLDER" in words:
        attributes.add("Old")
    if "FACE" in words and "CLOCK" not in words:
        attributes.add("Face")
    if words & SMILING_WORDS:
        attributes.add("Smiling")
    if words & GLASSES_WORDS or professions & DRAWN_WITH_GLASSES:
        attributes.add("Glasses")
    if "BEARDED" in words or "BEARD" in words:
        attributes.add("Beard")
    if professions:
        attributes |= professions | {"Profession"}

    subject = " ".join(names).lower() or "emoji"
    if gender_signs and len(parts) > 1:
        subject = f"{'woman' if FEMALE_SIGN in gender_signs else 'man'} {subject.replace('person', '').strip()}"
    subject = subject.replace("adult", "person")
    if objects:
        subject = f"{subject} {' '.join(objects).lower()}"
    extras = [f"{TONE_WORDS[c]} skin tone" for c in tones] + [re.sub(r"(?<!^)(?=[A-Z])", " ", h).lower() for h in hair]
    name = re.sub(r"\s+", " ", subject).strip() + (f": {', '.join(extras)}" if extras else "")
    return name, frozenset(attributes)


def font_sequences(font_path: Path) -> list[tuple[int, ...]]:
    """Every code point and ligature sequence the font draws as one picture, one sequence per picture."""
    try:
        from fontTools.ttLib import TTFont
    except ImportError as exc:  # fontTools comes with matplotlib (the train extra)
        raise EmojiError("fontTools is needed to read the font's ligatures: pip install fonttools") from exc
    font = TTFont(str(font_path), lazy=True)
    cmap = font.getBestCmap()
    codepoint_of: dict[str, int] = {}
    for codepoint, glyph in sorted(cmap.items()):
        codepoint_of.setdefault(glyph, codepoint)
    by_glyph: dict[str, list[tuple[int, ...]]] = {}
    for codepoint, glyph in cmap.items():
        by_glyph.setdefault(glyph, []).append((codepoint,))
    for lookup in font["GSUB"].table.LookupList.Lookup:
        for subtable in lookup.SubTable:
            if lookup.LookupType == 7:
                subtable = subtable.ExtSubTable
            for first, ligatures in getattr(subtable, "ligatures", {}).items():
                for ligature in ligatures:
                    glyphs = [first, *ligature.Component]
                    if all(g in codepoint_of for g in glyphs):
                        sequence = tuple(codepoint_of[g] for g in glyphs)
                        by_glyph.setdefault(ligature.LigGlyph, []).append(sequence)
    figures = {s[i - 1] for s in (q for group in by_glyph.values() for q in group) for i, c in enumerate(s)
               if c in TONES and i > 0 and s[i - 1] not in (ZWJ, *TONES)}  # fmt: skip

    def preference(sequence: tuple[int, ...]) -> tuple[int, int, int, tuple[int, ...]]:
        """The canonical order among a picture's aliases (the font also keeps element-reversed orders): no
        modifier opening an element, a figure first (person, hand), then the shortest."""
        elements = " ".join(f"{c:X}" for c in sequence).split(f" {ZWJ:X} ")
        stray_tones = sum(int(e.split()[0], 16) in TONES for e in elements if e)
        return (stray_tones, int(sequence[0] not in figures and len(elements) > 1), len(sequence), sequence)

    return sorted({min(sequences, key=preference) for sequences in by_glyph.values()}, key=lambda s: (len(s), s))


def _wanted(sequence: tuple[int, ...]) -> bool:
    """Pictures, not the pieces sequences are built from (ASCII, joiners, lone modifiers, tag letters)."""
    if len(sequence) > 1:
        return True
    (c,) = sequence
    return not (c < 0xA0 or c in (ZWJ, VS16, KEYCAP) or c in TONES or c in HAIR or 0xE0000 <= c <= 0xE007F
                or 0x1F1E6 <= c <= 0x1F1FF or 0xFE000 <= c <= 0xFFFFF)  # fmt: skip


def enumerate_emoji(font_path: Path) -> list[Emoji]:
    out = []
    for sequence in font_sequences(font_path):
        if _wanted(sequence):
            name, attributes = describe(sequence)
            out.append(Emoji(sequence, name, attributes))
    return out


def load_font(font_path: Path) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(str(font_path), FONT_SIZE, layout_engine=ImageFont.Layout.RAQM)
    except (OSError, ImportError, KeyError) as exc:
        raise EmojiError(f"cannot load {font_path} at size {FONT_SIZE} with Pillow's Raqm layout: {exc}") from exc


def render(font: ImageFont.FreeTypeFont, text: str, size: int = IMAGE_SIZE) -> Image.Image | None:
    """One emoji as a size x size RGB picture on white; None when the font draws nothing or more than one
    glyph (a sequence the layout engine did not join into one picture)."""
    glyph_width = font.getlength("\U0001f600")
    if font.getlength(text) > 1.2 * glyph_width:
        return None
    canvas = Image.new("RGBA", CANVAS, (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((12, 16), text, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    side = max(right - left, bottom - top)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    square = (round(cx - side / 2), round(cy - side / 2), round(cx - side / 2) + side, round(cy - side / 2) + side)
    background = Image.new("RGBA", CANVAS, (*BACKGROUND, 255))
    picture = Image.alpha_composite(background, canvas).crop(square).convert("RGB")
    return picture.resize((size, size), Image.Resampling.LANCZOS)


def build_dataset(
    out: Path,
    font_path: str | Path | None = None,
    limit: int | None = None,
    size: int = IMAGE_SIZE,
    seed: int = 0,
    progress: bool = True,
) -> list[Emoji]:
    """Render every emoji into `out` in CelebA's layout; returns those written (in file order)."""
    font_file = find_font(font_path)
    font = load_font(font_file)
    emoji = enumerate_emoji(font_file)[:limit]
    images = out / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    written: list[Emoji] = []
    iterator: Iterable[Emoji] = emoji
    if progress:
        from tqdm import tqdm

        iterator = tqdm(emoji, desc="rendering emoji", unit="img", mininterval=1.0)
    for item in iterator:
        picture = render(font, item.text, size)
        if picture is None:
            continue
        written.append(item)
        picture.save(images / f"{len(written):06d}.png", optimize=True)
    for stale in sorted(images.glob("*.png"))[len(written) :]:
        stale.unlink()  # a rebuild with fewer pictures must not leave old files behind
    partition = default_partition(len(written), seed)
    files = [f"{i:06d}.png" for i in range(1, len(written) + 1)]
    rows = [
        " ".join([file, *("1" if a in e.attributes else "-1" for a in ATTRIBUTES)])
        for file, e in zip(files, written, strict=True)
    ]
    (out / "list_attr_celeba.txt").write_text(f"{len(written)}\n{' '.join(ATTRIBUTES)}\n" + "\n".join(rows) + "\n")
    (out / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(files, partition, strict=True)))
    (out / "emoji_names.txt").write_text(
        "".join(f"{f}\t{e.codepoints}\t{e.name}\n" for f, e in zip(files, written, strict=True))
    )
    return written


def contact_sheet(folder: Path, out: Path, count: int = 256, columns: int = 16, start: int = 0) -> Path:
    """A grid of the dataset's first pictures (from `start`), to look at."""
    files = sorted((folder / "img_align_celeba").glob("*.png"))[start : start + count]
    if not files:
        raise EmojiError(f"no pictures in {folder / 'img_align_celeba'}")
    first = Image.open(files[0])
    w, h = first.size
    rows = -(-len(files) // columns)
    sheet = Image.new("RGB", (columns * w, rows * h), BACKGROUND)
    for i, path in enumerate(files):
        with Image.open(path) as picture:
            sheet.paste(picture.convert("RGB"), ((i % columns) * w, (i // columns) * h))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.emoji", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="dataset folder (CelebA layout) to write")
    parser.add_argument("--font", help="NotoColorEmoji.ttf (default: the system's)")
    parser.add_argument("--limit", type=int, help="only the first N emoji (quick looks)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the train/valid/test split")
    parser.add_argument("--contact-sheet", type=Path, help="also write a PNG grid of the first 256 pictures")
    args = parser.parse_args(argv)
    try:
        written = build_dataset(args.out, args.font, args.limit, seed=args.seed)
        if args.contact_sheet:
            print(contact_sheet(args.out, args.contact_sheet))
    except EmojiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = {a: sum(a in e.attributes for e in written) for a in ATTRIBUTES}
    print(f"{len(written)} pictures, {len(ATTRIBUTES)} attributes in {args.out}")
    print(", ".join(f"{a} {n}" for a, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
