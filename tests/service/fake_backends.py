"""Test doubles for backends. Only the fault is fake: every call that does not fail runs the real backend.

`FakeFaultyBackend` wraps a real backend and fails any call whose batch holds a *marked* row: an image whose
first four pixels are the IMAGE_MARK pattern (to within half a grey level, so a marked image survives a trip
through uint8 or PNG), or a latent whose first two components are LATENT_MARK. Real images and prior samples
never carry the marks. The batcher merges requests into one backend call; when that call fails it retries
each request alone (service/batching.py), so only the requests holding a marked row should fail.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np

from service.backends.base import Backend
from vaecore.repository import ModelSpec

IMAGE_MARK = np.array([0.375, 0.625, 0.375, 0.625], np.float32)  # channel 0, row 0, columns 0..3
LATENT_MARK = np.array([7.75, -7.75], np.float32)  # components 0 and 1; ~8 sigma of the prior, twice
_IMAGE_TOLERANCE = 0.5 / 255


class FakeBackendFault(RuntimeError):
    """What the fake raises: an unexpected backend failure (the service answers INTERNAL)."""


def mark_images(images: np.ndarray) -> np.ndarray:
    """A copy of images [N, C, H, W] (float in [0, 1]) with every image marked."""
    marked = np.array(images, np.float32, copy=True)
    marked[:, 0, 0, : len(IMAGE_MARK)] = IMAGE_MARK
    return marked


def mark_latents(latents: np.ndarray) -> np.ndarray:
    """A copy of latents [N, D] with every row marked."""
    marked = np.array(latents, np.float32, copy=True)
    marked[:, : len(LATENT_MARK)] = LATENT_MARK
    return marked


def marked_images(images: np.ndarray) -> np.ndarray:
    """[N] bool: which images carry the mark."""
    corner = np.asarray(images, np.float32)[:, 0, 0, : len(IMAGE_MARK)]
    return np.all(np.abs(corner - IMAGE_MARK) <= _IMAGE_TOLERANCE, axis=1)  # type: ignore[no-any-return]


def marked_latents(latents: np.ndarray) -> np.ndarray:
    """[N] bool: which latents carry the mark."""
    return np.all(np.asarray(latents, np.float32)[:, : len(LATENT_MARK)] == LATENT_MARK, axis=1)  # type: ignore[no-any-return]


class FakeFaultyBackend:
    """A real backend that fails every call whose batch holds a marked row; counts calls and failures."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()  # network -> backend calls
        self.rows: Counter[str] = Counter()  # network -> rows in those calls
        self.failures: Counter[str] = Counter()  # network -> calls failed on purpose
        self.shared_failures: Counter[str] = Counter()  # network -> of those, calls holding unmarked rows too

    async def start(self) -> None:
        await self.inner.start()

    def ready(self) -> bool:
        return self.inner.ready()

    async def load(self, model: ModelSpec) -> None:
        await self.inner.load(model)

    async def unload(self, model: ModelSpec) -> None:
        await self.inner.unload(model)

    def _note(self, network: str, marked: np.ndarray) -> None:
        fail = bool(marked.any())
        with self._lock:
            self.calls[network] += 1
            self.rows[network] += len(marked)
            self.failures[network] += int(fail)
            self.shared_failures[network] += int(fail and not marked.all())
        if fail:
            raise FakeBackendFault(f"fake fault: {int(marked.sum())} marked of {len(marked)} rows ({network})")

    async def encode(self, model: ModelSpec, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._note("encoder", marked_images(images))
        return await self.inner.encode(model, images)

    async def decode(self, model: ModelSpec, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._note("decoder", marked_latents(latents))
        return await self.inner.decode(model, latents)

    async def close(self) -> None:
        await self.inner.close()
