"""The server as users run it (`python -m service`): starts from flags, refuses bad settings clearly,
and on SIGTERM finishes the requests in flight before exiting. Also: a full queue answers
RESOURCE_EXHAUSTED at once while health checks keep being answered."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.config import Settings, load_settings
from service.server import freeze_start_up_objects
from tests.service.harness import serving, stub_for
from vae_client.codecs import array_to_tensor
from vae_client.proto_gen.vae.v1 import vae_pb2 as V
from vae_client.proto_gen.vae.v1.vae_pb2_grpc import VaeServiceStub

ROOT = Path(__file__).resolve().parents[2]


def _slow_score(images: int = 40, samples: int = 1000) -> V.ScoreRequest:
    x = (np.random.default_rng(0).random((images, 1, 28, 28)) > 0.5).astype(np.float32)
    return V.ScoreRequest(images=V.Images(tensor=array_to_tensor(x)), importance_samples=samples)


def test_settings_layering_flags_over_env_over_defaults() -> None:
    settings = load_settings(
        ["--port", "7000"], {"VAE_PORT": "6000", "VAE_MAX_BATCH_SIZE": "8", "VAE_BACKEND": "triton"}
    )
    assert (settings.port, settings.max_batch_size, settings.backend) == (7000, 8, "triton")
    assert load_settings([], {}).port == 50051 and load_settings([], {}).metrics_port == 8000


def test_sigterm_finishes_in_flight_requests(model_repository: Path, tmp_path: Path) -> None:
    port_file = tmp_path / "log"
    env = {
        **os.environ,
        "VAE_MODEL_REPOSITORY": str(model_repository),
        "VAE_METRICS_PORT": "-1",
        "VAE_TORCH_THREADS": "1",
        "VAE_SHUTDOWN_GRACE_S": "120",  # what is tested is that the request finishes, not how fast (busy machines)
    }
    with port_file.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "service", "--port", "0", "--host", "127.0.0.1"], cwd=ROOT,
                                   env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline, port = time.monotonic() + 60, None
        while port is None and time.monotonic() < deadline:
            for line in port_file.read_text().splitlines():
                if "on port" in line:
                    port = int(line.split("on port ")[1].split()[0])
            time.sleep(0.1)
        assert port, port_file.read_text()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = VaeServiceStub(channel)
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(stub.Score, _slow_score())
                time.sleep(0.3)  # let it reach the server before the signal; the test is about what follows
                process.send_signal(signal.SIGTERM)
                reply = pending.result(timeout=150)
        assert len(reply.scores) == 40
        assert process.wait(timeout=30) == 0
        log_text = port_file.read_text()
        assert "shutting down" in log_text
        froze = [line for line in log_text.splitlines() if "start-up objects out of the cyclic GC" in line]
        assert froze and int(froze[0].split("froze ")[1].split()[0]) > 10_000, log_text  # models, modules, grpc...
    finally:
        if process.poll() is None:
            process.kill()


def test_gc_freeze_moves_the_heap_out_of_the_collectors_reach_and_can_be_turned_off() -> None:
    assert gc.get_freeze_count() == 0
    freeze_start_up_objects(Settings(gc_freeze=False))
    assert gc.get_freeze_count() == 0
    try:
        freeze_start_up_objects(Settings())
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # this test process's heap is the test runner's, not a server's
    assert load_settings(["--gc-freeze", "off"], {}).gc_freeze is False


def test_missing_repository_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "service", "--model-repository", str(tmp_path), "--port", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (
        result.returncode == 2 and result.stderr.startswith("error: no *.vae.json") and "Traceback" not in result.stderr
    )


def test_full_queue_is_resource_exhausted_and_health_still_answers(model_repository: Path) -> None:
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=model_repository, max_batch_size=4,
                        max_queue=2, torch_threads=1)  # fmt: skip
    with serving(settings) as server, stub_for(server) as stub, grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(stub.Score, _slow_score(images=10, samples=40)) for _ in range(24)]
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            codes = []
            for future in futures:
                try:
                    future.result(timeout=120)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert stub.Sample(V.SampleRequest(n=1)).images.tensor.shape == [1, 1, 28, 28]
