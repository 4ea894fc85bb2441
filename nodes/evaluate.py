"""EchoMimic Evaluate: score rendered frames against their audio (lip sync, stability, identity) -> a report
STRING and the lip-sync plot as an IMAGE. Learned-metric files are picked from ``models/echomimic/metrics``."""
from __future__ import annotations

import logging
from pathlib import Path

from ..echomimic_lib.errors import EchoMimicError, MissingWeightsError
from . import comfy_bridge as C
from . import detectors, names, paths
from .base import Node, check_fps, frame_rate, link, switch
from .payloads import first_image, image_batch, to_image

log = logging.getLogger(__name__)

METRICS_SUBFOLDER = "metrics"
NONE = "none"
SYNCNET_SUFFIXES = (".model", ".pth", ".pt", ".safetensors")
ARCFACE_SUFFIXES = (".onnx",)


def metric_roots() -> list[Path]:
    return [r / METRICS_SUBFOLDER for r in paths.echomimic_roots()]


def metric_files(suffixes) -> list[str]:
    """[none] + files with these suffixes in the metrics folders (names relative to their folder)."""
    names = set()
    for root in metric_roots():
        try:
            names.update(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                         and not p.name.startswith("."))
        except OSError:  # missing folder: nothing to list (INPUT_TYPES must never fail)
            continue
    return [NONE] + sorted(names)


def _resolve(name: str, what: str, missing_message) -> tuple[Path | None, str | None]:
    """(file, None) for a picked name, or (None, note) when it is no longer there."""
    if not name or name == NONE:
        return None, None
    found = paths.find_named(metric_roots(), name, what)
    if found is None:
        roots = metric_roots()
        return None, missing_message(roots[0] / name if roots else name, ", ".join(str(r) for r in roots))
    return found, None


def _onnx_providers(device) -> list[str]:
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]


LANDMARK_HINT = "switch on auto_download, or put face_landmarker.task into models/echomimic/mediapipe"  # (not the CLI's)


SHORT_AUDIO = 0.9  # audio covering less than this share of the frames' length is said in the notes


def short_audio(clip) -> str | None:
    """A note when the audio is much shorter than the frames (the lip sync of the frames past its end is scored against
    no sound): both lengths, and what to connect."""
    if clip.wave16k is None or clip.frames is None:
        return None
    n = len(clip.frames)
    video_s, audio_s = n / clip.fps, len(clip.wave16k) / 16000.0
    if audio_s >= SHORT_AUDIO * video_s or video_s - audio_s <= 1.0 / clip.fps:
        return None
    return (f"the audio ({audio_s:.2f} s) is much shorter than the frames ({video_s:.2f} s: {n} frames at "
            f"{clip.fps:g} fps): the frames after {audio_s:.2f} s have no sound to be scored against; connect the audio "
            "these frames were made from (the sampler's audio output).")


def evaluate(frames, audio, fps: float, syncnet: str, arcface: str, download: bool, reference=None):
    from ..echomimic_lib.evaluate import LearnedModels, clip_from_arrays, sync_plot
    from ..echomimic_lib.evaluate import evaluate as run_evaluation
    from ..echomimic_lib.evaluate.arcface import missing_message as arcface_missing
    from ..echomimic_lib.evaluate.plot import message_plot
    from ..echomimic_lib.evaluate.syncnet import missing_message as syncnet_missing

    fps = check_fps(fps)  # a linked value: "fast" was a ValueError in float()
    if not isinstance(audio, dict) or "waveform" not in audio:
        raise EchoMimicError("audio: expected a ComfyUI AUDIO (connect the sampler's audio output, or Load Audio).")
    shape = tuple(getattr(audio["waveform"], "shape", ()))
    if 0 in shape:  # no clip, channel or sample: a Load Audio of an empty file, a trim past its end
        raise EchoMimicError(f"audio: the waveform is empty (shape {shape}, no sound in it); connect the audio of these "
                             "frames (the sampler's audio output, or Load Audio of the speech they were made from).")
    clip = clip_from_arrays(image_batch(frames, "frames"), audio, fps=fps, source="rendered frames")
    ref = first_image(reference, "reference") if reference is not None else None
    syncnet_file, note_s = _resolve(syncnet, "SyncNet weights", syncnet_missing)
    arcface_file, note_a = _resolve(arcface, "ArcFace model", arcface_missing)
    device = C.torch_device()
    learned = LearnedModels(syncnet_file, arcface_file, device, _onnx_providers(device))
    notes = [n for n in (note_s, note_a, short_audio(clip)) if n]
    try:
        landmarker = detectors.face_landmarker(download)
    except MissingWeightsError as exc:
        landmarker = None
        notes.append(f"face landmarks unavailable: {exc}.")
    C.check_interrupt()
    try:
        report = run_evaluation(clip, ref, landmarker, learned, landmark_hint=LANDMARK_HINT)
    finally:
        if landmarker is not None:
            landmarker.close()
    report.notes[:0] = notes
    for note in report.notes:
        log.warning("evaluate: %s", note)
    plot = sync_plot(report.sync, "lip sync: mouth opening vs audio energy") if report.sync is not None else \
        message_plot("no lip-sync measurement: " + (report.notes[-1] if report.notes else "no face landmarks"))
    return f"{report.table()}\n\n{report.to_json()}", to_image(plot)


class EchoMimicEvaluate(Node):
    OUTPUTS = (
        ("STRING", "report", "The scores as a table, then the same as one JSON line (connect Preview Any to read it)."),
        ("IMAGE", "plot", "Mouth opening against audio energy over time, and the correlation per offset."),
    )
    DESCRIPTION = ("Scores a result: lip sync (A/V offset, sync strength), landmark jitter, background flicker, face-detection "
                   "rate and shape drift; SyncNet LSE-C/LSE-D and ArcFace CSIM with weights in models/echomimic/metrics.")

    @classmethod
    def inputs(cls):
        return {
            "frames": link("IMAGE", "The rendered frames (the sampler's images)."),
            "audio": link("AUDIO", "The audio of these frames (the sampler's audio output)."),
            "fps": frame_rate("Frame rate of the frames (link the sampler's fps)."),
            "syncnet": (metric_files(SYNCNET_SUFFIXES), {"default": NONE, "tooltip": "SyncNet weights (syncnet_v2.model) in "
                        "models/echomimic/metrics for LSE-C / LSE-D; none: skip them."}),
            "arcface": (metric_files(ARCFACE_SUFFIXES), {"default": NONE, "tooltip": "ArcFace ONNX model in "
                        "models/echomimic/metrics for CSIM (identity similarity to the reference); none: skip it."}),
            "auto_download": switch("Download MediaPipe's face_landmarker.task into models/echomimic if it is missing (the "
                                    "landmark metrics need it)."),
        }

    @classmethod
    def optional_inputs(cls):
        return {
            "reference": link("IMAGE", "The reference portrait: shape drift and CSIM compare with it (default: "
                          "the first frame)."),
        }

    @classmethod
    def VALIDATE_INPUTS(cls, syncnet=None, arcface=None):
        return names.check(cls, {"syncnet": "models/echomimic/metrics", "arcface": "models/echomimic/metrics"},
                           syncnet=syncnet, arcface=arcface)

    def execute(self, frames, audio, fps, syncnet, arcface, auto_download, reference=None):
        return evaluate(frames, audio, fps, syncnet, arcface, auto_download, reference)
