from __future__ import annotations

import numpy as np
import pytest

from vaecore.latent import lerp, slerp


def test_lerp_endpoints_and_midpoint() -> None:
    a, b = np.array([0.0, 2.0], np.float32), np.array([4.0, -2.0], np.float32)
    path = lerp(a, b, 5)
    assert path.shape == (5, 2) and path.dtype == np.float32
    np.testing.assert_array_equal(path[0], a)
    np.testing.assert_array_equal(path[-1], b)
    np.testing.assert_allclose(path[2], [2.0, 0.0])


def test_slerp_keeps_endpoints_and_interpolates_norm() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=16).astype(np.float32), 2 * rng.normal(size=16).astype(np.float32)
    path = slerp(a, b, 9)
    np.testing.assert_array_equal(path[0], a)
    np.testing.assert_array_equal(path[-1], b)
    norms = np.linalg.norm(path, axis=1)
    np.testing.assert_allclose(norms, np.linspace(np.linalg.norm(a), np.linalg.norm(b), 9), rtol=1e-5)
    # unlike lerp, the midpoint does not shrink toward the origin
    assert np.linalg.norm(path[4]) > np.linalg.norm(lerp(a, b, 9)[4])


def test_slerp_on_orthogonal_unit_vectors_follows_the_circle() -> None:
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    mid = slerp(a, b, 3)[1]
    np.testing.assert_allclose(mid, [np.sqrt(0.5), np.sqrt(0.5)], rtol=1e-6)


@pytest.mark.parametrize(
    "a,b",
    [([0.0, 0.0], [1.0, 2.0]), ([1.0, 2.0], [2.0, 4.0]), ([1.0, 2.0], [-1.0, -2.0])],
    ids=["zero-norm", "parallel", "antiparallel"],
)
def test_slerp_degenerate_endpoints_fall_back_to_lerp(a: list[float], b: list[float]) -> None:
    a_arr, b_arr = np.array(a, np.float32), np.array(b, np.float32)
    path = slerp(a_arr, b_arr, 4)
    assert np.all(np.isfinite(path))
    np.testing.assert_allclose(path, lerp(a_arr, b_arr, 4), atol=1e-6)


def test_interpolation_needs_two_steps() -> None:
    with pytest.raises(ValueError, match="steps"):
        slerp(np.ones(2, np.float32), np.ones(2, np.float32), 1)
