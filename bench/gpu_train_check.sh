#!/usr/bin/env bash
# The trainer's GPU check of issue 26, one command on a bare GPU machine (about 4-5 minutes on an H200):
#
#   bash bench/gpu_train_check.sh [OUTDIR]              # CUDA: FSDP train/resume/export, plan vs measured memory, V3 LoRA
#   bash bench/gpu_train_check.sh --dry-run [OUTDIR]    # the same steps on the CPU, tiny (tests/test_gpu_train_check.py)
#
# On the device tool: `bash bench/gpu_train_check.sh "$OUT"` with carry [".whl"] (`bash bench/gpu_carry.sh` writes
# .whl/: diffusers, av, soxr, importlib_metadata; accelerate, peft and safetensors are on the GPU image). The
# wheels are installed as in bench/gpu_check.sh (pip --no-index into /tmp/site). Nothing else is carried: the
# FSDP test writes tiny weights and a synthetic prepared dataset, the plan step builds official-size networks with
# random weights on the GPU.
#
# Steps (each with its own time limit, seconds, GPU_TRAIN_LIMITS="fsdp plan v3"):
#   1. fsdp: `pytest -m cuda tests/test_cuda_train.py -k fsdp` -- one process (world size 1) trains the tiny
#      networks with distributed.strategy: fsdp, writes sharded checkpoints, resumes, exports (on the CPU the test
#      is collected and skips: accelerate enables FSDP only on accelerator devices); with it
#      tests/test_cuda_v3_train.py, a tiny EchoMimicV3 LoRA run in bf16 on cuda (resume, validation clips, export);
#   2. plan: bench/gpu_train_plan.py -- `echomimic-train plan`'s figure beside the measured peak memory of three
#      training steps (V1 stage 2 and V2 APDH phase 4 at batch 1), rows in OUTDIR/train_plan.jsonl;
#   3. v3: bench/bench_v3_train_memory.py --compare -- an EchoMimicV3 LoRA step (official size, rank 32, bf16, gradient
#      checkpointing) at 49 frames 512 px and 81 frames 768 px: the peak memory computed without a GPU beside
#      torch.cuda.max_memory_allocated of the same step with random weights, and seconds per step (3 timed), rows in
#      OUTDIR/v3_train.jsonl (the dry run: the tiny transformer, measured on the CPU by the allocation tracker).
# Each step writes OUTDIR/NAME.log as soon as it ends and one line {"step", "rc", "seconds", "limit_s"} to
# OUTDIR/steps.jsonl, so a run cut short returns what finished. Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUTDIR=$(mkdir -p "${1:-${OUT:-bench/results/gpu_train}}" && cd "${1:-${OUT:-bench/results/gpu_train}}" && pwd)
PY=${PYTHON:-python3}
LIMITS=$([[ $DRY == 1 ]] && echo "300 300 120" || echo "150 110 240")  # the dry run: a slow shared CPU
read -r LIM_FSDP LIM_PLAN LIM_V3 <<<"${GPU_TRAIN_LIMITS:-$LIMITS}"
: >"$OUTDIR/steps.jsonl"
: >"$OUTDIR/train_plan.jsonl"
: >"$OUTDIR/v3_train.jsonl"

source bench/_gpu_steps.sh  # the .whl install, PYTHONPATH, step()
export PYTHONUNBUFFERED=1
{
    date -u +"%Y-%m-%dT%H:%M:%SZ"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    "$PY" -c "import torch, diffusers, accelerate, peft, safetensors; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'diffusers', diffusers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__, 'safetensors', safetensors.__version__)"
    echo "dry-run: $DRY"
} >>"$OUTDIR/env.txt" 2>&1

# 1. FSDP through accelerate: train, sharded checkpoint, resume, export (skips cleanly without CUDA)
step fsdp "$LIM_FSDP" "$PY" -m pytest -m cuda -v -rfEs -p no:cacheprovider tests/test_cuda_train.py tests/test_cuda_v3_train.py -k "fsdp or v3"
# 2. the plan's memory figure beside the measured peak (rows appended to train_plan.jsonl as each case ends)
PLAN_ARGS=(--out "$OUTDIR" --timeout $((LIM_PLAN - 15)))
[[ $DRY == 1 ]] && PLAN_ARGS+=(--dry-run)
step plan "$LIM_PLAN" "$PY" bench/gpu_train_plan.py "${PLAN_ARGS[@]}"
# 3. the V3 LoRA step: computed peak memory beside the measured one, seconds per step (rows appended as each ends)
V3_ARGS=(--compare 49x512:on,81x768:on --time-steps 3 --out "$OUTDIR/v3_train.jsonl")
[[ $DRY == 1 ]] && V3_ARGS=(--compare 9x32:on --preset tiny --measure-device cpu --time-steps 2 --out "$OUTDIR/v3_train.jsonl")
step v3 "${LIM_V3:-240}" "$PY" bench/bench_v3_train_memory.py "${V3_ARGS[@]}"
cat "$OUTDIR/steps.jsonl"
exit $FAILED
