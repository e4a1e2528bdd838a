"""The ledger: many concurrent mixed requests of every RPC against a real server whose backend fails marked rows
(tests/service/fake_backends.py), some cancelled by their client mid-flight, some with very short deadlines; then
every answer and every count is checked. Used by tests/service/test_ledger.py (10^4 requests) and
scripts/ledger.py (10^5, prints the table).

How a run goes:
1. A pool of request templates, every RPC, valid and invalid ones, some holding a marked image or latent. Each is
   run *alone* (one at a time, nothing else in flight) to get its natural answer and status code.
2. The traffic, in three phases (PHASES): `requests` sends drawn from the pool, `concurrency` in flight, each
   with a fate: plain (no deadline, never cancelled), cancelled by the client after a random delay (or, for a
   stream, after its first messages), or a very short deadline (1 to 30 ms). The first phase is plain only, the
   second mixes in cancellations, the third short deadlines; the server's counts are read around each phase.
3. The checks (`Ledger.problems`):
   - every request ended with exactly one status, the one its call reports;
   - a plain request got its natural code, and an OK answer equal to the one it got alone (same seed); a raced
     request got its natural code, or CANCELLED (cancel fate), or DEADLINE_EXCEEDED (deadline fate); whatever it
     received (a stream's first messages too) equals the answer alone;
   - `vae_requests_total`: for plain requests the server's count by (method, code) is exactly what the clients
     saw (in the plain phase, the whole count equals the clients' tally). For raced requests the server cannot always know what its client saw: a request cancelled before it
     reached the servicer is never counted, and one the server finished just before the cancel or the deadline
     arrived is counted with its natural code while its client saw CANCELLED / DEADLINE_EXCEEDED. So per method
     the server's extra count over the plain ones must be: at most the raced requests in all; CANCELLED at most
     the requests their clients cancelled (a deadline is not a cancellation); DEADLINE_EXCEEDED at most the
     requests with a deadline; any other code at least the raced requests whose client saw it (the server sent
     it) and at most the raced requests whose natural code it is;
   - `vae_requests_in_flight` and `vae_queue_depth` are back to 0.

Answers are compared within a float tolerance, not bit for bit: the CPU convolution kernels of torch round
differently for different batch sizes (measured: up to ~2e-6 on encoder outputs, ~1e-14 on decoder means, ~5e-5
on Score's nats with the shipped model), so the same row in a batch of 1 and of 16 differs in the last bits. uint8 and PNG pixels may differ by one
grey level where a value sits on a rounding boundary. Sampled pixels (DECODE_MODE_SAMPLE) are not used here:
a Bernoulli draw compares a uniform number to the pixel mean and would flip on such a difference.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import Message
from PIL import Image
from prometheus_client import CollectorRegistry

from service.inprocess import ServerThread, stub_for
from service.metrics import METHODS
from tests.datasets import stroke_images
from tests.service.fake_backends import mark_images, mark_latents
from vae_client.codecs import array_to_tensor
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub

PLAIN, CANCEL, DEADLINE = "plain", "cancel", "deadline"
# Three phases, so the server's counts are held to each kind separately: plain requests only (the server's counts
# must equal the clients' exactly), plain ones mixed with cancelled ones, then mixed with short deadlines (a deadline
# expiry is never counted as a cancellation, nor the other way round).
PHASES = {PLAIN: {PLAIN: 1.0}, CANCEL: {PLAIN: 0.6, CANCEL: 0.4}, DEADLINE: {PLAIN: 0.6, DEADLINE: 0.4}}
CODES = tuple(code.name for code in grpc.StatusCode)
MESSAGE_LIMIT = 64 * 1024 * 1024
RTOL, ATOL = 1e-4, 1e-4  # float answers; see the module docstring
PLAIN_TIMEOUT_S = 120.0  # a plain request has no deadline worth the name: this only stops a hang from hanging the run


@dataclass(frozen=True)
class ModelView:
    name: str
    image_shape: tuple[int, int, int]
    latent_dim: int
    attributes: tuple[str, ...]


@dataclass(frozen=True)
class Template:
    index: int
    method: str
    request: Message
    marked: bool = False


@dataclass
class Outcome:
    code: str
    replies: list[Message] = field(default_factory=list)  # unary: 0 or 1; stream: the messages received
    reported: str = ""  # the code the call object reports afterwards


@dataclass
class Record:
    template: int
    fate: str
    outcome: Outcome


# --- the request pool -----------------------------------------------------------------------------------------


def _png(image: np.ndarray) -> bytes:
    """[C, H, W] float in [0, 1] -> PNG bytes (L or RGB)."""
    pixels = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


class Pool:
    """Request templates over the served models; `make(n)` draws n of them, every RPC represented."""

    def __init__(self, models: Sequence[ModelView], seed: int, mark_rate: float = 0.08) -> None:
        self.models = list(models)
        self.rng = np.random.default_rng(seed)
        self.mark_rate = mark_rate

    def _model(self) -> ModelView:
        return self.models[int(self.rng.integers(len(self.models)))]

    def _seed(self) -> V.Seed:
        return V.Seed(value=int(self.rng.integers(0, 2**62)))

    def _raw_images(self, model: ModelView, n: int) -> np.ndarray:
        c, h, w = model.image_shape
        strokes = stroke_images(n * c, int(self.rng.integers(2**31)), size=h)[0]
        if w != h:
            strokes = np.resize(strokes, (n * c, h, w))
        return strokes.reshape(n, c, h, w).astype(np.float32)

    def _images(self, model: ModelView, n: int, marked: bool) -> V.Images:
        x = self._raw_images(model, n)
        if marked:
            x = mark_images(x)
        encoding = int(self.rng.integers(3))
        if encoding == 0:
            return V.Images(tensor=array_to_tensor(x))
        if encoding == 1:
            return V.Images(tensor=array_to_tensor(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)))
        return V.Images(png=V.PngImages(images=[_png(image) for image in x]))

    def _latents(self, model: ModelView, n: int, marked: bool) -> np.ndarray:
        z = self.rng.standard_normal((n, model.latent_dim)).astype(np.float32)
        return mark_latents(z) if marked else z

    def _output(self) -> V.OutputOptions:
        formats = (V.IMAGE_FORMAT_UNSPECIFIED, V.IMAGE_FORMAT_FLOAT32, V.IMAGE_FORMAT_UINT8, V.IMAGE_FORMAT_PNG)
        return V.OutputOptions(format=formats[int(self.rng.integers(len(formats)))], mode=V.DECODE_MODE_MEAN)

    def _n(self) -> int:
        """Mostly small, sometimes more than one backend batch of 16 (the batcher splits them into chunks)."""
        draw = self.rng.random()
        return int(
            self.rng.integers(1, 5)
            if draw < 0.7
            else self.rng.integers(5, 17)
            if draw < 0.95
            else self.rng.integers(17, 41)
        )

    def _endpoint(self, model: ModelView, marked: bool, attribute: bool) -> V.Endpoint:
        kind = self.rng.integers(3 if attribute and model.attributes else 2)
        if kind == 0 or marked:
            return V.Endpoint(image=self._images(model, 1, marked))
        if kind == 1:
            return V.Endpoint(latent=array_to_tensor(self._latents(model, 1, False)[0]))
        return V.Endpoint(attribute=model.attributes[int(self.rng.integers(len(model.attributes)))])

    def template(self, index: int, method: str) -> Template:
        model = self._model()
        marked = bool(self.rng.random() < self.mark_rate)
        if method == "ListModels":
            return Template(index, method, V.ListModelsRequest())
        if method == "GetModelInfo":
            name = "no-such-model" if self.rng.random() < 0.2 else model.name
            return Template(index, method, V.GetModelInfoRequest(model=name))
        if method == "Encode":
            request = V.EncodeRequest(model=model.name, images=self._images(model, self._n(), marked),
                                      samples_per_image=int(self.rng.integers(0, 4)), seed=self._seed())  # fmt: skip
            return Template(index, method, request, marked)
        if method == "Decode":
            latents = self._latents(model, self._n(), False)
            if marked:
                latents[int(self.rng.integers(len(latents)))] = mark_latents(latents[:1])[0]
            request = V.DecodeRequest(model=model.name, latents=array_to_tensor(latents), output=self._output(),
                                      seed=self._seed())  # fmt: skip
            return Template(index, method, request, marked)
        if method == "Reconstruct":
            request = V.ReconstructRequest(model=model.name, images=self._images(model, self._n(), marked),
                                           sample_latent=bool(self.rng.random() < 0.5), output=self._output(),
                                           seed=self._seed())  # fmt: skip
            return Template(index, method, request, marked)
        if method == "Sample":
            n = 0 if self.rng.random() < 0.05 else self._n()  # n = 0: INVALID_ARGUMENT
            request = V.SampleRequest(model=model.name, n=n, temperature=float(self.rng.uniform(0.5, 1.5)),
                                      output=self._output(), seed=self._seed())  # fmt: skip
            return Template(index, method, request)
        if method == "SampleStream":
            request = V.SampleStreamRequest(model=model.name, n=int(self.rng.integers(1, 33)),
                                            chunk_size=int(self.rng.integers(1, 9)), output=self._output(),
                                            seed=self._seed())  # fmt: skip
            return Template(index, method, request)
        if method == "Interpolate":
            steps = 1 if self.rng.random() < 0.05 else int(self.rng.integers(2, 25))  # 1: INVALID_ARGUMENT
            linear = self.rng.random() < 0.5
            request = V.InterpolateRequest(
                model=model.name, start=self._endpoint(model, marked, False), end=self._endpoint(model, False, False),
                steps=steps, output=self._output(), seed=self._seed(),
                method=V.INTERPOLATION_METHOD_LINEAR if linear else V.INTERPOLATION_METHOD_SPHERICAL,
            )  # fmt: skip
            return Template(index, method, request, marked)
        if method == "Arithmetic":
            count = int(self.rng.integers(1, 5))
            terms = [V.Term(weight=float(self.rng.uniform(-1.5, 1.5)),
                                      value=self._endpoint(model, marked and i == 0, True)) for i in range(count)]  # fmt: skip
            request = V.ArithmeticRequest(model=model.name, terms=terms, output=self._output(), seed=self._seed())
            return Template(index, method, request, marked)
        if method == "Score":
            request = V.ScoreRequest(model=model.name, images=self._images(model, int(self.rng.integers(1, 5)), marked),
                                     importance_samples=int(self.rng.integers(1, 17)), seed=self._seed())  # fmt: skip
            return Template(index, method, request, marked)
        raise ValueError(f"no template for {method}")

    def make(self, count: int) -> list[Template]:
        weights = {m: 1.0 for m in METHODS} | {"ListModels": 0.3, "GetModelInfo": 0.5}
        methods = list(METHODS) + [
            str(m) for m in self.rng.choice(list(weights), size=max(0, count - len(METHODS)),
                                            p=np.array(list(weights.values())) / sum(weights.values()))
        ]  # fmt: skip
        return [self.template(i, m) for i, m in enumerate(methods)]


def model_views(stub: Any) -> list[ModelView]:
    """The served models as a (synchronous) stub describes them."""
    listing = stub.ListModels(V.ListModelsRequest(), timeout=30)
    return [ModelView(m.name, tuple(m.image_shape), m.latent_dim, tuple(m.attribute_names)) for m in listing.models]  # type: ignore[arg-type]


# --- running requests -----------------------------------------------------------------------------------------


async def run_one(stub: VaeServiceStub, template: Template, fate: str, rng: random.Random) -> Outcome:
    """Send one request with its fate; return what the client saw. Never raises for an RPC failure."""
    timeout = rng.uniform(0.001, 0.03) if fate == DEADLINE else PLAIN_TIMEOUT_S
    call = getattr(stub, template.method)(template.request, timeout=timeout)
    replies: list[Message] = []
    streaming = template.method == "SampleStream"
    cancel_after_messages = rng.randint(1, 3) if streaming and fate == CANCEL and rng.random() < 0.5 else None

    async def consume() -> None:
        if streaming:
            async for message in call:
                replies.append(message)
                if cancel_after_messages is not None and len(replies) >= cancel_after_messages:
                    call.cancel()
                    return
        else:
            replies.append(await call)

    task = asyncio.ensure_future(consume())
    if fate == CANCEL and cancel_after_messages is None:
        await asyncio.wait({task}, timeout=rng.uniform(0.0, 0.015))
        call.cancel()
    code = "OK"
    try:
        await task
    except grpc.aio.AioRpcError as error:
        code = error.code().name
    except asyncio.CancelledError:  # awaiting a call the client cancelled
        code = "CANCELLED"
    reported = (await call.code()).name
    if cancel_after_messages is not None and call.cancelled():
        code = "CANCELLED"
    return Outcome(code, replies, reported)


async def run_alone(target: str, templates: Sequence[Template]) -> list[Outcome]:
    """Each template on its own, one after another: the natural answers."""
    async with grpc.aio.insecure_channel(target, options=_options()) as channel:
        stub = VaeServiceStub(channel)
        rng = random.Random(0)
        return [await run_one(stub, t, PLAIN, rng) for t in templates]


async def run_traffic(
    target: str,
    templates: Sequence[Template],
    requests: int,
    concurrency: int,
    seed: int,
    fates: dict[str, float] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Record]:
    """`requests` sends drawn from the templates, `concurrency` in flight at a time, each with a random fate."""
    fates = fates or {PLAIN: 0.7, CANCEL: 0.15, DEADLINE: 0.15}
    rng = random.Random(seed)
    plan = [(rng.randrange(len(templates)), rng.choices(list(fates), weights=list(fates.values()))[0])
            for _ in range(requests)]  # fmt: skip
    records: list[Record | None] = [None] * requests
    position = 0
    async with grpc.aio.insecure_channel(target, options=_options()) as channel:
        stub = VaeServiceStub(channel)

        async def worker(worker_rng: random.Random) -> None:
            nonlocal position
            while position < requests:
                index = position
                position += 1
                template, fate = plan[index]
                records[index] = Record(template, fate, await run_one(stub, templates[template], fate, worker_rng))
                if progress is not None and (index + 1) % 1000 == 0:
                    progress(index + 1)

        await asyncio.gather(*(worker(random.Random(rng.random())) for _ in range(concurrency)))
    done = [r for r in records if r is not None]
    assert len(done) == requests, f"{requests - len(done)} requests never finished"
    return done


def _options() -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", MESSAGE_LIMIT), ("grpc.max_receive_message_length", MESSAGE_LIMIT)]


# --- comparing answers ----------------------------------------------------------------------------------------


def _png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _flatten(message: Message, prefix: str = "") -> list[tuple[str, Any]]:
    """(path, value) leaves of a reply: tensors as arrays, PNG files as pixel arrays, scalars as they are."""
    if isinstance(message, V.Tensor):
        from vae_client.codecs import tensor_to_array

        return [(prefix, tensor_to_array(message, prefix or "tensor"))]
    leaves: list[tuple[str, Any]] = []
    for descriptor, value in message.ListFields():
        path = f"{prefix}.{descriptor.name}" if prefix else descriptor.name
        if isinstance(message, V.PngImages) and descriptor.name == "images":
            leaves += [(f"{path}[{i}]", _png_array(png)) for i, png in enumerate(value)]
        elif descriptor.message_type is not None and descriptor.is_repeated:
            for i, item in enumerate(value):
                leaves += _flatten(item, f"{path}[{i}]")
        elif descriptor.message_type is not None:
            leaves += _flatten(value, path)
        else:
            leaves.append((path, value))
    return leaves


@dataclass
class Difference:
    """The largest differences seen between an answer and the answer alone."""

    float_abs: float = 0.0
    uint8_abs: int = 0
    _alone: dict[int, list[tuple[str, Any]]] = field(default_factory=dict, repr=False)  # id(message) -> leaves

    def merged(self, other: Difference) -> Difference:
        return Difference(max(self.float_abs, other.float_abs), max(self.uint8_abs, other.uint8_abs))

    def compare(self, got: Sequence[Message], alone: Sequence[Message]) -> str | None:
        """None when `got` equals `alone` (within tolerance; `got` may be a prefix of a stream); else why not."""
        if len(got) > len(alone):
            return f"{len(got)} messages, alone {len(alone)}"
        for number, (a, b) in enumerate(zip(got, alone, strict=False)):
            left, right = _flatten(a), self._alone.get(id(b)) or self._alone.setdefault(id(b), _flatten(b))
            if [p for p, _ in left] != [p for p, _ in right]:
                return f"message {number}: fields {[p for p, _ in left]} != {[p for p, _ in right]}"
            for (path, x), (_, y) in zip(left, right, strict=True):
                problem = self._leaf(path, x, y)
                if problem:
                    return f"message {number}: {problem}"
        return None

    def _leaf(self, path: str, x: Any, y: Any) -> str | None:
        if isinstance(x, np.ndarray):
            if x.shape != y.shape or x.dtype != y.dtype:
                return f"{path}: {x.dtype}{x.shape} != {y.dtype}{y.shape}"
            if x.size == 0:
                return None
            if x.dtype == np.uint8:
                diff = int(np.abs(x.astype(np.int16) - y.astype(np.int16)).max())
                self.uint8_abs = max(self.uint8_abs, diff)
                return None if diff <= 1 else f"{path}: pixels differ by {diff}"
            self.float_abs = max(self.float_abs, float(np.abs(x - y).max()))
            return None if np.allclose(x, y, rtol=RTOL, atol=ATOL) else f"{path}: max difference {np.abs(x - y).max()}"
        if isinstance(x, float):
            self.float_abs = max(self.float_abs, abs(x - y))
            return None if np.isclose(x, y, rtol=RTOL, atol=ATOL) else f"{path}: {x} != {y}"
        return None if x == y else f"{path}: {x!r} != {y!r}"


# --- server-side counts ---------------------------------------------------------------------------------------


def request_counts(registry: CollectorRegistry) -> Counter[tuple[str, str]]:
    """vae_requests_total by (method, code), from one collection."""
    counts: Counter[tuple[str, str]] = Counter()
    for family in registry.collect():
        if family.name == "vae_requests":
            for sample in family.samples:
                if sample.name == "vae_requests_total":
                    counts[(sample.labels["method"], sample.labels["code"])] = int(sample.value)
    return counts


def gauges(registry: CollectorRegistry) -> dict[str, float]:
    """Every in-flight and queue-depth series, by name and labels."""
    values = {}
    for family in registry.collect():
        if family.name in ("vae_requests_in_flight", "vae_queue_depth"):
            for sample in family.samples:
                values[f"{sample.name}{sorted(sample.labels.items())}"] = sample.value
    return values


def wait_for_idle(registry: CollectorRegistry, timeout_s: float = 30.0) -> dict[str, float]:
    """Poll until every in-flight and queue-depth gauge is 0 (cancelled handlers finish after their client has
    its status); returns the gauges as last seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        values = gauges(registry)
        if all(v == 0 for v in values.values()) or time.monotonic() > deadline:
            return values
        time.sleep(0.05)


