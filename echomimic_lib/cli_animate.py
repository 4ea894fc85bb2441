"""``echomimic animate`` and ``echomimic download``."""
from __future__ import annotations

import argparse

from .animate import AnimateRequest, default_models_dir
from .cli import _say

VERSION_DEFAULT_MODE = {"v1": "audio", "v2": "halfbody"}
MODE_VERSION = {"audio": "v1", "landmarks": "v1", "audio+landmarks": "v1", "halfbody": "v2"}


def _mode_name(version: str | None, mode: str | None) -> str:
    from .errors import EchoMimicError

    if mode is None:
        mode = VERSION_DEFAULT_MODE[version or "v1"]
    if version is not None and MODE_VERSION[mode] != version:
        raise EchoMimicError(f"mode '{mode}' belongs to EchoMimic {MODE_VERSION[mode].upper()}, not {version.upper()}: "
                             f"use --version {MODE_VERSION[mode]} or another --mode.")
    return {"audio": "v1-audio", "landmarks": "v1-landmarks", "audio+landmarks": "v1-audio+landmarks", "halfbody": "v2-halfbody"}[mode]


def _cmd_animate(args) -> int:
    from tqdm import tqdm

    from .animate import run

    req = AnimateRequest(
        reference=args.reference, audio=args.audio, output=args.output, mode=_mode_name(args.version, args.mode), acc=args.acc,
        models=args.models, landmarks=args.landmarks, parts=args.parts, pose=args.pose, retime=args.retime, steps=args.steps,
        cfg=args.cfg, seed=args.seed, fps=args.fps, width=args.width, height=args.height, length=args.length,
        context_frames=args.context_frames, context_overlap=args.context_overlap, dtype=args.dtype, device=args.device,
        download=not args.offline, face_crop=not args.no_face_crop, mediapipe_model=args.mediapipe_model,
    )
    bar = tqdm(total=0, unit="window", desc="sampling", disable=args.quiet)

    def progress(done, total):
        bar.total = total
        bar.update(done - bar.n)

    try:
        s = run(req, progress)
    finally:
        bar.close()
    line = f"wrote {s['output']}: {s['frames']} frames ({s['video_seconds']} s of video) in {s['seconds']} s, peak RSS {s['peak_rss_gb']} GB"
    if "peak_vram_gb" in s:
        line += f", peak VRAM {s['peak_vram_gb']} GB"
    _say(line)
    return 0


def _cmd_download(args) -> int:
    from .download import ensure_weights

    root = args.models or default_models_dir()
    files = ensure_weights(root, args.weights, args.variant, download=True)
    for k, v in files.items():
        if v is not None:
            _say(f"{k}: {v}")
    return 0


def add_commands(sub) -> None:
    a = sub.add_parser("animate", help="render a talking-head (V1) or half-body (V2) video", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a.add_argument("--reference", required=True, help="reference image")
    a.add_argument("--audio", required=True, help="driving speech (wav/mp3/flac/...; any sample rate)")
    a.add_argument("-o", "--output", required=True, help="output .mp4 (H.264 + the input audio)")
    a.add_argument("--version", choices=["v1", "v2"], default=None, help="EchoMimic release (default: from --mode, else v1)")
    a.add_argument("--mode", choices=list(MODE_VERSION), default=None, help="driving mode")
    a.add_argument("--acc", action="store_true", help="few-step accelerated weights (6 steps, cfg 1)")
    a.add_argument("--landmarks", help="V1 landmark modes: a driving video or a folder of V1 .pkl landmark frames")
    a.add_argument("--parts", help="landmark parts to draw, e.g. eyes,brows,pupils,nose[,mouth,iris,oval]")
    a.add_argument("--pose", help="V2: a released hand-pose folder (N.npy) or our .npz")
    a.add_argument("--retime", default="ping-pong", choices=["ping-pong", "loop", "hold-last", "stretch", "fail"],
                   help="how a landmark/pose sequence shorter than the audio is extended")
    a.add_argument("--models", help=f"models folder (default: $ECHOMIMIC_MODELS or {default_models_dir()})")
    a.add_argument("--offline", action="store_true", help="never download; fail listing the missing files")
    a.add_argument("--steps", type=int)
    a.add_argument("--cfg", type=float)
    a.add_argument("--seed", type=int)
    a.add_argument("--fps", type=float, default=24.0)
    a.add_argument("--width", type=int)
    a.add_argument("--height", type=int)
    a.add_argument("--length", type=int, help="max frames (default: follow the audio)")
    a.add_argument("--context-frames", type=int, default=12)
    a.add_argument("--context-overlap", type=int, default=3)
    a.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    a.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    a.add_argument("--no-face-crop", action="store_true", help="V1 audio mode: use the whole image when no face crop is wanted")
    a.add_argument("--mediapipe-model", help="path of face_landmarker_v2_with_blendshapes.task (default: models folder / download)")
    a.add_argument("-q", "--quiet", action="store_true")
    a.set_defaults(func=_cmd_animate)

    d = sub.add_parser("download", help="download the weights of one model set into the models folder")
    d.add_argument("--weights", choices=["v1_audio", "v1_pose", "v2"], default="v1_audio")
    d.add_argument("--variant", choices=["normal", "acc"], default="normal")
    d.add_argument("--models", help="models folder")
    d.set_defaults(func=_cmd_download)
