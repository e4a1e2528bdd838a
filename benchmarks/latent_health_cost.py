"""What the live latent-health metrics cost, so they can be left on (service/latent_health.py).

1. Per call: LatentHealth.posterior (KL histogram + ring buffer of posterior means) and log_likelihood for a batch,
   next to the encoder's own TorchScript call for the same batch; and one scrape (collect(): the active-unit count).
2. End to end: Encode(one image) requests per second from concurrent clients, latent health on vs off, the two
   configurations alternated round by round in one run (the machine is noisy: compare the medians of one run).

Run: .venv/bin/python benchmarks/latent_health_cost.py [--repo deploy/model_repository] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.config import Settings
from service.inprocess import serving, stub_for
from service.latent_health import LatentHealth
from vae_client.codecs import array_to_tensor
from vae_client.proto_gen.vae.v1 import vae_pb2
from vaecore.repository import load_default, load_repository


def per_call_us(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats * 1e6


def micro(repo: Path, threads: int) -> None:
    models = load_repository(repo)
    model = load_default(repo)
    name = model.name
    torch.set_num_threads(threads)
    encoder = torch.jit.load(str(model.torchscript_path(model.encoder))).eval()
    health = LatentHealth(models)
    rng = np.random.default_rng(0)
    print(f"model {name}: latent {model.latent_dim}, image {model.image_shape}, torch threads {threads}")
    print(f"{'batch':>6} {'encoder us':>11} {'posterior us':>13} {'score us':>9} {'overhead':>9}")
    for batch in (1, 16, 64, 256):
        images = torch.rand(batch, *model.image_shape)
        mu = rng.standard_normal((batch, model.latent_dim)).astype(np.float32)
        logvar = rng.standard_normal((batch, model.latent_dim)).astype(np.float32) - 3
        log_px = -rng.uniform(60, 120, batch)
        with torch.inference_mode():
            encode_us = per_call_us(lambda images=images: encoder(images), 50)
        post_us = per_call_us(lambda mu=mu, logvar=logvar: health.posterior(name, mu, logvar), 2000)
        score_us = per_call_us(lambda log_px=log_px: health.log_likelihood(name, log_px), 2000)
        print(f"{batch:>6} {encode_us:>11.1f} {post_us:>13.1f} {score_us:>9.1f} {post_us / encode_us:>8.1%}")
    scrape_us = per_call_us(lambda: list(health.collect()), 500)
    print(f"one scrape of the latent-health collector ({len(models)} model(s), window full): {scrape_us:.0f} us\n")


def encode_rate(settings: Settings, image: np.ndarray, clients: int, seconds: float) -> float:
    request = vae_pb2.EncodeRequest(images=vae_pb2.Images(tensor=array_to_tensor(image)))
    counts: list[int] = []
    with serving(settings) as server, stub_for(server) as stub:
        stub.Encode(request)
        stop_at = time.perf_counter() + seconds

        def client() -> None:
            n = 0
            while time.perf_counter() < stop_at:
                stub.Encode(request)
                n += 1
            counts.append(n)

        workers = [threading.Thread(target=client) for _ in range(clients)]
        began = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return sum(counts) / (time.perf_counter() - began)


def end_to_end(repo: Path, seconds: float, rounds: int, clients: int) -> None:
    model = load_default(repo)
    image = np.random.default_rng(1).random((1, *model.image_shape), dtype=np.float32)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds):
        for enabled in (False, True) if r % 2 == 0 else (True, False):
            settings = Settings(
                host="127.0.0.1", port=0, metrics_port=-1, model_repository=repo, torch_threads=1, latent_health=enabled
            )
            rates[enabled].append(encode_rate(settings, image, clients, seconds))
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"Encode(1 image), {clients} clients, {rounds} alternated rounds of {seconds:g} s, median req/s:")
    print(f"{'latent health':>14} {'req/s':>8}   rounds")
    print(f"{'off':>14} {off:>8.0f}   {', '.join(f'{v:.0f}' for v in rates[False])}")
    print(f"{'on':>14} {on:>8.0f}   {', '.join(f'{v:.0f}' for v in rates[True])}")
    print(f"on / off = {on / off:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("deploy/model_repository"))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the encoder timing")
    args = parser.parse_args()
    micro(args.repo, args.threads)
    end_to_end(args.repo, args.seconds, args.rounds, args.clients)


if __name__ == "__main__":
    main()
