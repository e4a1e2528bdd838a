"""Hypothesis strategies for every `vae.v1` request message (tests/service/test_fuzz.py).

Each field ranges over what a buggy or hostile client can put on the wire, not only over what is sensible:
model names (served, unknown, empty, odd unicode), tensors (any ElementType value including unknown ones,
shapes of any rank with int64 dimensions from -2^63 to 2^63-1, data of any length), valid-shaped tensors
filled with valid values or with any float32 bit pattern (NaN, infinities, huge, subnormal, negative), PNG
files (Pillow-written in every mode, hand-written in every legal and some illegal colour type / bit depth /
interlace combination, with odd ancillary chunks, and mutated: truncated, bit-flipped, lying headers), counts
across int32 with each limit +-1, float32 temperatures and weights (NaN, infinities, limits +-1 ulp), enum
fields with unknown values, endpoints of each oneof kind or unset, attribute names, seeds, output options.

Bulk contents (pixels, latents, PNG scanlines) come from a numpy generator seeded by a drawn integer, plus a
few drawn values placed where Hypothesis likes them: the Hypothesis buffer stays small, so examples are fast.
Limits come from the `Settings` the server under test runs with (`Facts.limits`).
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from service.config import Settings
from vae_client.proto_gen.vae.v1 import vae_pb2 as V

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal
F32_SUBNORMAL = float(np.float32(1.4e-45))  # smallest subnormal
NAN, INF = math.nan, math.inf
MAX_PIXELS = 64 * 64  # larger images are only ever claimed by headers, never generated

# Inputs that hit a known, reported bug are left out of the strategies while the bug is open, so the suite stays
# green; each has a strict xfail regression test in test_fuzz.py. When a fix makes that test pass, remove the
# xfail marker and the name here: the strategies then generate those inputs too.
KNOWN_BUGS: frozenset[str] = frozenset()  # none open


@dataclass(frozen=True)
class Facts:
    """What the strategies need to know about the server under test."""

    models: tuple[str, ...]  # served model names
    latent_dim: int
    image_shape: tuple[int, int, int]  # [C, H, W]
    attributes: tuple[str, ...]
    limits: Settings


def f32(x: float) -> float:
    return float(np.float32(x))


def up(x: float) -> float:
    """The next float32 above x (x + 1 ulp): just past a limit."""
    return float(np.nextafter(np.float32(x), np.float32(INF)))


def down(x: float) -> float:
    return float(np.nextafter(np.float32(x), np.float32(-INF)))


# --- scalars -------------------------------------------------------------------------------------------------


@st.composite
def mostly(draw: st.DrawFn, valid: st.SearchStrategy, *hostile: st.SearchStrategy, odds: int = 4) -> Any:
    """`odds` draws in `odds` + 1 from `valid`, the rest from `hostile`: a request has several fields, and enough
    requests must be valid in every field to reach the backend and test the replies. (Shrinks toward valid, so
    a minimal failing example names only the fields that matter.)"""
    if draw(st.integers(0, odds)) < odds:
        return draw(valid)
    return draw(st.one_of(*hostile))


SPECIAL_F32 = (0.0, -0.0, NAN, INF, -INF, F32_MAX, -F32_MAX, F32_TINY, -F32_TINY, F32_SUBNORMAL, -F32_SUBNORMAL,
               1.0, -1.0, 0.5, 1e30, -1e30)  # fmt: skip


def float32s(*edges: float) -> st.SearchStrategy[float]:
    """Any float32 (NaN, infinities, subnormals, huge, negative), biased toward specials and the given edges."""
    specials = sorted({f32(e) for e in SPECIAL_F32 + edges}, key=repr)
    return st.one_of(st.sampled_from(specials), st.floats(width=32))


def int32s(*edges: int) -> st.SearchStrategy[int]:
    interesting = {0, 1, -1, INT32_MIN, INT32_MIN + 1, INT32_MAX - 1, INT32_MAX, *edges}
    return st.one_of(st.sampled_from(sorted(e for e in interesting if INT32_MIN <= e <= INT32_MAX)),
                     st.integers(INT32_MIN, INT32_MAX))  # fmt: skip


def counts(limit: int, low: int = 1, cheap: int = 8) -> st.SearchStrategy[int]:
    """An int32 count whose valid range is [low, limit]: cheap valid values mostly, else the limits +-1 or any
    int32."""
    return mostly(st.integers(low, min(limit, cheap)), int32s(low - 1, low, low + 1, limit - 1, limit, limit + 1))


def enum_values(enum: type) -> st.SearchStrategy[int]:
    """A proto3 (open) enum field: a known value mostly; else any int32."""
    known = sorted(enum.values())  # type: ignore[attr-defined]
    return mostly(st.sampled_from(known), st.sampled_from([max(known) + 1, -1]), st.integers(INT32_MIN, INT32_MAX))


def long_texts() -> st.SearchStrategy[str]:
    """Names of 64 characters (up to 256 bytes); while "long-echo" is open, no longer: a status message that
    echoes one must stay under gRPC's metadata limit (8 KiB soft, 16 KiB hard)."""
    lengths = [64] if "long-echo" in KNOWN_BUGS else [64, 1000, 20000]
    return st.builds(lambda ch, n: ch * n, st.sampled_from("x\u00e9\U0001f600"), st.sampled_from(lengths))


