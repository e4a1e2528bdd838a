"""A real Triton Inference Server, reached with `tritonclient.grpc.aio`.

Readiness is checked at start (server and every encoder/decoder model) and then watched: a call that fails
marks the backend down at once (health turns NOT_SERVING), and a background probe marks it up again when the
server answers ready, e.g. after a Triton restart; gRPC reconnects the channel by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import numpy as np
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from service.errors import Unavailable
from vaecore.repository import ModelSpec, NetworkSpec

log = logging.getLogger(__name__)


class TritonBackend:
    name = "triton"

    def __init__(
        self, models: dict[str, ModelSpec], url: str, timeout_s: float = 30.0, probe_interval_s: float = 1.0
    ) -> None:
        self._models = models
        self._url = url
        self._timeout_s = timeout_s
        self._probe_interval_s = probe_interval_s
        self._client: triton_grpc.InferenceServerClient | None = None
        self._ready = False
        self._probe: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._client = triton_grpc.InferenceServerClient(self._url)
        self._ready = await self._check()
        self._probe = asyncio.get_running_loop().create_task(self._watch())
        if not self._ready:
            log.warning("Triton at %s is not ready yet; serving NOT_SERVING until it is", self._url)

    def ready(self) -> bool:
        return self._ready

    async def _check(self) -> bool:
        assert self._client is not None
        try:
            if not await self._client.is_server_ready(client_timeout=2.0):
                return False
            for model in self._models.values():
                for network in (model.encoder, model.decoder):
                    if not await self._client.is_model_ready(network.model_name, client_timeout=2.0):
                        return False
        except (TimeoutError, InferenceServerException, OSError) as exc:
            log.debug("Triton readiness probe failed: %s", exc)
            return False
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            ready = await self._check()
            if ready != self._ready:
                log.warning("Triton at %s is now %s", self._url, "ready" if ready else "down")
            self._ready = ready

    async def _infer(self, network: NetworkSpec, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._client is None:
            raise Unavailable("Triton backend is not started")
        tensor = triton_grpc.InferInput(network.input_name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        outputs = [triton_grpc.InferRequestedOutput(name) for name in network.output_names]
        try:
            result = await self._client.infer(
                network.model_name, [tensor], outputs=outputs, client_timeout=self._timeout_s
            )
        except InferenceServerException as exc:
            self._ready = False  # the probe brings it back
            raise Unavailable(f"Triton call to {network.model_name} failed: {exc.message()}") from exc
        first, second = (result.as_numpy(name) for name in network.output_names)
        return first, second

    async def encode(self, model: ModelSpec, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self._infer(model.encoder, images)

    async def decode(self, model: ModelSpec, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self._infer(model.decoder, latents)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._client is not None:
            await self._client.close()
