#!/usr/bin/env bash
# The GPU check of issue 23 on a bare GPU machine, in two device commands (one command may run 10 minutes at most;
# the machine stays warm between them if the second follows at once):
#
#   GPU_STEPS=tests,attention,suite bash bench/gpu_check.sh "$OUT"   # ~7.5 min: CUDA tests, attention kernels, gpu_suite
#   GPU_STEPS=vram,animate bash bench/gpu_check.sh "$OUT"            # ~4 min: bench_vram --goals, two animate runs
#   GPU_STEPS=v3 bash bench/gpu_check.sh "$OUT"    # when the lease has time left: ~2.5 min with the machine warm
#       (limit 120 s): EchoMimicV3 flash-pro speed (bench/gpu_v3.py) and measured peak VRAM (bench/bench_vram_v3.py)
#   GPU_STEPS=deepcache bash bench/gpu_check.sh "$OUT"  # ~1 min: DeepCache's speed-up at 512 px (bench_deep_cache.py)
#   GPU_STEPS=v3fp8 bash bench/gpu_check.sh "$OUT"  # ~2 min: V3 with fp8 block weights (the --fp8 path), eager,
#       compiled and the 8-step shot (bench/gpu_v3.py --fp8), to set beside the v3 step's bf16 figures
#   bash bench/gpu_check.sh --dry-run [OUTDIR]    # every step on the CPU with tiny weights (tests/test_gpu_check.py)
#
# `bash bench/gpu_carry.sh` prepares what it takes along (.whl/ and .gpu_carry/, ~56 MiB with the
# working tree's ~4.5, the device carry limit is 64).
# Before the steps it installs the wheels carried in .whl/ (pip --no-index into /tmp/site: diffusers, av, soxr
# are not on the GPU image) and unpacks the parity subset carried as .gpu_carry/parity.txz (else
# ECHOMIMIC_PARITY_DIR or ../shared/fixtures/parity is used). Inputs of the animate step: GPU_REFERENCE,
# GPU_AUDIO, GPU_POSE (default: .gpu_carry/{reference.png,speech.wav,pose.npz}, else ../shared/data).
# Official-size random weights are written on the machine (bench/gpu_weights.py), never carried.
#
# Each step writes its log under OUTDIR (default: $OUT, else bench/results/gpu) as soon as it ends, and one
# line {"step", "rc", "seconds"} to OUTDIR/steps.jsonl, so a run cut short returns what finished. Each step has
# its own time limit (seconds, GPU_LIMITS="tests attention suite vram animate v3 deepcache v3fp8"); GPU_STEPS
# (comma-separated, default all eight) picks the steps. GPU_SUITE_PLAN replaces the suite's plan
# (version:variant pairs, see bench/gpu_suite.py). Exit status: 0 when every step passed.
# The trainer's GPU check (issue 26: FSDP train/resume/export, plan vs measured memory) is a separate script:
# bench/gpu_train_check.sh (carry [".whl"] only).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUTDIR=$(mkdir -p "${1:-${OUT:-bench/results/gpu}}" && cd "${1:-${OUT:-bench/results/gpu}}" && pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
# GPU: ~11 min in all (the lease is 15 with the machine's start); expected tests ~180 s (one cold regional compile
# of the official V1 for the graphs + compile test), attention ~20, vram ~80, animate ~140 (weights 15, V1 35, V2 65);
# v3 (a third command) ~120: gpu_v3 up to LIM_V3 - 45 s, its stages planned to end by LIM_V3 - 55, then bench_vram_v3.
LIMITS=$([[ $DRY == 1 ]] && echo "300 120 300 300 300 300 300 300" || echo "200 40 230 90 150 120 90 120")  # the dry run: a slow shared CPU
read -r LIM_TESTS LIM_ATTENTION LIM_SUITE LIM_VRAM LIM_ANIMATE LIM_V3 LIM_DEEP LIM_V3FP8 <<<"${GPU_LIMITS:-$LIMITS}"
LIM_V3=${LIM_V3:-$(echo "$LIMITS" | cut -d' ' -f6)}  # a GPU_LIMITS of the earlier steps only: the later keep their default
LIM_DEEP=${LIM_DEEP:-$(echo "$LIMITS" | cut -d' ' -f7)}
LIM_V3FP8=${LIM_V3FP8:-${LIMITS##* }}
STEPS=",${GPU_STEPS:-tests,attention,suite,vram,animate,v3,deepcache,v3fp8},"
want() { [[ $STEPS == *",$1,"* ]]; }
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
    SUITE=(--device cpu --tiny --repeat 1 --frames 12 --e2e-frames 12 --plan "v1:off+prof,v1:off+graphs,v1:off+cl+cudnn")
    ATTENTION=(--device cpu --tiny --repeat 1); ANIM_V1_ARGS=""
    VRAM=(--goals --preset tiny --device fake --report-only --long-frames 36); WEIGHTS_ARGS="--tiny --device cpu"
    ANIM_ARGS="--device cpu --dtype fp32 --width 64 --height 64 --steps 1 --length 4"
    V3_ARGS="--tiny --device cpu --frames 9 --repeat 1 --compile-backend aot_eager --budget-s $((LIM_V3 - 60))"
    V3_VRAM_ARGS="--preset tiny --device fake --size 64 --frames 9 --json"
    V3FP8_ARGS="--tiny --device cpu --frames 9 --repeat 1 --compile-backend aot_eager --budget-s $((LIM_V3FP8 - 30))"
    DEEP=(--preset tiny --device cpu --size 64 --steps 3 --repeat 1 --no-work)
else
    # The suite plan, most decision-relevant first (a cut-short step keeps every figure printed so far). Measured on
    # the first H200 run: start-up ~15 s, setup ~8 s per version, a cold regional compile ~53 s per batch shape,
    # one 250-frame acc clip ~14-16 s. Expected: v1:on+graphs (shapes single and single_x4 cold, cfg warm from the
    # tests) with the acc clip at 1 and 4 windows per call by ~170 s; then v2:on+graphs (its single shape and acc
    # figures, cut at the limit), v1:off+graphs+cl+cudnn (no compile: channels-last strides would compile anew) and
    # v1:off+graphs need a second suite run (GPU_SUITE_PLAN) when the lease allows. "prof" adds the kernel share of
    # each call shape, replayed and eager (a few seconds): how busy the GPU is and with what.
    SUITE=(--budget-s $((LIM_SUITE - 20)) --plan "${GPU_SUITE_PLAN:-v1:on+graphs+prof,v2:on+graphs+prof,v1:off+graphs+cl+cudnn,v1:off+graphs}")
    VRAM=(--goals --device cuda --json --computed bench/vram_computed.json); WEIGHTS_ARGS=""
    ANIM_ARGS="--device cuda --dtype fp16 --length 48"
    ATTENTION=(); ANIM_V1_ARGS="--cuda-graphs"
    # V3 flash-pro at the official shot (768x768, 81 frames, bf16): eager call, VAE decode, regional compile, the
    # 8-step shot, VAE encode, as the budget allows; then the measured peak (the computed one: 6.53 GB, --device fake)
    V3_ARGS="--budget-s $((LIM_V3 - 55))"; V3_VRAM_ARGS="--device cuda --json"
    V3FP8_ARGS="--budget-s $((LIM_V3FP8 - 20))"  # the shot's stages with fp8 block weights (no VAE: the v3 step has it)
    # DeepCache at V1's size and steps (30, CFG): a whole and the partial calls, then 24-frame loops off / 2 / 3
    DEEP=(--size 512 --frames 24 --steps 30 --repeat 3 --no-work)
fi

# One inductor cache for the tests and the suite: the tests' cold compile of the V1 CFG shape (its time is in
# cuda_report.jsonl) is then warm in the suite, which leaves the suite the time for V2.
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"
# 1. CUDA-only tests, the speed options first (they skip on the CPU: the dry run checks that they
# collect and skip cleanly)
want tests && ECHOMIMIC_GPU_REPORT="$OUTDIR/cuda_report.jsonl" step tests "$LIM_TESTS" \
    "$PY" -m pytest -m cuda -v -rfEs -p no:cacheprovider tests/test_cuda_speed.py tests/test_cuda.py
# 2. the denoiser's attention shapes on each SDPA kernel (which backend the 40-wide heads want)
want attention && step attention "$LIM_ATTENTION" "$PY" bench/gpu_attention.py "${ATTENTION[@]}"
# 3. every GPU figure of the suite
want suite && step suite "$LIM_SUITE" "$PY" bench/gpu_suite.py "${SUITE[@]}"
# 4. measured peak VRAM beside the computed figure, every goal row
want vram && step vram "$LIM_VRAM" "$PY" bench/bench_vram.py "${VRAM[@]}"
# 5. one V1 audio (with CUDA graphs: the command line's recording path) and one V2 half-body generation through the
# command line, timed per stage
animate() {
    set -e
    "$PY" bench/gpu_weights.py "$WORK/models" $WEIGHTS_ARGS
    "$PY" -m echomimic_lib.cli animate --models "$WORK/models" --version v1 --reference "$REFERENCE" --audio "$AUDIO" \
        --no-face-crop --offline -o "$WORK/v1.mp4" $ANIM_ARGS $ANIM_V1_ARGS
    "$PY" -m echomimic_lib.cli animate --models "$WORK/models" --version v2 --reference "$REFERENCE" --audio "$AUDIO" \
        --pose "$POSE" --offline -o "$WORK/v2.mp4" $ANIM_ARGS
    ls -l "$WORK"/v1.mp4 "$WORK"/v2.mp4
}
export -f animate
export PY WORK REFERENCE AUDIO POSE WEIGHTS_ARGS ANIM_ARGS ANIM_V1_ARGS
want animate && step animate "$LIM_ANIMATE" bash -c animate
# 6. EchoMimicV3 flash-pro: the speed of one transformer call, eager and compiled, with MFU, the 8-step shot and the
# VAE (bench/gpu_v3.py, a JSON line as each figure comes), then its peak VRAM measured (bench/bench_vram_v3.py),
# by default and with --fp8 --vae-tiling
v3() {
    local rc=0
    timeout --kill-after=5 $((LIM_V3 - 45)) "$PY" bench/gpu_v3.py $V3_ARGS || rc=$?
    "$PY" bench/bench_vram_v3.py $V3_VRAM_ARGS || rc=$?
    "$PY" bench/bench_vram_v3.py $V3_VRAM_ARGS --fp8 --vae-tiling || rc=$?  # the low-memory options (computed 4.69 GB)
    return $rc
}
export -f v3
export LIM_V3 V3_ARGS V3_VRAM_ARGS
want v3 && step v3 "$LIM_V3" bash -c v3
# 7. DeepCache (opt-in, changes the output): the partial calls' share and the loop's speed-up at 512 px
want deepcache && step deepcache "$LIM_DEEP" "$PY" bench/bench_deep_cache.py "${DEEP[@]}"
# 8. EchoMimicV3 with fp8 block weights (`--fp8`): one call eager and compiled, then the 8-step shot
want v3fp8 && step v3fp8 "$LIM_V3FP8" "$PY" bench/gpu_v3.py --fp8 --stages eager,compiled,sample_8_steps $V3FP8_ARGS
rm -rf "$WORK"
cat "$OUTDIR/steps.jsonl"
exit $FAILED
