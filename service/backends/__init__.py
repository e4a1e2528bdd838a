"""Backends run the exported networks: `local` (in-process TorchScript) and `triton` (a Triton server)."""

from service.backends.base import Backend

__all__ = ["Backend"]