def model_names(facts: Facts) -> st.SearchStrategy[str]:
    first = facts.models[0]
    odd = [f"{first} ", first.upper(), f"{first}\x00", f"../{first}", f"{first}\n", "*", "\u00e9", "\U0001f600"]
    return mostly(st.sampled_from(("", *facts.models)), st.sampled_from(odd), st.text(max_size=12), long_texts())


def seeds() -> st.SearchStrategy[V.Seed | None]:
    value = st.one_of(st.sampled_from([0, 1, 2**63 - 1, 2**63, UINT64_MAX]), st.integers(0, UINT64_MAX))
    return st.one_of(st.none(), st.builds(V.Seed, value=value))


def outputs() -> st.SearchStrategy[V.OutputOptions | None]:
    return st.one_of(st.none(), st.builds(V.OutputOptions, format=enum_values(V.ImageFormat),
                                          mode=enum_values(V.DecodeMode)))  # fmt: skip


def bounded_floats(bound: float, *edges: float) -> st.SearchStrategy[float]:
    """A float32 field valid in [-bound, bound] (or [0, bound]: pass a negative `bound` for no negatives)."""
    low = 0.0 if bound < 0 else -bound
    bound = abs(bound)
    valid = st.one_of(st.floats(low, bound, width=32), st.sampled_from([low, bound, down(bound)]))
    return mostly(valid, float32s(bound, up(bound), -bound, -up(bound), *edges))


# --- tensors -------------------------------------------------------------------------------------------------

DIMENSIONS = (0, 1, 2, 3, 4, 5, 27, 28, 29, 784, -1, -2, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**61, 2**62,
              2**63 - 1, INT64_MIN, INT64_MIN + 1)  # fmt: skip


@st.composite
def empty_huge_shapes(draw: st.DrawFn) -> list[int]:
    """A zero dimension among dimensions whose product (without it) overflows: no bytes needed, yet no array."""
    huge = draw(st.lists(st.sampled_from([2**31, 2**62, 2**63 - 1]), min_size=1, max_size=3))
    return draw(st.permutations([0, *huge]))  # type: ignore[no-any-return]


