"""A real Triton Inference Server, reached with `tritonclient.grpc.aio`, optionally over (mutual) TLS.

Versions (tests/service/test_triton_versions.py). Every call names a version (`ModelSpec.version`) and is sent with
`model_version`, so versions of one model serve side by side. The backend serves the versions it was constructed
with plus those `load`ed since, minus those `unload`ed; a call naming any other version fails here at once. How
a version comes to be served depends on Triton's model-control mode (`--triton-model-control`):
- "none": Triton serves what its config.pbtxt files list (`version_policy`) and refuses load requests; `load` only
  checks that Triton reports both networks of the version ready, `unload` only forgets it.
- "explicit" (tritonserver --model-control-mode=explicit): this backend has Triton load and unload versions.
  Triton loads per network (model), not per version, and a load replaces the network's config. So loading version
  v sends `load_model` with a config override whose `version_policy` is `specific` with exactly the versions
  wanted: those Triton holds now (its repository index: READY, or LOADING), those served here, plus v. Unloading
  sends the same without v, or `unload_model` once no version is left. Versions someone else had Triton load are
  kept. Both networks of a version load at once; loads and unloads of one network are serialized (an asyncio.Lock
  each), since each is a whole-network reload.
- The override must be a whole config (Triton reads it instead of config.pbtxt, backend and tensors included):
  the one Triton serves for that network (`get_model_config`), so only the version list changes; for a network
  Triton has not loaded, the one it served last (kept here), else this side's `<network>/config.pbtxt` (it must
  then be the one Triton serves, as in deploy/), else (a metadata-only repository here) a plain `load_model`, which
  loads every version Triton's own config.pbtxt lists, narrowed next (a broken listed version fails that load).
- Seen with Triton 2.51: a changed version list reloads every version of the network, in the background; the
  versions already serving answer throughout (no failed call: the failure mode of Triton issue #5757 does not
  occur), so a load takes about as long as loading all of the network's versions. Triton skips a listed version
  that has no folder and reports success: the backend asks `is_model_ready` and refuses it. A load Triton refuses
  leaves it serving what it served (it keeps the old config); the version's other network, if it loaded, is
  unloaded again, and so is a load its caller gave up on (a timeout) once Triton has finished it.
- Triton forgets every load when it restarts: the probe sees versions served here not ready and has them loaded
  again (at most every RESTORE_INTERVAL_S). `close` unloads nothing: other replicas, or the other workers of
  `--workers`, may serve the same versions from the same Triton. (Their loads are not serialized with ours: two
  processes changing one network at once can race and drop the other's version; its probe then loads it again.)

Failure handling (each has a test against a real tritonserver, tests/service/test_triton_faults.py):
- A background probe asks Triton whether the server is live and every version of every encoder/decoder served
  here is ready (`is_model_ready(name, version)`; not the server's readiness, which is false while any model
  loads, so during every explicit load, or while any other model of Triton's failed), every PROBE_INTERVAL_UP_S
  while up and every PROBE_INTERVAL_DOWN_S while down, each probe bounded by PROBE_TIMEOUT_S, so a frozen Triton
  (stopped, not dead) is seen down within about 1.5 s. A call failing with UNAVAILABLE (the connection broke)
  marks it down at once; one Triton answers with "Request for unknown model" (up, but not serving that version)
  does not.
- While the backend is down, a call fails at once with `Unavailable`; the calls in flight when it goes down are
  abandoned at that moment (their gRPC calls cancelled) with `Unavailable`, so nothing waits out the per-call
  timeout on a server that will not answer.
- A call's timeout is `timeout_s` or, if sooner, the latest deadline of the requests in the batch
  (`service.batching.call_deadline`): no Triton call outlives every request waiting for it. A call ended by that
  deadline is `DeadlineExceeded` and does not mark the backend down.
- Recovery: the channel's reconnect backoff is capped (CHANNEL_ARGS) and the probe runs every 0.25 s while
  down, so the service serves again well within 1 s of Triton answering ready (the gRPC default backoff grows
  to minutes; it was the 6 s seen after a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_grpc
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from service.batching import call_deadline
from vae_client.errors import DeadlineExceeded, ServiceError, Unavailable
from vaecore.repository import ModelSpec, NetworkSpec, version_order

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)

PROBE_INTERVAL_UP_S = 0.5
PROBE_INTERVAL_DOWN_S = 0.25
PROBE_TIMEOUT_S = 1.0
MODEL_CONTROL_MODES = ("none", "explicit")  # --triton-model-control
LOAD_TIMEOUT_S = 300.0  # one model-control call (a load runs every version of the network: libtorch on a GPU is slow)
RESTORE_INTERVAL_S = 5.0  # explicit mode: least time between attempts to load again what a restarted Triton lost
MAX_MESSAGE = 2**31 - 1  # tritonclient's own default
CHANNEL_ARGS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    # Reconnect soon after Triton comes back: retry every 100-250 ms (gRPC's default grows 1 s -> 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 250),
    # gRPC reads this one as the shortest time a connection attempt is given (default 20 s).
    ("grpc.min_reconnect_backoff_ms", 2000),
]


@dataclass(frozen=True)
class TritonTls:
    """PEM bytes for the channel: Triton's certificate is verified against `root_certificates`; a client
    certificate (`certificate_chain` + `private_key`) is presented when Triton requires mutual TLS."""

    root_certificates: bytes
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    @classmethod
    def from_files(cls, ca_file: str, cert_file: str = "", key_file: str = "") -> TritonTls | None:
        """None when no file is named (plaintext); a ValueError with one clear line for a setting that can't work."""
        if not (ca_file or cert_file or key_file):
            return None
        if bool(cert_file) != bool(key_file):
            given, missing = "--triton-tls-cert-file", "--triton-tls-key-file"
            if key_file:
                given, missing = missing, given
            raise ValueError(f"{given} is set but {missing} is not: a client certificate needs both (mutual TLS)")
        if not ca_file:
            raise ValueError("--triton-tls-cert-file/--triton-tls-key-file need --triton-tls-ca-file (TLS to Triton)")
        ca = _read_pem("--triton-tls-ca-file", ca_file)
        if not cert_file:
            return cls(ca)
        return cls(ca, _read_pem("--triton-tls-cert-file", cert_file), _read_pem("--triton-tls-key-file", key_file))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