# --- the ledger ------------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    templates: Sequence[Template] = field(repr=False)
    alone: Sequence[Outcome] = field(repr=False)
    records: Sequence[Record] = field(repr=False)
    server: Counter[tuple[str, str]] = field(repr=False)  # vae_requests_total increase over the traffic
    difference: Difference = field(default_factory=Difference)

    def client(self, fates: Sequence[str] | None = None) -> Counter[tuple[str, str]]:
        return Counter(
            (self.templates[r.template].method, r.outcome.code)
            for r in self.records
            if fates is None or r.fate in fates
        )

    def problems(self, limit: int = 20) -> list[str]:
        found = self._answer_problems() + self._count_problems()
        return found[:limit] + ([f"... and {len(found) - limit} more"] if len(found) > limit else [])

    def _answer_problems(self) -> list[str]:
        found = []
        for number, record in enumerate(self.records):
            template, outcome = self.templates[record.template], record.outcome
            natural = self.alone[record.template]
            where = f"request {number} ({template.method}, template {record.template}, {record.fate})"
            if outcome.code != outcome.reported:
                found.append(f"{where}: saw {outcome.code} but the call reports {outcome.reported}")
            allowed = {natural.code} | ({"CANCELLED"} if record.fate == CANCEL else set())
            allowed |= {"DEADLINE_EXCEEDED"} if record.fate == DEADLINE else set()
            if outcome.code not in allowed:
                found.append(f"{where}: {outcome.code}, expected {' or '.join(sorted(allowed))}")
                continue
            if outcome.replies and natural.code == "OK":
                why = self.difference.compare(outcome.replies, natural.replies)
                if why:
                    found.append(f"{where}: answer differs from the answer alone: {why}")
        for template, natural in zip(self.templates, self.alone, strict=True):
            if template.marked and natural.code == "OK":
                found.append(f"template {template.index} ({template.method}) holds a marked row but succeeded")
            if natural.code == "OK" and not natural.replies:
                found.append(f"template {template.index} ({template.method}): OK without an answer")
        return found

    def _count_problems(self) -> list[str]:
        found = []
        plain = self.client([PLAIN])
        for method in METHODS:
            raced = [r for r in self.records if r.fate != PLAIN and self.templates[r.template].method == method]
            extra = {code: self.server[(method, code)] - plain[(method, code)] for code in CODES}
            for code, n in extra.items():
                if n < 0:
                    found.append(f"{method} {code}: server counted {self.server[(method, code)]}, "
                                 f"plain clients alone saw {plain[(method, code)]}")  # fmt: skip
            if sum(extra.values()) > len(raced):
                found.append(f"{method}: server counted {sum(extra.values())} raced requests, only {len(raced)} sent")
            cancelled = sum(r.fate == CANCEL for r in raced)
            with_deadline = sum(r.fate == DEADLINE for r in raced)
            if extra["CANCELLED"] > cancelled:
                found.append(f"{method}: server counted {extra['CANCELLED']} CANCELLED, clients cancelled only "
                             f"{cancelled} (the server counts some deadline expiries as CANCELLED?)")  # fmt: skip
            if extra["DEADLINE_EXCEEDED"] > with_deadline:
                found.append(f"{method}: server counted {extra['DEADLINE_EXCEEDED']} DEADLINE_EXCEEDED, only "
                             f"{with_deadline} requests had a short deadline")  # fmt: skip
            for code in CODES:
                if code in ("CANCELLED", "DEADLINE_EXCEEDED"):
                    continue
                low = sum(r.outcome.code == code for r in raced)
                high = sum(self.alone[r.template].code == code for r in raced)
                if not low <= extra[code] <= high:
                    found.append(f"{method} {code}: server counted {extra[code]} of the raced requests, expected "
                                 f"between {low} (their clients saw it) and {high} (their natural code)")  # fmt: skip
        return found

    def table(self) -> str:
        """Per method and code: requests sent by fate, what the clients saw, what the server counted."""
        sent = Counter((self.templates[r.template].method, r.fate) for r in self.records)
        seen, plain = self.client(), self.client([PLAIN])
        lines = [f"{'method':<13} {'code':<18} {'client':>8} {'(plain)':>8} {'server':>8}"]
        for method in METHODS:
            fates = ", ".join(f"{fate} {sent[(method, fate)]}" for fate in (PLAIN, CANCEL, DEADLINE))
            lines.append(f"{method:<13} sent: {fates}")
            for code in CODES:
                if seen[(method, code)] or self.server[(method, code)]:
                    lines.append(f"{'':<13} {code:<18} {seen[(method, code)]:>8} {plain[(method, code)]:>8} "
                                 f"{self.server[(method, code)]:>8}")  # fmt: skip
        total_seen = Counter(code for (_, code), n in seen.items() for _ in range(n))
        total_server = Counter({code: sum(self.server[(m, code)] for m in METHODS) for code in CODES})
        lines.append(f"{'all':<13} sent: {len(self.records)}")
        for code in CODES:
            if total_seen[code] or total_server[code]:
                lines.append(f"{'':<13} {code:<18} {total_seen[code]:>8} {'':>8} {total_server[code]:>8}")
        lines.append(f"largest difference from the answer alone: float {self.difference.float_abs:.3g}, "
                     f"uint8/PNG {self.difference.uint8_abs} grey level(s)")  # fmt: skip
        return "\n".join(lines)


