"""A little traffic of every RPC of vae.v1.VaeService, for the live dashboard test and `make monitor`.

One round, per served model: every RPC once with valid arguments (inputs are the model's own samples, so it
works for any image shape), plus requests that must fail (INVALID_ARGUMENT, NOT_FOUND) so error panels have
series. `Traffic.run` repeats rounds from a few threads until stopped, so the batcher sees concurrent requests.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from vae_client.codecs import array_to_tensor, tensor_to_array
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub

METHODS = tuple(m.name for m in V.DESCRIPTOR.services_by_name["VaeService"].methods)
MESSAGE_LIMIT = 64 * 1024 * 1024


def _images(x: np.ndarray) -> V.Images:
    return V.Images(tensor=array_to_tensor(np.ascontiguousarray(x, np.float32)))


@dataclass
class Tally:
    """(method, status code name) -> calls, shared by threads."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, code: str) -> None:
        with self.lock:
            self.counts[(method, code)] += 1

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def errors(self) -> int:
        with self.lock:
            return sum(n for (_, code), n in self.counts.items() if code != "OK")

    def codes(self, method: str) -> set[str]:
        with self.lock:
            return {code for (m, code) in self.counts if m == method}


class Traffic:
    def __init__(self, target: str, images_per_request: int = 4, score_samples: int = 16, timeout_s: float = 60.0):
        options = [("grpc.max_send_message_length", MESSAGE_LIMIT), ("grpc.max_receive_message_length", MESSAGE_LIMIT)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = VaeServiceStub(self.channel)
        self.n = images_per_request
        self.score_samples = score_samples
        self.timeout_s = timeout_s
        self.tally = Tally()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def close(self) -> None:
        self.stop()
        self.channel.close()

    def __enter__(self) -> Traffic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: object, expect_error: bool = False) -> object:
        try:
            if method == "SampleStream":
                reply: object = list(self.stub.SampleStream(request, timeout=self.timeout_s))
            else:
                reply = getattr(self.stub, method)(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            code = error.code().name  # type: ignore[attr-defined]
            self.tally.add(method, code)
            if expect_error:
                return None
            raise
        self.tally.add(method, "OK")
        if expect_error:
            raise AssertionError(f"{method} should have failed: {request}")
        return reply

    def round(self, seed: int = 0, errors: bool = True) -> None:
        """Every RPC on every served model, and (with `errors`) a few requests that fail."""
        models = self._call("ListModels", V.ListModelsRequest()).models  # type: ignore[attr-defined]
        for info in models:
            self.model_round(info.name, seed)
        if errors:
            self.error_round()

    def model_round(self, model: str, seed: int = 0) -> None:
        info = self._call("GetModelInfo", V.GetModelInfoRequest(model=model)).info  # type: ignore[attr-defined]
        rng = np.random.default_rng(seed)
        sample = self._call("Sample", V.SampleRequest(model=model, n=self.n, seed=V.Seed(value=seed)))
        x = tensor_to_array(sample.images.tensor, "images")  # type: ignore[attr-defined]
        self._call("Encode", V.EncodeRequest(model=model, images=_images(x), samples_per_image=2))
        latents = rng.normal(size=(self.n, info.latent_dim)).astype(np.float32)
        self._call("Decode", V.DecodeRequest(model=model, latents=array_to_tensor(latents)))
        self._call("Reconstruct", V.ReconstructRequest(model=model, images=_images(x)))
        self._call("SampleStream", V.SampleStreamRequest(model=model, n=2 * self.n, chunk_size=self.n))
        start, end = V.Endpoint(image=_images(x[:1])), V.Endpoint(latent=array_to_tensor(latents[0]))
        self._call("Interpolate", V.InterpolateRequest(model=model, start=start, end=end, steps=5))
        terms = [V.Term(weight=1.0, value=V.Endpoint(image=_images(x[:1]))),
                 V.Term(weight=-0.5, value=V.Endpoint(latent=array_to_tensor(latents[1])))]  # fmt: skip
        if info.attribute_names:
            terms.append(V.Term(weight=0.5, value=V.Endpoint(attribute=info.attribute_names[0])))
        self._call("Arithmetic", V.ArithmeticRequest(model=model, terms=terms))
        # Score wants images in the model's value range: Bernoulli models are scored on binarised images
        scored = (x > 0.5).astype(np.float32) if info.likelihood == "bernoulli" else x
        score = V.ScoreRequest(model=model, images=_images(scored), importance_samples=self.score_samples)
        self._call("Score", score)

    def error_round(self) -> None:
        """Requests the service must refuse: counted under their real status codes."""
        self._call("Sample", V.SampleRequest(n=-1), expect_error=True)  # INVALID_ARGUMENT
        self._call("Decode", V.DecodeRequest(latents=array_to_tensor(np.zeros((1, 1, 1), np.float32))),
                   expect_error=True)  # fmt: skip
        self._call("GetModelInfo", V.GetModelInfoRequest(model="no-such-model"), expect_error=True)  # NOT_FOUND

    def start(self, threads: int = 3, pause_s: float = 0.2, error_every: int = 10,
              on_error: Callable[[Exception], None] | None = None) -> Traffic:  # fmt: skip
        """Rounds from `threads` threads, each pausing `pause_s` between rounds, until `stop()`; every
        `error_every`-th round of a thread also sends the requests that must fail."""

        def loop(index: int) -> None:
            seed = index * 1_000_003
            rounds = 0
            while not self._stop.is_set():
                try:
                    self.round(seed, errors=rounds % error_every == index % error_every)
                except (grpc.RpcError, AssertionError) as exc:
                    if on_error is not None:
                        on_error(exc)
                seed += 1
                rounds += 1
                self._stop.wait(pause_s)

        self._stop.clear()
        self._threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s)
        self._threads = []
