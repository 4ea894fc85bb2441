"""``echomimic animate`` and ``echomimic download``."""
from __future__ import annotations

from ..jobs.models_folder import default_models_dir
from ..retime import POSE_POLICIES
from ..temporal import STABILIZE_DEFAULT, STABILIZE_LEVELS
from .common import add_run_options, ProgressBar, say

VERSION_DEFAULT_MODE = {"v1": "audio", "v2": "halfbody"}
MODE_VERSION = {"audio": "v1", "landmarks": "v1", "audio+landmarks": "v1", "halfbody": "v2"}


def _mode_name(version: str | None, mode: str | None) -> str:
    from ..errors import EchoMimicError

    if mode is None:
        mode = VERSION_DEFAULT_MODE[version or "v1"]
    if version is not None and MODE_VERSION[mode] != version:
        raise EchoMimicError(f"mode '{mode}' belongs to EchoMimic {MODE_VERSION[mode].upper()}, not {version.upper()}: "
                             f"use --version {MODE_VERSION[mode]} or another --mode.")
    return {"audio": "v1-audio", "landmarks": "v1-landmarks", "audio+landmarks": "v1-audio+landmarks", "halfbody": "v2-halfbody"}[mode]


def request_from_args(args):
    from ..jobs.animate import AnimateRequest
    from ..jobs.lora_args import request_fields

    lora, lora_strength = request_fields(args.lora, args.lora_strength)  # counts and duplicates refused here
    return AnimateRequest(
        reference=args.reference, audio=args.audio, output=args.output, mode=_mode_name(args.version, args.mode), acc=args.acc,
        models=args.models, landmarks=args.landmarks, parts=args.parts, pose=args.pose, retime=args.retime, steps=args.steps,
        gesture_library=args.gesture_library, expressiveness=args.expressiveness,
        cfg=args.cfg, seed=args.seed, fps=args.fps, width=args.width, height=args.height, length=args.length,
        context_frames=args.context_frames, context_overlap=args.context_overlap, dtype=args.dtype, device=args.device,
        download=not args.offline, face_crop=not args.no_face_crop, mediapipe_model=args.mediapipe_model,
        lora=lora, lora_strength=lora_strength, smoke=args.smoke,
        paste_back=args.paste_back, low_vram=args.low_vram, fp8=args.fp8, halfbody_crop=args.halfbody_crop, align_poses=args.align_poses,
        stabilize=args.stabilize, resumable=args.resumable,
        compile=args.compile, cuda_graphs=args.cuda_graphs, deep_cache=args.deep_cache,
        deep_cache_branch=args.deep_cache_branch,
    )


def _cmd_animate(args) -> int:
    from ..jobs.lora_args import request_fields
    from .v3 import check_family_options, cmd_animate_v3

    check_family_options(args)  # the other family's options are refused by name, before any work
    request_fields(args.lora, args.lora_strength)  # --lora / --lora-strength counts, a file given twice: before any work
    if args.version == "v3-flash":
        return cmd_animate_v3(args)
    from ..jobs.speech_input import probe_speech

    if args.audio:
        probe_speech(args.audio)  # a wrong file is refused before torch and the models load
    import torch

    from ..jobs.animate import run

    req = request_from_args(args)
    threads = torch.get_num_threads()
    if args.smoke:  # tiny tensors: extra intra-op threads only add synchronisation (10x slower on a busy CPU)
        torch.set_num_threads(1)
    bar = ProgressBar("sampling", "window", disable=args.quiet)
    landmarks = ProgressBar("driving landmarks", "frame", disable=args.quiet)  # V1 landmark modes from a video
    try:
        s = run(req, bar, landmark_progress=landmarks)
    finally:
        landmarks.close()
        bar.close()
        torch.set_num_threads(threads)
    line = f"wrote {s['output']}: {s['frames']} frames ({s['video_seconds']} s of video) in {s['seconds']} s, peak RSS {s['peak_rss_gb']} GB"
    if "peak_vram_gb" in s:
        line += f", peak VRAM {s['peak_vram_gb']} GB"
    say(line)
    return 0


