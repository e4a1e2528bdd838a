"""The version ledger: concurrent mixed requests while an operator loads, unloads, splits, switches and rolls back
versions of one model, then every answer checked. Used by tests/service/test_version_ledger.py (10^4 requests,
local backend; a shorter run over Triton) and scripts/version_ledger.py (longer, prints the table).

A run:
1. Templates of every RPC that takes or gives latents or images, each with a fixed seed, none pinned to a version.
   Latents the templates send are stamped with the space of versions 1 and 2 (a decoder-only retrain of each
   other); version 3 has another encoder, hence another space.
2. Each template is run alone, pinned to each version it can run on: its answer per version.
3. The traffic: `requests` drawn from the templates, `concurrency` in flight, unpinned, while a controller makes
   the changes of CHANGES over and over (at least `min_changes` of them), each logged with when it was asked and
   when it returned.
4. The checks: every request got exactly one answer, and it is OK (no request fails because of a switch); the
   version it names was routed to at some moment of its life (the routings in force from just before it was sent
   to just after it was answered, a change counting as in force from the moment it was asked); its numbers equal
   that version's answer alone (float tolerance: batch sizes round differently, tests/service/ledger.py); stamped
   latents never reached version 3.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from tests.datasets import stroke_images
from tests.service.versions import Admin
from vae_client.codecs import array_to_tensor, tensor_to_array
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub

MODEL = "tiny"
SAME_SPACE = ("1", "2")  # versions 1 and 2 share a latent space; 3 does not
RTOL, ATOL = 1e-4, 1e-4


@dataclass(frozen=True)
class Template:
    method: str
    request: Any
    stamped: bool  # carries latents stamped with versions 1 and 2's space


def templates(model: str, space: str, latent_dim: int, count: int, seed: int = 0) -> list[Template]:
    """`count` requests of seven RPCs to `model`, with fixed seeds; the latents they carry are stamped with `space`."""
    rng = np.random.default_rng(seed)
    images = stroke_images(32, seed)[0][:, None].astype(np.float32)
    made: list[Template] = []
    for i in range(count):
        s = V.Seed(value=i)
        z = rng.standard_normal((2, latent_dim)).astype(np.float32)
        pick = images[rng.integers(0, len(images), 2)]
        kind = i % 8
        if kind == 0:
            made.append(Template("Sample", V.SampleRequest(model=model, n=1 + i % 3, seed=s), False))
        elif kind == 1:
            made.append(Template("Decode", V.DecodeRequest(model=model, latents=array_to_tensor(z), seed=s,
                                                           latent_space=space), True))  # fmt: skip
        elif kind == 2:
            made.append(Template("Decode", V.DecodeRequest(model=model, latents=array_to_tensor(z), seed=s), False))
        elif kind == 3:
            made.append(Template("Encode", V.EncodeRequest(model=model, images=V.Images(tensor=array_to_tensor(pick)),
                                                           samples_per_image=2, seed=s), False))  # fmt: skip
        elif kind == 4:
            made.append(Template("Reconstruct", V.ReconstructRequest(
                model=model, images=V.Images(tensor=array_to_tensor(pick)), seed=s), False))  # fmt: skip
        elif kind == 5:
            ends = [V.Endpoint(latent=array_to_tensor(row), latent_space=space) for row in z]
            made.append(Template("Interpolate", V.InterpolateRequest(model=model, start=ends[0], end=ends[1], steps=5,
                                                                     seed=s), True))  # fmt: skip
        elif kind == 6:
            terms = [V.Term(weight=1.0, value=V.Endpoint(latent=array_to_tensor(z[0]), latent_space=space)),
                     V.Term(weight=0.5, value=V.Endpoint(image=V.Images(tensor=array_to_tensor(pick[:1]))))]  # fmt: skip
            made.append(Template("Arithmetic", V.ArithmeticRequest(model=model, terms=terms, seed=s), True))
        else:
            made.append(Template("Score", V.ScoreRequest(model=model, images=V.Images(tensor=array_to_tensor(pick)),
                                                         importance_samples=8, seed=s), False))  # fmt: skip
    return made


def arrays(method: str, reply: Any) -> list[np.ndarray]:
    """The numbers of a reply, to compare with the same request's answer alone."""

    def t(tensor: V.Tensor) -> np.ndarray:  # type: ignore[name-defined]
        return tensor_to_array(tensor, "reply").astype(np.float64)

    if method == "Encode":
        return [t(reply.mean), t(reply.log_variance), t(reply.samples)]
    if method == "Score":
        return [np.array([[s.elbo, s.kl, s.log_likelihood] for s in reply.scores])]
    if method == "Decode":
        return [t(reply.images.tensor)]
    if method == "Arithmetic":
        return [t(reply.images.tensor), t(reply.latent)]
    return [t(reply.images.tensor), t(reply.latents)]


