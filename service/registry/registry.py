"""`ModelRegistry`: the versions this process serves, the leases requests hold on them, and every change to them.

Requests: `lease(model, version, stamps)` routes a request (service/registry/routing.py) and counts it in flight
on that version until its reply is done, so a version being retired finishes what it holds.

Changes (`reload`, and the admin operations), one at a time under a lock:
- new versions load in the background (service/registry/loading.py) while everything else keeps serving;
- the switch to a new default is one assignment, made only once the new version is READY;
- a version that leaves (removed from the repository, or unloaded by an operator) DRAINS: no new requests, the
  ones in flight finish, then it is unloaded (at the latest after `unload_grace_s`);
- a load that fails leaves what is serving untouched: the version is FAILED with the reason (one log line, a
  metric, its health NOT_SERVING), and it is retried only when its files change or an operator asks, so it never
  blocks later changes;
- a version whose files change in place under the same number is refused (versions are immutable: export a new
  one) and keeps serving as it was loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.backends.base import Backend
from service.batching import DynamicBatcher
from service.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from service.registry.control import ControlStore, ModelControl, tell_other_workers
from service.registry.loading import BatchFunctions, LoadFailed, LoadLimits, Observers, make_servable
from service.registry.routing import route
from service.registry.state import ModelEntry, Routing, State, Version
from vaecore.repository import ModelSpec, ModelVersions, RepositoryError, metadata_files, parse_versions

log = logging.getLogger(__name__)
BACKEND_RETRY_S = 0.5  # how often a version waiting for a down backend checks whether it is up


class Lifecycle(Protocol):
    """What the registry reports (service/metrics.py records it)."""

    def load_finished(self, spec: ModelSpec, seconds: float, ok: bool) -> None: ...

    def changed(self, entries: Mapping[str, ModelEntry]) -> None: ...


class _Silent:
    def load_finished(self, spec: ModelSpec, seconds: float, ok: bool) -> None: ...

    def changed(self, entries: Mapping[str, ModelEntry]) -> None: ...


def fingerprint(spec: ModelSpec) -> str:
    """What identifies the build of a version: a different one under the same number is a change in place."""
    return "|".join(
        map(str, (spec.encoder.sha256, spec.decoder.sha256, spec.latent_space, spec.latent_dim, spec.image_shape))
    )


@dataclass(frozen=True)
class Snapshot:
    """The repository as read now: models that parse, and the files that do not (with why)."""

    models: dict[str, ModelVersions]
    broken: dict[str, str]


def read_repository(directory: Path) -> Snapshot:
    """Every metadata file, each on its own: one broken file must not stop the others from updating."""
    models, broken = {}, {}
    for path in metadata_files(directory):
        try:
            model = parse_versions(path)
            models[model.name] = model
        except RepositoryError as exc:
            broken[path.name.removesuffix(".vae.json")] = str(exc)
    return Snapshot(models, broken)


class ModelRegistry:
    def __init__(
        self,
        backend: Backend,
        limits: LoadLimits,
        calls: BatchFunctions,
        observer: Observers,
        *,
        repository: Path,
        default_model: str,
        unload_grace_s: float,
        control: ControlStore | None = None,
        lifecycle: Lifecycle | None = None,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.repository = repository
        self.default_model = default_model
        self.unload_grace_s = unload_grace_s
        self.entries: dict[str, ModelEntry] = {}
        self.refused = dict(refused or {})  # model -> why it is not served (service/integrity.py)
        self._calls = calls
        self._observer = observer
        self._control = control or ControlStore()
        self._lifecycle = lifecycle or _Silent()
        self._listed: dict[str, ModelVersions] = {}  # the repository at the last reload
        self._reported_broken: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._drains: set[asyncio.Task[None]] = set()

    # --- start and stop ------------------------------------------------------------------------------------

    async def start(self, models: Mapping[str, ModelVersions]) -> None:
        """Load every version of `models` (already checked by the start-up integrity verdict); a default version
        that cannot load stops the start, as before versions existed; another version that cannot is FAILED."""
        async with self._lock:
            control = self._control.read()
            for name, model in sorted(models.items()):
                entry = ModelEntry(name, Routing(model.default_version), model.default_version)
                entry.unloaded = _unloaded(control.get(name), model.default_version)
                self._listed[name] = model
                for version in sorted(model.versions, key=int):
                    if version in entry.unloaded and version != model.default_version:
                        continue
                    await self._load(entry, model.versions[version])
                if entry.versions[model.default_version].state is State.FAILED:
                    raise Unavailable(entry.versions[model.default_version].message)
                self.entries[name] = entry  # served, or waiting for the backend (Triton not up yet)
                self._apply_control(entry, control.get(name))
            self._lifecycle.changed(self.entries)

    async def close(self) -> None:
        for task in list(self._drains):
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
        for entry in self.entries.values():
            for version in entry.versions.values():
                await _close_batchers(version)

    # --- requests -----------------------------------------------------------------------------------------

    def entry(self, name: str) -> ModelEntry:
        entry = self.entries.get(name or self.default_model)
        if entry is not None:
            return entry
        if name in self.refused:
            raise FailedPrecondition(self.refused[name])
        raise NotFound(f"model {name[:64]!r} is not served; available: {', '.join(sorted(self.entries))}")

    @contextlib.contextmanager
    def lease(self, name: str, version: str = "", stamps: Collection[str] = ()) -> Iterator[ModelSpec]:
        """The version that serves one request, held (counted in flight) until the block ends."""
        chosen = route(self.entry(name), version, stamps)
        chosen.enter()
        try:
            yield chosen.spec
        finally:
            chosen.leave()

    def batcher(self, spec: ModelSpec, network: str) -> DynamicBatcher:
        entry = self.entries.get(spec.name)
        version = entry.versions.get(spec.version) if entry is not None else None
        if version is None or network not in version.batchers:
            raise Unavailable(f"version {spec.version} of model {spec.name!r} was unloaded; retry")
        return version.batchers[network]

    def models(self) -> dict[str, ModelSpec]:
        """Each served model in its default version (what ListModels describes first)."""
        return {name: self.default_spec(entry) for name, entry in sorted(self.entries.items())}

    def default_spec(self, entry: ModelEntry) -> ModelSpec:
        chosen = entry.versions.get(entry.routing.default)
        if chosen is None or chosen.state is not State.READY:
            chosen = next(iter(entry.ready().values()), None) or next(iter(entry.versions.values()))
        return chosen.spec

    def serving(self, name: str) -> bool:
        entry = self.entries.get(name)
        return entry is not None and bool(entry.ready())

    # --- reloads ------------------------------------------------------------------------------------------

    async def reload(self, started: Callable[[], None] | None = None) -> list[str]:
        """Bring what is served in line with the repository and the operators' record; one line per change.
        `started` is called once this reload holds the lock (what it reads from then on is what it applies)."""
        async with self._lock:
            if started is not None:
                started()
            snapshot = await asyncio.to_thread(read_repository, self.repository)
            changes = self._report_broken(snapshot.broken)
            control = self._control.read()
            for name, model in sorted(snapshot.models.items()):
                changes += await self._reconcile(name, model, control.get(name))
            for name in sorted(set(self.entries) - set(snapshot.models) - set(snapshot.broken)):
                changes += self._remove_model(name)
            self._listed = {**{n: m for n, m in self._listed.items() if n in snapshot.broken}, **snapshot.models}
            self._lifecycle.changed(self.entries)
        for line in changes:
            log.info("reload: %s", line)
        return changes

    def _report_broken(self, broken: Mapping[str, str]) -> list[str]:
        fresh = {name: why for name, why in broken.items() if self._reported_broken.get(name) != why}
        for name, why in fresh.items():
            log.error("model %r: its metadata cannot be read, so it keeps serving as it was: %s", name, why)
        self._reported_broken = dict(broken)
        return [f"{name}: metadata unreadable, unchanged ({why})" for name, why in fresh.items()]

    async def _reconcile(self, name: str, model: ModelVersions, control: ModelControl | None) -> list[str]:
        entry = self.entries.get(name) or ModelEntry(name, Routing(model.default_version), model.default_version)
        unloaded = entry.unloaded = _unloaded(control, model.default_version)
        changes = []
        loads = []
        for version, spec in sorted(model.versions.items(), key=lambda item: int(item[0])):
            current = entry.versions.get(version)
            if version in unloaded:
                continue
            if current is None or current.state is State.UNLOADED:
                loads.append(spec)
            elif current.fingerprint != fingerprint(spec):
                if current.state is State.FAILED:
                    loads.append(spec)
                elif current.message != _CHANGED_IN_PLACE:
                    current.message = _CHANGED_IN_PLACE
                    log.error("%s: its files or metadata changed in place; %s", spec.key, _CHANGED_IN_PLACE)
                    self._lifecycle.load_finished(spec, 0.0, ok=False)
                    changes.append(f"{spec.key}: refused, changed in place (still serving as loaded)")
        results = await asyncio.gather(*(self._load(entry, spec) for spec in loads))
        changes += [line for line in results if line]
        if name not in self.entries and entry.ready():
            self.entries[name] = entry
            changes.append(f"{name}: now served")
        changes += self._reroute(entry, model, control)
        gone = [v for v in entry.versions if v not in model.versions or v in unloaded]
        for version in gone:
            changes += self._retire(entry, version, still_listed=version in model.versions)
        return changes

    def _reroute(self, entry: ModelEntry, model: ModelVersions, control: ModelControl | None) -> list[str]:
        """Follow a new repository default once it serves (one assignment); else apply the operators' record."""
        if model.default_version != entry.repository_default:
            target = entry.versions.get(model.default_version)
            if target is None or target.state is not State.READY:
                return [f"{entry.name}: kept routing {entry.routing.default}: new default {model.default_version} "
                        f"is not serving ({target.state.value if target else 'not loaded'})"]  # fmt: skip
            entry.repository_default = model.default_version
            before = entry.routing.default
            entry.route_to(Routing(model.default_version))
            return [f"{entry.name}: default version {before} -> {model.default_version}"]
        return self._apply_control(entry, control)

    def _apply_control(self, entry: ModelEntry, control: ModelControl | None) -> list[str]:
        if control is None or control.repository_default != entry.repository_default:
            return []
        wanted = Routing(control.default, control.split, control.since)
        if wanted == entry.routing or not all(v in entry.ready() for v in wanted.versions()):
            return []
        entry.route_to(wanted)
        return [f"{entry.name}: routing {_describe(wanted)} (an operator's change)"]

    def _remove_model(self, name: str) -> list[str]:
        if name == self.default_model:
            log.error("model %r is gone from the repository but is the default model: it keeps serving", name)
            return [f"{name}: removed from the repository, but it is the default model: still serving"]
        entry = self.entries[name]
        lines = []
        for version in list(entry.versions):
            lines += self._retire(entry, version, still_listed=False)
        return lines or [f"{name}: removed"]

    # --- one version --------------------------------------------------------------------------------------

    async def _load(self, entry: ModelEntry, spec: ModelSpec) -> str:
        version = Version(spec, State.LOADING, fingerprint(spec), "loading")
        previous = entry.versions.get(spec.version)
        entry.versions[spec.version] = version
        self._lifecycle.changed(self.entries)
        started = time.monotonic()
        try:
            version.batchers = await make_servable(spec, self.backend, self.limits, self._calls, self._observer)
        except LoadFailed as exc:
            if not self.backend.ready():  # the backend is down, not the version broken: load it once it is up
                version.message = f"waiting for the backend ({exc})"
                self._retry_when_ready(entry, spec)
                return f"{spec.key}: waiting for the backend to load it"
            version.state, version.message = State.FAILED, str(exc)
            if previous is not None and previous.state is State.READY:  # a failed rebuild never replaces one serving
                entry.versions[spec.version] = previous
            log.error("%s failed to load, nothing else changed: %s", spec.key, exc)
            self._lifecycle.load_finished(spec, time.monotonic() - started, ok=False)
            return f"{spec.key}: failed to load ({exc})"
        version.state, version.message = State.READY, ""
        seconds = time.monotonic() - started
        self._lifecycle.load_finished(spec, seconds, ok=True)
        log.info("%s loaded and warmed up in %.2f s (latent space %s)", spec.key, seconds, spec.latent_space or "-")
        return f"{spec.key}: loaded in {seconds:.2f} s"

    def _retry_when_ready(self, entry: ModelEntry, spec: ModelSpec) -> None:
        """Load a version that could not be loaded because the backend was down (Triton starting after the
        service, say) as soon as the backend is ready; the version stays LOADING meanwhile (requests for it get
        UNAVAILABLE, which clients retry)."""

        async def retry() -> None:
            while True:
                await asyncio.sleep(BACKEND_RETRY_S)
                if not self.backend.ready():
                    continue
                async with self._lock:
                    current = entry.versions.get(spec.version)
                    if (
                        current is None
                        or current.state is not State.LOADING
                        or current.fingerprint != fingerprint(spec)
                    ):
                        return  # superseded by a reload
                    await self._load(entry, spec)
                    if entry.versions[spec.version].state is State.LOADING:
                        return  # still down: `_load` scheduled the next try
                    if entry.ready() and entry.name not in self.entries:
                        self.entries[entry.name] = entry
                    self._lifecycle.changed(self.entries)
                    return

        task = asyncio.get_running_loop().create_task(retry())
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    def _retire(self, entry: ModelEntry, version: str, still_listed: bool) -> list[str]:
        """Stop routing new requests to `version` and drain it in the background."""
        served = entry.versions[version]
        if served.state in (State.DRAINING, State.UNLOADED):
            return []
        if version in entry.routing.versions():
            remaining = [v for v in entry.ready() if v != version]
            if not remaining:
                return [f"{entry.name}:{version}: removed, but it is the only version serving: kept"]
            fallback = entry.repository_default if entry.repository_default in remaining else max(remaining, key=int)
            entry.route_to(Routing(fallback))
        if served.state is State.FAILED:
            self._forget(entry, version, still_listed)
            return [f"{entry.name}:{version}: dropped (it had failed)"]
        served.state, served.message = State.DRAINING, "draining"
        task = asyncio.get_running_loop().create_task(self._drain(entry, served, still_listed))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        return [f"{entry.name}:{version}: draining ({served.in_flight} in flight)"]

    async def _drain(self, entry: ModelEntry, served: Version, still_listed: bool) -> None:
        try:
            await asyncio.wait_for(served.idle.wait(), self.unload_grace_s)
        except TimeoutError:
            log.warning("%s: %d requests still in flight after the %.0f s grace; unloading anyway",
                        served.spec.key, served.in_flight, self.unload_grace_s)  # fmt: skip
        await _close_batchers(served)
        await self.backend.unload(served.spec)
        self._forget(entry, served.version, still_listed)
        served.unloaded.set()
        log.info("%s unloaded", served.spec.key)
        self._lifecycle.changed(self.entries)

    def _forget(self, entry: ModelEntry, version: str, still_listed: bool) -> None:
        if still_listed:
            served = entry.versions[version]
            served.state, served.message = State.UNLOADED, "unloaded by an operator"
            return
        del entry.versions[version]
        if not entry.versions and self.entries.get(entry.name) is entry:
            del self.entries[entry.name]

    async def drained(self) -> None:
        """Wait for every drain under way (tests, shutdown)."""
        while self._drains:
            await asyncio.gather(*list(self._drains), return_exceptions=True)

    # --- the admin operations -----------------------------------------------------------------------------

    async def load_version(self, name: str, version: str) -> ModelEntry:
        async with self._lock:
            entry, spec = self._listed_version(name, version)
            entry.unloaded.discard(version)
            current = entry.versions.get(version)
            if current is not None and current.state is State.DRAINING:  # load it again once it is out
                await current.unloaded.wait()
                current = entry.versions.get(version)
            if current is None or current.state in (State.FAILED, State.UNLOADED):
                await self._load(entry, spec)
            self._record(entry)
            if entry.versions[version].state is State.FAILED:
                raise FailedPrecondition(entry.versions[version].message)
            return entry

    async def unload_version(self, name: str, version: str) -> ModelEntry:
        async with self._lock:
            entry, _ = self._listed_version(name, version)
            if version in entry.routing.versions():
                raise FailedPrecondition(
                    f"version {version} of {name!r} takes unpinned traffic ({_describe(entry.routing)}): route it "
                    "elsewhere first (SetDefaultVersion, SetTrafficSplit)"
                )
            entry.unloaded.add(version)
            if version in entry.versions:
                self._retire(entry, version, still_listed=True)
            self._record(entry)
            return entry

    async def set_default(self, name: str, version: str) -> ModelEntry:
        async with self._lock:
            entry = self._serving_entry(name, [version], "model_version")
            entry.route_to(Routing(version))
            self._record(entry)
            return entry

    async def set_split(self, name: str, weights: Mapping[str, float]) -> ModelEntry:
        async with self._lock:
            if not weights:
                entry = self.entry(name)
                entry.route_to(Routing(entry.routing.default))
                self._record(entry)
                return entry
            for version, weight in weights.items():
                if not (math.isfinite(weight) and weight >= 0):
                    raise InvalidArgument(f"weights[{version[:32]}]", f"must be a finite number >= 0, got {weight}")
            if sum(weights.values()) <= 0:
                raise InvalidArgument("weights", "at least one weight must be > 0")
            entry = self._serving_entry(name, list(weights), "weights")
            split = tuple((v, float(w)) for v, w in sorted(weights.items(), key=lambda item: int(item[0])) if w > 0)
            entry.route_to(Routing(entry.routing.default, split))
            self._record(entry)
            return entry

    async def rollback(self, name: str) -> ModelEntry:
        async with self._lock:
            entry = self.entry(name)
            while entry.history:
                previous = entry.history.pop()
                if all(v in entry.ready() for v in previous.versions()):
                    entry.routing = Routing(previous.default, previous.split)
                    self._record(entry)
                    return entry
            raise FailedPrecondition(f"model {name!r} has no earlier routing to roll back to")

    def _listed_version(self, name: str, version: str) -> tuple[ModelEntry, ModelSpec]:
        entry = self.entry(name)
        listed = self._listed.get(entry.name)
        if listed is None or version not in listed.versions:
            have = ", ".join(sorted(listed.versions, key=int)) if listed else "none"
            raise NotFound(f"model {entry.name!r} has no version {version[:32]!r} in the repository (it has {have})")
        return entry, listed.versions[version]

    def _serving_entry(self, name: str, versions: list[str], field: str) -> ModelEntry:
        entry = self.entry(name)
        for version in versions:
            state = entry.versions[version].state.value if version in entry.versions else "not loaded"
            if version not in entry.ready():
                raise FailedPrecondition(
                    f"{field}: version {version[:32]} of {entry.name!r} is {state}; serving: "
                    f"{', '.join(sorted(entry.ready(), key=int)) or 'none'}"
                )
        return entry

    def _record(self, entry: ModelEntry) -> None:
        """Keep the operators' change for every worker, and tell them."""
        routing = entry.routing
        self._control.update(entry.name, ModelControl(entry.repository_default, routing.default, routing.split,
                                                      routing.since, tuple(sorted(entry.unloaded))))  # fmt: skip
        self._lifecycle.changed(self.entries)
        tell_other_workers()


_CHANGED_IN_PLACE = "versions are immutable: export the change as a new version (export --version N)"


def _unloaded(control: ModelControl | None, repository_default: str) -> set[str]:
    if control is None or control.repository_default != repository_default:
        return set()
    return set(control.unloaded)


def _describe(routing: Routing) -> str:
    if not routing.split:
        return f"default {routing.default}"
    return "split " + ", ".join(f"{v}: {share:.0%}" for v, share in routing.shares().items())


async def _close_batchers(version: Version) -> None:
    await asyncio.gather(*(b.close() for b in version.batchers.values()))
    version.batchers = {}
