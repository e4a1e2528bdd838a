"""Which CPU convolution kernels each network runs with: oneDNN's or PyTorch's native ones, chosen per network and
call size by timing both once at start-up.

oneDNN (mkldnn) is PyTorch's default for CPU convolutions, and not always the faster. Measured on the shipped
MNIST networks on this project's 2-core machine (1 torch thread, images/s): the decoder's transposed
convolutions ran faster without it at every batch size (1 row: 1,423 vs 761; 64 rows: 3,176 vs 2,716), the
encoder's convolutions faster without it at 1 row (1,726 vs 1,268) and 4x slower from 8 rows up (64 rows: 1,892
vs 7,621). Both are exact kernels for the same maths: the choice changes speed and float rounding (about 1e-6),
never the model.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass

import torch

from service.config import ONEDNN_SETTINGS

log = logging.getLogger(__name__)

SMALL_ROWS = 4  # calls of at most this many rows follow the one-row measurement, larger ones the full batch's
REPEATS = 5  # timed calls each way per measurement (median)
WARM_UP = 3  # untimed calls each way first


@dataclass(frozen=True)
class KernelChoice:
    """oneDNN on (True) or off for small and for large calls."""

    small: bool = True
    large: bool = True

    def for_rows(self, rows: int) -> bool:
        return self.small if rows <= SMALL_ROWS else self.large


def fixed(setting: str) -> KernelChoice | None:
    """`on`/`off` pin the choice for every network; `auto` (None) times each one."""
    if setting not in ONEDNN_SETTINGS:
        raise ValueError(f"--onednn must be one of {', '.join(ONEDNN_SETTINGS)}, got {setting!r}")
    return None if setting == "auto" else KernelChoice(setting == "on", setting == "on")


def _seconds(module: torch.jit.ScriptModule, batch: torch.Tensor, onednn: bool) -> float:
    _switch(onednn)
    started = time.perf_counter()
    module(batch)
    return time.perf_counter() - started


def _faster_with_onednn(module: torch.jit.ScriptModule, batch: torch.Tensor) -> tuple[bool, float, float]:
    """Medians of REPEATS calls each way, alternating (so drift on a shared machine hits both alike), after
    WARM_UP calls each way (TorchScript optimizes a graph over its first calls; oneDNN builds its kernels)."""
    times: dict[bool, list[float]] = {True: [], False: []}
    with torch.inference_mode():
        for _ in range(WARM_UP):
            for onednn in (True, False):
                _seconds(module, batch, onednn)
        for _ in range(REPEATS):
            for onednn in (True, False):
                times[onednn].append(_seconds(module, batch, onednn))
    on, off = statistics.median(times[True]), statistics.median(times[False])
    return on <= off, on, off


def choose(name: str, module: torch.jit.ScriptModule, row: torch.Tensor, full_rows: int) -> KernelChoice:
    """Time `module` both ways on one row and on `full_rows` copies of it; leaves oneDNN on (PyTorch's default)."""
    try:
        small, small_on, small_off = _faster_with_onednn(module, row)
        large, large_on, large_off = _faster_with_onednn(module, row.expand(full_rows, *row.shape[1:]).contiguous())
    finally:
        _switch(True)
    log.info("%s: oneDNN %s for 1 row (%.2f vs %.2f ms without), %s for %d rows (%.2f vs %.2f ms without)", name,
             "on" if small else "off", small_on * 1e3, small_off * 1e3, "on" if large else "off", full_rows,
             large_on * 1e3, large_off * 1e3)  # fmt: skip
    return KernelChoice(small, large)


def use(choice: KernelChoice, rows: int) -> None:
    """Set the process-wide oneDNN switch for the next call (callers never run two networks at once)."""
    wanted = choice.for_rows(rows)
    if bool(torch.backends.mkldnn.enabled) != wanted:
        _switch(wanted)


def _switch(enabled: bool) -> None:
    setattr(torch.backends.mkldnn, "enabled", enabled)  # noqa: B010 (torch's stubs type the attribute as a descriptor)
