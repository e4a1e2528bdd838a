"""Images per second of the exported decoder (and encoder) at several batch sizes, eager vs TorchScript.

Run: .venv/bin/python benchmarks/decoder_throughput.py [--repo deploy/model_repository] [--name mnist]
Prints a table. Numbers on a shared machine are noisy: compare rows of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def images_per_second(module: torch.jit.ScriptModule, example: torch.Tensor, seconds: float) -> float:
    with torch.inference_mode():
        for _ in range(3):
            module(example)  # warm-up (TorchScript profiles the first calls)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            module(example)
            done += example.shape[0]
        return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path("deploy/model_repository"))
    parser.add_argument("--name", default="mnist")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 64, 256])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    metadata = json.loads((args.repo / f"{args.name}.vae.json").read_text())
    latent_dim, image_shape = metadata["latent_dim"], metadata["image_shape"]
    parts = {
        "decoder": (metadata["decoder"]["model_name"], lambda b: torch.randn(b, latent_dim)),
        "encoder": (metadata["encoder"]["model_name"], lambda b: torch.rand(b, *image_shape)),
    }
    print(f"{args.name}: latent {latent_dim}, image {image_shape}, torch threads {args.threads}")
    print(f"{'module':8} {'batch':>6} {'images/s':>10} {'ms/batch':>9}")
    for part, (model_name, make) in parts.items():
        module = torch.jit.load(str(args.repo / model_name / "1" / "model.pt")).eval()
        for batch in args.batches:
            rate = images_per_second(module, make(batch), args.seconds)
            print(f"{part:8} {batch:>6} {rate:>10.0f} {1000 * batch / rate:>9.2f}")


if __name__ == "__main__":
    main()
