"""``echomimic dub``: new speech for an existing video of a person (see :mod:`echomimic_lib.jobs.dub`)."""
from __future__ import annotations

from ..frames.composite import COLOR_METHODS, REGIONS
from ..jobs.models_folder import default_models_dir
from ..retime import POLICIES
from .common import ProgressBar, add_run_options, say


def _cmd_dub(args) -> int:
    from ..jobs.speech_input import probe_speech

    if args.audio:
        probe_speech(args.audio)  # a wrong file is refused before torch and the models load
    from ..jobs.dub import DubRequest, run_dub

    req = DubRequest(
        video=args.video, audio=args.audio, output=args.output, acc=args.acc, models=args.models,
        reference_frame=args.reference_frame, parts=args.parts, retime=args.retime, steps=args.steps, cfg=args.cfg,
        seed=args.seed, fps=args.fps, width=args.width, height=args.height,
        length=args.length or None,  # 0: follow the audio, as animate's --length 0 (and the length check's words) say
        context_frames=args.context_frames, context_overlap=args.context_overlap, dtype=args.dtype, device=args.device,
        download=not args.offline, mediapipe_model=args.mediapipe_model, region=args.mask, feather=args.feather,
        dilation=args.dilation, color=args.color_match, compile=args.compile, cuda_graphs=args.cuda_graphs,
        deep_cache=args.deep_cache, deep_cache_branch=args.deep_cache_branch, resumable=args.resumable,
    )
    bar = progress = ProgressBar(desc="sampling", unit="window", disable=args.quiet)  # opens at the first window, after
    try:  # the face tracking and the model load, so its rate and ETA are the sampler's
        s = run_dub(req, progress)
    finally:
        bar.close()
    w, h = s["size"]
    say(f"wrote {s['output']}: {s['frames']} frames at {s['fps']:g} fps ({s['video_seconds']} s, {w}x{h}), reference frame "
         f"{s['reference_frame']}, crop {s['crop']}, {s['passthrough']} frame(s) without a face copied, in {s['seconds']} s")
    return 0


def add_commands(sub) -> None:
    d = sub.add_parser("dub", help="give a video of a person new speech (V1 audio + the video's own landmarks)")
    d.add_argument("--video", required=True, help="source video of one person (any size and frame rate)")
    d.add_argument("--audio", help="new speech (wav/mp3/...); without it the dub follows the video's landmarks alone "
                                   "(landmark-only 'L' mode, mouth included, the video's own sound)")
    d.add_argument("-o", "--output", required=True, help="output .mp4 at the source's size and frame rate")
    d.add_argument("--reference-frame", type=int, help="frame of the video used as the reference (default: the first "
                                                      "clear frontal face)")
    d.add_argument("--parts", help="landmark parts taken from the video (default eyes,brows,pupils,nose; add mouth for "
                                   "the lips from the video too; '' = none)")
    d.add_argument("--retime", default="ping-pong", choices=list(POLICIES),
                   help="how the video is extended when the audio is longer (a shorter audio cuts it)")
    d.add_argument("--mask", default="hull", choices=list(REGIONS),
                   help="paste-back region: the face landmarks' hull, V1's face box, or the whole crop")
    d.add_argument("--feather", type=float, default=16.0, help="soft edge of the paste-back region, in source pixels")
    d.add_argument("--dilation", type=float, default=0.15, help="grow the region by this fraction of the face size")
    d.add_argument("--color-match", default="off", choices=list(COLOR_METHODS),
                   help="match the generated face's colours to the video (lab: mean/std in Lab; histogram)")
    d.add_argument("--acc", action="store_true", help="few-step accelerated weights (6 steps, cfg 1)")
    d.add_argument("--models", help=f"models folder (default: $ECHOMIMIC_MODELS or {default_models_dir()})")
    d.add_argument("--offline", action="store_true", help="never download; fail listing the missing files")
    d.add_argument("--steps", type=int, help="denoising steps, 1..200 (default: 30, or 6 with --acc)")
    d.add_argument("--cfg", type=float, help="classifier-free guidance scale, 0..20; 1 or less switches it off "
                                             "(default: 2.5, or 1.0 with --acc)")
    d.add_argument("--seed", type=int, help="random seed, 0..2^64-1 (default: 420, as the reference)")
    d.add_argument("--fps", type=float, default=24.0, help="the model's frame rate (the output keeps the source's)")
    d.add_argument("--width", type=int, default=512, help="width of the generated face crop in pixels, a multiple of 8")
    d.add_argument("--height", type=int, default=512, help="height of the generated face crop in pixels, a multiple of 8")
    d.add_argument("--length", type=int, help="at most this many generated frames, at the model's fps (default: 0 = "
                                              "follow the audio)")
    add_run_options(d)
    d.add_argument("--resumable", action="store_true",
                   help="long dubs: keep the denoising state beside the output (OUTPUT.resume); the same command run again "
                        "goes on from the last kept step (as `animate --resumable`)")
    d.add_argument("--mediapipe-model", help="MediaPipe's face_landmarker.task for tracking the face "
                                             "(default: <models>/mediapipe/face_landmarker.task, downloaded unless --offline)")
    d.set_defaults(func=_cmd_dub)
