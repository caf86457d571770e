#!/usr/bin/env bash
# One short GPU run (a few minutes): paper-scale VL-JEPA (frozen ViT-L, 300M Y-encoder,
# 8-layer 1B-class predictor; random weights of those shapes) trained in bf16-mixed, with and
# without activation checkpointing, and with DDP over every visible GPU: samples/s and peak
# memory. Writes benchmarks/results/gpu_check.json (and $OUT/gpu_check.json when $OUT is set,
# as on a lent device machine), then prints the table.
#
#   bash benchmarks/gpu_check.sh                     # on a machine with CUDA GPUs
#   SMOKE=1 bash benchmarks/gpu_check.sh             # the same code on the CPU, tiny shapes
#   BATCH_SIZE=32 bash benchmarks/gpu_check.sh       # per-GPU batch (default 64, the paper's)
#
# It needs torch with CUDA, lightning, transformers, torchmetrics, safetensors, tensorboard,
# pyyaml and pillow, plus webdataset and braceexpand (jepa_lightning's data package imports
# them; on the lent H200 image these two are the missing ones): where pip cannot reach an
# index, bring their wheels (pure Python) in a folder .whl at the repository root, e.g.
#   pip download --no-deps -d .whl webdataset braceexpand
# and they are installed from there. The package itself is used from src/ (no install).
set -euo pipefail
cd "$(dirname "$0")/.."

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"

imports="import jepa_lightning.modules, jepa_lightning.tools.shapes"
if ! "$PYTHON" -c "$imports" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/gpu_check_site .whl/*.whl
        export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"
    fi
    "$PYTHON" -c "$imports" || {
        echo "a package is missing (above): pip install it, or put its wheel in .whl/" >&2
        exit 2
    }
fi

args=(--batch-size "${BATCH_SIZE:-64}" --threads "${THREADS:-8}")
out=benchmarks/results/gpu_check.json
if [[ "${SMOKE:-0}" == 1 ]]; then
    args=(--smoke --threads "${THREADS:-1}")
    out=benchmarks/results/smoke/gpu_check.json
else
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
    "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" ||
        { echo "no CUDA GPU visible: use SMOKE=1 for the CPU check" >&2; exit 2; }
fi
"$PYTHON" benchmarks/gpu_check.py "${args[@]}" --out "$out"
if [[ -n "${OUT:-}" ]]; then
    cp "$out" "$OUT/"
fi