# --- a whole run ----------------------------------------------------------------------------------------------


@dataclass
class LedgerRun:
    phases: dict[str, Ledger] = field(repr=False)  # by phase, each with its own server counts
    combined: Ledger = field(repr=False)  # all records and counts together, for the table
    problems: list[str]
    stuck_gauges: list[str]  # in-flight / queue-depth series not back to 0 after a phase
    alone_s: float
    traffic_s: float


def run_ledger(
    server: ServerThread,
    templates: int,
    requests: int,
    concurrency: int,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> LedgerRun:
    """The pool, its answers alone, then `requests` sends split over the phases (see the module docstring)."""
    assert server.running is not None
    registry = server.running.metrics.registry
    with stub_for(server) as stub:
        pool = Pool(model_views(stub), seed=seed).make(templates)
    started = time.perf_counter()
    alone = asyncio.run(run_alone(server.address, pool))
    alone_s = time.perf_counter() - started
    stuck = [f"before: {name}" for name, value in wait_for_idle(registry).items() if value != 0]
    phases: dict[str, Ledger] = {}
    started = time.perf_counter()
    for number, (phase, fates) in enumerate(PHASES.items()):
        before = request_counts(registry)
        count = requests // len(PHASES) + (requests % len(PHASES) if number == 0 else 0)
        report = None if progress is None else (lambda done, phase=phase: progress(f"{phase} phase: {done} sent"))
        records = asyncio.run(run_traffic(server.address, pool, count, concurrency, seed + number, fates, report))
        stuck += [f"after the {phase} phase: {name} = {value}"
                  for name, value in wait_for_idle(registry).items() if value != 0]  # fmt: skip
        after = request_counts(registry)
        phases[phase] = Ledger(pool, alone, records, Counter({key: after[key] - before[key] for key in after}))
    traffic_s = time.perf_counter() - started
    problems = [f"{phase} phase: {problem}" for phase, ledger in phases.items() for problem in ledger.problems()]
    combined = Ledger(pool, alone, [r for ledger in phases.values() for r in ledger.records],
                      sum((ledger.server for ledger in phases.values()), Counter()))  # fmt: skip
    for ledger in phases.values():
        combined.difference = combined.difference.merged(ledger.difference)
    return LedgerRun(phases, combined, problems, stuck, alone_s, traffic_s)
