"""``echomimic evaluate``: score a talking-head video (lip sync, stability, identity; FID / FVD against real videos)
as a table or JSON."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import say

METRICS_FOLDER = "metrics"
ARCFACE_NAMES = ("arcface.onnx", "w600k_r50.onnx", "glintr100.onnx")


def _models_dir(args) -> Path:
    from ..jobs.models_folder import default_models_dir

    return Path(args.models) if args.models else default_models_dir()


def _learned_file(given, models: Path, names) -> tuple[Path | None, bool]:
    """(path to use, explicitly asked for). Without a flag, a file found in <models>/metrics is used."""
    if given:
        return Path(given), True
    for name in names:
        p = models / METRICS_FOLDER / name
        if p.is_file():
            return p, False
    return None, False


def _landmarker(args, models: Path, notes: list):
    from ..errors import EchoMimicError
    from ..landmarks.extractor import FaceLandmarkExtractor

    try:
        return FaceLandmarkExtractor(model_path=args.mediapipe_model, models_dir=[models], download=not args.offline)
    except EchoMimicError as exc:
        notes.append(f"face landmarks unavailable: {exc}")
        return None


VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")


def _real_paths(given) -> list[Path]:
    """The real videos of --real (a video file, or a folder of them), checked before any work."""
    from ..errors import EchoMimicError

    if not given:
        return []
    path = Path(given)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if found:
            return found
        raise EchoMimicError(f"--real {path}: the folder has no videos ({', '.join(VIDEO_SUFFIXES)}).")
    from ..io.os_errors import missing_text

    raise EchoMimicError(f"--real {path}: {missing_text(path, 'not found')}; give a real video (or a folder of them) for FID / FVD.")


def _read_real(paths: list[Path]):
    """The real videos' frames, each streamed (decoded as FID / FVD go through it, never whole in memory); a variable
    frame rate video's placed on its rate's clock by their timestamps (its 16-frame FVD clips move at its own pace)."""
    from ..io.retime import on_clock
    from ..io.video_io import VideoFrames

    return [on_clock(VideoFrames(p), "the real video", "FID and FVD see its frames as they were shown") for p in paths]


def _check_plot(args) -> None:
    """--plot before any scoring: a .png name (not the video's), a regular file or none, a writable folder, no input."""
    from ..errors import EchoMimicError
    from ..io.file_safety import refuse_input_as_output
    from ..io.video_writer import check_output_path

    if not args.plot.strip():
        raise EchoMimicError("--plot is empty; give the PNG file to write, e.g. --plot sync.png (or drop --plot).")
    plot = Path(args.plot)
    if str(args.plot).strip() == "-":  # the Unix "to stdout" habit: stdout carries the table or the JSON
        raise EchoMimicError("--plot -: writing the plot to stdout is not supported (stdout carries the table or --json); "
                             "give a file name, e.g. --plot sync.png.")
    if plot.is_dir():
        raise EchoMimicError(f"--plot {args.plot} is a directory, not a regular file; give a file name inside it, e.g. --plot "
                             f"{plot / 'sync.png'}.")
    if plot.exists() and not plot.is_file():
        raise EchoMimicError(f"{args.plot} exists and is not a regular file; choose another --plot path.")
    if plot.suffix.lower() != ".png":
        raise EchoMimicError(f"--plot {args.plot}: the plot is a PNG image; give it the .png extension, e.g. --plot "
                             f"{plot.with_suffix('.png')}.")
    check_output_path(plot, "--plot")  # a file as its folder, an unwritable folder: said now, not after the scoring
    refuse_input_as_output(plot, {"the video": args.video, "--compare": args.compare, "--audio": args.audio,
                                  "--reference": args.reference}, "--plot")


VIDEO_FIX = "evaluate scores a video (mp4, mov, webm, ...) with its speech, or a folder of V1 .pkl landmark frames."


def _check_videos(args) -> None:
    """The video, --compare and a --real file (and a missing --landmarks), each refused with its option, what it is and the fix when it is no video
    (a text, empty or sound file, a still picture): PyAV only, before any model loads. A folder is load_clip's."""
    from ..errors import EchoMimicError
    from ..jobs.video_inputs import check_video_input

    fix = {"--real": "give a real video (mp4, mov, webm, ...) or a folder of them for FID / FVD."}
    if args.landmarks and not Path(args.landmarks).exists():  # (a folder is load_clip's to check)
        from ..io.os_errors import missing_text

        raise EchoMimicError(f"--landmarks {args.landmarks}: {missing_text(args.landmarks, 'not found')}; give a folder of "
                             "V1 .pkl landmark frames (0.pkl, 1.pkl, ...).")
    for flag, path in (("VIDEO", args.video), ("--compare", args.compare), ("--real", args.real)):
        if not path or Path(path).is_dir():
            continue
        if check_video_input(path, flag, fix.get(flag, VIDEO_FIX), upto=2) < 2:
            raise EchoMimicError(f"{flag} {path}: a still image (1 frame), not a video; {fix.get(flag, VIDEO_FIX)}")


def _warn(text: str) -> None:
    sys.stderr.write(f"warning: {text}\n")


def _cmd_evaluate(args) -> int:
    from ..evaluate import LearnedModels, evaluate, load_clip, save_png, sync_plot, table
    from ..evaluate.arcface import missing_message as arcface_missing
    from ..evaluate.report import distinct_notes
    from ..evaluate.i3d import FILE_NAMES as I3D_NAMES, missing_message as i3d_missing
    from ..evaluate.inception import FILE_NAMES as INCEPTION_NAMES, missing_message as inception_missing
    from ..evaluate.syncnet import FILE_NAME, missing_message as syncnet_missing

    from ..devices import resolve_device
    from ..errors import EchoMimicError

    device = resolve_device(args.device)  # as every command: an unknown name, or cuda without a GPU, said now
    _check_videos(args)
    models = _models_dir(args)
    if args.reference:
        from ..jobs.reference_input import check_reference_file

        check_reference_file(args.reference)  # a pipe, a device, a folder: said as such (a pipe never opened)
    if args.audio:
        from ..jobs.speech_input import probe_speech

        probe_speech(args.audio)  # missing, a folder / pipe / device (from stat alone), empty, no sound: said with the option
    reference = None
    if args.reference:
        from ..io.image_file import read_image_file

        reference = read_image_file(args.reference, "--reference")  # not an image: said now, not after the scoring
    if args.plot is not None:  # `--plot ""` (a script's unset variable): refused as empty, not silently no plot
        _check_plot(args)
    clips = [load_clip(args.video, args.audio, args.landmarks, args.fps)]  # inputs checked before any model loads
    if args.compare:
        clips.append(load_clip(args.compare, args.audio, None, None))
    real_paths = _real_paths(args.real)
    syncnet, asked_s = _learned_file(args.syncnet, models, (FILE_NAME,))
    arcface, asked_a = _learned_file(args.arcface, models, ARCFACE_NAMES)
    inception, asked_i = _learned_file(args.inception, models, INCEPTION_NAMES)
    i3d, asked_v = _learned_file(args.i3d, models, I3D_NAMES)
    if args.protocol == "published" and (syncnet is None or not syncnet.is_file()):
        raise EchoMimicError("--protocol published applies to LSE-C / LSE-D, which need SyncNet weights: "
                             + syncnet_missing(syncnet or models / METRICS_FOLDER / FILE_NAME, models / METRICS_FOLDER,
                                               then="or run without --protocol published for the weight-free metrics"))
    if (asked_i or asked_v) and not real_paths:
        raise EchoMimicError("--inception / --i3d score the video against real ones: pass --real VIDEO (or a folder of videos).")
    hints, notes = [], []
    learned_files = [(syncnet, asked_s, syncnet_missing, "LSE-C / LSE-D", "--syncnet"), (arcface, asked_a, arcface_missing, "CSIM", "--arcface")]
    if real_paths:
        learned_files += [(inception, asked_i, inception_missing, "FID", "--inception"), (i3d, asked_v, i3d_missing, "FVD", "--i3d")]
    for path, asked, message, label, flag in learned_files:
        if asked and not path.is_file():
            notes.append(message(path, models / METRICS_FOLDER))
        elif path is None:
            hints.append(f"{label} not computed: no weights in {models / METRICS_FOLDER} (see {flag}).")
    needs_landmarks = args.reference or any(c.landmarks is None and c.frames is not None for c in clips)
    landmarker = _landmarker(args, models, notes) if needs_landmarks else None
    usable = [p if p is not None and p.is_file() else None for p in (syncnet, arcface, inception, i3d)]
    if not real_paths:
        usable[2:] = [None, None]
    learned = LearnedModels(usable[0], usable[1], device, inception=usable[2], i3d=usable[3],
                            inception_variant=args.inception_variant, lse_protocol=args.protocol)
    real = _read_real(real_paths) if usable[2] or usable[3] else None
    try:
        reports = [evaluate(c, reference, landmarker, learned, real=real) for c in clips]
    finally:
        if landmarker is not None:
            landmarker.close()
    for r in reports:
        r.notes[:0] = notes
    if args.json:  # the table prints its notes under it (naming the clip they are about); the JSON run says them here
        for note in distinct_notes(reports):  # a note both clips share: said once
            _warn(note)
    if args.plot:
        import numpy as np

        plots = [sync_plot(r.sync, f"lip sync: {Path(r.source).name}") for r in reports if r.sync is not None]
        if plots:
            say(f"wrote {save_png(args.plot, np.concatenate(plots, axis=0))}")
        else:
            _warn("no plot: lip sync could not be measured (see the notes " + ("above)." if args.json else "under the table)."))
    if args.json:
        doc = reports[0].to_dict()
        if len(reports) > 1:
            doc["compare"] = reports[1].to_dict()
        say(json.dumps(doc))
    else:
        say(table(reports))
        for h in hints:
            say(h)
    return 0


def add_commands(sub) -> None:
    e = sub.add_parser("evaluate", help="score a talking-head video: lip sync, stability, identity (table or JSON)")
    e.add_argument("video", help="the video to score (its audio track is used), or a folder of V1 .pkl landmark frames")
    e.add_argument("--audio", help="audio to score against instead of the video's own track (required for a .pkl folder)")
    e.add_argument("--reference", help="reference portrait: shape drift and CSIM compare with it (default: the first frame)")
    e.add_argument("--landmarks", help="folder of V1 .pkl landmark frames to use instead of extracting them from the video")
    e.add_argument("--fps", type=float, help="frame rate of a .pkl folder (default 24) or override of the video's")
    e.add_argument("--json", action="store_true", help="print one JSON object (the last line) instead of the table")
    e.add_argument("--compare", help="a second video scored the same way and shown side by side")
    e.add_argument("--plot", help="write mouth opening vs audio energy over time as a PNG; an existing PNG of that name "
                                  "is replaced, as animate's -o (written whole, never over a folder or device)")
    e.add_argument("--syncnet", help=f"SyncNet weights for LSE-C / LSE-D (default: <models>/{METRICS_FOLDER}/syncnet_v2.model if present)")
    e.add_argument("--arcface", help=f"ArcFace ONNX model for CSIM (default: <models>/{METRICS_FOLDER}/{ARCFACE_NAMES[0]} if present)")
    e.add_argument("--protocol", choices=("default", "published"), default="default",
                   help="LSE-C / LSE-D protocol: published adds syncnet_python's face-track rules (> 100 frames at 25 fps, "
                        "faces > 100 px, gaps <= 25 frames) and refuses a clip that breaks one (docs/evaluation.md)")
    e.add_argument("--real", help="real video (or folder of videos) that FID and FVD compare the video with")
    e.add_argument("--inception", help="InceptionV3 state dict for FID (default: <models>/metrics/pt_inception-2015-12-05-"
                                       "6726825d.pth or inception_v3_google-0cc3c7bd.pth if present; needs --real)")
    e.add_argument("--inception-variant", choices=("auto", "fid", "torchvision"), default="auto",
                   help="layout of the Inception weights (auto: by the classifier's size, 1008 = pytorch-fid, 1000 = torchvision)")
    e.add_argument("--i3d", help="I3D state dict for FVD (default: <models>/metrics/i3d_pretrained_400.pt or rgb_imagenet.pt "
                                 "if present; needs --real)")
    e.add_argument("--models", help="models folder (MediaPipe face_landmarker.task, metrics/; default: $ECHOMIMIC_MODELS or ~/.cache/echomimic)")
    e.add_argument("--mediapipe-model", help="MediaPipe's face_landmarker.task for the landmarks "
                                             "(default: <models>/mediapipe/face_landmarker.task, downloaded unless --offline)")
    e.add_argument("--offline", action="store_true", help="never download the MediaPipe model")
    e.add_argument("--device", default="cpu", help="torch device for SyncNet, Inception and I3D: cpu, cuda, cuda:1, mps, auto (checked "
                                                 "even when no learned metric runs)")
    e.set_defaults(func=_cmd_evaluate)
