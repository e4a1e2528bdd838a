"""The operators' changes (the admin service, service/admin.py): load and unload a version, set the default
version, split unpinned traffic by weight, roll back. Each runs under the registry's lock, first brings this
process up to date with the operators' record (service/registry/control.py: another worker may have changed it),
then changes, records the whole result and tells the other workers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from service.registry.control import ModelControl, tell_other_workers
from service.registry.state import ModelEntry, Routing, State
from vae_client.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from vaecore.repository import ModelSpec, RepositoryError, metadata_path, parse_versions

if TYPE_CHECKING:
    import asyncio
    from pathlib import Path

    from service.registry.control import ControlStore
    from service.registry.registry import Lifecycle
    from vaecore.repository import ModelVersions


class _Registry(Protocol):
    """What these operations use of `ModelRegistry` (mypy's self-type for a mixin)."""

    entries: dict[str, ModelEntry]
    repository: Path
    _lock: asyncio.Lock
    _listed: dict[str, ModelVersions]
    _control: ControlStore
    _lifecycle: Lifecycle

    def entry(self, name: str) -> ModelEntry: ...
    async def _load(self, entry: ModelEntry, spec: ModelSpec) -> str: ...
    def _retire(self, entry: ModelEntry, version: str, still_listed: bool, force: bool = False) -> list[str]: ...
    def _apply_control(self, entry: ModelEntry, control: ModelControl | None) -> list[str]: ...
    def _sync(self, entry: ModelEntry) -> None: ...
    def _record(self, entry: ModelEntry) -> None: ...
    def _listed_version(self, name: str, version: str) -> tuple[ModelEntry, ModelSpec]: ...
    def _serving_entry(self, name: str, versions: list[str], field: str) -> ModelEntry: ...


def describe_routing(routing: Routing) -> str:
    if not routing.split:
        return f"default {routing.default}"
    return "split " + ", ".join(f"{v}: {share:.0%}" for v, share in routing.shares().items())


class OperatorChanges:
    """Mixed into `ModelRegistry`: the admin operations."""

    async def load_version(self: _Registry, name: str, version: str) -> ModelEntry:
        """Load a version the repository lists; returns once it serves (a draining one is loaded again once its
        drain is over, waiting outside the lock)."""
        while True:
            async with self._lock:
                entry, spec = self._listed_version(name, version)
                self._sync(entry)
                entry.unloaded.discard(version)
                current = entry.versions.get(version)
                if current is None or current.state is not State.DRAINING:
                    if current is None or current.state in (State.FAILED, State.UNLOADED):
                        await self._load(entry, spec)
                    self._record(entry)
                    return _loaded(entry, version)
                waiting = current.unloaded
            await waiting.wait()

    async def unload_version(self: _Registry, name: str, version: str) -> ModelEntry:
        async with self._lock:
            entry, _ = self._listed_version(name, version)
            self._sync(entry)
            if version in entry.routing.versions():
                raise FailedPrecondition(
                    f"version {version} of {name!r} takes unpinned traffic ({describe_routing(entry.routing)}): "
                    "route it elsewhere first (SetDefaultVersion, SetTrafficSplit)"
                )
            entry.unloaded.add(version)
            if version in entry.versions:
                self._retire(entry, version, still_listed=True)
            self._record(entry)
            return entry

    async def set_default(self: _Registry, name: str, version: str) -> ModelEntry:
        async with self._lock:
            entry = self._serving_entry(name, [version], "model_version")
            entry.route_to(Routing(version))
            self._record(entry)
            return entry

    async def set_split(self: _Registry, name: str, weights: Mapping[str, float]) -> ModelEntry:
        for version, weight in weights.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise InvalidArgument(f"weights[{version[:32]}]", f"must be a finite number >= 0, got {weight}")
        if weights and sum(weights.values()) <= 0:
            raise InvalidArgument("weights", "at least one weight must be > 0")
        async with self._lock:
            entry = self._serving_entry(name, list(weights), "weights")
            if not weights:
                entry.route_to(Routing(entry.routing.default))
            else:
                split = tuple((v, float(w)) for v, w in sorted(weights.items(), key=lambda kv: int(kv[0])) if w > 0)
                entry.route_to(Routing(entry.routing.default, split))
            self._record(entry)
            return entry

    async def rollback(self: _Registry, name: str) -> ModelEntry:
        async with self._lock:
            entry = self.entry(name)
            self._sync(entry)
            while entry.history:
                previous = entry.history.pop()
                if all(v in entry.ready() for v in previous.versions()):
                    entry.routing = Routing(previous.default, previous.split)
                    self._record(entry)
                    return entry
            self._record(entry)
            raise FailedPrecondition(f"model {name!r} has no earlier routing to roll back to")

    # --- helpers ------------------------------------------------------------------------------------------

    def _sync(self: _Registry, entry: ModelEntry) -> None:
        """This process up to date with the operators' record of `entry` (a change another worker made and whose
        SIGHUP has not been handled here yet), so the change about to be made does not revert it."""
        control = self._control.read().get(entry.name)
        if control is not None and control.repository_default == entry.repository_default:
            entry.unloaded = set(control.unloaded)
            self._apply_control(entry, control)

    def _listed_version(self: _Registry, name: str, version: str) -> tuple[ModelEntry, ModelSpec]:
        """The entry and the spec of a version its metadata lists now (read again: it may be newer than the last
        reload)."""
        entry = self.entry(name)
        try:
            listed = parse_versions(metadata_path(self.repository, entry.name))
            self._listed[entry.name] = listed
        except RepositoryError:
            listed = self._listed.get(entry.name)  # type: ignore[assignment]
        if listed is None or version not in listed.versions:
            have = ", ".join(sorted(listed.versions, key=int)) if listed else "none"
            raise NotFound(f"model {entry.name!r} has no version {version[:32]!r} in the repository (it has {have})")
        return entry, listed.versions[version]

    def _serving_entry(self: _Registry, name: str, versions: list[str], field: str) -> ModelEntry:
        entry = self.entry(name)
        self._sync(entry)
        for version in versions:
            state = entry.versions[version].state.value if version in entry.versions else "not loaded"
            if version not in entry.ready():
                raise FailedPrecondition(
                    f"{field}: version {version[:32]} of {entry.name!r} is {state}; serving: "
                    f"{', '.join(sorted(entry.ready(), key=int)) or 'none'}"
                )
        return entry

    def _record(self: _Registry, entry: ModelEntry) -> None:
        """Keep the model's operator state (routing, history, unloaded versions) for every worker, and tell them."""
        routing = entry.routing
        history = tuple((r.default, r.split) for r in entry.history)
        record = ModelControl(entry.repository_default, routing.default, routing.split, routing.since,
                              tuple(sorted(entry.unloaded)), history)  # fmt: skip
        self._control.update(entry.name, record)
        self._lifecycle.changed(self.entries)
        tell_other_workers()


def _loaded(entry: ModelEntry, version: str) -> ModelEntry:
    """LoadVersion's answer: the entry once the version serves; why not, otherwise."""
    state = entry.versions[version]
    if state.state is State.FAILED:
        raise FailedPrecondition(state.message)
    if state.state is State.LOADING:
        raise Unavailable(f"version {version} of {entry.name!r} is loading ({state.message}); ask again")
    return entry
