"""What the latent-health metrics read for in- and out-of-distribution traffic, to size the drift alert.

Serves the shipped MNIST model in-process and Scores N images of each kind (MNIST test images as clients send
them (grayscale) and binarized as in the model's evaluation; Fashion-MNIST; uniform noise), printing the mean
NLL and KL that `vae_score_nll_nats` and `vae_latent_kl_nats` would show, next to the test NLL in the metadata.

Run: .venv/bin/python scripts/drift_reference.py [--n 300] [--samples 100]
(needs Debian's dataset-fashion-mnist for the Fashion-MNIST rows)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.config import Settings
from service.inprocess import serving
from training.data import load_dataset
from vae_client.client import VaeClient
from vaecore.repository import load_default


def kinds(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    mnist = load_dataset("mnist").test.images[:n].reshape(-1, 1, 28, 28)
    fashion = load_dataset("fashion-mnist").test.images[:n].reshape(-1, 1, 28, 28)
    return {
        "MNIST test, grayscale": mnist,
        "MNIST test, binarized": (rng.random(mnist.shape) < mnist).astype(np.float32),
        "Fashion-MNIST test": fashion,
        "uniform noise": rng.random(mnist.shape, dtype=np.float32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("deploy/model_repository"))
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args()
    model = load_default(args.repo)
    print(f"model {model.name}: test NLL {model.test_nll:.2f} nats (k={model.test_nll_samples}, binarized test set)")
    print(f"{'inputs':24} {'mean NLL':>9} {'p10':>8} {'p90':>8} {'mean KL':>8}")
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=args.repo)
    with serving(settings) as server, VaeClient(server.address) as vae:
        for name, images in kinds(args.n, np.random.default_rng(0)).items():
            scores = vae.score(images.astype(np.float32), samples=args.samples, seed=1)
            nll = -np.array([s.log_likelihood for s in scores])
            kl = np.array([s.kl for s in scores])
            p10, p90 = np.percentile(nll, [10, 90])
            print(f"{name:24} {nll.mean():>9.1f} {p10:>8.1f} {p90:>8.1f} {kl.mean():>8.1f}", flush=True)


if __name__ == "__main__":
    main()