def shapes() -> st.SearchStrategy[list[int]]:
    """Rank 0 to 10 with any int64 dimensions; a long rank of one dimension repeated; an empty-but-huge shape."""
    dimension = st.one_of(st.sampled_from(DIMENSIONS), st.integers(INT64_MIN, INT64_MAX))
    ranks = [9, 64] if "long-echo" in KNOWN_BUGS else [9, 64, 2000]
    options = [st.lists(dimension, max_size=10), st.builds(lambda d, r: [d] * r, dimension, st.sampled_from(ranks))]
    if "empty-huge-shape" not in KNOWN_BUGS:
        options.append(empty_huge_shapes())
    return st.one_of(*options)


def element_types() -> st.SearchStrategy[Any]:
    """An ElementType field: a known value or any int32 (proto3 enums are open)."""
    return st.one_of(st.sampled_from(sorted(V.ElementType.values())), st.integers(INT32_MIN, INT32_MAX))


@st.composite
def arbitrary_tensors(draw: st.DrawFn) -> V.Tensor:
    """Any shape (see `shapes`), any dtype value, data of any (small) length; when the shape asks for few bytes,
    often exactly that many."""
    shape = draw(shapes())
    dtype = draw(element_types())
    size = math.prod(shape) * (1 if dtype == V.ELEMENT_TYPE_UINT8 else 4)
    consistent = 0 <= size <= 4096 and draw(st.integers(0, 3)) > 0
    data = draw(bulk_bytes(size) if consistent else st.binary(max_size=64))
    return V.Tensor(shape=shape, dtype=dtype, data=data)


@st.composite
def bulk_bytes(draw: st.DrawFn, size: int) -> bytes:
    """`size` bytes: zeros, one repeated byte, or random (seeded), with a few drawn bytes placed in them."""
    style = draw(st.sampled_from(["zeros", "constant", "random"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if style == "zeros":
        array = np.zeros(size, np.uint8)
    elif style == "constant":
        array = np.full(size, draw(st.integers(0, 255)), np.uint8)
    else:
        array = rng.integers(0, 256, size, dtype=np.uint8)
    if size:
        for index, value in draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), max_size=4)):
            array[index] = value
    return array.tobytes()


@st.composite
def float_arrays(draw: st.DrawFn, shape: tuple[int, ...], low: float, high: float, valid: bool) -> np.ndarray:
    """float32 arrays of a given shape. Valid: uniform in [low, high], or its edges (the limits, 1 ulp inside,
    zeros, subnormals). Hostile: those with a few out-of-range or non-finite values placed in them, any float32
    bit pattern (seeded), or Hypothesis' own arrays of any float32 (a fill value plus scattered specials)."""
    size = math.prod(shape)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    inside = [low, high, down(high), up(low), 0.0, -0.0, F32_SUBNORMAL, (low + high) / 2]
    if valid or draw(st.booleans()):
        if draw(st.booleans()):
            array = rng.uniform(low, high, size).astype(np.float32)
        else:
            array = rng.choice(np.array([v for v in inside if low <= v <= high], np.float32), size)
        if not valid and size:
            for index in draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=3)):
                array[index] = draw(float32s(up(high), down(low), 2 * high + 1))
        return array.reshape(shape)
    if draw(st.booleans()):
        return rng.integers(0, 2**32, size, dtype=np.uint32).view(np.float32).reshape(shape)
    return draw(hnp.arrays(np.float32, shape, elements=st.floats(width=32)))  # type: ignore[no-any-return]