def _cmd_download(args) -> int:
    from ..errors import EchoMimicError
    from ..model_set import ensure_weights

    if args.weights == "v3-flash" and args.variant not in (None, "normal"):
        raise EchoMimicError(f"--variant {args.variant}: EchoMimicV3 flash-pro has one set of weights (8 steps); drop --variant")
    root = args.models or default_models_dir()
    files = ensure_weights(root, args.weights, args.variant or "normal", download=True, force=args.force)
    for k, v in files.items():
        if v is not None:
            say(f"{k}: {v}")
    return 0


def add_commands(sub) -> None:
    a = sub.add_parser("animate", help="render a talking-head (V1) or half-body (V2) video",
                       description="Render a video from a reference image and speech (V1: portrait, 512 px; V2: half-body, "
                                   "768 px). Everything that can be checked without weights is checked first.")
    a.add_argument("--reference", required=True, help="reference image: a portrait (V1), a half-body picture (V2) or the person, face to half "
                   "body (V3); png, jpg, webp")
    a.add_argument("--audio", help="driving speech: wav, mp3, flac, m4a or a video with sound; any sample rate (required, "
                                   "except with --mode landmarks: without it the landmarks alone drive the video)")
    a.add_argument("-o", "--output", required=True, help="output video, .mp4 (H.264 + the input audio); written under a temporary "
                                                         "name and renamed when complete, never replacing a folder or device")
    a.add_argument("--smoke", action="store_true",
                   help="quick install check: tiny random weights (written on first use to the default models folder's tiny/, "
                        "or into --models DIR itself: an empty or make-tiny folder), 64x64 px, 2 steps, "
                        "the first second of audio, offline; without a MediaPipe model the whole image is used")
    a.add_argument("--version", choices=["v1", "v2", "v3-flash"], default=None,
                   help="EchoMimic release (default: the one --mode belongs to, else v1); v3-flash: EchoMimicV3 flash-pro")
    a.add_argument("--mode", choices=list(MODE_VERSION), default=None, help="driving mode (default: audio for v1, halfbody for v2)")
    a.add_argument("--acc", action="store_true", help="few-step accelerated weights (6 steps, cfg 1)")
    a.add_argument("--landmarks", help="V1 landmark modes: a driving video, its landmarks saved once by `echomimic "
                                       "landmarks VIDEO -o FILE.npz` (.npz/.json: the same result, no MediaPipe pass over "
                                       "the video), or a folder of V1 .pkl landmark frames")
    a.add_argument("--parts", help="landmark parts to draw, e.g. eyes,brows,pupils,nose[,mouth,iris,oval] (default: the mode's)")
    a.add_argument("--pose", help="V2: a released hand-pose folder (0.npy, 1.npy, ...) or our .npz (`echomimic poses` "
                                  "makes both); a driving video: its hand poses extracted with DWPose (<models>/dwpose/); "
                                  "or 'auto': gestures generated from the speech out of --gesture-library")
    a.add_argument("--retime", default=None, choices=list(POSE_POLICIES),
                   help="how a landmark/pose sequence shorter than the audio is extended; continue (V2 poses, their default): "
                        "play it once, then carry on with gestures matched to the speech (ping-pong, logged, when the folder "
                        "holds no gesture); V1 landmarks: ping-pong by default")
    a.add_argument("--gesture-library", help="V2 --pose auto / --retime continue: a folder of pose folders (or one pose "
                                             "folder) to take gestures from (default: the models folder's poses/)")
    a.add_argument("--expressiveness", type=float, default=1.0, help="gestures from the speech: 0 (calm) .. 2 (lively)")
    a.add_argument("--models", help="models folder (default: $ECHOMIMIC_MODELS, else ~/.cache/echomimic, with --smoke its "
                                    "tiny/ sub-folder; a --models DIR given with --smoke is used as it is; v3-flash: <models>/tiny-v3)")
    a.add_argument("--offline", action="store_true", help="never download; fail listing the missing files")
    a.add_argument("--steps", type=int, default=0, help="denoising steps, 1..200 (default: 0 = 30, or 6 with --acc; 2 with --smoke)")
    a.add_argument("--cfg", type=float, default=0.0, help="classifier-free guidance scale, 0..20; 1 or less switches it off "
                                                          "(default: 0 = 2.5, or 1.0 with --acc)")
    a.add_argument("--seed", type=int, help="random seed, 0..2^64-1 (default: 420 for V1, 3407 for V2, as the reference)")
    a.add_argument("--fps", type=float, default=24.0, help="frames per second of the video, 1..120")
    a.add_argument("--width", type=int, help="video width in pixels, a multiple of 8, 64..2048 (default: 512 for V1, 768 for V2; "
                                             "64 with --smoke)")
    a.add_argument("--height", type=int, help="video height in pixels, a multiple of 8, 64..2048 (default: as --width)")
    a.add_argument("--length", type=int, default=0, help="number of video frames, at most the audio's (default: 0 = follow the "
                                                         "audio: floor(seconds x fps); 1 s worth with --smoke)")
    add_run_options(a)
    a.add_argument("--no-face-crop", action="store_true", help="V1 modes: animate the whole image instead of a crop "
                                                               "around the face (no MediaPipe model needed)")
    a.add_argument("--mediapipe-model", help="MediaPipe's face_landmarker.task for the V1 face crop and landmarks from a video "
                                             "(default: <models>/mediapipe/face_landmarker.task, downloaded unless --offline)")
    a.add_argument("--lora", action="append", help="LoRA adapter (.safetensors from `echomimic-train export`) for this "
                   "version's weights; with --version v3-flash a Wan2.1 1.3B LoRA (ComfyUI, lightx2v, kohya/musubi or "
                   "diffusers layout; docs/v3.md). Give it several times to stack adapters (merged: W + sum of strength x delta)")
    a.add_argument("--lora-strength", type=float, action="append", help="LoRA strength, -2..2 (default 1; 0 = the base "
                   "model exactly): once for every --lora, or once per --lora in the same order")
    a.add_argument("--low-vram", action="store_true", help="small GPUs: each network on the GPU only for its stage, the "
                   "denoiser streamed block by block (about 1.3x slower; same output)")
    a.add_argument("--fp8", action="store_true", help="store the UNet weights (V3: the transformer blocks' weights) in fp8 "
                   "(e4m3fn; half the memory of fp16, slightly different output)")
    a.add_argument("--paste-back", action="store_true", help="write the full-size reference picture with the result pasted "
                   "in (V1: the feathered face region; V2: the crop with a soft border)")
    a.add_argument("--halfbody-crop", action="store_true", help="V2: crop the reference to the half body like the V2 demos "
                   "(DWPose models in <models>/dwpose/)")
    a.add_argument("--align-poses", action="store_true", help="V2: move the pose sequence onto the reference's shoulders (DWPose)")
    a.add_argument("--resumable", action="store_true",
                   help="long renders: keep the denoising state beside the output (OUTPUT.resume, every 2 minutes and when "
                        "stopped by Ctrl-C, a kill or an error; V3: each finished chunk of speech over 81 frames in "
                        "OUTPUT.resume-v3/); the same command run again goes on from the last kept step or chunk "
                        "with the same frames (also after adding --low-vram); removed when the video is written")
    a.add_argument("--stabilize", choices=list(STABILIZE_LEVELS), default=STABILIZE_DEFAULT,
                   help="steady the driving keypoints before they are drawn: V1 landmarks from a video or file, V2 hand poses "
                        "(a detector's frame-to-frame shake becomes the video's jitter); off (default) draws them as detected")
    from .v3 import add_v3_arguments

    add_v3_arguments(a)
    a.set_defaults(func=_cmd_animate)

    d = sub.add_parser("download", help="download the weights of one model set into the models folder",
                       description="Download the missing files of one model set from Hugging Face into the models folder. "
                                   "A file that is there is kept (unless --force); a broken-off download leaves no file "
                                   "under its final name. v3-flash: the EchoMimicV3 flash-pro set in <models>/v3-flash "
                                   "(about 20 GB, the umT5-xxl text encoder alone 11.4 GB).")
    d.add_argument("--weights", choices=["v1_audio", "v1_pose", "v2", "v3-flash"], default="v1_audio",
                   help="model set (v3-flash: EchoMimicV3 flash-pro with its audio, text and image encoders)")
    d.add_argument("--variant", choices=["normal", "acc"], default=None,
                   help="V1/V2: normal (30 steps, the default) or acc (6 steps)")
    d.add_argument("--models", help="models folder (default: $ECHOMIMIC_MODELS, else ~/.cache/echomimic)")
    d.add_argument("--force", action="store_true", help="download the files of a missing component even where some are "
                   "already there, replacing them (never done without it)")
    d.set_defaults(func=_cmd_download)
