"""Latent arithmetic through the real service: each row of the picture is one Arithmetic request over gRPC,
with its terms named by the model's attribute vectors, e.g. "mean_Woman + Technologist" on the emoji model,
"mean_Female + Eyeglasses" on a CelebA model. A row sweeps the weight of the last term from 0 to `--max-weight`.

    python scripts/arithmetic_picture.py --model emoji --row mean_Woman+Technologist --row mean_Man+Technologist \
        --out docs/images/emoji/arithmetic.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.config import Settings
from service.inprocess import serving
from vae_client.client import VaeClient
from vae_client.images import save_grid


def row(vae: VaeClient, expression: str, weights: np.ndarray) -> np.ndarray:
    """One image per weight w: decode(sum of all terms but the last, + w * last)."""
    *base, last = expression.split("+")
    return np.concatenate(
        [vae.arithmetic([(1.0, name) for name in base] + [(float(w), last)], seed=0).images for w in weights]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=Path("deploy/model_repository"))
    p.add_argument("--model", required=True)
    p.add_argument("--row", action="append", required=True, help="ATTR+ATTR+...: the last one is swept")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--max-weight", type=float, default=1.5)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    weights = np.linspace(0.0, args.max_weight, args.steps)
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=args.repo)
    with serving(settings) as server, VaeClient(server.address, model=args.model) as vae:
        rows = [row(vae, expression, weights) for expression in args.row]
    print(save_grid(np.concatenate(rows), args.steps, args.out))


if __name__ == "__main__":
    main()
