"""Decoder speed of candidate networks side by side: what a deeper decoder costs Sample and Decode.

Each decoder is scripted as the exporter scripts it and timed the way `benchmarks.raw` times the shipped one
(numpy in and out, inference mode, the faster of oneDNN and PyTorch's own kernels), in interleaved rounds so a
noisy machine slows every candidate alike; the table gives the median over rounds and the ratio to the first.

    python -m benchmarks.decoders --checkpoint shallow=runs/a/best.pt deep=runs/b/best.pt [--repo-model mnist]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from benchmarks.raw import DEFAULT_REPOSITORY, images_per_second
from training.export import script_modules
from training.model import load_checkpoint
from vaecore.repository import load_default


def decoders(specs: list[str], repo_model: str | None) -> dict[str, tuple[torch.jit.ScriptModule, int]]:
    """name -> (TorchScript decoder, latent size): the repository's model first when asked, then each checkpoint."""
    found = {}
    if repo_model is not None:
        spec = load_default(DEFAULT_REPOSITORY, repo_model)
        shipped = torch.jit.load(str(spec.torchscript_path(spec.decoder))).eval()
        found[f"{spec.name} (shipped)"] = (shipped, spec.latent_dim)
    for named in specs:
        name, path = named.split("=", 1)
        model, _ = load_checkpoint(Path(path))
        found[name] = (script_modules(model)[1].eval(), model.config.latent_dim)
    return found


def fastest(module: torch.jit.ScriptModule, rows: np.ndarray, seconds: float) -> float:
    rates = []
    for onednn in (True, False):
        setattr(torch.backends.mkldnn, "enabled", onednn)  # noqa: B010 (typed as a descriptor)
        rates.append(images_per_second(module, rows, seconds / 2))
    setattr(torch.backends.mkldnn, "enabled", True)  # noqa: B010
    return max(rates)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", default=[], help="NAME=CHECKPOINT")
    p.add_argument("--repo-model", help="also the shipped decoder of this model (first row: the reference)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=1.0, help="per decoder and round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    found = decoders(args.checkpoint, args.repo_model)
    rates: dict[str, list[float]] = {name: [] for name in found}
    for _ in range(args.rounds):
        for name, (module, latent) in found.items():
            rows = np.random.default_rng(0).standard_normal((args.batch, latent), dtype=np.float32)
            rates[name].append(fastest(module, rows, args.seconds))
    first = statistics.median(next(iter(rates.values())))
    print(f"decoder images/s at batch {args.batch}, {args.threads} torch threads, median of {args.rounds} rounds")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:24} {rate:>9.0f}  x{rate / first:.2f}  (rounds {min(values):.0f}..{max(values):.0f})")


if __name__ == "__main__":
    main()
