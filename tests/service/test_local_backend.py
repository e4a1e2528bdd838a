"""The local backend's two speed paths (service/backends/local.py, kernels.py), on the tests' tiny exported model:
- a call of at most `inline_rows` rows that finds the backend idle runs on the event-loop thread; larger calls,
  and any call while another is on the worker thread, go to the worker;
- oneDNN or PyTorch's own convolution kernels, chosen per network and call size, give the same numbers (to float
  rounding), and choosing leaves PyTorch's process-wide switch as it found it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from service.backends import kernels
from service.backends.local import LocalBackend
from service.config import load_settings
from vaecore.repository import load_repository


class _Recording(LocalBackend):
    """The real backend, remembering which thread ran each call."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.threads: list[str] = []

    def _run(self, model_name: str, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        return super()._run(model_name, array)


def test_a_small_call_on_an_idle_backend_runs_on_the_loop_and_the_rest_on_the_worker(model_repository: Path) -> None:
    models = load_repository(model_repository)
    model = models["tiny"]
    z = np.zeros((3, model.latent_dim), np.float32)

    async def scenario() -> list[str]:
        backend = _Recording(models, "cpu", 1, inline_rows=1, onednn="off")
        await backend.start()
        loop_thread = threading.current_thread().name
        await backend.decode(model, z[:1])  # idle, one row: inline
        await backend.decode(model, z[:2])  # two rows: worker
        big = asyncio.ensure_future(backend.decode(model, np.zeros((512, model.latent_dim), np.float32)))
        await asyncio.sleep(0)  # the big call is on the worker now
        await backend.decode(model, z[:1])  # one row, but the backend is busy: worker
        await big
        await backend.close()
        return [("loop" if name == loop_thread else "worker") for name in backend.threads]

    assert asyncio.run(scenario()) == ["loop", "worker", "worker", "worker"]


def test_inline_rows_zero_sends_every_call_to_the_worker(model_repository: Path) -> None:
    models = load_repository(model_repository)
    model = models["tiny"]

    async def scenario() -> list[str]:
        backend = _Recording(models, "cpu", 1, inline_rows=0, onednn="off")
        await backend.start()
        await backend.encode(model, np.zeros((1, *model.image_shape), np.float32))
        await backend.close()
        return backend.threads

    assert all(name.startswith("torch") for name in asyncio.run(scenario()))


@pytest.mark.parametrize("network", ["encoder", "decoder"])
def test_both_kernel_choices_give_the_same_numbers(model_repository: Path, network: str) -> None:
    models = load_repository(model_repository)
    model = models["tiny"]
    rng = np.random.default_rng(0)
    rows = (
        rng.random((9, *model.image_shape), dtype=np.float32)
        if network == "encoder"
        else rng.standard_normal((9, model.latent_dim), dtype=np.float32)
    )

    async def outputs(onednn: str) -> tuple[np.ndarray, np.ndarray]:
        backend = LocalBackend(models, "cpu", 1, inline_rows=0, onednn=onednn)
        await backend.start()
        result = await (backend.encode(model, rows) if network == "encoder" else backend.decode(model, rows))
        await backend.close()
        return result

    on, off = asyncio.run(outputs("on")), asyncio.run(outputs("off"))
    for a, b in zip(on, off, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_choosing_times_both_ways_and_leaves_onednn_on(model_repository: Path) -> None:
    model = load_repository(model_repository)["tiny"]
    module = torch.jit.load(str(model.torchscript_path(model.decoder))).eval()
    choice = kernels.choose("tiny_decoder", module, torch.zeros(1, model.latent_dim), full_rows=16)
    assert isinstance(choice.small, bool) and isinstance(choice.large, bool)
    assert torch.backends.mkldnn.enabled
    assert choice.for_rows(1) is choice.small and choice.for_rows(kernels.SMALL_ROWS + 1) is choice.large


def test_the_onednn_setting_is_checked() -> None:
    assert kernels.fixed("auto") is None
    assert kernels.fixed("off") == kernels.KernelChoice(False, False)
    assert load_settings(["--onednn", "on"]).onednn == "on"
    with pytest.raises(SystemExit):
        load_settings(["--onednn", "fast"])
