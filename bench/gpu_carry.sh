#!/usr/bin/env bash
# Prepare what bench/gpu_check.sh takes to a bare GPU machine (issue 23), here on the CPU machine:
#
#   bash bench/gpu_carry.sh            # writes .whl/ and .gpu_carry/ (both ignored by git; about 56 MiB together, the
#                                        working tree about 4.5 MiB more: the carry limit is 64 MiB)
#
# then, on the device tool, two commands in a row with carry [".whl", ".gpu_carry"] (one command may last 10 minutes):
# `GPU_STEPS=tests,attention,suite bash bench/gpu_check.sh "$OUT"`, then `GPU_STEPS=vram,animate bash bench/gpu_check.sh
# "$OUT"` (timeout_s 590 and 300); the trainer's
# check `bash bench/gpu_train_check.sh "$OUT"` needs only [".whl"] (accelerate, peft, safetensors are on the image).
# - .whl/: the wheels the GPU image lacks (diffusers, importlib_metadata, av, soxr) for CPython 3.12, x86-64;
# - .gpu_carry/parity.txz: the parity cases that run networks and fit beside the wheels (unet_forward and the
#   v1_audio_acc and v2 pipelines, .safetensors weights only, an index.json that lists just these), xz-packed;
# - .gpu_carry/{reference.png,speech.wav,pose.npz}: the animate step's inputs, from ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PARITY=${ECHOMIMIC_PARITY_DIR:-../shared/fixtures/parity}
DATA=../shared/data
grep -qx "/.gpu_carry/" .git/info/exclude 2>/dev/null || echo "/.gpu_carry/" >>.git/info/exclude
mkdir -p .whl .gpu_carry
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata av soxr
# diffusers' model-specific pipelines (never imported here) would not leave room for the parity cases in the carry
"$PY" bench/_slim_wheel.py .whl/diffusers-0.42.1-py3-none-any.whl "diffusers/pipelines/*" diffusers/modular_pipelines
cp "$DATA/images/portrait_a.png" .gpu_carry/reference.png
cp "$DATA/audio/echomimic_en.wav" .gpu_carry/speech.wav
"$PY" -c "import sys; sys.path.insert(0, '.')
from echomimic_lib.pose import load_pose
from echomimic_lib.pose.io import save_pose_npz
save_pose_npz(load_pose('$DATA/pose/01'), '.gpu_carry/pose.npz')"
STAGE=$(mktemp -d)
(cd "$PARITY" && cp -r --parents models/*.safetensors models/vae models/unet models/manifest.json models/inference_config.json \
    unet_forward pipelines/v1_audio_acc pipelines/v2 pipelines/*.safetensors "$STAGE/")
"$PY" - "$PARITY/index.json" "$STAGE/index.json" <<'EOF'
import json, sys
index = json.load(open(sys.argv[1]))
index["cases"] = [c for c in index["cases"] if c["name"] in {"unet_forward", "pipelines/v1_audio_acc", "pipelines/v2"}]
json.dump(index, open(sys.argv[2], "w"), indent=1)
EOF
chmod -R u+w "$STAGE"
tar -C "$STAGE" -cf - . | xz -9e -T2 -c >.gpu_carry/parity.txz
rm -rf "$STAGE"
du -sh .whl .gpu_carry