@st.composite
def image_tensors(draw: st.DrawFn, facts: Facts, max_n: int, valid: bool) -> V.Tensor:
    """Images [N, C, H, W] (or [N, H, W] for one channel), float32 in [0, 1] or uint8 (any bytes). Hostile: N = 0,
    one dimension off, pixels out of range or not finite, a dtype value that disagrees with the data."""
    c, h, w = facts.image_shape
    n = draw(st.integers(1, max_n) if valid else st.integers(0, max_n))
    shapes = [(n, c, h, w), (n, h, w)] if c == 1 else [(n, c, h, w)]
    if not valid:
        shapes += [(n, c + 1, h, w), (n, c, h - 1, w), (n, c, h, w, 1), (c, h, w), (n, c, w + 1, h)]
    shape = draw(st.sampled_from(shapes))
    if draw(st.booleans()):
        array = draw(float_arrays(shape, 0.0, 1.0, valid))
        dtype: Any = V.ELEMENT_TYPE_FLOAT32
    else:
        array = np.frombuffer(draw(bulk_bytes(math.prod(shape))), np.uint8).reshape(shape)
        dtype = V.ELEMENT_TYPE_UINT8
    if not valid and draw(st.integers(0, 4)) == 0:
        dtype = draw(element_types())
    return V.Tensor(shape=shape, dtype=dtype, data=array.tobytes())


@st.composite
def latent_tensors(draw: st.DrawFn, facts: Facts, max_n: int, valid: bool) -> V.Tensor:
    """Latents [N, D] (or [D]) with components within the limit, at it, or 1 ulp inside. Hostile: N = 0, the
    wrong width or rank, components 1 ulp past the limit, huge or not finite, a dtype other than float32."""
    d = facts.latent_dim
    n = draw(st.integers(1, max_n) if valid else st.integers(0, max_n))
    shapes = [(n, d), (n, d), (d,)] + ([] if valid else [(n, d + 1), (n, d - 1), (n, 1, d), (0,)])
    shape = draw(st.sampled_from(shapes))
    bound = facts.limits.max_latent_abs
    array = draw(float_arrays(shape, -bound, bound, valid))
    dtype: Any = V.ELEMENT_TYPE_FLOAT32
    if not valid and draw(st.integers(0, 4)) == 0:
        dtype = draw(element_types())
    return V.Tensor(shape=shape, dtype=dtype, data=array.tobytes())


def latents(facts: Facts, max_n: int) -> st.SearchStrategy[V.Tensor]:
    return mostly(latent_tensors(facts, max_n, True), latent_tensors(facts, max_n, False), arbitrary_tensors(), odds=2)


# --- PNG files -----------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def row_starts(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> tuple[list[int], int]:
    """Offsets of each row's filter byte in the filtered (uncompressed) image data, and its total size."""
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    starts: list[int] = []
    offset = 0
    for x0, y0, dx, dy in passes:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            row = 1 + (w * bits_per_pixel + 7) // 8
            starts += range(offset, offset + h * row, row)
            offset += h * row
    return starts, offset


def image_sizes(facts: Facts, valid: bool) -> st.SearchStrategy[tuple[int, int]]:
    """(width, height): the model's; hostile: one side off by one, or anything small (0 included)."""
    _, h, w = facts.image_shape
    if valid:
        return st.just((w, h))
    return st.one_of(st.sampled_from([(w, h + 1), (w - 1, h), (h + w, 1)]),
                     st.tuples(st.integers(0, 40), st.integers(0, 40)))  # fmt: skip


