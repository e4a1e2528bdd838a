"""In-process TorchScript: the embedded default backend, on CPU or CUDA.

Calls run on one dedicated worker thread (torch releases the GIL inside kernels), so the event loop keeps
answering health checks and accepting requests while a batch computes; torch's intra-op thread count is set
once, deliberately, from the settings. One exception, for latency: a call of at most `inline_rows` rows that
finds the worker idle runs on the event-loop thread itself. The hop to an idle thread and back cost about 0.3 ms
here and the idle thread ran its first call 2x slower (its caches gone cold), so a lone request was held back
by about 1 ms; a one-row call blocks the loop for well under a millisecond. Under load the calls are batches
of many rows and all go to the worker. On CPU each network's convolution kernels (oneDNN or PyTorch's own) are
chosen at start-up by timing both (service/backends/kernels.py).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from service.backends import kernels
from vae_client.errors import Unavailable
from vaecore.repository import ModelSpec

_Key = tuple[str, str]  # (network, version)


class LocalBackend:
    name = "local"

    def __init__(
        self,
        models: dict[str, ModelSpec],
        device: str = "cpu",
        threads: int = 0,
        *,
        inline_rows: int = 1,
        onednn: str = "auto",
        max_batch_size: int = 64,
    ) -> None:
        self._models = models
        self._device = torch.device(device)
        self._threads = threads
        self._inline_rows = inline_rows
        self._pinned = kernels.fixed(onednn)
        self._max_batch_size = max_batch_size
        # by (network, version): two versions of one model serve side by side
        self._modules: dict[_Key, torch.jit.ScriptModule] = {}
        self._kernels: dict[_Key, kernels.KernelChoice] = {}
        self._busy = 0  # calls handed to the worker thread and not finished
        self._started = self._closed = False
        # torch's intra-op thread count is per thread: set it in the thread that runs the networks.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch", initializer=self._init_thread)

    def _init_thread(self) -> None:
        if self._threads > 0:
            torch.set_num_threads(self._threads)

    async def start(self) -> None:
        self._init_thread()  # the event-loop thread runs the small calls
        for model in self._models.values():
            await self.load(model)
        self._started = True

    async def load(self, model: ModelSpec) -> None:
        """Both networks of one version, loaded and their kernels chosen on the worker thread (the loop keeps
        serving meanwhile); they become callable only once both are in."""
        if all((n.model_name, model.version) in self._modules for n in (model.encoder, model.decoder)):
            return
        loaded = await asyncio.get_running_loop().run_in_executor(self._executor, self._load_version, model)
        for key, (module, choice) in loaded.items():
            self._kernels[key] = choice
            self._modules[key] = module

    def _load_version(self, model: ModelSpec) -> dict[_Key, tuple[torch.jit.ScriptModule, kernels.KernelChoice]]:
        rows = {model.encoder.model_name: (1, *model.image_shape), model.decoder.model_name: (1, model.latent_dim)}
        loaded = {}
        for network in (model.encoder, model.decoder):
            path = model.torchscript_path(network)
            try:
                module = torch.jit.load(str(path), map_location=self._device).eval()
            except (RuntimeError, OSError, ValueError) as exc:
                raise Unavailable(f"cannot load {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
            choice = self._choose(network.model_name, module, rows[network.model_name])
            loaded[(network.model_name, model.version)] = (module, choice)
        return loaded

    async def unload(self, model: ModelSpec) -> None:
        for network in (model.encoder, model.decoder):
            self._modules.pop((network.model_name, model.version), None)
            self._kernels.pop((network.model_name, model.version), None)

    def _choose(self, name: str, module: torch.jit.ScriptModule, row_shape: tuple[int, ...]) -> kernels.KernelChoice:
        if self._device.type != "cpu":
            return kernels.KernelChoice()  # oneDNN is a CPU matter
        if self._pinned is not None:
            return self._pinned
        return kernels.choose(name, module, torch.zeros(row_shape, device=self._device), self._max_batch_size)

    def ready(self) -> bool:
        return self._started and not self._closed

    def _run(self, key: _Key, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        module = self._modules.get(key)
        if module is None:
            raise Unavailable(f"model {key[0]} version {key[1]} is not loaded")
        kernels.use(self._kernels[key], len(array))
        with torch.inference_mode():
            # A request's array is a read-only view of its message bytes: torch wants writable memory (it warns
            # otherwise), so such an array is copied, once per call: small next to the network.
            rows = np.require(array, requirements=("C", "W"))
            first, second = module(torch.from_numpy(rows).to(self._device))
        return first.cpu().numpy(), second.cpu().numpy()

    async def _call(self, key: _Key, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._busy == 0 and len(array) <= self._inline_rows:
            return self._run(key, array)  # idle and small: no hop to the worker thread (module docstring)
        self._busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, key, array)
        finally:
            self._busy -= 1

    async def encode(self, model: ModelSpec, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self._call((model.encoder.model_name, model.version), images)

    async def decode(self, model: ModelSpec, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self._call((model.decoder.model_name, model.version), latents)

    async def close(self) -> None:
        self._closed = True
        self._modules.clear()
        self._executor.shutdown(wait=True)
