"""vae-client: the typed Python client, the command line and the generated gRPC stubs of the VAE service's API
(vae.v1). It needs grpcio, protobuf, numpy, pillow and googleapis-common-protos (the stubs' google.api
annotations): no torch, no server. `from vae_client import VaeClient`."""

from vae_client.client import Generated, Latents, Posterior, Score, VaeClient, describe_error

__all__ = ["Generated", "Latents", "Posterior", "Score", "VaeClient", "describe_error"]
