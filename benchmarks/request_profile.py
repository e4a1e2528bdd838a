"""Where a request's time goes on the server, stage by stage: py-spy samples the running service while the load
generator (a process of its own) keeps N one-item requests in flight. Only threads holding the GIL are sampled
(`--gil`): one process's throughput is bound by GIL time, and a thread waiting for the GIL is not working. Each
sample of the event-loop thread is put in one stage by the frames it sits in, and each stage's share becomes
microseconds of GIL time per request.

Run it on two trees to compare before and after a change (the load generator and this script come from this
tree; the service from `--service-root`, e.g. a `git worktree` of an older commit):

    python -m benchmarks.request_profile --method Sample --inflight 64 --seconds 8 [--service-root DIR]

py-spy needs ptrace rights over the service (root, or CAP_SYS_PTRACE in a container).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks import payloads, procs
from vaecore.repository import load_default

RATE_HZ = 250
# (stage, test on one frame "function (file:line)"): the first stage whose test matches any frame of a sample,
# searched from the innermost frame outwards, takes the sample. Order matters: specific before general.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("idle (waiting in epoll)", ("EpollSelector.select",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("deserialize request", ("_tolerant.<locals>.deserialize",)),
    ("validate (requests.py)", ("service/requests.py",)),
    ("build reply (codecs)", ("array_to_tensor", "images_to_proto", "_encode_reply", "_images_reply")),
    (
        "executor hop (to and from the backend thread)",
        (
            "run_in_executor",
            "ThreadPoolExecutor.submit",
            "_write_to_self",
            "_read_from_self",
            "_chain_future",
            "call_soon_threadsafe",
            "_process_self_data",
        ),
    ),
    (
        "numpy maths (rng, latents, finiteness)",
        ("vaecore/rng.py", "service/latent.py", "_require_finite", "sample_pixels", "_rng", "numpy/"),
    ),
    ("batcher and futures", ("service/batching.py",)),
    ("servicer and operations glue", ("service/api.py", "service/operations.py", "service/metrics.py")),
]
TRANSPORT = "gRPC transport and asyncio (grpc's Cython, the loop)"


def classify(frames: list[str]) -> str:
    """The stage of one sample, from its frames (outermost first, as py-spy writes them)."""
    for stage, needles in STAGES:
        if any(needle in frame for frame in reversed(frames) for needle in needles):
            return stage
    return TRANSPORT


def tally(raw: Path) -> tuple[Counter[str], int]:
    """Stage -> samples of the event-loop thread, and the backend thread's samples, from py-spy's raw output."""
    stages: Counter[str] = Counter()
    backend = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "MainThread" in frames[0]:
            stages[classify(frames[1:])] += int(count)
        elif "torch" in frames[0]:
            backend += int(count)
    return stages, backend


def _start_service(root: Path, repo: Path, port: int, log: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1",
            "--model-repository", str(repo), *extra]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _load(target: str, request: Path, path: str, inflight: int, seconds: float) -> dict[str, float]:
    argv = [sys.executable, "-m", "benchmarks.loadgen", "--target", target, "--call", path, str(request),
            "--inflight", str(inflight), "--seconds", str(seconds), "--warmup", "1"]  # fmt: skip
    out = subprocess.run(argv, cwd=procs.REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def profile(args: argparse.Namespace, work: Path) -> tuple[Counter[str], int, dict[str, float]]:
    model = load_default(args.repo)
    payload = payloads.service_request(args.method, model)
    port = procs.free_port()
    process = _start_service(args.service_root, args.repo, port, work / "service.log", args.service_args)
    server = procs.Server("service", process, port, work / "service.log")
    try:
        procs.wait_serving(server, "vae.v1.VaeService")
        raw = work / "profile.txt"
        spy_argv = [args.py_spy, "record", "-p", str(process.pid), "-r", str(RATE_HZ), "-d", str(int(args.seconds + 1)),
                    "-f", "raw", "--threads", "--gil", "--nonblocking", "-o", str(raw)]  # fmt: skip
        spy = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load = _load(server.target, payload.save(work, args.method), payload.path, args.inflight, args.seconds)
        spy.wait(60)
    finally:
        procs.stop(server)
    stages, backend = tally(raw)
    return stages, backend, load


def report(stages: Counter[str], backend: int, load: dict[str, float], seconds: float) -> str:
    """A table: each stage's share of the loop thread's samples and its loop time per request, in microseconds."""
    sampled_s = sum(stages.values()) / RATE_HZ
    requests = load["rate"] * seconds
    per_request = lambda samples: samples / RATE_HZ / requests * 1e6  # noqa: E731
    lines = [f"{load['rate']:.0f} requests/s, p50 {load['p50_ms']:.2f} ms; loop thread sampled {sampled_s:.1f} s",
             f"{'stage':52} {'share':>6} {'us/request':>10}"]  # fmt: skip
    for stage, samples in stages.most_common():
        lines.append(f"{stage:52} {samples / sum(stages.values()):6.1%} {per_request(samples):10.1f}")
    busy = sum(n for s, n in stages.items() if not s.startswith("idle"))
    lines.append(f"{'event loop holding the GIL, all stages':52} {'':6} {per_request(busy):10.1f}")
    lines.append(
        f"{'backend thread holding the GIL (torch releases it inside kernels)':52} {'':6} {per_request(backend):10.1f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=payloads.METHODS, default="Sample")
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repo", type=Path, default=procs.REPO_ROOT / "deploy" / "model_repository")
    parser.add_argument("--service-root", type=Path, default=procs.REPO_ROOT, help="the tree whose service runs")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"))
    parser.add_argument("--keep-raw", type=Path, help="copy py-spy's raw samples here")
    parser.add_argument("service_args", nargs="*", help="more service flags, after --")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="request-profile-") as tmp:
        stages, backend, load = profile(args, Path(tmp))
        if args.keep_raw:
            shutil.copy(Path(tmp) / "profile.txt", args.keep_raw)
    print(f"{args.method} n=1, {args.inflight} in flight, service from {args.service_root}")
    print(report(stages, backend, load, args.seconds))


if __name__ == "__main__":
    main()
