"""The seed -> numbers mapping (vaecore/rng.py): SplitMix64 matches its reference outputs, and a seed's numbers
are pinned, so a change to them (which changes every seeded reply of the service) cannot pass unnoticed."""

from __future__ import annotations

import numpy as np

from vaecore.rng import generator, splitmix64


def test_splitmix64_matches_the_reference_outputs() -> None:
    # Vigna's splitmix64.c started at 0
    assert splitmix64(0, 3) == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_a_seed_gives_the_same_numbers_every_time_and_they_are_pinned() -> None:
    first = generator(2026).standard_normal(4)
    assert np.array_equal(first, generator(2026).standard_normal(4))
    np.testing.assert_allclose(first, PINNED_2026, rtol=0, atol=1e-12)


def test_nearby_seeds_give_unrelated_streams() -> None:
    draws = np.stack([generator(seed).standard_normal(2000) for seed in range(8)])
    correlation = np.corrcoef(draws)
    off_diagonal = correlation[~np.eye(8, dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.1  # independent streams: |r| ~ 1/sqrt(2000) = 0.02


def test_seeds_are_taken_modulo_two_to_the_64() -> None:
    assert np.array_equal(generator(5).random(3), generator(5 + 2**64).random(3))


PINNED_2026 = np.array([-0.36834446378390256, 0.10678830342823543, -1.0964681005203663, -0.0221921951760632])
