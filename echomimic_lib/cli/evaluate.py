"""``echomimic evaluate``: score a talking-head video (lip sync, stability, identity) as a table or JSON."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import say

METRICS_FOLDER = "metrics"
ARCFACE_NAMES = ("arcface.onnx", "w600k_r50.onnx", "glintr100.onnx")


def _models_dir(args) -> Path:
    from ..jobs.animate import default_models_dir

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


def _warn(text: str) -> None:
    sys.stderr.write(f"warning: {text}\n")


def _cmd_evaluate(args) -> int:
    from ..evaluate import LearnedModels, evaluate, load_clip, save_png, sync_plot, table
    from ..evaluate.arcface import missing_message as arcface_missing
    from ..evaluate.syncnet import FILE_NAME, missing_message as syncnet_missing

    from ..errors import EchoMimicError

    models = _models_dir(args)
    if args.reference and not Path(args.reference).is_file():
        raise EchoMimicError(f"{args.reference}: reference image not found.")
    if args.plot and Path(args.plot).exists() and not Path(args.plot).is_file():
        raise EchoMimicError(f"{args.plot} exists and is not a regular file; choose another --plot path.")
    clips = [load_clip(args.video, args.audio, args.landmarks, args.fps)]  # inputs checked before any model loads
    if args.compare:
        clips.append(load_clip(args.compare, args.audio, None, None))
    syncnet, asked_s = _learned_file(args.syncnet, models, (FILE_NAME,))
    arcface, asked_a = _learned_file(args.arcface, models, ARCFACE_NAMES)
    hints, notes = [], []
    for path, asked, message, label in ((syncnet, asked_s, syncnet_missing, "LSE-C / LSE-D"), (arcface, asked_a, arcface_missing, "CSIM")):
        if asked and not path.is_file():
            notes.append(message(path, models / METRICS_FOLDER))
        elif path is None:
            hints.append(f"{label} not computed: no weights in {models / METRICS_FOLDER} (see --syncnet / --arcface).")
    needs_landmarks = args.reference or any(c.landmarks is None and c.frames is not None for c in clips)
    landmarker = _landmarker(args, models, notes) if needs_landmarks else None
    learned = LearnedModels(syncnet if syncnet is not None and syncnet.is_file() else None,
                            arcface if arcface is not None and arcface.is_file() else None, args.device)
    try:
        reports = [evaluate(c, args.reference, landmarker, learned) for c in clips]
    finally:
        if landmarker is not None:
            landmarker.close()
    for r in reports:
        r.notes[:0] = notes
    for note in (n for r in reports for n in r.notes):
        _warn(note)
    if args.plot:
        import numpy as np

        plots = [sync_plot(r.sync, f"lip sync: {Path(r.source).name}") for r in reports if r.sync is not None]
        if plots:
            say(f"wrote {save_png(args.plot, np.concatenate(plots, axis=0))}")
        else:
            _warn("no plot: lip sync could not be measured (see the notes above).")
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
    e.add_argument("--plot", help="write mouth opening vs audio energy over time as a PNG")
    e.add_argument("--syncnet", help=f"SyncNet weights for LSE-C / LSE-D (default: <models>/{METRICS_FOLDER}/syncnet_v2.model if present)")
    e.add_argument("--arcface", help=f"ArcFace ONNX model for CSIM (default: <models>/{METRICS_FOLDER}/{ARCFACE_NAMES[0]} if present)")
    e.add_argument("--models", help="models folder (MediaPipe face_landmarker.task, metrics/; default: $ECHOMIMIC_MODELS or ~/.cache/echomimic)")
    e.add_argument("--mediapipe-model", help="MediaPipe's face_landmarker.task for the landmarks "
                                             "(default: <models>/mediapipe/face_landmarker.task, downloaded unless --offline)")
    e.add_argument("--offline", action="store_true", help="never download the MediaPipe model")
    e.add_argument("--device", default="cpu", help="torch device for SyncNet: cpu, cuda, cuda:1, mps")
    e.set_defaults(func=_cmd_evaluate)
