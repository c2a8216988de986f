#!/usr/bin/env bash
# One prepared GPU check (issue 26): everything that needs a CUDA GPU, in one go, into one folder.
#
#   bash bench/gpu_check.sh [OUT_DIR]        # default: $OUT if set (the device tool), else gpu-check/
#
# Steps (each timed, its exit code and the tail of its output recorded in OUT_DIR/results.md):
#   1. the machine: GPUs, torch/CUDA, Triton, ONNX Runtime providers;
#   2. pytest -m gpu: fused RAM kernel values and gradients vs the reference ops (1k/4k/16k keys);
#   3. AMP training steps (bf16) of segformer_tiny + RAM on the GPU, then its fp32 export;
#   4. harden attack --attack strongest (the chained ensemble) on the GPU, on that run;
#      harden verify --device cuda on that export (one process), and with torchrun + NCCL over
#      two GPUs when there are two;
#   5. bench/fused_ram_attention.py: fused vs unfused RAM vs flash SDPA (latency, peak memory);
#   6. bench/verify_throughput.py at 512x1024 (segformer_b0, pspnet_r50) with the time split.
# Without a GPU the GPU-only steps are recorded as "skipped (no CUDA GPU)" and steps 3, 4 and 6
# run small on the CPU, so the script itself is exercised on any machine. Budget on an H200:
# under 8 minutes. Nothing is installed: it runs from the working tree (PYTHONPATH).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT_DIR=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
RESULTS="$OUT_DIR/results.md"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)

{
  echo "# harden GPU check — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), CUDA GPUs: $GPUS"
  echo
} > "$RESULTS"

step() {  # step NAME NEEDS_GPU(yes|no) TIMEOUT_S COMMAND...
  local name=$1 needs=$2 limit=$3
  shift 3
  if [ "$needs" = yes ] && [ "$GPUS" -lt 1 ]; then
    printf '## %s\nskipped (no CUDA GPU)\n\n' "$name" >> "$RESULTS"
    echo "[skip] $name"
    return 0
  fi
  local log="$OUT_DIR/$(echo "$name" | tr ' /' '__').log" start end rc
  start=$(date +%s)
  timeout "$limit" "$@" > "$log" 2>&1
  rc=$?
  end=$(date +%s)
  {
    printf '## %s\n`%s`: exit %s in %s s\n\n```\n' "$name" "$*" "$rc" "$((end - start))"
    tail -n 25 "$log"
    printf '```\n\n'
  } >> "$RESULTS"
  echo "[exit $rc, $((end - start)) s] $name"
}

if [ "$GPUS" -ge 1 ]; then DEVICE=cuda; else DEVICE=cpu; fi
TRAIN=(--model segformer_tiny --ram --epochs 2 --image-size 64x128 --train-images 32 --val-images 8 --no-progress)
AMP=()
[ "$GPUS" -ge 1 ] && AMP=(--amp bf16)
FAST=(--images 4 --iters 5 --queries 20 --divergence-steps 5 --eps 4/255,8/255 --attack fgsm,pgd --no-progress)

step "machine" no 60 "$PY" -c "
import torch, onnxruntime as ort
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
for i in range(torch.cuda.device_count()): print(i, torch.cuda.get_device_name(i))
print('onnxruntime', ort.__version__, ort.get_available_providers())
try:
    import triton; print('triton', triton.__version__)
except ImportError: print('triton missing')
"
step "pytest -m gpu" yes 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_fused_attention.py
step "train on $DEVICE${AMP[*]:+ (AMP bf16)}" no 240 "$PY" -m harden train "${TRAIN[@]}" --device "$DEVICE" "${AMP[@]}" --out "$WORK/run"
step "export fp32" no 240 "$PY" -m harden export "$WORK/run" --out "$WORK/export" --parity-images 2
step "attack strongest on $DEVICE" no 240 "$PY" -m harden attack "$WORK/run" --attack strongest --eps 8/255 --iters 5 \
  --images 8 --eot 2 --device "$DEVICE" --no-progress --out "$WORK/attack"
step "verify --device $DEVICE" no 300 "$PY" -m harden verify "$WORK/export" --twin graph --twin "$WORK/run" \
  --device "$DEVICE" --out "$WORK/verify-1" "${FAST[@]}"
if [ "$GPUS" -ge 2 ]; then
  step "verify torchrun 2 GPUs (NCCL)" yes 300 "$PY" -m torch.distributed.run --nproc-per-node 2 -m harden verify \
    "$WORK/export" --twin graph --twin "$WORK/run" --device cuda --out "$WORK/verify-2" "${FAST[@]}"
  step "one process and two agree" yes 60 "$PY" -c "
import json, sys
a, b = (json.load(open(f'$WORK/verify-{n}/verify.json')) for n in (1, 2))
figures = lambda r: (r['clean'], [w['engine'] for w in r['worst_case']], r['verdict'])
print('one process:', figures(a)); print('two processes:', figures(b))
sys.exit(0 if figures(a) == figures(b) else 1)"
else
  printf '## verify torchrun 2 GPUs (NCCL)\nskipped (%s CUDA GPU)\n\n' "$GPUS" >> "$RESULTS"
fi
cp "$WORK/verify-1/verify.json" "$OUT_DIR/verify-1.json" 2>/dev/null
step "bench fused RAM attention" yes 240 "$PY" bench/fused_ram_attention.py --out "$OUT_DIR/fused_ram_attention.json"
if [ "$GPUS" -ge 1 ]; then
  step "bench verify throughput" no 300 "$PY" bench/verify_throughput.py --device cuda --size 512x1024 \
    --models segformer_b0,pspnet_r50 --queries 20 --out "$OUT_DIR/verify_throughput.json"
else
  step "bench verify throughput (CPU, small)" no 300 "$PY" bench/verify_throughput.py --device cpu --size 64x128 \
    --models segformer_tiny --repeats 2 --queries 20 --out "$OUT_DIR/verify_throughput.json"
fi
echo "results: $RESULTS"
grep -q "exit [1-9]" "$RESULTS" && exit 1
exit 0
