#!/usr/bin/env bash
# Fine-tune and eval throughput of paint against plain PyTorch on one GPU, at real model sizes (issue 16).
#
# Builds random full-size ViT-B/32 and ViT-L/14 CLIPs (no download: throughput depends on shapes, not
# weights) and runs benchmarks/bench_finetune.py for each in fp32 and bf16: paint's fine-tuning loop
# (frozen-head recipe through Accelerate) against a bare PyTorch loop, interleaved, then eval
# (paint's predict against a bare get_image_features loop), with img/s, paint/plain ratios and peak
# GPU memory. Designed to finish in under 8 minutes on one recent GPU; every case has its own
# time limit (CASE_TIMEOUT seconds), so one slow case cannot eat the others' time.
#
#   bash benchmarks/gpu_check.sh                     # from the repository root
#   PY=.venv/bin/python OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# Figures go to stdout and, as JSON per case, to $OUT (default: gpu-check-results/).
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-gpu-check-results}
CASE_TIMEOUT=${CASE_TIMEOUT:-100}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PAINT_PROGRESS=0
mkdir -p "$OUT"

"$PY" - <<'EOF' || { echo "gpu_check: no CUDA device visible to torch" >&2; exit 2; }
import torch, transformers, accelerate
assert torch.cuda.is_available()
print(f"torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}")
print(f"GPU {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF

failed=0
#      arch precision batch steps repeats
cases=(
    "b32 fp32 128 20 2"
    "b32 bf16 128 20 2"
    "l14 fp32 32 10 2"
    "l14 bf16 32 10 2"
)
start=$(date +%s)
for c in "${cases[@]}"; do
    read -r arch prec batch steps repeats <<<"$c"
    name="$arch-$prec"
    echo "=== $name: batch $batch, $steps steps, $repeats repeats ==="
    if ! timeout "$CASE_TIMEOUT" "$PY" benchmarks/bench_finetune.py --arch "$arch" --device cuda --precision "$prec" \
        --batch "$batch" --steps "$steps" --repeats "$repeats" --json "$OUT/$name.json"; then
        echo "=== $name FAILED or timed out (limit ${CASE_TIMEOUT}s) ==="
        failed=1
    fi
    echo "    (elapsed $(($(date +%s) - start)) s)"
done
exit $failed
