"""Tensors and images between protobuf and numpy, with validation that names the field and the limit.

Tensors travel as little-endian bytes; conversion is one `np.frombuffer` per message, never a per-item loop
(PNG is the exception: one decode per file, which is the format's nature).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vae_client.errors import InvalidArgument
from vae_client.proto_gen.vae.v1 import vae_pb2

FLOAT32 = np.dtype("<f4")
UINT8 = np.dtype("u1")
_DTYPES: dict[int, np.dtype] = {vae_pb2.ELEMENT_TYPE_FLOAT32: FLOAT32, vae_pb2.ELEMENT_TYPE_UINT8: UINT8}
_ELEMENT_TYPES: dict[np.dtype, Any] = {FLOAT32: vae_pb2.ELEMENT_TYPE_FLOAT32, UINT8: vae_pb2.ELEMENT_TYPE_UINT8}


MAX_TENSOR_RANK = 8


def _show(shape: tuple[int, ...]) -> str:
    """A shape for an error message, cut short: messages must stay small whatever a client sends."""
    dims = ", ".join(map(str, shape[:MAX_TENSOR_RANK]))
    return f"[{dims}{', ...' if len(shape) > MAX_TENSOR_RANK else ''}] (rank {len(shape)})"


def tensor_to_array(tensor: vae_pb2.Tensor, field: str) -> np.ndarray:
    """A read-only view of the tensor's bytes with its declared shape and dtype, checked for consistency.

    The byte count is computed with Python integers, so a shape whose size overflows 64 bits is refused as
    inconsistent with the data like any other, never crashes numpy.
    """
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InvalidArgument(f"{field}.dtype", "must be ELEMENT_TYPE_FLOAT32 or ELEMENT_TYPE_UINT8")
    shape = tuple(int(d) for d in tensor.shape)
    if not shape or len(shape) > MAX_TENSOR_RANK or any(d < 0 for d in shape):
        raise InvalidArgument(
            f"{field}.shape", f"must have 1 to {MAX_TENSOR_RANK} non-negative dimensions, got {_show(shape)}"
        )
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidArgument(
            f"{field}.data", f"has {len(tensor.data)} bytes; shape {_show(shape)} of {dtype.name} needs {expected}"
        )
    try:
        return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    except ValueError as exc:  # an empty tensor whose other dimensions overflow numpy's index range
        raise InvalidArgument(f"{field}.shape", f"is not a valid array shape ({exc})") from exc


def array_to_tensor(array: np.ndarray) -> vae_pb2.Tensor:
    tensor = vae_pb2.Tensor()
    fill_tensor(tensor, array)
    return tensor


def fill_tensor(tensor: vae_pb2.Tensor, array: np.ndarray) -> None:
    """Write `array` (uint8 stays uint8, anything else becomes float32) into `tensor`, a field of the message
    being built. Replies are filled in place: handing a built submessage to a parent's constructor copies it,
    and a large reply was copied four times that way (3x slower, and the copies are what bounds a stream's memory).
    """
    dtype = UINT8 if array.dtype == np.uint8 else FLOAT32
    data = np.ascontiguousarray(array, dtype=dtype)
    tensor.shape[:] = data.shape
    tensor.dtype = _ELEMENT_TYPES[dtype]
    tensor.data = data.tobytes()


def _check_count(n: int, field: str, max_items: int) -> None:
    if n < 1:
        raise InvalidArgument(field, "must hold at least one item")
    if n > max_items:
        raise InvalidArgument(field, f"holds {n} items; the limit is {max_items} per request")


def images_from_proto(
    images: vae_pb2.Images, image_shape: tuple[int, int, int], max_items: int, field: str = "images"
) -> np.ndarray:
    """float32 [N, C, H, W] in [0, 1] from a tensor (float32 in [0, 1] or uint8) or from PNG files."""
    kind = images.WhichOneof("encoding")
    if kind is None:
        raise InvalidArgument(field, "is required: set tensor or png")
    if kind == "png":
        return _images_from_png(images.png, image_shape, max_items, f"{field}.png.images")
    array = tensor_to_array(images.tensor, f"{field}.tensor")
    c, h, w = image_shape
    if array.ndim == 3 and c == 1:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1:] != (c, h, w):
        raise InvalidArgument(f"{field}.tensor.shape", f"must be [N, {c}, {h}, {w}], got {list(array.shape)}")
    _check_count(array.shape[0], f"{field}.tensor.shape[0]", max_items)
    if array.dtype == UINT8:
        return array.astype(np.float32) / np.float32(255.0)
    if not np.isfinite(array).all():
        raise InvalidArgument(f"{field}.tensor.data", "must be finite (found NaN or infinity)")
    if array.min() < 0.0 or array.max() > 1.0:
        raise InvalidArgument(f"{field}.tensor.data", "float32 pixels must lie in [0, 1]")
    return array.astype(np.float32, copy=False)


def _images_from_png(
    png: vae_pb2.PngImages, image_shape: tuple[int, int, int], max_items: int, field: str
) -> np.ndarray:
    _check_count(len(png.images), field, max_items)
    out = np.empty((len(png.images), *image_shape), dtype=np.float32)
    for index, data in enumerate(png.images):
        out[index] = decode_png(data, image_shape, f"{field}[{index}]")
    return out


# PNG modes accepted, and how each becomes pixels in [0, 1]: 8-bit values / 255, 16-bit values / 65535; palette
# images through their palette; alpha is ignored (the colour channels are used as they are); grayscale becomes
# RGB by repeating it, RGB becomes grayscale by ITU-R 601 luma (Pillow's "L" conversion).
PNG_MODES = ("1", "L", "LA", "I;16", "I;16B", "I", "P", "PA", "RGB", "RGBA")
_SIXTEEN_BIT = ("I;16", "I;16B", "I")


def decode_png(data: bytes, image_shape: tuple[int, int, int], field: str) -> np.ndarray:
    """float32 [C, H, W] in [0, 1]. The header is read first: a file of the wrong size or mode is refused before
    a single pixel is decoded (so a PNG claiming millions of pixels costs nothing)."""
    c, h, w = image_shape
    size = header_size(data)
    if size is not None and size != (w, h):  # before Pillow, which warns (and then refuses) above 89 M pixels
        raise InvalidArgument(field, f"is {size[0]}x{size[1]}; the model takes {w}x{h}")
    try:
        with Image.open(io.BytesIO(critical_chunks(data, field)), formats=("PNG",)) as picture:
            if picture.size != (w, h):  # a file whose IHDR is not first (or not alone), which Pillow still reads
                width, height = picture.size
                raise InvalidArgument(field, f"is {width}x{height}; the model takes {w}x{h}")
            if picture.mode not in PNG_MODES:
                raise InvalidArgument(field, f"has PNG mode {picture.mode}; accepted: {', '.join(PNG_MODES)}")
            return _png_pixels(picture, c)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidArgument(field, f"is not a readable PNG file ({type(exc).__name__}: {exc})") from exc


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEPT_CHUNKS = (b"IHDR", b"PLTE", b"IDAT", b"IEND")


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the IHDR chunk states them, or None when the bytes do not start like a PNG (Pillow
    then says what is wrong)."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def critical_chunks(data: bytes, field: str) -> bytes:
    """The PNG with only the chunks that make its pixels. Ancillary chunks (text, colour profiles, ...) are
    dropped unread: Pillow would inflate compressed ones (iCCP, zTXt, iTXt; up to 64 MB each) while reading
    the header, which a client could use to burn CPU and memory with a small file."""
    if not data.startswith(PNG_SIGNATURE):
        return data  # not a PNG: Pillow says so
    kept, offset = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while offset + 12 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        end = offset + 12 + length
        if end > len(data):
            raise InvalidArgument(field, f"is not a readable PNG file (chunk {kind!r} runs past the end)")
        if kind in KEPT_CHUNKS:
            kept.append(data[offset:end])
        offset = end
        if kind == b"IEND":
            break
    return b"".join(kept)


def _png_pixels(picture: Image.Image, channels: int) -> np.ndarray:
    mode = picture.mode
    if mode in _SIXTEEN_BIT:
        gray = np.asarray(picture, dtype=np.float32) / np.float32(65535.0)
        if gray.min() < 0.0 or gray.max() > 1.0:
            raise ValueError(f"{mode} pixel values outside the 16-bit range")
        return gray[None] if channels == 1 else np.repeat(gray[None], 3, axis=0)
    if mode in ("LA", "PA"):
        picture = picture.convert("L" if mode == "LA" else "RGB")
    target = "L" if channels == 1 else "RGB"
    pixels = np.asarray(picture.convert(target), dtype=np.float32) / np.float32(255.0)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def latents_from_proto(
    tensor: vae_pb2.Tensor, latent_dim: int, max_items: int, field: str, max_abs: float = math.inf
) -> np.ndarray:
    """float32 [N, latent_dim]; a single latent may also come as [latent_dim]. Components must be finite and at
    most `max_abs` in size: the decoder of a finite but huge latent can overflow to NaN."""
    if not tensor.shape and not tensor.data:
        raise InvalidArgument(field, "is required")
    array = tensor_to_array(tensor, field)
    if array.dtype != FLOAT32:
        raise InvalidArgument(f"{field}.dtype", "latents must be ELEMENT_TYPE_FLOAT32")
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != latent_dim:
        raise InvalidArgument(f"{field}.shape", f"must be [N, {latent_dim}], got {list(tensor.shape)}")
    _check_count(array.shape[0], f"{field}.shape[0]", max_items)
    if not np.isfinite(array).all():
        raise InvalidArgument(f"{field}.data", "must be finite (found NaN or infinity)")
    largest = float(np.abs(array).max())
    if largest > max_abs:
        raise InvalidArgument(f"{field}.data", f"has a component of size {largest:g}; the limit is {max_abs:g}")
    return array


def images_to_proto(images: np.ndarray, image_format: int) -> vae_pb2.Images:
    message = vae_pb2.Images()
    fill_images(message, images, image_format)
    return message


def fill_images(target: vae_pb2.Images, images: np.ndarray, image_format: int) -> None:
    """float32 [N, C, H, W] in [0, 1] -> the requested encoding, written into `target` in place (`fill_tensor`)."""
    if image_format in (vae_pb2.IMAGE_FORMAT_UNSPECIFIED, vae_pb2.IMAGE_FORMAT_FLOAT32):
        fill_tensor(target.tensor, images.astype(np.float32, copy=False))
        return
    as_bytes = (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if image_format == vae_pb2.IMAGE_FORMAT_UINT8:
        fill_tensor(target.tensor, as_bytes)
    elif image_format == vae_pb2.IMAGE_FORMAT_PNG:
        target.png.images.extend(encode_png(image) for image in as_bytes)
    else:
        raise InvalidArgument("output.format", f"unknown image format {image_format}")


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [C, H, W] -> PNG bytes: an 8-bit grayscale PNG for one channel, an 8-bit RGB PNG for three."""
    c = image.shape[0]
    if c not in (1, 3):
        raise ValueError(f"a PNG image has 1 or 3 channels, got {c}")
    pixels = image[0] if c == 1 else image.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), mode="L" if c == 1 else "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def png_to_array(data: bytes) -> np.ndarray:
    """The inverse of `encode_png`, for clients reading the PNG replies: uint8 [C, H, W], one channel for a
    grayscale PNG and three for any other mode (palette and alpha as `decode_png` reads them)."""
    with Image.open(io.BytesIO(data), formats=("PNG",)) as picture:
        picture.load()
        channels = 1 if picture.mode in ("1", "L", "LA", *_SIXTEEN_BIT) else 3
        return (_png_pixels(picture, channels) * 255.0 + 0.5).astype(np.uint8)
