"""Settings: defaults < `VAE_*` environment variables < command-line flags. Every field is documented."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ONEDNN_SETTINGS = ("auto", "on", "off")  # --onednn (service/backends/kernels.py)
DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "deploy" / "model_repository"


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"  # interface the gRPC server binds
    port: int = 50051  # gRPC port (0 picks a free one)
    metrics_host: str = ""  # interface /metrics binds (empty: the same as --host)
    metrics_port: int = 8000  # Prometheus /metrics HTTP port (0 picks a free one, -1 disables)
    http_port: int = -1  # HTTP/JSON for every RPC, the explorer page and /openapi.json (0 picks a free one, -1: off)
    http_host: str = ""  # interface the HTTP port binds (empty: the same as --host)
    model_repository: Path = DEFAULT_REPOSITORY  # folder with <name>.vae.json files and their networks
    # model used when a request names none (empty: the repository's default_model file, else the first by name)
    default_model: str = ""
    # Model lifecycle (docs/model-lifecycle.md): the repository is re-read on SIGHUP, every
    # repository_poll_s seconds when > 0, and on the admin service's Reload.
    repository_poll_s: float = 0.0  # poll the repository for new, changed or removed versions (0: off)
    unload_grace_s: float = 30.0  # a retired version is unloaded once its requests end, at the latest after this
    load_timeout_s: float = 300.0  # a version not loaded and warmed up by then fails its load
    backend: str = "local"  # local (in-process TorchScript) or triton
    triton_url: str = "localhost:8001"  # Triton gRPC address, for --backend triton
    triton_timeout_s: float = 30.0  # per Triton call
    # explicit: the service loads and unloads versions in Triton (tritonserver --model-control-mode=explicit);
    # none: Triton serves what its repository lists, the service only checks that each version it serves is ready
    triton_model_control: str = "none"
    device: str = "cpu"  # torch device of the local backend: cpu, cuda, cuda:1
    torch_threads: int = 0  # torch intra-op threads of the local backend (0: cores / workers)
    inline_rows: int = 1  # local backend: calls of at most this many rows that find it idle run on the loop (0: never)
    onednn: str = "auto"  # local backend on CPU: oneDNN convolution kernels: auto (timed per network at start), on, off
    max_batch_size: int = 64  # rows per backend call, merged across requests
    max_wait_ms: float = 0.0  # extra wait of a batch's first request for company (0: none; batches still form
    # from what arrives while the previous batch runs, so an idle backend answers at once: BENCHMARKS.md)
    max_queue: int = 1024  # requests waiting per model and network before RESOURCE_EXHAUSTED
    max_items: int = 4096  # images or latents in one request
    max_posterior_samples: int = 1024  # Encode's samples_per_image
    max_temperature: float = 10.0  # Sample's prior temperature
    max_interpolation_steps: int = 1024  # Interpolate's steps, endpoints included
    max_terms: int = 64  # Arithmetic's terms
    max_weight_abs: float = 1000.0  # |weight| of an Arithmetic term
    max_latent_abs: float = 1000.0  # |component| of a latent a client sends (the prior's mass lies within ~5)
    max_stream_items: int = 1048576  # SampleStream's n
    max_message_mb: int = 64  # gRPC send/receive message limit
    max_reply_mb: int = 16  # largest reply a request may ask for (bounds memory and event-loop time per request)
    default_score_samples: int = 100  # importance samples of Score when the request says 0
    max_score_samples: int = 5000  # most importance samples per image in Score
    max_score_rows: int = 65536  # images x samples in one Score request
    stream_chunk: int = 256  # images per SampleStream message when the request says 0
    shutdown_grace_s: float = 10.0  # on SIGTERM, time given to in-flight requests
    max_connection_age_s: float = 300.0  # close client connections after this long (0: never), so clients re-resolve
    max_connection_age_grace_s: float = 300.0  # time calls on an aged connection get to finish before it is cut
    # calls gRPC's core holds for the event loop to take up (a backlog of calls, expired ones included, builds while
    # the loop is swamped): beyond this, core cancels new calls (CANCELLED, before any handler). gRPC's own default,
    # 1000 (random rejections from there to 3000), lost ordinary calls after a burst of expired deadlines:
    # docs/upstream/grpc-aio-pending-cancelled.md. About 16 kB per held call, plus its request. 0: gRPC's default.
    max_pending_calls: int = 20000
    latent_health: bool = True  # live latent-health metrics: KL and active units of encoded inputs, Score's log p(x)
    # Transport security (docs/security.md): TLS when both files are set; client certificates required when a CA is.
    tls_cert_file: str = ""  # PEM server certificate chain
    tls_key_file: str = ""  # PEM private key of that certificate
    tls_client_ca_file: str = ""  # PEM CA bundle: mutual TLS, every client must present a certificate it signed
    auth_token_file: str = ""  # bearer tokens, one per line: `authorization: Bearer <token>` required (not for health)
    # the admin service (vae.v1.ModelAdminService: load, unload, default version, traffic split): off unless set;
    # its tokens, one per line, are a credential of their own (callers' tokens are refused there, and these on the API)
    admin_token_file: str = ""
    triton_tls_ca_file: str = ""  # PEM CA bundle: reach Triton over TLS, verifying its certificate against it
    triton_tls_cert_file: str = ""  # PEM client certificate for Triton (mutual TLS), with triton_tls_key_file
    triton_tls_key_file: str = ""
    # Several cores (docs/operations.md): N > 1 starts N server processes sharing the gRPC port, each with its own
    # backend and batcher, behind one /metrics; 1 serves from this process alone, as before.
    workers: int = 1  # server processes sharing --port (SO_REUSEPORT); torch-threads 0 then means cores / workers
    score_chunk_rows: int = 2048  # Score decodes images x samples rows in chunks of this many (bounds memory)
    # once serving, move every start-up object out of the cyclic GC's reach (gc.freeze), so full collections scan
    # only what requests made: 80 -> 5 ms mean pause (BENCHMARKS.md, `python -m benchmarks.ab`)
    gc_freeze: bool = True
    log_level: str = "INFO"

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    @property
    def metrics_bind_host(self) -> str:
        return self.metrics_host or self.host


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """`true/false`, `1/0`, `yes/no`, `on/off` (any case); anything else is an error, never silently True."""
    lowered = text.strip().lower()
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}, got {text!r}")


def _kind(like: Any) -> Any:
    if isinstance(like, bool):
        return parse_bool
    return Path if isinstance(like, Path) else type(like)


def _convert(value: str, like: Any) -> Any:
    return _kind(like)(value)


def load_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m service", description="Serve VAEs over gRPC.")
    values: dict[str, Any] = {}
    for f in fields(Settings):
        env_name = f"VAE_{f.name.upper()}"
        if env_name in environ:
            try:
                values[f.name] = _convert(environ[env_name], getattr(defaults, f.name))
            except ValueError as exc:
                parser.error(f"environment variable {env_name}: {exc}")
    for f in fields(Settings):
        default = values.get(f.name, getattr(defaults, f.name))
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=_kind(default), default=default,
                            help=f"env VAE_{f.name.upper()} (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    settings = Settings(**vars(args))
    if settings.backend not in ("local", "triton"):
        parser.error(f"--backend must be local or triton, got {settings.backend!r}")
    if settings.onednn not in ONEDNN_SETTINGS:
        parser.error(f"--onednn must be one of {', '.join(ONEDNN_SETTINGS)}, got {settings.onednn!r}")
    if settings.triton_model_control not in ("none", "explicit"):
        parser.error(f"--triton-model-control must be none or explicit, got {settings.triton_model_control!r}")
    if settings.repository_poll_s < 0 or settings.unload_grace_s < 0:
        parser.error("--repository-poll-s and --unload-grace-s must be >= 0")
    if not 0 <= settings.max_pending_calls <= 2**31 - 1:  # a C int in gRPC's channel arguments
        parser.error(f"--max-pending-calls must be 0 (gRPC's default) to 2147483647, got {settings.max_pending_calls}")
    if settings.workers < 1:
        parser.error(f"--workers must be at least 1, got {settings.workers}")
    return settings
