#!/usr/bin/env bash
# The GPU check of issue 23, one command on a bare GPU machine:
#
#   bash bench/gpu_check.sh [OUTDIR]              # CUDA: CUDA tests, gpu_suite, bench_vram --goals, two animate runs
#   bash bench/gpu_check.sh --dry-run [OUTDIR]    # the same steps on the CPU with tiny weights (tests/test_gpu_check.py)
#
# `bash bench/gpu_carry.sh` prepares what it takes along (.whl/ and .gpu_carry/, ~61 MiB, the device carry limit is 64).
# Before the steps it installs the wheels carried in .whl/ (pip --no-index into /tmp/site: diffusers, av, soxr
# are not on the GPU image) and unpacks the parity subset carried as .gpu_carry/parity.txz (else
# ECHOMIMIC_PARITY_DIR or ../shared/fixtures/parity is used). Inputs of the animate step: GPU_REFERENCE,
# GPU_AUDIO, GPU_POSE (default: .gpu_carry/{reference.png,speech.wav,pose.npz}, else ../shared/data).
# Official-size random weights are written on the machine (bench/gpu_weights.py), never carried.
#
# Each step writes its log under OUTDIR (default: $OUT, else bench/results/gpu) as soon as it ends, and one
# line {"step", "rc", "seconds"} to OUTDIR/steps.jsonl, so a run cut short returns what finished. Each step has
# its own time limit (seconds, GPU_LIMITS="tests suite vram animate"). Exit status: 0 when every step passed.
# The trainer's GPU check (issue 26: FSDP train/resume/export, plan vs measured memory) is a separate script:
# bench/gpu_train_check.sh (carry [".whl"] only).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUTDIR=$(mkdir -p "${1:-${OUT:-bench/results/gpu}}" && cd "${1:-${OUT:-bench/results/gpu}}" && pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
LIMITS=$([[ $DRY == 1 ]] && echo "300 300 300 300" || echo "150 180 90 150")  # the dry run: a slow shared CPU
read -r LIM_TESTS LIM_SUITE LIM_VRAM LIM_ANIMATE <<<"${GPU_LIMITS:-$LIMITS}"
: >"$OUTDIR/steps.jsonl"

source bench/_gpu_steps.sh  # the .whl install, PYTHONPATH, step()
if [[ -f .gpu_carry/parity.txz ]]; then
    mkdir -p "$WORK/parity" && tar -xJf .gpu_carry/parity.txz -C "$WORK/parity" && export ECHOMIMIC_PARITY_DIR="$WORK/parity"
fi
pick() { for f in "$@"; do [[ -e "$f" ]] && { echo "$f"; return; }; done; echo "$1"; }
REFERENCE=${GPU_REFERENCE:-$(pick .gpu_carry/reference.png ../shared/data/images/portrait_a.png)}
AUDIO=${GPU_AUDIO:-$(pick .gpu_carry/speech.wav ../shared/data/audio/echomimic_en.wav)}
POSE=${GPU_POSE:-$(pick .gpu_carry/pose.npz ../shared/data/pose/01)}
{
    date -u +"%Y-%m-%dT%H:%M:%SZ"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    "$PY" -c "import torch, diffusers, transformers, av; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'av', av.__version__)"
    echo "parity: ${ECHOMIMIC_PARITY_DIR:-default}  reference: $REFERENCE  audio: $AUDIO  pose: $POSE  dry-run: $DRY"
} >>"$OUTDIR/env.txt" 2>&1

if [[ $DRY == 1 ]]; then
    SUITE=(--device cpu --tiny --no-compile --repeat 1 --frames 12 --e2e-frames 12 --versions v1)
    VRAM=(--goals --preset tiny --device fake --report-only); WEIGHTS_ARGS="--tiny --device cpu"
    ANIM_ARGS="--device cpu --dtype fp32 --width 64 --height 64 --steps 1 --length 4"
else
    SUITE=(--budget-s $((LIM_SUITE - 50)) --plan "v1:off,v2:off,v1:on,v2:on")
    VRAM=(--goals --device cuda --json --computed bench/vram_computed.json); WEIGHTS_ARGS=""
    ANIM_ARGS="--device cuda --dtype fp16 --length 48"
fi

# 1. CUDA-only tests (they skip on the CPU: the dry run checks that they collect and skip cleanly)
ECHOMIMIC_GPU_REPORT="$OUTDIR/cuda_report.jsonl" step tests "$LIM_TESTS" \
    "$PY" -m pytest -m cuda -v -rfEs -p no:cacheprovider tests/test_cuda.py
# 2. every GPU figure of the suite
step suite "$LIM_SUITE" "$PY" bench/gpu_suite.py "${SUITE[@]}"
# 3. measured peak VRAM beside the computed figure, every goal row
step vram "$LIM_VRAM" "$PY" bench/bench_vram.py "${VRAM[@]}"
# 4. one V1 audio and one V2 half-body generation through the command line, timed per stage
animate() {
    set -e
    "$PY" bench/gpu_weights.py "$WORK/models" $WEIGHTS_ARGS
    "$PY" -m echomimic_lib.cli animate --models "$WORK/models" --version v1 --reference "$REFERENCE" --audio "$AUDIO" \
        --no-face-crop --offline -o "$WORK/v1.mp4" $ANIM_ARGS
    "$PY" -m echomimic_lib.cli animate --models "$WORK/models" --version v2 --reference "$REFERENCE" --audio "$AUDIO" \
        --pose "$POSE" --offline -o "$WORK/v2.mp4" $ANIM_ARGS
    ls -l "$WORK"/v1.mp4 "$WORK"/v2.mp4
}
export -f animate
export PY WORK REFERENCE AUDIO POSE WEIGHTS_ARGS ANIM_ARGS
step animate "$LIM_ANIMATE" bash -c animate
rm -rf "$WORK"
cat "$OUTDIR/steps.jsonl"
exit $FAILED
