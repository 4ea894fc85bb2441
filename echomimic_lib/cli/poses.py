"""``echomimic poses``: a V2 hand-pose sequence made once (DWPose from a driving video, or gestures from speech),
kept as a pose folder or .npz, looked at (``--preview``) and reused by ``animate --pose`` and batch rows
(the work: :mod:`echomimic_lib.jobs.poses`)."""
from __future__ import annotations

from ..temporal import STABILIZE_DEFAULT, STABILIZE_LEVELS
from .common import ProgressBar, say


def _cmd_poses(args) -> int:
    from ..jobs.poses import PosesRequest, run_poses

    req = PosesRequest(output=args.output, video=args.video, audio=args.audio, models=args.models, download=not args.offline,
                       on_missing=args.on_missing, gesture_library=args.gesture_library,
                       expressiveness=args.expressiveness, seed=args.seed, fps=args.fps, length=args.length,
                       preview=args.preview, preview_audio=args.preview_audio, width=args.width, height=args.height,
                       force=args.force, stabilize=args.stabilize)
    bar = ProgressBar("hand poses", "frame", disable=args.quiet)
    try:
        s = run_poses(req, bar)
    finally:
        bar.close()
    line = f"wrote {s['output']} ({s['format']}): {s['frames']} frames at {s['fps']:g} fps ({s['frames'] / s['fps']:.2f} s)"
    if args.video:
        n = len(s["missing_frames"])
        line += f", no person found in {n} frame{'' if n == 1 else 's'}"
        if n:
            line += f" (first: {s['missing_frames'][:10]}, filled by '{s['on_missing']}')"
    else:
        line += f", gestures from the speech ({s['sequence'].report.summary()})" if s["sequence"].report else ""
    if s["preview"]:
        line += f"; preview {s['preview']}"
    say(line)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("poses", help="make a V2 hand-pose sequence once: DWPose from a driving video, or gestures from "
                                     "speech; keep it as a pose folder or .npz",
                       description="Make an EchoMimicV2 hand-pose sequence and keep it: from a driving video (DWPose on "
                                   "every frame, half-body cropped, as the Hand-Pose Sequence Loader node) or from speech "
                                   "(gestures, as `animate --pose auto` and the Gestures from Audio node, same defaults). "
                                   "-o a folder writes the released format (0.npy, 1.npy, ...), -o NAME.npz our file; both "
                                   "are read by `animate --version v2 --pose`, batch rows' pose column and --gesture-library. "
                                   "Everything is checked before any model loads; the output is written whole or not at all.")
    # one source, --video or --audio: checked by the job (a message that names --preview-audio when both are given)
    p.add_argument("--video", help="driving video of a person: DWPose hand poses of every frame (models in <models>/dwpose/)")
    p.add_argument("--audio", help="speech (wav, mp3, flac, m4a or a video with sound): gestures generated from it")
    p.add_argument("-o", "--output", required=True, help="a folder (released format: 0.npy, 1.npy, ...) or a file ending "
                                                         "in .npz (keeps the frame rate)")
    p.add_argument("--force", action="store_true", help="replace an existing output (a folder only when it holds nothing "
                                                        "but pose frames) and an existing --preview")
    p.add_argument("--preview", help="also write this .mp4: the hands drawn as animate draws them (the model input), with "
                                     "the speech when --audio is given (else silent, or --preview-audio)")
    p.add_argument("--preview-audio", help="--video: the --preview's sound track, e.g. the driving video itself or a wav "
                                           "(any file with sound; cut to the preview's length). The poses still come "
                                           "from the video; only the preview hears it")
    p.add_argument("--width", type=int, help="preview width in pixels, a multiple of 8, 64..2048 (default: 768, as V2)")
    p.add_argument("--height", type=int, help="preview height in pixels, a multiple of 8 (default: as --width)")
    p.add_argument("--on-missing", choices=["interpolate", "hold", "fail"], default=None,
                   help="--video: frames where nobody is found: blend between neighbours, repeat the previous pose, or "
                        "stop (default: interpolate, as the loader node)")
    p.add_argument("--gesture-library", help="--audio: a folder of pose folders (or one pose folder / .npz) to take "
                                             "gestures from (default: the models folder's poses/)")
    p.add_argument("--expressiveness", type=float, default=None, help="--audio: 0 (calm) .. 2 (lively) (default: 1)")
    p.add_argument("--seed", type=int, help="--audio: which gestures are picked, 0..2^64-1 (default: 3407, as "
                                            "`animate --version v2`)")
    p.add_argument("--fps", type=float, help="frame rate, 1..120 (default: 24 for --audio, as animate; the video's own "
                                             "rate for --video)")
    p.add_argument("--length", type=int, default=0, help="number of frames (default: 0 = the whole video / follow the "
                                                         "audio: floor(seconds x fps), as animate)")
    p.add_argument("--stabilize", choices=list(STABILIZE_LEVELS), default=STABILIZE_DEFAULT,
                   help="steadier hands in the saved sequence: short detector dropouts filled, shake smoothed "
                        "(light, medium, strong; default off = as made), as `animate --stabilize`")
    p.add_argument("--models", help="models folder (default: $ECHOMIMIC_MODELS, else ~/.cache/echomimic): dwpose/ for "
                                    "--video, poses/ the default gesture library")
    p.add_argument("--offline", action="store_true", help="never download the DWPose models; fail listing the missing files")
    p.set_defaults(func=_cmd_poses)
