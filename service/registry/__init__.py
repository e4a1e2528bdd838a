"""The model registry: which versions of which models this process serves, and how they change while it serves.

state.py     a version's life (LOADING -> READY -> DRAINING -> gone, or FAILED) and a model's routing
routing.py   which version answers a request: pinned, the default, a weighted split; latent-space checks
loading.py   one version made servable: integrity check, backend load, warm-up, batchers
control.py   the operators' changes (admin service) kept where every worker reads them
registry.py  ModelRegistry: leases for requests, reloads of the repository, the admin operations, drains
triggers.py  what starts a reload: SIGHUP, the repository poll, a change another worker made
"""

from service.registry.registry import ModelRegistry
from service.registry.state import State

__all__ = ["ModelRegistry", "State"]