def _read_pem(flag: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data


class _ControlError(Exception):
    """A model-control call Triton refused or did not finish; the message is Triton's (or what went wrong)."""


Key = tuple[str, str]  # (model name, version)


class TritonBackend:
    name = "triton"

    def __init__(
        self,
        models: dict[str, ModelSpec],
        url: str,
        timeout_s: float = 30.0,
        probe_interval_s: float = PROBE_INTERVAL_UP_S,
        *,
        probe_interval_down_s: float = PROBE_INTERVAL_DOWN_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        tls: TritonTls | None = None,
        model_control: str = "none",
        load_timeout_s: float = LOAD_TIMEOUT_S,
    ) -> None:
        """`models`: the versions served from `start` on (any keys; one version or several of a model)."""
        if model_control not in MODEL_CONTROL_MODES:
            raise ValueError(f"model_control must be one of {', '.join(MODEL_CONTROL_MODES)}, got {model_control!r}")
        self._initial = list(models.values())
        self._url = url
        self._timeout_s = timeout_s
        self._probe_interval_s = probe_interval_s
        self._probe_interval_down_s = probe_interval_down_s
        self._probe_timeout_s = probe_timeout_s
        self._tls = tls
        self._explicit = model_control == "explicit"
        self._load_timeout_s = load_timeout_s
        self._served: dict[Key, ModelSpec] = {}  # the versions calls may name
        self._locks: dict[str, asyncio.Lock] = {}  # per network: its loads and unloads, one at a time
        self._configs: dict[str, dict[str, Any]] = {}  # per network: the config Triton served last (explicit)
        self._restore: asyncio.Task[None] | None = None
        self._cleanups: set[asyncio.Task[None]] = set()  # after loads given up (`_drop_unserved`)
        self._last_restore = -RESTORE_INTERVAL_S
        self._client: triton_grpc.InferenceServerClient | None = None
        self._ready = False
        self._outage: asyncio.Future[None] | None = None  # resolved when the backend goes down; fresh when up
        self._probe: asyncio.Task[None] | None = None
        self._down_reason = "not probed yet"

    @classmethod
    def from_settings(cls, models: dict[str, ModelSpec], settings: Settings) -> TritonBackend:
        """From the service settings; raises ValueError (one line) for TLS files that can't work."""
        tls = TritonTls.from_files(settings.triton_tls_ca_file, settings.triton_tls_cert_file,
                                   settings.triton_tls_key_file)  # fmt: skip
        return cls(models, settings.triton_url, settings.triton_timeout_s, tls=tls,
                   model_control=settings.triton_model_control, load_timeout_s=settings.load_timeout_s)  # fmt: skip

    @property
    def model_control(self) -> str:
        return "explicit" if self._explicit else "none"

    async def start(self) -> None:
        """Connect; in explicit mode have Triton load the versions constructed with (`Unavailable` if one fails to
        load). A Triton not answering yet is no error: NOT_SERVING until it is ready (and, in explicit mode, until
        the probe has had those versions loaded)."""
        creds = self._tls.credentials() if self._tls is not None else None
        self._client = triton_grpc.InferenceServerClient(self._url, creds=creds, channel_args=CHANNEL_ARGS)
        self._served.update({_key(m): m for m in self._initial})
        if self._explicit and self._served:
            if await self._server_live():
                self._last_restore = time.monotonic()
                networks = self._networks(self._served.values())
                outcomes = await self._each(networks, set(), set())
                failed = [(n, o) for (n, _), o in zip(networks, outcomes, strict=True) if isinstance(o, BaseException)]
                if failed:
                    network, error = failed[0]
                    if not isinstance(error, _ControlError):
                        raise error
                    versions = ", ".join(sorted(self._versions_of(network), key=version_order))
                    raise Unavailable(f"Triton at {self._url} could not load {network} version(s) {versions}: {error}")
            else:
                log.warning(
                    "Triton at %s does not answer yet: the versions to serve are loaded once it does", self._url
                )
        self._set_ready(await self._check())
        self._probe = asyncio.get_running_loop().create_task(self._watch())
        if not self._ready:
            log.warning("Triton at %s is not ready yet; serving NOT_SERVING until it is", self._url)

    def ready(self) -> bool:
        return self._ready

    # --- versions -----------------------------------------------------------------------------------------------

    async def load(self, model: ModelSpec) -> None:
        """Serve `model.version` too. Explicit mode: Triton loads it into both networks at once (the versions they
        serve keep serving); a failure unloads what this call loaded and raises `Unavailable` with Triton's reason.
        None mode: `Unavailable` unless Triton reports both networks of the version ready."""
        if _key(model) in self._served:
            return
        if self._client is None:
            raise Unavailable("Triton backend is not started")
        if not self._explicit:
            await self._check_served(model)
            self._served[_key(model)] = model
            return
        networks = self._networks([model])
        try:
            outcomes = await self._each(networks, {model.version}, set())  # both at once: a load takes seconds
        except asyncio.CancelledError:  # our caller gave up (its timeout): Triton may load it still, take it out
            cleanup = asyncio.get_running_loop().create_task(self._drop_unserved(model))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            raise
        failed = [(n, o) for (n, _), o in zip(networks, outcomes, strict=True) if isinstance(o, BaseException)]
        if not failed:
            self._served[_key(model)] = model
            return
        await self._drop_unserved(model)  # the network that did load, or one Triton still loads (a timeout)
        for _, error in failed:
            if not isinstance(error, _ControlError):
                raise error
        reasons = "; ".join(f"{network} version {model.version}: {error}" for network, error in failed)
        raise Unavailable(f"Triton at {self._url} could not load {model.key} ({reasons})") from failed[0][1]

    async def unload(self, model: ModelSpec) -> None:
        """Stop serving `model.version`: calls naming it fail here from now on. Explicit mode: Triton unloads it
        too, keeping the network's other versions (`Unavailable` if Triton could not be told; the version is no
        longer served here either way)."""
        if self._served.pop(_key(model), None) is None or not self._explicit or self._client is None:
            return
        networks = self._networks([model])
        outcomes = await self._each(networks, set(), {model.version})
        failures = [f"{n}: {o}" for (n, _), o in zip(networks, outcomes, strict=True) if isinstance(o, BaseException)]
        if failures:
            raise Unavailable(f"{model.key} is no longer served here, but Triton at {self._url} may still hold it: "
                              f"{'; '.join(failures)}")  # fmt: skip

    async def _check_served(self, model: ModelSpec) -> None:
        """None mode: Triton must already serve both networks of the version."""
        assert self._client is not None
        client, timeout = self._client, self._probe_timeout_s
        networks = (model.encoder.model_name, model.decoder.model_name)
        try:
            async with asyncio.timeout(timeout * 2):
                answers = await asyncio.gather(
                    *(client.is_model_ready(n, model.version, client_timeout=timeout) for n in networks)
                )
        except Exception as exc:
            raise Unavailable(f"cannot serve {model.key}: Triton at {self._url}: {_describe(exc, timeout)}") from exc
        missing = [n for n, ok in zip(networks, answers, strict=True) if not ok]
        if missing:
            raise Unavailable(
                f"cannot serve {model.key}: Triton at {self._url} does not serve version {model.version} of "
                f"{', '.join(missing)} (model control none: Triton serves what its config.pbtxt files list; add the "
                "version there and restart Triton, or run Triton and the service with explicit model control)"
            )

    def _lock(self, network: str) -> asyncio.Lock:
        return self._locks.setdefault(network, asyncio.Lock())

    async def _each(
        self, networks: list[tuple[str, Path]], add: set[str], remove: set[str]
    ) -> list[bool | BaseException]:
        """`_change` for several networks at once, each under its lock; each one's outcome or exception."""

        async def one(network: str, directory: Path) -> bool:
            async with self._lock(network):
                return await self._change(network, add, remove, directory)

        return await asyncio.gather(*(one(n, d) for n, d in networks), return_exceptions=True)

    async def _drop_unserved(self, model: ModelSpec) -> None:
        """After a load that failed or was given up: take the version out of both networks in Triton again, unless
        it is served here by now (a later load of it succeeded)."""

        async def one(network: str, directory: Path) -> None:
            async with self._lock(network):
                if _key(model) not in self._served:
                    await self._change(network, set(), {model.version}, directory)

        networks = self._networks([model])
        outcomes = await asyncio.gather(*(one(n, d) for n, d in networks), return_exceptions=True)
        for (network, _), outcome in zip(networks, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("could not unload %s version %s again after its load failed: %s",
                            network, model.version, outcome)  # fmt: skip

    def _versions_of(self, network: str) -> set[str]:
        return {m.version for m in self._served.values() if network in (m.encoder.model_name, m.decoder.model_name)}

    @staticmethod
    def _networks(models: Iterable[ModelSpec]) -> list[tuple[str, Path]]:
        """Each network once, with the repository its config.pbtxt copy lies in."""
        found: dict[str, Path] = {}
        for model in models:
            for network in (model.encoder, model.decoder):
                found.setdefault(network.model_name, model.directory)
        return sorted(found.items())

    async def _change(self, network: str, add: set[str], remove: set[str], directory: Path) -> bool:
        """Have Triton serve, of `network`, the versions it serves now and those served here, plus `add`, minus
        `remove` (the caller holds the network's lock). Returns whether Triton was asked to change anything."""
        client = self._client
        assert client is not None
        ready, loading = await self._triton_versions(network)
        # A version Triton is loading counts as held: the override keeps it, or, to remove it, is queued by Triton
        # behind that load (a load given up here may still finish there).
        held = ready | loading
        wanted = (held | self._versions_of(network) | add) - remove
        if wanted == held and add <= ready:
            return False
        started = time.monotonic()
        if not wanted:
            await self._control(client.unload_model(network, client_timeout=self._load_timeout_s))
            log.info("Triton unloaded %s (no version left) in %.2f s", network, time.monotonic() - started)
            return True
        template = await self._template(network, bool(ready), directory)
        narrow = True
        if template is None:
            # No config anywhere but in Triton's repository: a plain load (every version its config.pbtxt
            # lists), then narrowed to the versions wanted with Triton's own config as the override.
            log.warning("no config for %s here: Triton loads every version its config.pbtxt lists, then only %s",
                        network, _listed(wanted))  # fmt: skip
            try:
                await self._control(client.load_model(network, client_timeout=self._load_timeout_s))
            except _ControlError as exc:
                refused: _ControlError | None = exc  # a version not wanted may be the one that failed
            else:
                refused = None
            ready, _ = await self._triton_versions(network)
            if refused is not None and not wanted <= ready:
                raise refused
            template = await self._template(network, True, directory)
            if template is None:
                raise _ControlError(f"Triton loaded {network} but does not give its config")
            narrow = wanted != ready
        if narrow:
            override = json.dumps({**template, "version_policy": {"specific": {"versions": _numbers(wanted)}}})
            await self._control(client.load_model(network, config=override, client_timeout=self._load_timeout_s))
        # Triton skips a listed version that has no folder in its repository without a word: ask.
        missing = [v for v in sorted(add, key=version_order) if not await self._is_ready(network, v)]
        if missing:
            raise _ControlError(f"Triton reports the load done but does not serve version {_listed(missing)} "
                                "(is there such a folder in its model repository?)")  # fmt: skip
        with contextlib.suppress(_ControlError):
            await self._template(network, True, directory)  # keep what Triton serves now, for a later reload
        log.info("Triton serves %s versions %s (%.2f s)", network, _listed(wanted), time.monotonic() - started)
        return True

    async def _template(self, network: str, loaded: bool, directory: Path) -> dict[str, Any] | None:
        """A whole config for `network`'s override: Triton's own while it serves the network; else the one it
        served last; else this side's config.pbtxt; else None. Partial configs do not work: an override replaces
        config.pbtxt entirely (backend, tensors, batching, instances)."""
        assert self._client is not None
        if loaded:
            try:
                answer = await self._control(
                    self._client.get_model_config(network, as_json=True, client_timeout=self._load_timeout_s)
                )
                self._configs[network] = dict(answer["config"])
            except _ControlError as exc:
                log.debug("no config from Triton for %s: %s", network, exc)
        if network in self._configs:
            return self._configs[network]
        path = directory / network / "config.pbtxt"
        if not path.is_file():
            return None
        try:
            config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        except (OSError, text_format.ParseError) as exc:
            log.warning("%s is not a config Triton could read (%s): not using it", path, exc)
            return None
        if config.name and config.name != network:
            log.warning("%s names the model %r, not %r: not using it", path, config.name, network)
            return None
        return dict(json_format.MessageToDict(config, preserving_proto_field_name=True))

    async def _triton_versions(self, network: str) -> tuple[set[str], set[str]]:
        """The versions of `network` Triton serves now and those it is loading (its repository index)."""
        assert self._client is not None
        index = await self._control(
            self._client.get_model_repository_index(as_json=True, client_timeout=self._probe_timeout_s * 5)
        )
        states: dict[str, set[str]] = {"READY": set(), "LOADING": set()}
        for entry in index.get("models", []):
            if entry.get("name") == network and entry.get("version") and entry.get("state") in states:
                states[entry["state"]].add(str(entry["version"]))
        return states["READY"], states["LOADING"]

    async def _is_ready(self, network: str, version: str) -> bool:
        assert self._client is not None
        return bool(await self._control(
            self._client.is_model_ready(network, version, client_timeout=self._probe_timeout_s * 5)
        ))  # fmt: skip

    async def _control(self, call: Any) -> Any:
        """Await one model-control call, its failures as `_ControlError` with Triton's message."""
        try:
            async with asyncio.timeout(self._load_timeout_s + 5.0):
                return await call
        except InferenceServerException as exc:
            raise _ControlError(exc.message() or str(exc)) from exc
        except TimeoutError as exc:
            raise _ControlError(f"no answer within {self._load_timeout_s:g} s") from exc
        except grpc.RpcError as exc:
            raise _ControlError(str(exc)) from exc

    def _restore_lost(self) -> None:
        """Explicit mode, Triton ready but not serving every version served here (it restarted, or someone
        unloaded them): have them loaded again, in the background, at most every RESTORE_INTERVAL_S."""
        if (self._restore is not None and not self._restore.done()) or (
            time.monotonic() - self._last_restore < RESTORE_INTERVAL_S
        ):
            return
        self._last_restore = time.monotonic()
        self._restore = asyncio.get_running_loop().create_task(self._reload_served())

    async def _reload_served(self) -> None:
        networks = self._networks(self._served.values())
        for (network, _), outcome in zip(networks, await self._each(networks, set(), set()), strict=True):
            if isinstance(outcome, BaseException):  # the probe tries again later
                log.warning("could not have Triton load %s again: %s", network, outcome)
            elif outcome:
                log.warning("Triton had lost versions of %s: loaded again", network)

    # --- readiness ----------------------------------------------------------------------------------------------

    def _set_ready(self, ready: bool, reason: str = "") -> None:
        if ready:
            if self._outage is None or self._outage.done():
                self._outage = asyncio.get_running_loop().create_future()
            if not self._ready:
                log.warning("Triton at %s is ready", self._url)
        else:
            if self._outage is not None and not self._outage.done():
                self._outage.set_result(None)  # abandons every call in flight
            if self._ready:
                log.warning("Triton at %s is down (%s): calls fail at once until it answers ready", self._url, reason)
        self._ready = ready

    async def _server_live(self) -> bool:
        assert self._client is not None
        timeout = self._probe_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return bool(await self._client.is_server_live(client_timeout=timeout))
        except Exception as exc:  # not there (yet): the probe keeps asking
            self._down_reason = f"readiness probe: {_describe(exc, timeout)}"
            return False

    async def _check(self) -> bool:
        assert self._client is not None
        client, timeout = self._client, self._probe_timeout_s
        versions = sorted({(n.model_name, m.version) for m in self._served.values() for n in (m.encoder, m.decoder)})
        try:
            async with asyncio.timeout(timeout):
                # Live, not ready: Triton's readiness (strict by default) is false while any model loads, which
                # in explicit mode is every load of a version while the others serve; and in mode none, while any
                # model of its repository, ours or not, failed to load. What must be ready is ours, asked next.
                if not await client.is_server_live(client_timeout=timeout):
                    self._down_reason = "server not live"
                    return False
                answers = await asyncio.gather(
                    *(client.is_model_ready(n, v, client_timeout=timeout) for n, v in versions)
                )
        except Exception as exc:  # whatever it is, the probe must live on: down until Triton answers ready
            self._down_reason = f"readiness probe: {_describe(exc, timeout)}"
            log.debug("Triton readiness probe failed: %s", self._down_reason)
            return False
        not_ready = [f"{n} version {v}" for (n, v), ok in zip(versions, answers, strict=True) if not ok]
        self._down_reason = f"models not ready: {', '.join(not_ready)}"
        if not_ready and self._explicit:
            self._restore_lost()
        return not not_ready

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s if self._ready else self._probe_interval_down_s)
            ready = await self._check()
            self._set_ready(ready, "" if ready else self._down_reason)

    # --- calls --------------------------------------------------------------------------------------------------

    async def _infer(self, model: ModelSpec, network: NetworkSpec, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._client is None:
            raise Unavailable("Triton backend is not started")
        if _key(model) not in self._served:
            raise Unavailable(f"{model.key} is not loaded in the Triton backend")
        outage = self._outage
        if not self._ready or outage is None or outage.done():
            raise Unavailable(f"Triton at {self._url} is down; retry when the service reports SERVING")
        timeout, by_deadline = self._timeout_s, False
        deadline = call_deadline.get()
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded("deadline passed before the Triton call")
            if left < timeout:
                timeout, by_deadline = left, True
        tensor = triton_grpc.InferInput(network.input_name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        outputs = [triton_grpc.InferRequestedOutput(name) for name in network.output_names]
        call = asyncio.ensure_future(
            self._client.infer(
                network.model_name, [tensor], model_version=model.version, outputs=outputs, client_timeout=timeout
            )
        )
        try:
            await asyncio.wait((call, outage), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not call.done():  # Triton went down, or our caller was cancelled: abandon the gRPC call
                call.cancel()
                call.add_done_callback(_retrieve)
        where = f"{network.model_name} version {model.version}"
        if not call.done():
            raise Unavailable(f"Triton at {self._url} went down during the call to {where}")
        try:
            result = call.result()
        except InferenceServerException as exc:
            raise self._error(exc, where, timeout, by_deadline) from exc
        first, second = (result.as_numpy(name) for name in network.output_names)
        return first, second

    def _error(self, exc: InferenceServerException, model: str, timeout: float, by_deadline: bool) -> ServiceError:
        status = exc.status() or ""
        if status.endswith("DEADLINE_EXCEEDED"):
            if by_deadline:
                return DeadlineExceeded(f"deadline passed while Triton ran {model}")
            return Unavailable(f"Triton did not answer {model} within {timeout:g} s")
        if status.endswith("UNAVAILABLE") and (exc.message() or "").startswith(UNKNOWN_MODEL):
            # Triton is up but does not serve that version (now): not an outage; the probe sees it too.
            return Unavailable(f"Triton does not serve {model}: {exc.message()}")
        if status.endswith("UNAVAILABLE"):
            self._set_ready(False, f"call to {model}: {exc.message()}")  # the probe brings it back
            return Unavailable(f"Triton call to {model} failed: {exc.message()}")
        # Triton answered with an error of its own (e.g. the model raised): not an outage, and the batcher
        # retries a failed batch one request at a time, so a bad item fails only its own request.
        return ServiceError(f"Triton call to {model} failed ({status.removeprefix('StatusCode.')}): {exc.message()}")

    async def encode(self, model: ModelSpec, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self._infer(model, model.encoder, images)

    async def decode(self, model: ModelSpec, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self._infer(model, model.decoder, latents)

    async def close(self) -> None:
        """Stop probing and disconnect. Nothing is unloaded from Triton (module docstring)."""
        for task in (self._probe, self._restore, *self._cleanups):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._outage is not None and not self._outage.done():
            self._outage.set_result(None)
        self._ready = False
        if self._client is not None:
            await self._client.close()


UNKNOWN_MODEL = "Request for unknown model"  # Triton's answer to a call for a model or version it does not serve


def _key(model: ModelSpec) -> Key:
    return model.name, model.version


def _numbers(versions: Iterable[str]) -> list[int]:
    return sorted(int(v) for v in versions)


def _listed(versions: Iterable[str]) -> str:
    return "[" + ", ".join(map(str, _numbers(versions))) + "]"


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, InferenceServerException):
        return f"{exc.status() or 'error'}: {exc.message()}"
    return str(exc) or type(exc).__name__


def _retrieve(task: asyncio.Future[object]) -> None:
    """Consume an abandoned call's outcome so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
