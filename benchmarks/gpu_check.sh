#!/usr/bin/env bash
# Fine-tune and eval throughput, peak memory and multi-process agreement of paint on one GPU at real sizes (issue 16).
#
# One command, designed to finish in under 8 minutes on one H200 (a total budget, BUDGET seconds, caps it;
# a step that would start past the budget is skipped and reported, never silently dropped):
#   1. random full-size ViT-B/32 and ViT-L/14 CLIPs (no download: throughput depends on shapes, not
#      weights), benchmarks/bench_finetune.py per model, one process per model: paint's fine-tuning
#      (frozen-head recipe through Accelerate) against a bare PyTorch loop, interleaved, for
#        fp32       mixed_precision: no     (TF32 matmuls: paint's CUDA default, tf32: null)
#        bf16       mixed_precision: bf16   (autocast, fp32 master weights)
#        bf16-ckpt  bf16 + gradient_checkpointing: true
#      then eval img/s (paint's predict against a bare get_image_features loop) for fp32 and bf16,
#      with peak GPU memory for every row;
#   2. benchmarks/ddp_check.py: 2 processes x batch B against 1 process x 2B, losses and weights
#      compared (NCCL DDP with 2+ GPUs, plus FSDP; with one GPU the ranks run on the CPU over gloo);
#   3. if time is left, ViT-B/32 bf16 + compile: true (inductor; the first steps compile).
#
#   bash benchmarks/gpu_check.sh                      # from anywhere; on a CUDA machine
#   PY=.venv/bin/python OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh --device cpu --tiny  # dry run on a CPU: every step, tiny model, ~2 min
#
# Figures go to stdout and, as JSON per step, to $OUT (default: gpu-check-results/); a table at the end.
# Its "loss" column is paint's last-run mean loss per variant, same data and seed: bf16 rows should be
# within ~2% of the fp32 row (the tolerance tests/test_speed.py holds bf16 to on a CPU).
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-gpu-check-results}
BUDGET=${BUDGET:-450}          # seconds for the whole check (8 min = 480 s, minus start-up)
CASE_TIMEOUT=${CASE_TIMEOUT:-170}
DEVICE=cuda
TINY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        *) echo "gpu_check: unknown argument $1 (use --device cpu|cuda, --tiny)" >&2; exit 2 ;;
    esac
done
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PAINT_PROGRESS=0
mkdir -p "$OUT"

if [ "$DEVICE" = cuda ]; then
    "$PY" - <<'EOF' || { echo "gpu_check: no CUDA device visible to torch" >&2; exit 2; }
import torch, transformers, accelerate
assert torch.cuda.is_available()
print(f"torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 native {torch.cuda.is_bf16_supported(including_emulation=False)}")
EOF
fi

#      name   arch precisions                 batch steps repeats
if [ "$TINY" = 1 ]; then
    cases=("b32 tiny fp32,bf16,bf16-ckpt 8 2 1" "l14 tiny fp32,bf16,bf16-ckpt 4 2 1")
    compile_case="b32-compile tiny bf16-compile 8 2 1"
    ddp_args=(--arch tiny --batch 8 --steps-per-epoch 2 --epochs 2)
else
    cases=("b32 b32 fp32,bf16,bf16-ckpt 128 50 2" "l14 l14 fp32,bf16,bf16-ckpt 64 16 2")  # enough steps that setup is not the figure
    compile_case="b32-compile b32 bf16-compile 128 20 1"
    ddp_args=(--arch b32 --batch 32 --steps-per-epoch 4 --epochs 2 --fsdp)
fi

start=$(date +%s)
failed=0
left() { echo $((BUDGET - ($(date +%s) - start))); }
limit() { local l; l=$(left); [ "$l" -lt "$CASE_TIMEOUT" ] && echo "$l" || echo "$CASE_TIMEOUT"; }

bench() {  # name arch precisions batch steps repeats
    local name=$1 arch=$2 precs=$3 batch=$4 steps=$5 repeats=$6 t
    t=$(limit)
    if [ "$t" -lt 30 ]; then
        echo "=== $name SKIPPED: $(left) s of the ${BUDGET} s budget left ==="
        return
    fi
    echo "=== $name ($arch): $precs, batch $batch, $steps steps, $repeats repeats (limit ${t}s) ==="
    if ! timeout "$t" "$PY" benchmarks/bench_finetune.py --arch "$arch" --device "$DEVICE" --precision "$precs" \
        --batch "$batch" --steps "$steps" --repeats "$repeats" --json "$OUT/$name.json"; then
        echo "=== $name FAILED or timed out (limit ${t}s) ==="
        failed=1
    fi
    echo "    (elapsed $(($(date +%s) - start)) s)"
}

for c in "${cases[@]}"; do
    # shellcheck disable=SC2086
    bench $c
done

t=$(limit)
echo "=== ddp: 2 processes vs 1 with the same global batch (limit ${t}s) ==="
if ! timeout "$t" "$PY" benchmarks/ddp_check.py --device "$DEVICE" "${ddp_args[@]}" --timeout "$t" \
    --out "$OUT/ddp" --json "$OUT/ddp.json"; then
    echo "=== ddp FAILED, mismatched or timed out ==="
    failed=1
fi
echo "    (elapsed $(($(date +%s) - start)) s)"

# shellcheck disable=SC2086
bench $compile_case

"$PY" - "$OUT" <<'EOF'
import json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
print(f"\n{'case':<12} {'variant':<13} {'paint img/s':>11} {'plain img/s':>11} {'ratio':>6} {'peak GiB':>8} {'eval img/s':>10} {'loss':>7}  runtime")
for f in sorted(out.glob("*.json")):
    if f.name == "ddp.json":
        continue
    for variant, row in json.loads(f.read_text()).get("variants", {}).items():
        med = lambda xs: statistics.median(xs) if xs else float("nan")
        peak = max(row["finetune_peak_gib"]["paint"], default=float("nan"))
        ev = f"{med(row['eval']['paint']):10.1f}" if "eval" in row else f"{'-':>10}"
        rt = row.get("runtime", {})
        what = f"{rt.get('mixed_precision')} tf32={rt.get('tf32')} ckpt={rt.get('gradient_checkpointing')} compile={rt.get('compile')}"
        print(f"{f.stem:<12} {variant:<13} {med(row['finetune']['paint']):11.1f} {med(row['finetune']['plain']):11.1f} "
              f"{med(row['finetune_ratio']):6.3f} {peak:8.2f} {ev} {row['final_loss']['paint']:7.4f}  {what}")
ddp = out / "ddp.json"
if ddp.exists():
    d = json.loads(ddp.read_text())
    for k in ("ddp", "fsdp"):
        r = d.get(k)
        if isinstance(r, dict):
            print(f"{k}: {r['type']} on {d['device']} ({d['arch']}, {d['precision']}): loss max rel diff {r['loss_max_rel_diff']:.2e} -> {'OK' if r['ok'] else 'MISMATCH'}")
        elif r:
            print(f"{k}: {r}")
EOF
echo "gpu_check: total $(($(date +%s) - start)) s of a ${BUDGET} s budget; exit $failed"
exit $failed
