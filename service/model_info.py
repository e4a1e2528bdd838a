"""`ModelInfo` messages from the registry's state: what ListModels, GetModelInfo and the admin service describe."""

from __future__ import annotations

from service.registry.state import ModelEntry, State
from vae_client.proto_gen.vae.v1 import vae_pb2
from vaecore.repository import ModelSpec

STATES = {
    State.LOADING: vae_pb2.VERSION_STATE_LOADING,
    State.READY: vae_pb2.VERSION_STATE_READY,
    State.FAILED: vae_pb2.VERSION_STATE_FAILED,
    State.DRAINING: vae_pb2.VERSION_STATE_DRAINING,
    State.UNLOADED: vae_pb2.VERSION_STATE_UNLOADED,
}


def model_info(entry: ModelEntry, spec: ModelSpec, backend: str) -> vae_pb2.ModelInfo:
    """One model as `spec` (one of its versions) describes it, with every version of it and the routing."""
    shares = entry.routing.shares()
    versions = [
        vae_pb2.ModelVersion(
            version=v.version,
            state=STATES[v.state],
            latent_space=v.spec.latent_space,
            traffic_share=shares.get(v.version, 0.0),
            message=v.message,
            test_nll=v.spec.test_nll,
        )
        for v in entry.ordered()
    ]
    return vae_pb2.ModelInfo(
        name=spec.name,
        latent_dim=spec.latent_dim,
        image_shape=list(spec.image_shape),
        likelihood=spec.likelihood,
        attribute_names=sorted(spec.attributes),
        label_names=list(spec.label_names),
        dataset=spec.dataset,
        test_nll=spec.test_nll,
        test_nll_samples=spec.test_nll_samples,
        backend=backend,
        version=spec.version,
        default_version=entry.routing.default,
        versions=versions,
        latent_space=spec.latent_space,
    )
