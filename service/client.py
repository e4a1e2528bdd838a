"""The typed client lives in the vae-client distribution (vae_client/client.py); `from service.client import
VaeClient` keeps working where the server is installed (it depends on vae-client)."""

from vae_client.client import Generated, Latents, Posterior, Score, VaeClient, describe_error, stamp_of

__all__ = ["Generated", "Latents", "Posterior", "Score", "VaeClient", "describe_error", "stamp_of"]
