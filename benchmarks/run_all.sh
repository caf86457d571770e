#!/usr/bin/env bash
# Runs every CPU benchmark, one at a time, at one thread count, then rewrites
# benchmarks/RESULTS.md from their JSON files (benchmarks/results/*.json).
#
#   bash benchmarks/run_all.sh                 # the full set (about an hour on 2 free cores)
#   THREADS=2 bash benchmarks/run_all.sh       # another torch thread count (every side alike)
#   LEARNING=0 bash benchmarks/run_all.sh      # without the two full training runs (~10 min)
#   SMOKE=1 bash benchmarks/run_all.sh         # tiny sizes, results under benchmarks/results/smoke
#
# Run it alone on the machine: other programs running beside it make the times noise (each
# result records the load average at its start). The GPU check is separate: gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${THREADS:-1}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
smoke=()
results=benchmarks/results
table=(--out benchmarks/RESULTS.md)
if [[ "${SMOKE:-0}" == 1 ]]; then
    smoke=(--smoke)
    results=benchmarks/results/smoke
    table=(--out "$results/RESULTS.md" --include-smoke)
fi

# open_clip's ClipLoss is a baseline of bench_info_nce.py (only its loss.py is used).
has_open_clip="import importlib.util, sys; sys.exit(importlib.util.find_spec('open_clip') is None)"
if ! python -c "$has_open_clip"; then
    echo "installing the benchmark-only baseline: pip install --no-deps open-clip-torch"
    python -m pip install --quiet --no-deps "open-clip-torch>=2.20,<4" ||
        echo "  (not installed: bench_info_nce.py leaves its side out)"
fi

load="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)"
if python -c "import sys; sys.exit(float('$load') < 0.5)"; then
    echo "warning: load average $load: something else is running; the times will be noisy"
fi

run() {
    local script="$1" name
    shift
    name="${script#bench_}"
    echo "=== $script $*"
    python "benchmarks/$script" --threads "$THREADS" --out "$results/${name%.py}.json" \
        "${smoke[@]}" "$@"
}

# The training step first (the issue's main row), then the rest; each script alternates its
# own sides, so the order between scripts does not favour a side.
run bench_precision.py
run bench_lightning_overhead.py
run bench_recall.py
run bench_data_pipeline.py
run bench_worker_start.py
run bench_feature_cache.py
run bench_video_decode.py
run bench_info_nce.py
if [[ "${LEARNING:-1}" == 1 ]]; then
    run bench_learning.py
fi
# Needs a trained captioner (jepa-lightning export-decoder, docs/DECODING.md); tiny under SMOKE.
if [[ -n "${CAPTIONER:-}" || "${SMOKE:-0}" == 1 ]]; then
    run bench_selective_decoding.py ${CAPTIONER:+--model "$CAPTIONER"}
fi
python benchmarks/results_table.py --results "$results" "${table[@]}"
