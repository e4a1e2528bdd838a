"""Operators' changes (the admin service) kept where every worker of `--workers N` reads them.

An admin call reaches one worker. That worker applies the change, records the model's resulting routing and
unloaded versions here, and signals the supervisor, which sends SIGHUP to every worker: each re-reads the
repository and this record on its reload and converges on the same state (a worker restarted later starts from it
too). One process alone keeps the record in memory.

A record holds the model's whole operator state: its routing, the routings before it (so Rollback means the same
on every worker) and the versions an operator unloaded. A worker brings itself up to date with the record before it
makes a change (service/registry/changes.py), so one worker's change never reverts another's that it had not yet
applied. A record is tied to the repository default it was made against (`repository_default`): exporting a new
default version supersedes an operator's earlier routing, in every worker alike.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
CONTROL_DIR_ENV = "VAE_CONTROL_DIR"  # set by the supervisor for its workers
SUPERVISOR_PID_ENV = "VAE_SUPERVISOR_PID"
CONTROL_FILE = "control.json"


Split = tuple[tuple[str, float], ...]


def _split(items: Any) -> Split:
    return tuple((str(v), float(w)) for v, w in items)


@dataclass(frozen=True)
class ModelControl:
    repository_default: str
    default: str
    split: Split = ()
    since: float = 0.0
    unloaded: tuple[str, ...] = field(default=())
    history: tuple[tuple[str, Split], ...] = ()  # earlier routings, oldest first: (default, split)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelControl:
        history = tuple((str(default), _split(split)) for default, split in data.get("history", []))
        return cls(str(data["repository_default"]), str(data["default"]), _split(data.get("split", [])),
                   float(data.get("since", 0.0)), tuple(str(v) for v in data.get("unloaded", [])), history)  # fmt: skip


class ControlStore:
    """The record: a JSON file in `directory` (workers) or a dict (one process)."""

    def __init__(self, directory: Path | None = None) -> None:
        self._path = directory / CONTROL_FILE if directory is not None else None
        self._memory: dict[str, ModelControl] = {}

    @classmethod
    def from_environment(cls) -> ControlStore:
        directory = os.environ.get(CONTROL_DIR_ENV)
        return cls(Path(directory) if directory else None)

    def read(self) -> dict[str, ModelControl]:
        if self._path is None:
            return dict(self._memory)
        with self._locked():
            return self._load()

    def update(self, model: str, control: ModelControl) -> None:
        if self._path is None:
            self._memory[model] = control
            return
        with self._locked():
            records = self._load()
            records[model] = control
            document = {name: asdict(record) for name, record in records.items()}
            temporary = self._path.with_suffix(".tmp")
            temporary.write_text(json.dumps(document, indent=1))
            temporary.replace(self._path)

    def _load(self) -> dict[str, ModelControl]:
        assert self._path is not None
        if not self._path.is_file():
            return {}
        try:
            return {name: ModelControl.from_json(record) for name, record in json.loads(self._path.read_text()).items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("cannot read the operators' record %s (%s): serving the repository's routing", self._path, exc)
            return {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self._path is not None
        with (self._path.parent / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def tell_other_workers() -> None:
    """Ask the supervisor (when there is one) to send SIGHUP to every worker: each then reloads."""
    pid = os.environ.get(SUPERVISOR_PID_ENV)
    if pid:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGHUP)
