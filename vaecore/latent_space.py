"""The identity of a latent space: which encoder (and prior) the latents a caller holds came from.

A latent is only meaningful to the decoder trained with the encoder that made it. Retrain the encoder and every
stored latent silently means something else; retrain only the decoder and it keeps its meaning (diffusers #3726).
So the identity is a digest of exactly what fixes the space: the prior, the latent size and the encoder's
weights (parameters and buffers, by name), never the decoder's. The exporter computes it from the TorchScript
encoder it writes (`training.export`) and records it in each version's metadata (`latent_space`); the service reads
it from there and stamps every latent it returns with it (service/registry).

`"ls1-" + 24 hex digits`: the prefix names this derivation, so a later one can never collide with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

STANDARD_NORMAL = "standard_normal"
PREFIX = "ls1-"
FALLBACK_PREFIX = "lsf-"  # format-1 exports without a recorded identity: derived from the encoder file's digest
DIGEST_HEX = 24


def latent_space_id(
    encoder_state: Iterable[tuple[str, np.ndarray]], latent_dim: int, prior: str = STANDARD_NORMAL
) -> str:
    """The identity of the space an encoder maps into: a SHA-256 over the prior, the latent size and every
    named array of the encoder's state, in name order, each with its dtype and shape (little-endian bytes)."""
    digest = hashlib.sha256(f"prior={prior};latent_dim={int(latent_dim)};".encode())
    for name, array in sorted(encoder_state, key=lambda item: item[0]):
        values = np.ascontiguousarray(array)
        values = values.astype(values.dtype.newbyteorder("<"), copy=False)
        digest.update(f"{name}:{values.dtype.str}:{list(values.shape)};".encode())
        digest.update(values.tobytes())
    return PREFIX + digest.hexdigest()[:DIGEST_HEX]


def fallback_latent_space(encoder_sha256: str | None, latent_dim: int, prior: str = STANDARD_NORMAL) -> str:
    """For exports that record no `latent_space` (format 1): an identity from the encoder file's recorded digest,
    so the stamp still changes when the encoder does (it also changes when only the file's bytes do: re-stamp
    with `python -m training rehash` to get the weight-derived one). "" when not even a digest is recorded."""
    if not encoder_sha256:
        return ""
    digest = hashlib.sha256(f"prior={prior};latent_dim={int(latent_dim)};file={encoder_sha256}".encode())
    return FALLBACK_PREFIX + digest.hexdigest()[:DIGEST_HEX]
