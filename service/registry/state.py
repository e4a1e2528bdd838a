"""A version's life on this server and a model's routing: plain data, no I/O."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field

from service.batching import DynamicBatcher
from vaecore.repository import ModelSpec, version_order


class State(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"
    UNLOADED = "unloaded"


@dataclass(eq=False)
class Version:
    """One version of a model: its spec, where it is in its life, the requests it holds, its batchers."""

    spec: ModelSpec
    state: State
    fingerprint: str  # the metadata it was loaded from: a changed one under the same number is a new build
    message: str = ""  # why it failed, or what it is doing
    in_flight: int = 0
    batchers: dict[str, DynamicBatcher] = field(default_factory=dict)
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while in_flight == 0
    unloaded: asyncio.Event = field(default_factory=asyncio.Event)  # set once a drain has unloaded it

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def version(self) -> str:
        return self.spec.version

    def enter(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


@dataclass(frozen=True)
class Routing:
    """Where a model's unpinned requests go: the default version, or a weighted split between versions."""

    default: str
    split: tuple[tuple[str, float], ...] = ()  # (version, weight), weights > 0; empty: everything to `default`
    since: float = field(
        default_factory=time.time, compare=False
    )  # when it was set (the long-lived-split alert reads it)

    def shares(self) -> dict[str, float]:
        if not self.split:
            return {self.default: 1.0}
        total = sum(weight for _, weight in self.split)
        return {version: weight / total for version, weight in self.split}

    def versions(self) -> set[str]:
        return set(self.shares())


@dataclass(eq=False)
class ModelEntry:
    """One model: its versions on this server, its routing and the routings before it (for Rollback)."""

    name: str
    routing: Routing
    repository_default: str  # the default version the repository named at the last reload
    versions: dict[str, Version] = field(default_factory=dict)
    history: list[Routing] = field(default_factory=list)
    unloaded: set[str] = field(default_factory=set)  # versions an operator unloaded: kept unloaded over reloads

    def ready(self) -> dict[str, Version]:
        return {v: s for v, s in self.versions.items() if s.state is State.READY}

    def ordered(self) -> list[Version]:
        return sorted(self.versions.values(), key=lambda v: version_order(v.version))

    def route_to(self, routing: Routing) -> None:
        """Switch the routing atomically (one assignment), keeping the one before for Rollback."""
        if routing != self.routing:
            self.history.append(self.routing)
            del self.history[:-32]
            self.routing = routing


def routed_default(entry: ModelEntry) -> Version | None:
    """The version the routing names as the default, if this process has it."""
    return entry.versions.get(entry.routing.default)
