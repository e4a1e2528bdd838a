#!/usr/bin/env bash
# GPU-machine sessions (the lent "device": 16 cores, one H100, no network, Python 3.12, torch, no grpc): what one
# call runs, so the few device minutes go to measuring, not to setting up. Two modes, each one call:
#
#   scripts/device_run.sh train   # IWAE k=50 epochs from the shipped mnist_deep, then its k=5000 test evaluation
#   scripts/device_run.sh bench   # the benchmark suite on 16 cores (workers 1 2 4 8) into $OUT/bench/
#
# Carried files (the `run` tool's `carry`, 64 MiB with the tracked tree, so train and bench carry different ones):
#   train: .devcarry/data/mnist.pkl.gz   (the SHA-checked MNIST pickle: cp "$VAE_DATA_CACHE"/mnist.pkl.gz)
#   bench: .devcarry/whl/*.whl           (cp312 wheels; prepare here with
#          pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --no-deps \
#            -d .devcarry/whl grpcio==1.85.3 grpcio-health-checking==1.81.1 grpcio-reflection==1.81.1 \
#            grpcio-status==1.85.3 protobuf==6.33.6 googleapis-common-protos==1.76.0)
# Env: BUDGET (seconds until every step must have stopped, default 540), EPOCHS (train, default 40),
# BENCH_ARGS (bench, replaces the default suite flags). Results land in $OUT (the run tool's folder).
set -u
mode=${1:?usage: scripts/device_run.sh train|bench}
OUT=${OUT:-/tmp/device-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
deadline=$(( $(date +%s) + ${BUDGET:-540} ))
left() { local s=$(( deadline - $(date +%s) )); echo $(( s > 1 ? s : 1 )); }
nvidia-smi -L 2>/dev/null; nproc

case $mode in
  train)
    export VAE_DATA_CACHE=/tmp/vaecache; mkdir -p "$VAE_DATA_CACHE"; cp .devcarry/data/mnist.pkl.gz "$VAE_DATA_CACHE"/
    run=/tmp/runs/mnist-deep-more
    # training stops with 100 s left for the evaluation (64 s alone on an H100)
    timeout $(( $(left) - 100 )) python3 -m training train --dataset mnist \
      --out "$run/iwae" --objective iwae --train-samples 50 --epochs "${EPOCHS:-40}" --batch-size 128 --lr 1e-4 \
      --min-lr 1e-5 --seed 4 --latent-dim 32 --encoder-blocks 2 --decoder-blocks 1 --device cuda --threads 1 \
      --init-from deploy/model_repository/mnist_deep.vae.json > "$OUT/train.log" 2>&1
    echo "train exit $?"; tail -3 "$OUT/train.log"
    timeout "$(left)" python3 -m training evaluate --checkpoint "$run/iwae/best.pt" --k 5000 --device cuda --threads 1 \
      --out "$OUT/evaluation.json" > "$OUT/evaluate.log" 2>&1
    echo "evaluate exit $?"; cat "$OUT/evaluation.json"
    # Only what export needs (EMA weights, configs, history): a file back from the device must stay under 16 MB.
    python3 - "$run/iwae/best.pt" "$OUT/best.pt" <<'PY'
import sys, torch
c = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
torch.save({k: v for k, v in c.items() if k not in ("model_state", "optimizer_state", "scheduler_state")}, sys.argv[2])
PY
    ;;
  bench)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcarry/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
    timeout "$(left)" python3 -m benchmarks.suite --out "$OUT/bench" --no-triton ${BENCH_ARGS:---workers 1 2 4 8 \
      --seconds 1.0 --warmup 0.2 --warmup-load 0.3 --inflight 1 64 --methods Sample Encode --stream-n 20000 \
      --torch-threads 1 --raw-batches 1 64 --loadgen-procs 4} 2>&1 | tee "$OUT/bench.log" | tail -60 ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
