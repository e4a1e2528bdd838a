"""The exported Python-backend repository served by a real tritonserver (from nvidia-pytriton): loaded,
and its answers equal local TorchScript for the same inputs, also when requests are batched together."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from training.export import derive_python_variant, export_repository
from training.model import load_checkpoint
from training.triton_local import TritonServer
from vaecore.repository import read_metadata


@pytest.fixture(scope="module")
def python_repo(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, checkpoint = load_checkpoint(trained_run / "best.pt")
    libtorch = tmp_path_factory.mktemp("libtorch")
    export_repository(model, checkpoint, libtorch, "tiny", max_batch_size=64)
    out = tmp_path_factory.mktemp("python")
    derive_python_variant(libtorch, out, max_batch_size=64)
    return out


@pytest.fixture(scope="module")
def triton(python_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = TritonServer(python_repo, tmp_path_factory.mktemp("triton")).start()
    yield server
    server.stop()


def _local(python_repo: Path, model_name: str, value: np.ndarray) -> tuple[np.ndarray, ...]:
    module = torch.jit.load(str(python_repo / model_name / "1" / "model.pt"))
    with torch.no_grad():
        return tuple(t.numpy() for t in module(torch.from_numpy(value)))


def _infer(client: grpcclient.InferenceServerClient, spec: dict, value: np.ndarray) -> tuple[np.ndarray, ...]:
    tensor = grpcclient.InferInput(spec["inputs"][0]["name"], list(value.shape), "FP32")
    tensor.set_data_from_numpy(value)
    outputs = [grpcclient.InferRequestedOutput(t["name"]) for t in spec["outputs"]]
    result = client.infer(spec["model_name"], [tensor], outputs=outputs)
    return tuple(result.as_numpy(t["name"]) for t in spec["outputs"])


def test_models_are_ready_with_the_exported_config(triton: TritonServer, python_repo: Path) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    metadata = read_metadata(python_repo / "tiny.vae.json")
    for part in ("encoder", "decoder"):
        name = metadata[part]["model_name"]
        assert client.is_model_ready(name)
        config = client.get_model_config(name).config
        assert config.backend == "python" and config.max_batch_size == 64
        assert [t.name for t in config.output] == [t["name"] for t in metadata[part]["outputs"]]


def test_triton_outputs_equal_local_torchscript(triton: TritonServer, python_repo: Path) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    metadata = read_metadata(python_repo / "tiny.vae.json")
    rng = np.random.default_rng(0)
    images = rng.random((6, 1, 28, 28), dtype=np.float32)
    latents = rng.normal(size=(9, 4)).astype(np.float32)
    for part, value in (("encoder", images), ("decoder", latents)):
        remote = _infer(client, metadata[part], value)
        local = _local(python_repo, metadata[part]["model_name"], value)
        assert len(remote) == len(local) == 2
        for r, loc in zip(remote, local, strict=True):
            np.testing.assert_allclose(r, loc, rtol=1e-5, atol=1e-6)


def test_concurrent_requests_each_get_their_own_rows(triton: TritonServer, python_repo: Path) -> None:
    """Requests merged by Triton's dynamic batcher are split back in order, one answer per request."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    spec = read_metadata(python_repo / "tiny.vae.json")["decoder"]
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(n, 4)).astype(np.float32) for n in (1, 3, 2, 5, 1, 4, 2, 6)]
    answers: queue.Queue = queue.Queue()
    for index, value in enumerate(batches):
        tensor = grpcclient.InferInput("latent__0", list(value.shape), "FP32")
        tensor.set_data_from_numpy(value)
        client.async_infer(spec["model_name"], [tensor], partial(answers, index))
    results = {}
    for _ in batches:
        index, result, error = answers.get(timeout=60)
        assert error is None, error
        results[index] = result.as_numpy("mean__0")
    assert sorted(results) == list(range(len(batches)))
    for index, value in enumerate(batches):
        np.testing.assert_allclose(
            results[index], _local(python_repo, spec["model_name"], value)[0], rtol=1e-5, atol=1e-6
        )


def partial(answers: queue.Queue, index: int):  # type: ignore[no-untyped-def]
    return lambda result, error: answers.put((index, result, error))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_cli_stops_its_tritonserver_on_sigterm(python_repo: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """`python -m training.triton_local REPO` runs tritonserver in a session of its own; a SIGTERM (or SIGHUP) to
    the CLI must stop that server and wait for it, not leave it running with its ports held."""
    log_path = tmp_path / "cli.log"
    with log_path.open("w") as log:
        cli = subprocess.Popen([sys.executable, "-m", "training.triton_local", str(python_repo)],
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline, pid = time.monotonic() + 120, None
        while pid is None and time.monotonic() < deadline and cli.poll() is None:
            ready = [line for line in log_path.read_text().splitlines() if line.startswith("tritonserver ready")]
            pid = int(ready[0].rsplit("pid ", 1)[1]) if ready else None
            time.sleep(0.1)
        assert pid is not None, log_path.read_text()
        os.kill(pid, 0)  # the server runs
        cli.send_signal(sig)
        assert cli.wait(timeout=60) == 0, log_path.read_text()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped by the CLI before it exited
    finally:
        if cli.poll() is None:
            cli.kill()
