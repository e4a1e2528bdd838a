"""Pure latent-space math shared by the plots (training) and the service: linear and spherical interpolation.

numpy only, no model: easy to test and safe to call on the request path.
"""

from __future__ import annotations

import numpy as np

PARALLEL_EPS = 1e-6


def interpolation_weights(steps: int) -> np.ndarray:
    """`steps` weights from 0 to 1, endpoints included (steps >= 2)."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2 to include both endpoints, got {steps}")
    return np.linspace(0.0, 1.0, steps, dtype=np.float64)


def lerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """[steps, D] points on the segment a -> b."""
    t = interpolation_weights(steps)[:, None]
    return ((1.0 - t) * a[None].astype(np.float64) + t * b[None].astype(np.float64)).astype(np.float32)


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """[steps, D] spherical interpolation a -> b, the norm interpolated linearly (the prior's mass lives
    on a shell, so slerp keeps intermediate points typical where lerp shrinks them toward the origin).

    Guards: a zero-norm endpoint or (anti-)parallel endpoints have no unique great circle; then it falls back
    to linear interpolation, which is the limit of slerp as the angle goes to zero.
    """
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norm_a, norm_b = np.linalg.norm(a64), np.linalg.norm(b64)
    if norm_a < PARALLEL_EPS or norm_b < PARALLEL_EPS:
        return lerp(a, b, steps)
    unit_a, unit_b = a64 / norm_a, b64 / norm_b
    cos_omega = float(np.clip(unit_a @ unit_b, -1.0, 1.0))
    omega = np.arccos(cos_omega)
    sin_omega = np.sin(omega)
    if sin_omega < PARALLEL_EPS:
        return lerp(a, b, steps)
    t = interpolation_weights(steps)[:, None]
    direction = (np.sin((1.0 - t) * omega) * unit_a + np.sin(t * omega) * unit_b) / sin_omega
    norms = (1.0 - t) * norm_a + t * norm_b
    points = direction * norms
    points[0], points[-1] = a64, b64  # exact endpoints, no rounding drift
    return points.astype(np.float32)
