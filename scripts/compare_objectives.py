"""Compare VAEs trained with different objectives (e.g. ELBO vs MMD-VAE) on the numbers the literature compares:
test ELBO and importance-weighted NLL, active units, how far the aggregate posterior is from the prior (MMD^2),
and a grid of samples from the prior for each. Writes `<out>/objectives.json` and `<out>/samples_<name>.png`.

    python scripts/compare_objectives.py --model elbo=runs/mnist/elbo/best.pt --model mmd=runs/mnist/mmd/best.pt \
        --k 1000 --images 2000 --out docs/images/objectives
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import plots
from training.config import TrainConfig
from training.data import fixed_binarization, load_dataset
from training.evaluate import evaluate
from training.mmd import mmd2
from training.model import ConvVAE, load_checkpoint

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2015: a unit is active when Cov_x(E_q[u|x]) exceeds this


def active_units(means: np.ndarray) -> int:
    """Latent dimensions whose posterior mean varies across inputs: the ones the decoder can use."""
    return int((means.var(axis=0) > ACTIVE_THRESHOLD).sum())


@torch.inference_mode()
def aggregate_mmd(model: ConvVAE, x: torch.Tensor, seed: int = 0) -> float:
    """MMD^2 between one z ~ q(z|x) per image and as many prior draws: how well q(z) matches p(z)."""
    generator = torch.Generator().manual_seed(seed)
    mu, logvar = model.encoder(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator)
    return float(mmd2(z, torch.randn(z.shape, generator=generator)))


def compare(name: str, checkpoint: Path, k: int, images: int, out: Path) -> dict[str, float | int | str]:
    model, saved = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(saved["train_config"])
    test = load_dataset(config.dataset, config.data_dir).test
    x = fixed_binarization(test.images, seed=0)
    torch.manual_seed(0)
    result = evaluate(model, x[:images], k, progress=False)
    means = plots.encode_mean(model, test.images)
    plots.plot_samples(model, out / f"samples_{name}.png", seed=0)
    selected = saved["history"][saved["epoch"] - 1]  # best.pt's history ends at the epoch it kept
    return {
        "name": name,
        "objective": config.objective,
        "epoch": saved["epoch"],
        "epochs": config.epochs,
        "test_elbo": result.test_elbo,
        "test_nll": result.test_nll,
        "test_nll_stderr": result.test_nll_stderr,
        "importance_samples": k,
        "images": images,
        "active_units": active_units(means),
        "latent_dim": model.config.latent_dim,
        "aggregate_mmd2": aggregate_mmd(model, x[:2000]),
        "valid_recon": selected["valid_recon"],
        "valid_kl": selected["valid_kl"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT (repeat)")
    p.add_argument("--k", type=int, default=1000, help="importance samples per image")
    p.add_argument("--images", type=int, default=2000, help="first N test images for the NLL")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.model:
        name, path = spec.split("=", 1)
        rows.append(compare(name, Path(path), args.k, args.images, args.out))
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "objectives.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
