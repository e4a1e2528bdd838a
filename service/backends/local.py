"""In-process TorchScript: the embedded default backend, on CPU or CUDA.

Calls run on one dedicated worker thread (torch releases the GIL inside kernels), so the event loop keeps
answering health checks and accepting requests while a batch computes; torch's intra-op thread count is set
once, deliberately, from the settings.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from service.errors import Unavailable
from vaecore.repository import ModelSpec


class LocalBackend:
    name = "local"

    def __init__(self, models: dict[str, ModelSpec], device: str = "cpu", threads: int = 0) -> None:
        self._models = models
        self._device = torch.device(device)
        self._threads = threads
        self._modules: dict[str, torch.jit.ScriptModule] = {}
        # torch's intra-op thread count is per thread: set it in the thread that runs the networks.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch", initializer=self._init_thread)

    def _init_thread(self) -> None:
        if self._threads > 0:
            torch.set_num_threads(self._threads)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load_all)

    def _load_all(self) -> None:
        for model in self._models.values():
            for network in (model.encoder, model.decoder):
                path = model.torchscript_path(network)
                try:
                    module = torch.jit.load(str(path), map_location=self._device).eval()
                except (RuntimeError, OSError, ValueError) as exc:
                    raise Unavailable(f"cannot load {path}: {exc}") from exc
                self._modules[network.model_name] = module

    def ready(self) -> bool:
        return len(self._modules) == 2 * len(self._models)

    def _run(self, model_name: str, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        module = self._modules.get(model_name)
        if module is None:
            raise Unavailable(f"model {model_name} is not loaded")
        with torch.inference_mode():
            first, second = module(torch.from_numpy(np.ascontiguousarray(array)).to(self._device))
        return first.cpu().numpy(), second.cpu().numpy()

    async def encode(self, model: ModelSpec, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, model.encoder.model_name, images)

    async def decode(self, model: ModelSpec, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, model.decoder.model_name, latents)

    async def close(self) -> None:
        self._modules.clear()
        self._executor.shutdown(wait=True)
