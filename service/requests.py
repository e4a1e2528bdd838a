"""The one validation layer: every request message becomes a typed domain request here, or is refused with
`InvalidArgument` / `NotFound` naming the field and the limit, before any backend call is made.

That includes the size of the reply: a request that would produce a reply larger than `--max-reply-mb` (or the
transport's `--max-message-mb`, if smaller) is refused up front instead of being computed and then dropped. The
limits all come from `Settings`; nothing here touches grpc or a backend.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.config import Settings
from vae_client import codecs
from vae_client.errors import InvalidArgument, NotFound
from vae_client.proto_gen.vae.v1 import vae_pb2
from vaecore.repository import ModelSpec

REPLY_HEADROOM_BYTES = 64 * 1024  # protobuf framing, seeds, model names
PNG_OVERHEAD_BYTES = 1024  # a PNG is never more than its raw pixels plus this (stored blocks, headers, CRCs)


@dataclass(frozen=True)
class Output:
    """How decoded images are returned: the decoder's mean or a sample of p(x|z), in which encoding."""

    sample_pixels: bool
    image_format: int  # vae_pb2.ImageFormat


@dataclass(frozen=True)
class Points:
    """Latent points named by a request: each is a latent [D] or the index of an image in `images`, whose
    posterior mean it stands for; all images are encoded together, in one batched call."""

    items: tuple[np.ndarray | int, ...]
    images: np.ndarray | None  # [M, C, H, W], or None when no item is an image


@dataclass(frozen=True)
class Encode:
    model: ModelSpec
    images: np.ndarray
    samples: int
    seed: int


@dataclass(frozen=True)
class Decode:
    model: ModelSpec
    latents: np.ndarray
    output: Output
    seed: int


@dataclass(frozen=True)
class Reconstruct:
    model: ModelSpec
    images: np.ndarray
    sample_latent: bool
    output: Output
    seed: int


@dataclass(frozen=True)
class Sample:
    model: ModelSpec
    n: int
    temperature: float
    output: Output
    seed: int
    chunk: int  # SampleStream: images per message; Sample: n


@dataclass(frozen=True)
class Interpolate:
    model: ModelSpec
    ends: Points  # two items: start, end
    steps: int
    spherical: bool
    output: Output
    seed: int


@dataclass(frozen=True)
class Arithmetic:
    model: ModelSpec
    weights: tuple[float, ...]
    terms: Points
    output: Output
    seed: int


@dataclass(frozen=True)
class Score:
    model: ModelSpec
    images: np.ndarray
    samples: int
    seed: int


_FRESH_SEEDS = random.Random()  # seeded from os.urandom once per process; a seed must differ, not be secret


def _seed(message: Any) -> int:
    """The request's seed, or a fresh one; the reply echoes it so the answer can be reproduced."""
    return int(message.seed.value) if message.HasField("seed") else _FRESH_SEEDS.getrandbits(63)


