"""Which version answers a request, and whether the latents it carries belong there.

- A request naming a version (`model_version`) gets that version while it is READY; a version loading, failed,
  draining or unknown is FAILED_PRECONDITION (or NOT_FOUND when the model never had it), naming the versions that
  serve.
- A request naming none gets the routing: the default version, or a version drawn by the split's weights.
- Latents stamped with a `latent_space` narrow that choice: an unpinned request goes to a version of its routing
  whose space is the stamp's (a canary with a new encoder never receives latents of the old space), and a request
  no routed version can take is refused with FAILED_PRECONDITION naming both spaces and the versions that accept
  the stamp. Unstamped latents are served as before (the caller counts them).
"""

from __future__ import annotations

import random
from collections.abc import Collection

from service.registry.state import ModelEntry, State, Version
from vae_client.errors import FailedPrecondition, NotFound, Unavailable

_PICK = random.Random()  # the split's draw; not the request's seed, which must not depend on routing


def route(entry: ModelEntry, version: str, stamps: Collection[str]) -> Version:
    """The version that serves a request for `entry` (`version`: "" for the routing), given its latents' stamps."""
    if version:
        chosen = _pinned(entry, version)
        _check_space(entry, [chosen], stamps)
        return chosen
    shares = entry.routing.shares()
    candidates = [entry.versions[v] for v in shares if v in entry.versions and entry.versions[v].state is State.READY]
    if not candidates:  # the routing's versions are all gone: never refuse while any version serves
        candidates = list(entry.ready().values())
    if not candidates:
        waiting = [v for v in entry.ordered() if v.state is State.LOADING]
        if waiting:  # not broken: loading, or waiting for the backend; a retry will find it
            raise Unavailable(f"model {entry.name!r} is loading ({waiting[0].message}); retry")
        raise FailedPrecondition(f"model {entry.name!r} has no version serving now ({_states(entry)})")
    matching = _check_space(entry, candidates, stamps)
    if len(matching) == 1:
        return matching[0]
    weights = [shares.get(c.version, 0.0) or 1e-12 for c in matching]
    return _PICK.choices(matching, weights)[0]


def _pinned(entry: ModelEntry, version: str) -> Version:
    found = entry.versions.get(version)
    if found is None:
        raise NotFound(f"model {entry.name!r} has no version {version[:32]!r}; versions: {_states(entry)}")
    if found.state is not State.READY:
        serving = ", ".join(v.version for v in entry.ordered() if v.state is State.READY) or "none"
        raise FailedPrecondition(
            f"version {version} of model {entry.name!r} is {found.state.value}, not serving"
            f"{f' ({found.message})' if found.message else ''}; versions serving: {serving}"
        )
    return found


def _check_space(entry: ModelEntry, candidates: list[Version], stamps: Collection[str]) -> list[Version]:
    """The candidates whose latent space is every stamp's; FAILED_PRECONDITION when there is none."""
    if not stamps:
        return candidates
    matching = [c for c in candidates if all(c.spec.latent_space == s for s in stamps)]
    if matching:
        return matching
    stamp = next(iter(stamps))
    accepting = [v.version for v in entry.ordered() if v.state is State.READY and v.spec.latent_space == stamp]
    routed = ", ".join(f"version {c.version} ({c.spec.latent_space or 'unknown'})" for c in candidates)
    hint = (
        f"versions that accept it: {', '.join(accepting)} (name one in model_version)"
        if accepting
        else "no version serving now accepts it: re-encode the images with the current version"
    )
    raise FailedPrecondition(
        f"latents of latent space {stamp[:64]!r} cannot be decoded by model {entry.name!r} {routed}, whose space "
        f"differs; {hint}"
    )


def _states(entry: ModelEntry) -> str:
    return ", ".join(f"{v.version} {v.state.value}" for v in entry.ordered()) or "none"
