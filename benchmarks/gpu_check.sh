#!/usr/bin/env bash
# GPU check, at most 10 minutes: Charter vs TRL, LoRA DPO in bf16 on a random-init Llama of about
# 1.2B parameters (Llama-3.2-1B's shape) built here from a config, since GPU machines download
# nothing. Prints tokens/s, peak GPU memory and MFU (6 x params x tokens/s over 989 TFLOP/s, the
# dense bf16 peak of an H100/H200) for each trainer, then `ratio tokens_per_s=X peak_gpu=Y`.
# TRL runs only where it is installed.
#
#   bash benchmarks/gpu_check.sh                      # on the GPU machine
#   SIZE=1m DEVICE=cpu STEPS=2 BATCH=2 bash benchmarks/gpu_check.sh   # the CPU smoke path (tests)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-1b}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-8}
BATCH=${BATCH:-16}
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
"$PYTHON" -c "import trl; print('trl', trl.__version__)" 2>/dev/null || echo "trl not installed: Charter only"
timeout 570 "$PYTHON" benchmarks/dpo_vs_trl.py --sizes "$SIZE" --device "$DEVICE" --precision bf16 --lora \
    --steps "$STEPS" --batch "$BATCH" "$@"