def _in_range(value: float, field: str, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidArgument(field, f"must be between {low:g} and {high:g}, got {value:g}")


@dataclass(frozen=True)
class Stamps:
    """The latent spaces a request's latents say they come from, and how many latent values came unstamped."""

    spaces: frozenset[str]
    unstamped: int


def latent_stamps(request: Any) -> Stamps:
    """Read before routing (service/registry/routing.py): a stamp picks, or refuses, the version. Latents of two
    different spaces in one request cannot all be right for any version: INVALID_ARGUMENT, naming the fields."""
    stamped: dict[str, str] = {}  # field -> stamp
    unstamped = 0
    if isinstance(request, vae_pb2.DecodeRequest):
        if request.latent_space:
            stamped["latent_space"] = request.latent_space
        else:
            unstamped += 1
    for field, endpoint in _endpoints(request):
        if endpoint.WhichOneof("value") != "latent":
            continue
        if endpoint.latent_space:
            stamped[f"{field}.latent_space"] = endpoint.latent_space
        else:
            unstamped += 1
    spaces = frozenset(stamped.values())
    if len(spaces) > 1:
        fields = ", ".join(f"{f}={v[:40]!r}" for f, v in stamped.items())
        raise InvalidArgument(next(iter(stamped)), f"latents from different latent spaces in one request ({fields})")
    return Stamps(spaces, unstamped)


def _endpoints(request: Any) -> list[tuple[str, vae_pb2.Endpoint]]:
    if isinstance(request, vae_pb2.InterpolateRequest):
        return [("start", request.start), ("end", request.end)]
    if isinstance(request, vae_pb2.ArithmeticRequest):
        return [(f"terms[{i}].value", term.value) for i, term in enumerate(request.terms)]
    return []


class RequestParser:
    """Turns request messages into domain requests for the model version the registry routed them to."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reply_mb, self.reply_flag = min(
            (settings.max_reply_mb, "--max-reply-mb"), (settings.max_message_mb, "--max-message-mb")
        )
        self.reply_limit = self.reply_mb * 1024 * 1024 - REPLY_HEADROOM_BYTES

    # --- pieces ------------------------------------------------------------------------------------

    def _images(self, images: vae_pb2.Images, model: ModelSpec, field: str = "images") -> np.ndarray:
        return codecs.images_from_proto(images, model.image_shape, self.settings.max_items, field)

    def _latents(self, tensor: vae_pb2.Tensor, model: ModelSpec, field: str, max_items: int) -> np.ndarray:
        return codecs.latents_from_proto(tensor, model.latent_dim, max_items, field, self.settings.max_latent_abs)

    def _count(self, n: int, field: str, limit: int) -> None:
        if not 1 <= n <= limit:
            raise InvalidArgument(field, f"must be between 1 and {limit}, got {n}")

    def _output(self, options: vae_pb2.OutputOptions, field: str = "output") -> Output:
        if options.mode not in (vae_pb2.DECODE_MODE_UNSPECIFIED, vae_pb2.DECODE_MODE_MEAN, vae_pb2.DECODE_MODE_SAMPLE):
            raise InvalidArgument(f"{field}.mode", f"unknown decode mode {options.mode}")
        formats = (vae_pb2.IMAGE_FORMAT_UNSPECIFIED, vae_pb2.IMAGE_FORMAT_FLOAT32, vae_pb2.IMAGE_FORMAT_UINT8,
                   vae_pb2.IMAGE_FORMAT_PNG)  # fmt: skip
        if options.format not in formats:
            raise InvalidArgument(f"{field}.format", f"unknown image format {options.format}")
        return Output(options.mode == vae_pb2.DECODE_MODE_SAMPLE, options.format)

    def _temperature(self, request: Any) -> float:
        temperature = float(request.temperature or 1.0)
        _in_range(temperature, "temperature", 0.0, self.settings.max_temperature)
        return temperature

    def _points(self, endpoints: list[tuple[str, vae_pb2.Endpoint]], model: ModelSpec, attributes: bool) -> Points:
        items: list[np.ndarray | int] = []
        images: list[np.ndarray] = []
        for field, endpoint in endpoints:
            kind = endpoint.WhichOneof("value")
            if kind == "image":
                image = self._images(endpoint.image, model, f"{field}.image")
                if len(image) != 1:
                    raise InvalidArgument(f"{field}.image", f"must hold exactly one image, got {len(image)}")
                items.append(len(images))
                images.append(image[0])
            elif kind == "latent":
                items.append(self._latents(endpoint.latent, model, f"{field}.latent", 1)[0])
            elif kind == "attribute":
                if not attributes:
                    raise InvalidArgument(field, "an attribute is a direction, not a point: use an image or a latent")
                items.append(attribute(model, endpoint.attribute, f"{field}.attribute"))
            else:
                raise InvalidArgument(field, "is required: set image, latent or attribute")
        return Points(tuple(items), np.stack(images) if images else None)

    # --- reply sizes -------------------------------------------------------------------------------

    def image_bytes(self, model: ModelSpec, output: Output) -> int:
        pixels = math.prod(model.image_shape)
        if output.image_format == vae_pb2.IMAGE_FORMAT_PNG:
            return pixels + PNG_OVERHEAD_BYTES
        return pixels * (1 if output.image_format == vae_pb2.IMAGE_FORMAT_UINT8 else 4)

    def _fits(self, reply_bytes: int, field: str, what: str) -> None:
        if reply_bytes > self.reply_limit:
            raise InvalidArgument(
                field,
                f"the reply would hold {what}, {reply_bytes / 2**20:.1f} MiB; the limit is {self.reply_mb} MiB per "
                f"reply ({self.reply_flag}): ask for fewer",
            )

    def _fits_images(self, model: ModelSpec, n: int, output: Output, field: str) -> None:
        per_item = self.image_bytes(model, output) + 4 * model.latent_dim  # each image comes with its latent
        self._fits(n * per_item, field, f"{n} images and their latents")

    # --- the RPCs ----------------------------------------------------------------------------------

    def encode(self, request: vae_pb2.EncodeRequest, model: ModelSpec) -> Encode:
        images = self._images(request.images, model)
        k = request.samples_per_image
        limit = self.settings.max_posterior_samples
        if not 0 <= k <= limit:
            raise InvalidArgument("samples_per_image", f"must be between 0 and {limit}, got {k}")
        floats = len(images) * model.latent_dim * (2 + k)
        self._fits(4 * floats, "samples_per_image", f"{len(images)} x (2 + {k}) latents of size {model.latent_dim}")
        return Encode(model, images, k, _seed(request))

    def decode(self, request: vae_pb2.DecodeRequest, model: ModelSpec) -> Decode:
        latents = self._latents(request.latents, model, "latents", self.settings.max_items)
        output = self._output(request.output)
        self._fits(len(latents) * self.image_bytes(model, output), "latents", f"{len(latents)} images")
        return Decode(model, latents, output, _seed(request))

    def reconstruct(self, request: vae_pb2.ReconstructRequest, model: ModelSpec) -> Reconstruct:
        images = self._images(request.images, model)
        output = self._output(request.output)
        self._fits_images(model, len(images), output, "images")
        return Reconstruct(model, images, request.sample_latent, output, _seed(request))

    def sample(self, request: vae_pb2.SampleRequest, model: ModelSpec) -> Sample:
        self._count(request.n, "n", self.settings.max_items)
        temperature = self._temperature(request)
        output = self._output(request.output)
        self._fits_images(model, request.n, output, "n")
        return Sample(model, request.n, temperature, output, _seed(request), request.n)

    def sample_stream(self, request: vae_pb2.SampleStreamRequest, model: ModelSpec) -> Sample:
        self._count(request.n, "n", self.settings.max_stream_items)
        chunk = request.chunk_size or min(self.settings.stream_chunk, request.n)
        self._count(chunk, "chunk_size", self.settings.max_items)
        temperature = self._temperature(request)
        output = self._output(request.output)
        self._fits_images(model, chunk, output, "chunk_size")
        return Sample(model, request.n, temperature, output, _seed(request), chunk)

    def interpolate(self, request: vae_pb2.InterpolateRequest, model: ModelSpec) -> Interpolate:
        limit = self.settings.max_interpolation_steps
        if not 2 <= request.steps <= limit:
            raise InvalidArgument("steps", f"must be between 2 and {limit} (endpoints included), got {request.steps}")
        methods = (vae_pb2.INTERPOLATION_METHOD_UNSPECIFIED, vae_pb2.INTERPOLATION_METHOD_LINEAR,
                   vae_pb2.INTERPOLATION_METHOD_SPHERICAL)  # fmt: skip
        if request.method not in methods:
            raise InvalidArgument("method", f"unknown interpolation method {request.method}")
        ends = self._points([("start", request.start), ("end", request.end)], model, attributes=False)
        output = self._output(request.output)
        self._fits_images(model, request.steps, output, "steps")
        spherical = request.method != vae_pb2.INTERPOLATION_METHOD_LINEAR
        return Interpolate(model, ends, request.steps, spherical, output, _seed(request))

    def arithmetic(self, request: vae_pb2.ArithmeticRequest, model: ModelSpec) -> Arithmetic:
        limit = self.settings.max_terms
        if not 1 <= len(request.terms) <= limit:
            raise InvalidArgument("terms", f"must hold between 1 and {limit} terms, got {len(request.terms)}")
        bound = self.settings.max_weight_abs
        for index, term in enumerate(request.terms):
            _in_range(term.weight, f"terms[{index}].weight", -bound, bound)
        endpoints = [(f"terms[{i}].value", term.value) for i, term in enumerate(request.terms)]
        terms = self._points(endpoints, model, attributes=True)
        return Arithmetic(model, tuple(float(t.weight) for t in request.terms), terms, self._output(request.output),
                          _seed(request))  # fmt: skip

    def score(self, request: vae_pb2.ScoreRequest, model: ModelSpec) -> Score:
        images = self._images(request.images, model)
        k = request.importance_samples or self.settings.default_score_samples
        limit = self.settings.max_score_samples
        if not 1 <= k <= limit:
            raise InvalidArgument("importance_samples", f"must be between 1 and {limit}, got {k}")
        if len(images) * k > self.settings.max_score_rows:
            raise InvalidArgument(
                "importance_samples",
                f"images x samples = {len(images) * k} exceeds the limit of {self.settings.max_score_rows} per "
                "request (--max-score-rows); send fewer images or samples",
            )
        return Score(model, images, k, _seed(request))


def attribute(model: ModelSpec, name: str, field: str) -> np.ndarray:
    vector = model.attributes.get(name)
    if vector is None:
        known = ", ".join(sorted(model.attributes)) or "none"
        raise NotFound(f"{field}: model {model.name!r} has no attribute {name[:64]!r}; it has: {known}")
    return vector
