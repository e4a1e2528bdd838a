"""The one mapping from a request's seed to its random numbers, shared by the service and the evaluation code.

A seed is any integer, taken modulo 2**64. The generator is numpy's PCG64 whose 128-bit state and increment
are expanded from the seed with SplitMix64 (Steele, Lea & Flood 2014), in place of numpy's default SeedSequence
hashing: that costs about 20 us per generator, a tenth of a one-image request's whole budget, where this
costs about 5 us. The numbers a seed gives are fixed by this file and a test; numpy's own seeding is not used.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from numpy.random.bit_generator import ISeedSequence

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def splitmix64(seed: int, words: int) -> list[int]:
    """`words` 64-bit outputs of SplitMix64 started at `seed`: well mixed even for nearby seeds (0, 1, 2...)."""
    state, out = seed & _MASK, []
    for _ in range(words):
        state = (state + _GOLDEN) & _MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        out.append(z ^ (z >> 31))
    return out


class _SplitMixSeed(ISeedSequence):
    """What numpy's bit generators ask a seed sequence for (`generate_state`), answered by SplitMix64."""

    __slots__ = ("_seed",)

    def __init__(self, seed: int) -> None:
        self._seed = seed

    def generate_state(self, n_words: int, dtype: Any = np.uint32) -> np.ndarray:
        if np.dtype(dtype) == np.uint64:
            return np.array(splitmix64(self._seed, n_words), dtype=np.uint64)
        words = np.array(splitmix64(self._seed, (n_words + 1) // 2), dtype=np.uint64)
        return words.view(np.uint32)[:n_words].copy()


def generator(seed: int) -> np.random.Generator:
    """The generator for `seed`: the same seed gives the same numbers, on every backend and in every process."""
    # numpy takes any ISeedSequence here (its type stubs name only SeedSequence)
    return np.random.Generator(np.random.PCG64(cast(Any, _SplitMixSeed(seed))))
