#!/usr/bin/env bash
# Every GPU claim ablate makes, measured in one run on a lent GPU (about 8 minutes on one H100/H200), into one
# results folder whose results.md goes into docs/benchmarks.md:
#   1. tests/test_gpu.py (CUDA-only tests: bf16 autocast, the fused head, DDP/FSDP on one device);
#   2. ablate's step against TRL 1.16's (DPOTrainer with its fused head and a precomputed reference;
#      CPOTrainer's CPO-SimPO) on the Qwen2.5-0.5B architecture, bf16, LoRA r=16, 1,024 tokens: tokens/s,
#      peak memory, MFU (benchmarks/gpu_step.py, benchmarks/gpu_trl_step.py);
#   3. the same on the Llama-3.1-8B architecture with gradient checkpointing: does it fit one GPU, and how fast;
#   4. the embedded 2x2x3 sweep on CUDA, start to report.
#
#   bash benchmarks/gpu_all.sh [--out DIR]     # on the GPU machine (after carrying .whl: benchmarks/gpu_wheels.sh)
#   bash benchmarks/gpu_all.sh --dry-run        # every step on the CPU at toy size (CI runs this)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
OUT="benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: bash benchmarks/gpu_all.sh [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}  # the checkout's venv (bash .ci/setup), else python3
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export ABLATE_CACHE="${ABLATE_CACHE:-$OUT/cache}" HF_DATASETS_CACHE="$OUT/hf"
if [ -d .whl ] && ! $PY -c "import trl, hydra, datasets, submitit" 2>/dev/null; then  # a bare GPU machine
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ablate-site .whl/*.whl
  export PYTHONPATH="/tmp/ablate-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
if ! $PY -c "import ablate, trl, hydra, datasets, submitit, peft" 2>"$OUT/imports.log"; then
  echo "gpu_all: missing Python packages ($(tail -1 "$OUT/imports.log")); on a machine without a package index," \
       "run bash benchmarks/gpu_wheels.sh where there is one and carry .whl" >&2
  exit 2
fi

STEPS="$OUT/steps.tsv"
: > "$STEPS"
step() {  # step NAME LIMIT_S COMMAND...: its log in $OUT/NAME.log, its exit status and wall time in steps.tsv
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$STEPS"
  tail -n 1 "$OUT/$name.log"
}

if [ "$DRY" = 1 ]; then
  DEV=(--device cpu --tokens 64 --pairs 2 --steps 2 --warmup 1)
  MODELS=(tiny) ; BIG=tiny ; BIGSTEPS=(--device cpu --tokens 64 --pairs 2 --steps 2 --warmup 1)
  SWEEP=(objective=dpo,simpo lora.r=8,16 seed=0 trainer.max_steps=4 trainer.eval_every=2 device=cpu)
  step gpu_tests 300 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py --collect-only
else
  DEV=(--device cuda)
  MODELS=(qwen2.5-0.5b) ; BIG=llama-3.1-8b ; BIGSTEPS=(--device cuda --steps 4 --warmup 1 --gradient-checkpointing)
  SWEEP=(objective=dpo,simpo lora.r=8,16 seed=0,1,2 device=cuda)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
  step gpu_tests 300 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
fi
for model in "${MODELS[@]}"; do
  for objective in dpo simpo; do  # alternated: a load change hits both sides alike
    step "ablate-$model-$objective" 300 $PY benchmarks/gpu_step.py --model "$model" --objective "$objective" "${DEV[@]}"
    step "trl-$model-$objective" 300 $PY benchmarks/gpu_trl_step.py --model "$model" --objective "$objective" "${DEV[@]}"
  done
done
step "ablate-$BIG-dpo-fits" 400 $PY benchmarks/gpu_step.py --model "$BIG" --objective dpo "${BIGSTEPS[@]}"
step "trl-$BIG-dpo-fits" 400 $PY benchmarks/gpu_trl_step.py --model "$BIG" --objective dpo "${BIGSTEPS[@]}"
step embedded-sweep 600 $PY -m ablate -m "${SWEEP[@]}" "hydra.sweep.dir=$OUT/embedded"
$PY benchmarks/gpu_report.py "$OUT" $([ "$DRY" = 1 ] && echo --dry-run) > "$OUT/results.md"
status=$?
cat "$OUT/results.md"
exit $status
