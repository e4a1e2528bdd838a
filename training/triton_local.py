"""Run a real `tritonserver` (the one shipped in the `nvidia-pytriton` wheel) on a Python-backend repository.

For CPU machines without Triton's container: the tests use it, and so can a developer
(`python -m training.triton_local REPO`, `--model-control-mode explicit` to have the service load and unload
versions). Production runs NVIDIA's container with the libtorch backend.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

MODEL_CONTROL_MODES = ("none", "explicit")


class TritonStartError(RuntimeError):
    pass


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise TritonStartError("nvidia-pytriton is not installed: `pip install nvidia-pytriton`") from exc
    return Path(pytriton.__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backend_directory(target: Path) -> Path:
    """Lay out `target/python/` as tritonserver's --backend-directory expects, from the wheel's files."""
    root = _pytriton_root() / "tritonserver"
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = [
        root / "backends" / "python" / "libtriton_python.so",
        root / "backends" / "python" / "triton_python_backend_utils.py",
        root / "python_backend_stubs" / version / "triton_python_backend_stub",
    ]
    for source in sources:
        if not source.exists():
            raise TritonStartError(f"nvidia-pytriton lacks {source}")
        destination = python_dir / source.name
        if not destination.exists():
            shutil.copy2(source, destination)
    return target


def server_environment() -> dict[str, str]:
    """LD_LIBRARY_PATH: this Python's libpython first (else the stub picks the system's and dies), then the
    wheel's bundled libraries; PYTHONPATH: this environment's site-packages so model.py can import torch."""
    site_packages = sysconfig.get_paths()["purelib"]
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(Path(site_packages) / "nvidia_pytriton.libs")]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    env["PYTHONPATH"] = ":".join([site_packages, env.get("PYTHONPATH", "")]).rstrip(":")
    return env


@dataclass(frozen=True)
class GrpcTls:
    """PEM files for tritonserver's gRPC endpoint; with `client_ca` set, clients must present a certificate that
    CA signed (mutual TLS). HTTP stays plaintext (the readiness poll uses it)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def flags(self) -> list[str]:
        flags = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}"]
        if self.client_ca is not None:
            flags += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.client_ca}"]
        return flags


@dataclass
class TritonServer:
    """A running tritonserver process and its ports; `stop()` ends it, `start()` starts it again. It runs in a
    process group of its own (with its Python-backend stubs), so `pause()`/`resume()` freeze and thaw all of it,
    as a paused container would be, and `kill()` ends all of it at once."""

    repository: Path
    workdir: Path
    grpc_port: int = field(default_factory=_free_port)
    http_port: int = field(default_factory=_free_port)
    metrics_port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    tls: GrpcTls | None = None
    # "none": Triton loads every model of the repository at start and refuses load/unload requests; "explicit":
    # it loads only `load_models` at start and then what clients ask for (the service's --triton-model-control)
    model_control: str = "none"
    load_models: tuple[str, ...] = ()  # explicit mode only: models loaded at start ("*": all of them)

    def __post_init__(self) -> None:
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ValueError(
                f"model_control must be one of {', '.join(MODEL_CONTROL_MODES)}, got {self.model_control!r}"
            )
        if self.load_models and self.model_control != "explicit":
            raise ValueError("load_models needs model_control='explicit' (in mode none Triton loads every model)")

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "tritonserver.log"

    def start(self, timeout_s: float = 120.0) -> TritonServer:
        if self.process is not None and self.process.poll() is not None:
            self._reap_group()  # restarting after a crash: the old stubs must not linger
        binary = _pytriton_root() / "tritonserver" / "bin" / "tritonserver"
        backends = backend_directory(self.workdir / "backends")
        cmd = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-grpc=true",
            "--allow-http=true",
            "--log-verbose=0",
            *(self.tls.flags() if self.tls is not None else []),
            *self.model_control_flags(),
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=server_environment(), start_new_session=True
        )
        self._wait_ready(timeout_s)
        return self

    def model_control_flags(self) -> list[str]:
        if self.model_control == "none":
            return []  # tritonserver's default
        return [f"--model-control-mode={self.model_control}", *(f"--load-model={m}" for m in self.load_models)]

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise TritonStartError(f"tritonserver exited; log:\n{self.log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise TritonStartError(f"tritonserver not ready after {timeout_s}s; log:\n{self.log_path.read_text()[-4000:]}")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is not None:
            self._reap_group()
            return
        self._signal(signal.SIGCONT)  # a paused server could not handle SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def pause(self) -> None:
        """Freeze the server and its stubs (SIGSTOP to the group): alive, connections open, answering nothing."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL to the whole group: the server dies without a goodbye, as on a node failure."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def _reap_group(self) -> None:
        """A server that crashed leaves its Python-backend stubs running in its process group: end them."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)


class _Stop(Exception):
    """Raised in the main thread by SIGTERM or SIGHUP, so that `main` stops its tritonserver before it exits."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Serve a repository until SIGINT, SIGTERM or SIGHUP, then stop tritonserver and wait for it. The server runs
    in a session of its own (so `pause()` can freeze its whole group): without this, a SIGTERM to this process
    would leave it running, ports held."""
    parser = argparse.ArgumentParser(prog="python -m training.triton_local", description=main.__doc__)
    parser.add_argument("repository", type=Path, help="a Python-backend model repository")
    parser.add_argument("--model-control-mode", choices=MODEL_CONTROL_MODES, default="none",
                        help="none: load every model at start; explicit: load only --load-model ones, then what "
                             "clients ask for (the service's --triton-model-control explicit)")  # fmt: skip
    parser.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="explicit mode: a model loaded at start (repeatable; * for all)",
    )
    args = parser.parse_args(argv)
    if args.load_model and args.model_control_mode != "explicit":
        parser.error("--load-model needs --model-control-mode explicit")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    server = TritonServer(args.repository.resolve(), Path(tempfile.mkdtemp(prefix="triton-")),
                          model_control=args.model_control_mode, load_models=tuple(args.load_model))  # fmt: skip
    try:
        server.start()
        assert server.process is not None
        print(f"tritonserver ready: grpc {server.grpc_url}, http {server.http_port}, metrics {server.metrics_port}, "
              f"pid {server.process.pid}", flush=True)  # fmt: skip
        server.process.wait()
    except (KeyboardInterrupt, _Stop) as why:
        print(f"stopping tritonserver ({type(why).__name__} {why})", flush=True)
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the stop short
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