def _pinned(request: Any, version: str) -> Any:
    copy = type(request)()
    copy.CopyFrom(request)
    copy.model_version = version
    return copy


def answers_alone(stub: VaeServiceStub, made: list[Template]) -> list[dict[str, list[np.ndarray]]]:
    """Each template's answer on each version it may be routed to, one request at a time."""
    solo = []
    for template in made:
        call = getattr(stub, template.method)
        versions = SAME_SPACE if template.stamped else ("1", "2", "3")
        solo.append({v: arrays(template.method, call(_pinned(template.request, v), timeout=60)) for v in versions})
    return solo


@dataclass
class Change:
    what: str
    asked: float
    returned: float
    routed: frozenset[str]  # the versions unpinned requests may go to once it is in force


def _split(weights: dict[str, float]) -> Callable[[Admin, str], Any]:
    return lambda admin, model: admin.split(model, weights)


# (description, call, the versions unpinned traffic goes to afterwards); version 3 takes traffic only in a split
# beside a version of the stamped latents' space, so no stamped request is ever refused
CHANGES: list[tuple[str, Callable[[Admin, str], Any], frozenset[str]]] = [
    ("split 1:2 = 1:1", _split({"1": 1, "2": 1}), frozenset({"1", "2"})),
    ("default 2", lambda a, m: a.set_default(m, "2"), frozenset({"2"})),
    ("rollback (split 1:2)", lambda a, m: a.rollback(m), frozenset({"1", "2"})),
    ("unload 3", lambda a, m: a.unload(m, "3"), frozenset({"1", "2"})),
    ("load 3", lambda a, m: a.load(m, "3"), frozenset({"1", "2"})),
    ("split 2:3 = 3:1", _split({"2": 3, "3": 1}), frozenset({"2", "3"})),
    ("rollback (split 1:2)", lambda a, m: a.rollback(m), frozenset({"1", "2"})),
    ("default 1", lambda a, m: a.set_default(m, "1"), frozenset({"1"})),
]


@dataclass
class Outcome:
    template: int
    sent: float
    done: float
    code: str
    version: str = ""
    numbers: list[np.ndarray] = field(default_factory=list)


@dataclass
class Run:
    outcomes: list[Outcome]
    changes: list[Change]
    problems: list[str]

    def table(self) -> str:
        served = Counter((o.version, o.code) for o in self.outcomes)
        lines = [f"{len(self.outcomes)} requests, {len(self.changes)} changes"]
        lines += [f"  version {v or '-'}: {n} answered {code}" for (v, code), n in sorted(served.items())]
        return "\n".join(lines)


def _send(stub: VaeServiceStub, template: Template, index: int) -> Outcome:
    sent = time.monotonic()
    call = getattr(stub, template.method)
    try:
        reply = call(template.request, timeout=120)
    except grpc.RpcError as exc:
        return Outcome(index, sent, time.monotonic(), exc.code().name)
    return Outcome(index, sent, time.monotonic(), "OK", reply.model_version, arrays(template.method, reply))


