#!/usr/bin/env bash
# Reproduces the shipped default MNIST model (deploy/model_repository/): ELBO pre-training, then fine-tuning
# on the importance-weighted bound (k=5), which tightens the model's test NLL (Burda et al. 2015).
# CPU cost on 2 cores: see README.md. Usage: scripts/train_default_model.sh [RUN_DIR] [THREADS]
set -euo pipefail
run=${1:-runs/mnist}
threads=${2:-2}
py=${PYTHON:-python}
$py -m training train --dataset mnist --out "$run/elbo" --epochs 100 --objective elbo \
  --kl-warmup-epochs 10 --lr 1e-3 --min-lr 1e-4 --latent-dim 32 --threads "$threads" --seed 0 --resume
$py -m training train --dataset mnist --out "$run/iwae" --epochs 40 --objective iwae --train-samples 5 \
  --lr 3e-4 --min-lr 1e-5 --latent-dim 32 --threads "$threads" --seed 1 --resume --init-from "$run/elbo/best.pt"
