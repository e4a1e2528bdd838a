"""The model limit: the shipped TorchScript encoder and decoder called in-process, no transport, no batcher.

Called as the local backend calls them (numpy in, `torch.from_numpy`, inference mode, numpy out), with the same
torch thread count as the service, so a service figure divided by this one is the share of the model's speed
the serving path keeps. Each batch size is timed with oneDNN's convolution kernels and with PyTorch's own, and
the faster counts (the service picks per network the same way, service/backends/kernels.py).

    python -m benchmarks.raw [--threads 0] [--seconds 1] [--batches 1 2 4 ... 512] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaecore.repository import ModelSpec, load_default

DEFAULT_REPOSITORY = Path(__file__).resolve().parents[1] / "deploy" / "model_repository"
BATCHES = [2**i for i in range(10)]  # 1 .. 512


def images_per_second(module: torch.jit.ScriptModule, rows: np.ndarray, seconds: float) -> float:
    """Calls back to back for `seconds` after a warm-up (TorchScript profiles and specializes the first calls)."""
    with torch.inference_mode():
        for _ in range(3):
            module(torch.from_numpy(rows))
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            first, second = module(torch.from_numpy(np.ascontiguousarray(rows)))
            first.numpy(), second.numpy()
            done += rows.shape[0]
        return done / (time.perf_counter() - started)


def inputs(model: ModelSpec, network: str, batch: int) -> np.ndarray:
    rng = np.random.default_rng(batch)
    if network == "decoder":
        return rng.standard_normal((batch, model.latent_dim), dtype=np.float32)
    return rng.random((batch, *model.image_shape), dtype=np.float32)


def measure(repo: Path, threads: int, seconds: float, batches: list[int], model_name: str = "") -> list[dict[str, Any]]:
    """One row per network and batch size: images/s of `model_name` in `repo` (default: the repository's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
    model = load_default(repo, model_name)
    rows = []
    for network in ("encoder", "decoder"):
        spec = model.encoder if network == "encoder" else model.decoder
        module = torch.jit.load(str(model.torchscript_path(spec))).eval()
        for batch in batches:
            rates = {}
            for onednn in (True, False):
                setattr(torch.backends.mkldnn, "enabled", onednn)  # noqa: B010 (typed as a descriptor)
                rates[onednn] = images_per_second(module, inputs(model, network, batch), seconds / 2)
            setattr(torch.backends.mkldnn, "enabled", True)  # noqa: B010
            rate = max(rates.values())
            rows.append(
                {
                    "kind": "raw",
                    "model": model.name,
                    "network": network,
                    "batch": batch,
                    "threads": torch.get_num_threads(),
                    "images_per_s": rate,
                    "onednn": rates[True] >= rates[False],
                    "images_per_s_onednn": rates[True],
                    "images_per_s_native": rates[False],
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--model", default="", help="which model (default: the repository's default model)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--seconds", type=float, default=1.0, help="per batch size")
    parser.add_argument("--batches", type=int, nargs="+", default=BATCHES)
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    args = parser.parse_args(argv)
    rows = measure(args.repo, args.threads, args.seconds, args.batches, args.model)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'network':8} {'batch':>6} {'images/s':>10} {'ms/batch':>9}   (torch threads {rows[0]['threads']})")
    for row in rows:
        rate = row["images_per_s"]
        print(f"{row['network']:8} {row['batch']:>6} {rate:>10.0f} {1000 * row['batch'] / rate:>9.2f}")


if __name__ == "__main__":
    main()