@st.composite
def raw_pngs(draw: st.DrawFn, facts: Facts, valid: bool) -> bytes:
    """A hand-written PNG: every legal colour type and bit depth (16-bit, sub-byte, palette, alpha), interlaced
    or not, with valid filter bytes. Hostile: also illegal types and depths, interlace methods, filter bytes,
    palettes where none belongs (or of the wrong length), odd ancillary and unknown critical chunks."""
    width, height = draw(image_sizes(facts, valid))
    types = st.sampled_from(sorted(CHANNELS))
    color_type = draw(types if valid else st.one_of(types, st.integers(0, 255)))
    depths = st.sampled_from(DEPTHS.get(color_type, (8,)))
    depth = draw(depths if valid else st.one_of(depths, st.sampled_from([0, 3, 5, 8, 16, 32])))
    interlace = draw(st.sampled_from([0, 1] if valid else [0, 1, 2]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    body = b""
    if width * height <= MAX_PIXELS:
        starts, size = row_starts(width, height, CHANNELS.get(color_type, 1) * depth, interlace == 1)
        raw = rng.integers(0, 256, size, dtype=np.uint8)
        filters = draw(st.sampled_from(["none", "valid"] if valid else ["none", "valid", "any"]))
        if filters != "any":  # a filter byte > 4 is invalid: "any" leaves the random ones in place
            raw[starts] = 0 if filters == "none" else rng.integers(0, 5, len(starts))
        body = raw.tobytes()
    chunks = [chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, interlace))]
    if color_type == 3 or (not valid and draw(st.integers(0, 9)) == 0):
        entries = draw(st.integers(1, 256) if valid else st.integers(0, 257))
        chunks.append(chunk(b"PLTE", rng.integers(0, 256, 3 * entries, dtype=np.uint8).tobytes()))
    extras = {
        "tRNS": chunk(b"tRNS", rng.integers(0, 256, int(rng.integers(0, 12)), dtype=np.uint8).tobytes()),
        "gAMA": chunk(b"gAMA", struct.pack(">I", int(rng.integers(0, 2**32)))),
        "tEXt": chunk(b"tEXt", b"Comment\x00" + bytes(rng.integers(0, 256, 20, dtype=np.uint8))),
        "zTXt": chunk(b"zTXt", b"Comment\x00\x00" + bytes(rng.integers(0, 256, 20, dtype=np.uint8))),
        "iCCP": chunk(b"iCCP", b"icc\x00\x00" + bytes(rng.integers(0, 256, 20, dtype=np.uint8))),
        "ruSt": chunk(b"ruSt", b"ancillary, unknown"),
        "RUST": chunk(b"RUST", b"critical, unknown"),
    }
    if not valid:
        chunks += [extras[name] for name in draw(st.lists(st.sampled_from(sorted(extras)), max_size=2))]
    chunks.append(chunk(b"IDAT", zlib.compress(body, draw(st.integers(0, 9)))))
    chunks.append(chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


@st.composite
def pillow_pngs(draw: st.DrawFn, facts: Facts, valid: bool) -> bytes:
    """A PNG that Pillow writes: modes 1, L, LA, I;16, P, RGB, RGBA."""
    width, height = (max(1, side) for side in draw(image_sizes(facts, valid)))  # Pillow writes no empty image
    mode = draw(st.sampled_from(["1", "L", "LA", "I;16", "P", "RGB", "RGBA"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape: tuple[int, ...] = (height, width)
    if mode == "1":
        picture = Image.fromarray(rng.random(shape) < 0.5)
    elif mode == "I;16":
        picture = Image.fromarray(rng.integers(0, 2**16, shape, dtype=np.uint16))
    else:
        bands = {"L": 1, "LA": 2, "P": 3, "RGB": 3, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (*shape, bands), dtype=np.uint8)
        picture = Image.fromarray(pixels[..., 0] if bands == 1 else pixels)
        if mode == "P":
            picture = picture.quantize(colors=draw(st.integers(1, 256)))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=draw(st.booleans()))
    return buffer.getvalue()


def claim_size(png: bytes, width: int, height: int) -> bytes:
    """The same file with an IHDR (CRC recomputed) that claims width x height pixels."""
    if not png.startswith(PNG_SIGNATURE) or png[12:16] != b"IHDR":
        return png
    data = bytearray(png)
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@st.composite
def mutated(draw: st.DrawFn, files: st.SearchStrategy[bytes]) -> bytes:
    """A file truncated, with bytes flipped, with junk appended, or with a header that lies about its size."""
    data = bytearray(draw(files))
    how = draw(st.sampled_from(["truncate", "flip", "append", "claim"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            index = draw(st.integers(0, len(data) - 1))
            data[index] ^= draw(st.integers(1, 255))
        return bytes(data)
    if how == "append":
        return bytes(data) + draw(st.binary(min_size=1, max_size=32))
    huge = st.sampled_from([0, 1, 13_000, 100_000, 2**31 - 1, 2**31, 2**32 - 1])
    return claim_size(bytes(data), draw(st.one_of(huge, st.integers(0, 2**32 - 1))),
                      draw(st.one_of(huge, st.integers(0, 2**32 - 1))))  # fmt: skip


def png_files(facts: Facts) -> st.SearchStrategy[bytes]:
    good = st.one_of(pillow_pngs(facts, True), raw_pngs(facts, True))
    junk = st.one_of(st.binary(max_size=64), st.binary(max_size=32).map(lambda b: PNG_SIGNATURE + b))
    return mostly(good, pillow_pngs(facts, False), raw_pngs(facts, False), mutated(good), junk)


# --- composite fields ----------------------------------------------------------------------------------------


def images_messages(facts: Facts, max_n: int) -> st.SearchStrategy[V.Images | None]:
    """An Images field: a tensor of images or PNG files (1 to max_n); hostile: tensors and PNG lists of every
    kind above (0 to max_n), any tensor at all, an empty oneof, or the field unset."""
    png_lists = st.builds(V.PngImages, images=st.lists(png_files(facts), min_size=1, max_size=max_n))
    return mostly(
        st.one_of(st.builds(V.Images, tensor=image_tensors(facts, max_n, True)), st.builds(V.Images, png=png_lists)),
        mostly(
            st.builds(V.Images, tensor=st.one_of(image_tensors(facts, max_n, False), arbitrary_tensors())),
            st.builds(V.Images, png=st.builds(V.PngImages, images=st.lists(png_files(facts), max_size=max_n))),
            st.just(V.Images()),
            st.none(),
            odds=2,
        ),
        odds=2,
    )


def attribute_names(facts: Facts) -> st.SearchStrategy[str]:
    known = st.sampled_from(facts.attributes) if facts.attributes else st.just("")
    near = [f"{a} " for a in facts.attributes[:1]] + [a.upper() for a in facts.attributes[:1]]
    return mostly(known, st.sampled_from(["", "no-such-attribute", *near]), st.text(max_size=12), long_texts())


def endpoints(facts: Facts, attributes: bool = True) -> st.SearchStrategy[V.Endpoint | None]:
    """One end of an interpolation or one term: one image, one latent or an attribute (each oneof kind);
    hostile: any Images, any latents, an empty oneof, or the field unset."""
    kinds = [st.builds(V.Endpoint, image=images_messages(facts, max_n=1)),
             st.builds(V.Endpoint, latent=latents(facts, max_n=1))]  # fmt: skip
    if attributes:
        kinds.append(st.builds(V.Endpoint, attribute=attribute_names(facts)))
    return mostly(
        st.one_of(*kinds),
        st.builds(V.Endpoint, image=images_messages(facts, max_n=2)),
        st.builds(V.Endpoint, attribute=attribute_names(facts)),
        st.just(V.Endpoint()),
        st.none(),
    )


def terms(facts: Facts) -> st.SearchStrategy[list[V.Term]]:
    weight = bounded_floats(facts.limits.max_weight_abs)
    return mostly(
        st.lists(st.builds(V.Term, weight=weight, value=endpoints(facts)), min_size=1, max_size=3),
        st.lists(st.builds(V.Term, weight=weight, value=endpoints(facts)), max_size=facts.limits.max_terms + 1),
    )


def _request(message: type, **fields: st.SearchStrategy) -> st.SearchStrategy:
    """A request whose message fields may be unset (a None draw leaves the field out)."""

    @st.composite
    def build(draw: st.DrawFn):  # type: ignore[no-untyped-def]
        values = {name: draw(strategy) for name, strategy in fields.items()}
        return message(**{name: value for name, value in values.items() if value is not None})

    return build()


# --- one strategy per RPC ------------------------------------------------------------------------------------


def requests_for(method: str, facts: Facts) -> st.SearchStrategy:
    """A strategy of request messages for `method` (a VaeService method name)."""
    limits = facts.limits
    model = model_names(facts)
    temperature = bounded_floats(-limits.max_temperature)
    images = images_messages(facts, max_n=4)
    build = {
        "ListModels": lambda: st.just(V.ListModelsRequest()),
        "GetModelInfo": lambda: _request(V.GetModelInfoRequest, model=model),
        "Encode": lambda: _request(V.EncodeRequest, model=model, images=images,
                                   samples_per_image=counts(limits.max_posterior_samples, low=0), seed=seeds()),
        "Decode": lambda: _request(V.DecodeRequest, model=model, latents=mostly(latents(facts, 6), st.none()),
                                   output=outputs(), seed=seeds()),
        "Reconstruct": lambda: _request(V.ReconstructRequest, model=model, images=images,
                                        sample_latent=st.booleans(), output=outputs(), seed=seeds()),
        "Sample": lambda: _request(V.SampleRequest, model=model, n=counts(limits.max_items),
                                   temperature=temperature, output=outputs(), seed=seeds()),
        "SampleStream": lambda: _request(V.SampleStreamRequest, model=model, n=counts(limits.max_stream_items),
                                         temperature=temperature, output=outputs(), seed=seeds(),
                                         chunk_size=counts(limits.max_items, low=0, cheap=4)),
        "Interpolate": lambda: _request(V.InterpolateRequest, model=model, start=endpoints(facts, False),
                                        end=endpoints(facts, False),
                                        steps=counts(limits.max_interpolation_steps, low=2, cheap=12),
                                        method=enum_values(V.InterpolationMethod), output=outputs(), seed=seeds()),
        "Arithmetic": lambda: _request(V.ArithmeticRequest, model=model, terms=terms(facts), output=outputs(),
                                       seed=seeds()),
        "Score": lambda: _request(V.ScoreRequest, model=model, images=images_messages(facts, max_n=3),
                                  importance_samples=counts(limits.max_score_samples, low=0, cheap=10),
                                  seed=seeds()),
    }  # fmt: skip
    return build[method]()


# --- one hostile field in an otherwise valid request -------------------------------------------------------------


def valid_requests(facts: Facts) -> dict[str, Any]:
    """A small valid request of each RPC that carries tensors or images (the backdrop for one hostile field)."""
    c, h, w = facts.image_shape
    image = V.Images(tensor=V.Tensor(shape=[1, c, h, w], dtype=V.ELEMENT_TYPE_UINT8, data=bytes(c * h * w)))
    latent = V.Tensor(shape=[facts.latent_dim], dtype=V.ELEMENT_TYPE_FLOAT32, data=bytes(4 * facts.latent_dim))
    return {
        "Encode": V.EncodeRequest(images=image),
        "Reconstruct": V.ReconstructRequest(images=image),
        "Score": V.ScoreRequest(images=image, importance_samples=2),
        "Decode": V.DecodeRequest(latents=latent),
        "Interpolate": V.InterpolateRequest(start=V.Endpoint(latent=latent), end=V.Endpoint(image=image), steps=3),
        "Arithmetic": V.ArithmeticRequest(
            terms=[
                V.Term(weight=1.0, value=V.Endpoint(latent=latent)),
                V.Term(weight=-0.5, value=V.Endpoint(image=image)),
            ]
        ),
    }


TENSOR_FIELDS = (("Encode", "images.tensor"), ("Reconstruct", "images.tensor"), ("Score", "images.tensor"),
                 ("Decode", "latents"), ("Interpolate", "start.latent"), ("Interpolate", "end.image.tensor"),
                 ("Arithmetic", "terms.0.value.latent"), ("Arithmetic", "terms.1.value.image.tensor"))  # fmt: skip
PNG_FIELDS = (("Encode", "images.png"), ("Reconstruct", "images.png"), ("Score", "images.png"),
              ("Interpolate", "end.image.png"), ("Arithmetic", "terms.1.value.image.png"))  # fmt: skip


def _replace(request: Any, path: str, value: Any) -> Any:
    """A copy of `request` with the message at `path` ("a.b", "terms.1.value") replaced by `value`."""
    copy = type(request)()
    copy.CopyFrom(request)
    *parents, last = path.split(".")
    target = copy
    for part in parents:
        target = target[int(part)] if part.isdigit() else getattr(target, part)
    getattr(target, last).CopyFrom(value)
    return copy


def one_hostile_tensor(facts: Facts) -> st.SearchStrategy[tuple[str, Any]]:
    """(method, request): a valid request with one tensor field replaced by any tensor at all."""
    base = valid_requests(facts)
    tensors = st.one_of(arbitrary_tensors(), image_tensors(facts, 3, False), latent_tensors(facts, 3, False))
    return st.tuples(st.sampled_from(TENSOR_FIELDS), tensors).map(
        lambda case: (case[0][0], _replace(base[case[0][0]], case[0][1], case[1]))
    )


def one_hostile_png_list(facts: Facts) -> st.SearchStrategy[tuple[str, Any]]:
    """(method, request): a valid request whose images are any list of PNG files (one file for an endpoint)."""
    base = valid_requests(facts)

    @st.composite
    def build(draw: st.DrawFn) -> tuple[str, Any]:
        method, path = draw(st.sampled_from(PNG_FIELDS))
        size = 1 if path.split(".")[-2] == "image" else draw(st.integers(0, 3))  # an endpoint holds one image
        files = draw(st.lists(png_files(facts), min_size=size, max_size=size))
        return method, _replace(base[method], path, V.PngImages(images=files))

    return build()


# --- raw request bytes -----------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    value &= UINT64_MAX
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def wire_messages(draw: st.DrawFn, depth: int = 2) -> bytes:
    """Protobuf wire format built field by field: real and unknown field numbers, every wire type (including
    the invalid 6 and 7, and groups), varints up to 10 bytes and overlong ones, lengths that lie, nested
    messages: bytes that get past a parser's first byte."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 6))):
        number = draw(st.one_of(st.integers(1, 8), st.integers(0, 2**29 - 1)))
        wire = draw(st.one_of(st.sampled_from([0, 2, 2, 5, 1]), st.integers(0, 7)))
        out += varint(number << 3 | wire)
        if wire == 0:
            out += draw(st.one_of(st.builds(varint, st.integers(0, UINT64_MAX)), st.just(b"\xff" * 10 + b"\x01")))
        elif wire == 1:
            out += draw(st.binary(min_size=8, max_size=8))
        elif wire == 5:
            out += draw(st.binary(min_size=4, max_size=4))
        elif wire == 2:
            payload = draw(wire_messages(depth - 1)) if depth and draw(st.booleans()) else draw(st.binary(max_size=24))
            length = draw(st.one_of(st.just(len(payload)), st.just(len(payload)), st.integers(0, UINT64_MAX)))
            out += varint(length) + payload
    return bytes(out)


@st.composite
def mutated_serialization(draw: st.DrawFn, requests: st.SearchStrategy) -> bytes:
    """A real request's bytes, cut short, with bytes flipped, inserted or deleted."""
    data = bytearray(draw(requests).SerializeToString())
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        index = draw(st.integers(0, len(data)))
        if how == "flip" and index < len(data):
            data[index] ^= draw(st.integers(1, 255))
        elif how == "insert":
            data[index:index] = draw(st.binary(min_size=1, max_size=4))
        elif how == "delete":
            del data[index : index + draw(st.integers(1, 4))]
        else:
            del data[index:]
    return bytes(data)


def request_bytes(method: str, facts: Facts) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=256), wire_messages(), mutated_serialization(requests_for(method, facts)))
