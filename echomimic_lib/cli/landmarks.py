"""``echomimic landmarks``: a driving video's face landmarks saved once (.npz / .json) for ``animate --landmarks FILE``
and batch rows (see :mod:`echomimic_lib.jobs.landmarks_extract`)."""
from __future__ import annotations

from ..landmarks.extractor import POLICIES
from ..temporal import STABILIZE_DEFAULT, STABILIZE_LEVELS
from .common import ProgressBar, say


def _cmd_landmarks(args) -> int:
    from ..jobs.landmarks_extract import LandmarksRequest, run_landmarks

    req = LandmarksRequest(video=args.video, output=args.output, preview=args.preview, force=args.force, models=args.models,
                           mediapipe_model=args.mediapipe_model, download=not args.offline, missing_face=args.missing_face,
                           parts=args.parts, width=args.width, height=args.height, reference=args.reference,
                           face_crop=not args.no_face_crop, stabilize=args.stabilize)
    bar = ProgressBar("landmarks", "frame", disable=args.quiet)
    try:
        s = run_landmarks(req, bar)
    finally:
        bar.close()
    fps = f"{s['fps']:g} fps" if s["fps"] else "no frame rate"
    missing = f"{s['no_face']} without a face" + (f", {s['several_faces']} with several faces" if s["several_faces"] else "")
    filled = f" (filled: {s['policy']})" if s["no_face"] or s["several_faces"] else ""
    frames = f"{s['frames']} frame{'' if s['frames'] == 1 else 's'}"
    say(f"wrote {s['output']}: {frames} at {fps}, {missing}{filled}"
        + (f"; preview {s['preview']}" if s["preview"] else ""))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("landmarks", help="extract a driving video's face landmarks once, for animate --landmarks FILE",
                       description="Extract the face landmarks of every frame of a driving video exactly as `echomimic "
                                   "animate --landmarks VIDEO` does, and save them (.npz without pickles, or .json) to "
                                   "drive the V1 landmark modes again and again (`animate --landmarks FILE.npz`, a batch "
                                   "manifest's landmarks column) without reading the video with MediaPipe each time.")
    p.add_argument("video", metavar="VIDEO", help="driving video of one face (any size and frame rate)")
    p.add_argument("-o", "--output", required=True, help="landmark file, .npz or .json; written whole under a temporary "
                                                         "name, never replacing an existing file without --force")
    p.add_argument("--preview", metavar="PREVIEW.mp4", help="also write the landmark drawing animate conditions on, one "
                                                           "frame per driving frame")
    p.add_argument("--force", action="store_true", help="replace an existing -o / --preview file")
    p.add_argument("--missing-face", choices=list(POLICIES), default="interpolate",
                   help="frames without a single face: interpolate between their neighbours (as animate), hold the last "
                        "face, or fail listing them")
    p.add_argument("--stabilize", choices=list(STABILIZE_LEVELS), default=STABILIZE_DEFAULT,
                   help="steady the saved landmarks (MediaPipe shakes a still face by a pixel or two): light, medium or "
                        "strong, the head steadied hardest, lips and eyelids kept responsive (default off: as extracted)")
    p.add_argument("--parts", help="--preview: landmark parts to draw, as animate's --parts (default: the landmarks "
                                   "mode's, mouth included; audio+landmarks draws eyes,brows,pupils,nose)")
    p.add_argument("--width", type=int, default=512, help="--preview width in pixels, a multiple of 8, as animate's")
    p.add_argument("--height", type=int, help="--preview height in pixels, a multiple of 8 (default: as --width)")
    p.add_argument("--reference", help="--preview: retarget the landmarks onto this portrait, as animate does with "
                                       "its --reference (else the driver's own landmarks are drawn)")
    p.add_argument("--no-face-crop", action="store_true", help="--preview with --reference: the whole image, as animate's "
                                                               "--no-face-crop")
    p.add_argument("--models", help="models folder (default: $ECHOMIMIC_MODELS, else ~/.cache/echomimic)")
    p.add_argument("--offline", action="store_true", help="never download the MediaPipe model; fail naming the missing file")
    p.add_argument("--mediapipe-model", help="MediaPipe's face_landmarker.task (default: <models>/mediapipe/"
                                             "face_landmarker.task, downloaded unless --offline), as animate's")
    p.set_defaults(func=_cmd_landmarks)
