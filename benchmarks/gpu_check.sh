#!/usr/bin/env bash
# GPU check of `--gpu-workers N`: one short training on GPU workers, with
# mixed precision, then a check that every worker saw a GPU.
#
#   benchmarks/gpu_check.sh [N]         # on a machine with N >= 1 GPUs
#   benchmarks/gpu_check.sh --cpu       # the same plumbing on CPU workers
#
# Needs .venv (make venv) and ../shared/data. Runs ingest, embed, histories,
# train (1 epoch, at most 20k examples scored) into runs/gpu-check and reads
# the workers' `gpus_per_worker` from training.json. Exit 0 when it holds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export RAY_AUTH_MODE=token RAY_TMPDIR=${RAY_TMPDIR:-/tmp/ray-gpucheck}
mkdir -p "$RAY_TMPDIR"

if [[ "${1:-}" == "--cpu" ]]; then
    workers=0
    flags=(--num-workers 1)
else
    workers=${1:-1}
    command -v nvidia-smi > /dev/null && nvidia-smi -L
    flags=(--gpu-workers "$workers" --mixed-precision True)
fi

"$PY" jobs/pipeline.py --name gpu-check --epochs 1 --batch-size 512 \
    --id-baseline False --max-eval-examples 20000 "${flags[@]}"

"$PY" - "$workers" <<'PY'
import json, sys
workers = int(sys.argv[1])
epochs = json.load(open("runs/gpu-check/training.json"))
gpus = [epoch["gpus_per_worker"] for epoch in epochs]
metrics = json.load(open("runs/gpu-check/metrics.json"))
print(f"gpus_per_worker={gpus} model hr@100={metrics['model']['hr@100']:.4f}")
if workers and min(gpus) < 1:
    sys.exit(f"--gpu-workers {workers}: a worker saw no GPU ({gpus}).")
if metrics["model"]["hr@100"] <= 0.0:
    sys.exit("The model hit nothing: training on this device went wrong.")
print("GPU check passed." if workers else "CPU plumbing check passed.")
PY