# Over Triton a load or unload is a reload of the network in Triton (seconds each, tests/service/
# test_triton_versions.py): the routing changes alone, plus one unload and load of version 3 per cycle.
ROUTING_CHANGES = [c for c in CHANGES if not c[0].startswith(("unload", "load"))]


def _controller(
    admin: Admin,
    model: str,
    stop: threading.Event,
    log: list[Change],
    min_changes: int,
    pause_s: float,
    changes: list[tuple[str, Callable[[Admin, str], Any], frozenset[str]]],
) -> None:
    step = 0
    while not stop.is_set() or len(log) < min_changes or step % len(changes):  # ends back on version 1 alone
        what, call, routed = changes[step % len(changes)]
        asked = time.monotonic()
        call(admin, model)
        log.append(Change(what, asked, time.monotonic(), routed))
        step += 1
        if not stop.is_set():
            time.sleep(pause_s)


def allowed(changes: list[Change], sent: float, done: float) -> set[str]:
    """The versions routed to at some moment in [sent, done]: a routing is in force from when its change was asked
    until the next change returned (before the first change: version 1 alone)."""
    states = [(float("-inf"), frozenset({"1"}))] + [(c.asked, c.routed) for c in changes]
    ends = [c.returned for c in changes] + [float("inf")]
    versions: set[str] = set()
    for (start, routed), end in zip(states, ends, strict=True):
        if start <= done and end >= sent:
            versions |= routed
    return versions


def check(made: list[Template], solo: list[dict[str, list[np.ndarray]]], run: Run) -> list[str]:
    problems = []
    for o in run.outcomes:
        template = made[o.template]
        where = f"request {o.template} ({template.method})"
        if o.code != "OK":
            problems.append(f"{where}: {o.code}")
            continue
        if o.version not in allowed(run.changes, o.sent, o.done):
            problems.append(f"{where}: answered by version {o.version}, not routed to during its life")
        if template.stamped and o.version not in SAME_SPACE:
            problems.append(f"{where}: stamped latents reached version {o.version}")
        expected = solo[o.template].get(o.version)
        if expected is None:
            continue
        for got, want in zip(o.numbers, expected, strict=True):
            if got.shape != want.shape or not np.allclose(got, want, rtol=RTOL, atol=ATOL):
                problems.append(f"{where}: version {o.version}'s numbers differ from its answer alone")
                break
    return problems


def run_version_ledger(
    address: str,
    requests: int,
    concurrency: int,
    min_changes: int,
    template_count: int = 200,
    pause_s: float = 0.05,
    model: str = MODEL,
    changes: list[tuple[str, Callable[[Admin, str], Any], frozenset[str]]] | None = None,
) -> Run:
    """The run (module docstring) against `model`'s versions 1, 2 and 3 on the server at `address`, whose admin
    service takes `tests.service.versions.ADMIN_TOKEN`."""
    limit = 64 * 1024 * 1024
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub, admin = VaeServiceStub(channel), Admin(channel)
        info = stub.GetModelInfo(V.GetModelInfoRequest(model=model)).info
        space = next(v.latent_space for v in info.versions if v.version == "1")
        made = templates(model, space, info.latent_dim, template_count)
        solo = answers_alone(stub, made)
        rng = np.random.default_rng(1)
        order = rng.integers(0, len(made), requests)
        stop, made_changes = threading.Event(), []  # type: ignore[var-annotated]
        plan = changes or CHANGES
        controller = threading.Thread(
            target=_controller, args=(admin, model, stop, made_changes, min_changes, pause_s, plan)
        )
        controller.start()
        with ThreadPoolExecutor(concurrency) as pool:
            outcomes = list(pool.map(lambda i: _send(stub, made[i], int(i)), order))
        stop.set()
        controller.join(300)
    run = Run(outcomes, made_changes, [])
    run.problems = check(made, solo, run)
    return run
