"""`ModelRegistry`: the versions this process serves, the leases requests hold on them, and the reloads that bring
them in line with the repository. The operators' changes (admin service) are in service/registry/changes.py.

Requests: `lease(model, version, stamps)` routes a request (service/registry/routing.py) and counts it in flight
on that version until its reply is done, so a version being retired finishes what it holds.

Changes run one at a time under a lock:
- new versions load in the background (service/registry/loading.py) while everything else keeps serving;
- the switch to a new default is one assignment, made only once the new version is READY;
- a version that leaves (removed from the repository, or unloaded by an operator) DRAINS: no new requests, the
  ones in flight finish, then it is unloaded (at the latest after `unload_grace_s`), whatever the unload does;
- a load that fails leaves what is serving untouched: the version is FAILED with the reason (one log line, a
  metric, its health NOT_SERVING), and it is retried only when its files change or an operator asks, so it never
  blocks later changes; a load that is interrupted (a reload its caller gave up on) leaves nothing half-made;
- a version that cannot load because the backend is down (Triton starting after the service) waits for it;
- a version whose files change in place under the same number is refused (versions are immutable: export a new
  one) and keeps serving as it was loaded.
Versions listed in the repository stay loaded; `python -m training versions --remove` retires one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from service.backends.base import Backend
from service.batching import DynamicBatcher
from service.registry.changes import OperatorChanges, describe_routing
from service.registry.control import ControlStore, ModelControl
from service.registry.loading import BatchFunctions, LoadFailed, LoadLimits, Observers, make_servable
from service.registry.routing import route
from service.registry.state import ModelEntry, Routing, State, Version, routed_default
from vae_client.errors import FailedPrecondition, NotFound, Unavailable
from vaecore.repository import ModelSpec, ModelVersions, RepositoryError, metadata_files, parse_versions

log = logging.getLogger(__name__)
BACKEND_RETRY_S = 0.5  # how often a version waiting for a down backend checks whether it is up
CHANGED_IN_PLACE = "versions are immutable: export the change as a new version (export --version N)"


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


def unloaded_by_operators(control: ModelControl | None, repository_default: str) -> set[str]:
    """The versions the record keeps unloaded, while it holds (made against this repository default)."""
    if control is None or control.repository_default != repository_default:
        return set()
    return set(control.unloaded)


class ModelRegistry(OperatorChanges):
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
        self._background: set[asyncio.Task[Any]] = set()  # retries while the backend is down, reloads after drains

    # --- start and stop ------------------------------------------------------------------------------------

    async def start(self, models: Mapping[str, ModelVersions]) -> None:
        """Load every version of `models` (already checked by the start-up integrity verdict); a default version
        that cannot load stops the start, as before versions existed; another version that cannot is FAILED; one
        the backend cannot take yet (it is down) loads once it is up."""
        async with self._lock:
            control = self._control.read()
            for name, model in sorted(models.items()):
                entry = ModelEntry(name, Routing(model.default_version), model.default_version)
                entry.unloaded = unloaded_by_operators(control.get(name), model.default_version)
                entry.unloaded.discard(model.default_version)
                self._listed[name] = model
                for version in sorted(model.versions, key=int):
                    if version not in entry.unloaded:
                        await self._load(entry, model.versions[version])
                if entry.versions[model.default_version].state is State.FAILED:
                    raise Unavailable(entry.versions[model.default_version].message)
                self.entries[name] = entry
                self._apply_control(entry, control.get(name))
            self._lifecycle.changed(self.entries)

    async def close(self) -> None:
        tasks = [*self._drains, *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
        """The routing's default version, else any that serves, else any (a model whose versions all failed)."""
        chosen = routed_default(entry)
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
                self._listed[name] = model
                changes += await self._reconcile(name, model, control.get(name))
            for name in sorted(set(self.entries) - set(snapshot.models) - set(snapshot.broken)):
                changes += self._remove_model(name)
            self._listed = {n: m for n, m in self._listed.items() if n in snapshot.models or n in snapshot.broken}
            self._lifecycle.changed(self.entries)
        for line in changes:
            log.info("reload: %s", line)
        return changes

    def reload_soon(self) -> None:
        """A reload in the background (after a drain: what changed while it ran is applied then)."""
        self._spawn(self._quiet_reload())

    async def _quiet_reload(self) -> None:
        try:
            await self.reload()
        except Exception:  # a background reload must never take the server down
            log.exception("background reload failed")

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _report_broken(self, broken: Mapping[str, str]) -> list[str]:
        fresh = {name: why for name, why in broken.items() if self._reported_broken.get(name) != why}
        for name, why in fresh.items():
            log.error("model %r: its metadata cannot be read, so it keeps serving as it was: %s", name, why)
        self._reported_broken = dict(broken)
        return [f"{name}: metadata unreadable, unchanged ({why})" for name, why in fresh.items()]

    def _to_load(self, entry: ModelEntry, model: ModelVersions) -> tuple[list[ModelSpec], list[str]]:
        """The versions of `model` to load now (new, unloaded, or failed with other files), and the changes
        refused because a version changed in place."""
        loads, refused = [], []
        for version, spec in sorted(model.versions.items(), key=lambda item: int(item[0])):
            current = entry.versions.get(version)
            if version in entry.unloaded:
                continue
            if current is None or current.state is State.UNLOADED:
                loads.append(spec)
            elif current.fingerprint != fingerprint(spec):
                if current.state is State.FAILED:
                    loads.append(spec)
                elif current.message != CHANGED_IN_PLACE and current.state is not State.DRAINING:
                    current.message = CHANGED_IN_PLACE
                    log.error("%s: its files or metadata changed in place; %s", spec.key, CHANGED_IN_PLACE)
                    self._lifecycle.load_finished(spec, 0.0, ok=False)
                    refused.append(f"{spec.key}: refused, changed in place (still serving as loaded)")
        return loads, refused

    async def _reconcile(self, name: str, model: ModelVersions, control: ModelControl | None) -> list[str]:
        entry = self.entries.get(name) or ModelEntry(name, Routing(model.default_version), model.default_version)
        entry.unloaded = unloaded_by_operators(control, entry.repository_default)
        loads, changes = self._to_load(entry, model)
        results = await asyncio.gather(*(self._load(entry, spec) for spec in loads))
        changes += [line for line in results if line]
        if name not in self.entries and entry.versions:  # a new model: listed with its states, served once ready
            self.entries[name] = entry
            changes.append(f"{name}: now listed")
        changes += self._reroute(entry, model, control)
        gone = [v for v in entry.versions if v not in model.versions or v in entry.unloaded]
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
        """The operators' routing and its history as recorded (assigned, not pushed: Rollback must mean the same
        on every worker), once its versions serve here."""
        if control is None or control.repository_default != entry.repository_default:
            return []
        wanted = Routing(control.default, control.split, control.since)
        if not all(v in entry.ready() for v in wanted.versions()):
            return []
        entry.history = [Routing(default, split) for default, split in control.history]
        if wanted == entry.routing:
            return []
        entry.routing = wanted
        return [f"{entry.name}: routing {describe_routing(wanted)} (an operator's change)"]

    def _remove_model(self, name: str) -> list[str]:
        if name == self.default_model:
            log.error("model %r is gone from the repository but is the default model: it keeps serving", name)
            return [f"{name}: removed from the repository, but it is the default model: still serving"]
        entry = self.entries[name]
        lines = []
        for version in list(entry.versions):
            lines += self._retire(entry, version, still_listed=False, force=True)
        return lines or [f"{name}: removed"]

    # --- one version --------------------------------------------------------------------------------------

    async def _load(self, entry: ModelEntry, spec: ModelSpec) -> str:
        """Make one version servable (LOADING -> READY or FAILED); whatever happens it does not stay LOADING,
        unless it waits for a down backend."""
        version = Version(spec, State.LOADING, fingerprint(spec), "loading")
        entry.versions[spec.version] = version
        self._lifecycle.changed(self.entries)
        started = time.monotonic()
        try:
            version.batchers = await make_servable(spec, self.backend, self.limits, self._calls, self._observer)
        except LoadFailed as exc:
            if not self.backend.ready():  # the backend is down, not the version broken: load it once it is up
                version.message = f"waiting for the backend ({exc})"
                self._spawn(self._when_backend_ready(entry, spec))
                return f"{spec.key}: waiting for the backend to load it"
            return self._failed(version, str(exc), started)
        except asyncio.CancelledError:
            self._failed(version, "its load was interrupted (retried at the next reload)", started, retry=True)
            raise
        version.state, version.message = State.READY, ""
        seconds = time.monotonic() - started
        self._lifecycle.load_finished(spec, seconds, ok=True)
        log.info("%s loaded and warmed up in %.2f s (latent space %s)", spec.key, seconds, spec.latent_space or "-")
        return f"{spec.key}: loaded in {seconds:.2f} s"

    def _failed(self, version: Version, why: str, started: float, retry: bool = False) -> str:
        """FAILED with the reason; a reload retries it when its files change, or (`retry`: it was interrupted,
        not refused) at the next reload."""
        version.state, version.message = State.FAILED, why
        if retry:
            version.fingerprint = ""
        log.error("%s failed to load, nothing else changed: %s", version.spec.key, why)
        self._lifecycle.load_finished(version.spec, time.monotonic() - started, ok=False)
        return f"{version.spec.key}: failed to load ({why})"

    async def _when_backend_ready(self, entry: ModelEntry, spec: ModelSpec) -> None:
        """Load a version the backend could not take because it was down, as soon as it is ready; the version
        stays LOADING meanwhile (requests for it get UNAVAILABLE, which clients retry). Once it serves, the routing
        follows the repository and the operators' record as a reload would."""
        while True:
            await asyncio.sleep(BACKEND_RETRY_S)
            if not self.backend.ready():
                continue
            async with self._lock:
                current = entry.versions.get(spec.version)
                if current is None or current.state is not State.LOADING or current.fingerprint != fingerprint(spec):
                    return  # superseded by a reload
                await self._load(entry, spec)
                if entry.versions[spec.version].state is State.LOADING:
                    return  # down again: `_load` scheduled the next try
                listed = self._listed.get(entry.name)
                if listed is not None:
                    self._reroute(entry, listed, self._control.read().get(entry.name))
                self._lifecycle.changed(self.entries)
                return

    def _retire(self, entry: ModelEntry, version: str, still_listed: bool, force: bool = False) -> list[str]:
        """Stop routing new requests to `version` and drain it in the background (`force`: even the only version
        serving, when its model left the repository)."""
        served = entry.versions[version]
        if served.state in (State.DRAINING, State.UNLOADED):
            return []
        if version in entry.routing.versions():
            remaining = [v for v in entry.ready() if v != version]
            if remaining:
                fallback = (
                    entry.repository_default if entry.repository_default in remaining else max(remaining, key=int)
                )
                entry.route_to(Routing(fallback))
            elif not force:
                return [f"{entry.name}:{version}: removed, but it is the only version serving: kept"]
        if served.state is State.FAILED:
            self._forget(entry, version, still_listed)
            return [f"{entry.name}:{version}: dropped (it had failed)"]
        served.state, served.message = State.DRAINING, "draining"
        task = asyncio.get_running_loop().create_task(self._drain(entry, served, still_listed))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        return [f"{entry.name}:{version}: draining ({served.in_flight} in flight)"]

    async def _drain(self, entry: ModelEntry, served: Version, still_listed: bool) -> None:
        """Wait for its requests (at most the grace), then unload it, whatever the backend's unload does: it never
        stays DRAINING. A reload follows, to apply whatever changed meanwhile (a load of it again, say)."""
        try:
            await asyncio.wait_for(served.idle.wait(), self.unload_grace_s)
        except TimeoutError:
            log.warning("%s: %d requests still in flight after the %.0f s grace; unloading anyway",
                        served.spec.key, served.in_flight, self.unload_grace_s)  # fmt: skip
        try:
            await _close_batchers(served)
            await self.backend.unload(served.spec)
            log.info("%s unloaded", served.spec.key)
        except Exception as exc:
            log.error("%s: its unload failed (%s); it serves no more requests here", served.spec.key, exc)
        finally:
            if entry.versions.get(served.version) is served:
                self._forget(entry, served.version, still_listed)
            served.unloaded.set()
            self._lifecycle.changed(self.entries)
            self.reload_soon()

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


async def _close_batchers(version: Version) -> None:
    await asyncio.gather(*(b.close() for b in version.batchers.values()))
    version.batchers = {}
