"""One version made servable, in the background, before any request reaches it: read and integrity-checked
(each network file against the SHA-256 its metadata records), loaded by the backend, warmed up at every batch size
the batcher can form (so the first requests after a switch pay no first-call cost: Triton #3012), its outputs
checked against the shapes its metadata declares, and its batchers started. Any failure unloads what was loaded
and raises `LoadFailed` with one line saying why; what was serving is never touched here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.backends.base import Backend
from service.batching import BatchFunction, BatchObserver, DynamicBatcher
from service.integrity import check_files
from vaecore.repository import ModelSpec

log = logging.getLogger(__name__)
NETWORKS = ("encoder", "decoder")


class LoadFailed(Exception):
    """A version could not be made servable; the message is the one line operators and clients are told."""


@dataclass(frozen=True)
class LoadLimits:
    max_batch_size: int
    max_wait_s: float
    max_queue: int
    files_required: bool  # the local backend loads the files itself; Triton loads its own copies
    timeout_s: float


BatchFunctions = Callable[[ModelSpec], dict[str, BatchFunction]]
Observers = Callable[[ModelSpec, str], BatchObserver]


def verify_files(spec: ModelSpec, files_required: bool) -> None:
    """Refuse a version whose files do not match their recorded digests (or are missing where they must be)."""
    for check in check_files(spec):
        if check.actual is None and files_required:
            raise LoadFailed(f"{spec.key}: {check.path} is missing")
        if check.actual is not None and check.expected is not None and check.actual != check.expected:
            raise LoadFailed(
                f"{spec.key}: {check.path} has sha256 {check.actual}, its metadata records {check.expected}"
            )


def _expect(spec: ModelSpec, what: str, arrays: tuple[np.ndarray, ...], shape: tuple[int, ...]) -> None:
    for array in arrays:
        if tuple(array.shape) != shape:
            raise LoadFailed(
                f"{spec.key}: the {what} returned shape {list(array.shape)}, its metadata says {list(shape)}"
            )
        if not np.isfinite(array).all():
            raise LoadFailed(f"{spec.key}: the {what} returned non-finite values on its warm-up input")


async def warm_up(backend: Backend, spec: ModelSpec, max_batch_size: int) -> None:
    """Run both networks at every batch size from 1 to `max_batch_size`, checking each output's shape."""
    for rows in range(1, max_batch_size + 1):
        images = np.full((rows, *spec.image_shape), 0.5, np.float32)
        _expect(spec, "encoder", await backend.encode(spec, images), (rows, spec.latent_dim))
        latents = np.zeros((rows, spec.latent_dim), np.float32)
        _expect(spec, "decoder", await backend.decode(spec, latents), (rows, *spec.image_shape))


def start_batchers(
    spec: ModelSpec, limits: LoadLimits, calls: BatchFunctions, observer: Observers
) -> dict[str, DynamicBatcher]:
    functions = calls(spec)
    batchers = {}
    for network in NETWORKS:
        batcher = DynamicBatcher(functions[network], limits.max_batch_size, limits.max_wait_s, limits.max_queue,
                                 observer(spec, network))  # fmt: skip
        batcher.start()
        batchers[network] = batcher
    return batchers


async def make_servable(
    spec: ModelSpec, backend: Backend, limits: LoadLimits, calls: BatchFunctions, observer: Observers
) -> dict[str, DynamicBatcher]:
    """The batchers of a version that is loaded, warm and checked; `LoadFailed` (and nothing left loaded)
    otherwise. Cancelled (a reload its caller gave up on, a shutdown), it unloads what it loaded and re-raises."""
    try:
        await asyncio.to_thread(verify_files, spec, limits.files_required)
        async with asyncio.timeout(limits.timeout_s):
            await backend.load(spec)
            await warm_up(backend, spec, limits.max_batch_size)
    except LoadFailed:
        await _unload_quietly(backend, spec)
        raise
    except TimeoutError:
        await _unload_quietly(backend, spec)
        raise LoadFailed(f"{spec.key}: not loaded and warmed up within {limits.timeout_s:g} s") from None
    except asyncio.CancelledError:
        await asyncio.shield(_unload_quietly(backend, spec))
        raise
    except Exception as exc:  # the backend's reason, whatever it is: one line
        await _unload_quietly(backend, spec)
        raise LoadFailed(f"{spec.key}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    return start_batchers(spec, limits, calls, observer)


async def _unload_quietly(backend: Backend, spec: ModelSpec) -> None:
    """Take back a half-made version; a failure here (Triton gone, say) is logged, never raised over the reason
    the load failed."""
    try:
        await backend.unload(spec)
    except Exception as exc:
        log.warning("%s: could not unload what its failed load left in the backend: %s", spec.key, exc)
