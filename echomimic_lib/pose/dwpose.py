"""Whole-body pose extraction from a driving video with DWPose (ONNX Runtime), output in the released V2 format.

Two ONNX models from Hugging Face ``yzd-v/DWPose`` (``yolox_l.onnx``, the person detector, and
``dw-ll_ucoco_384.onnx``, the whole-body pose): what goes into them and how their outputs become the released
format is in :mod:`echomimic_lib.pose.dwpose_tensors`; here the models are found and run
(:class:`DWPoseDetector`), and a video becomes a :class:`PoseSequence` (:func:`extract_pose_sequence`, which
applies the half-body crop of :mod:`echomimic_lib.pose.align`).

Frames where nobody is found follow ``on_missing``: ``fail`` (error listing the frames), ``hold`` (repeat the
nearest earlier detection) or ``interpolate`` (linear between the neighbouring detections); they are listed
in the report either way. onnxruntime is imported only when a model is loaded.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import EchoMimicError, MissingWeightsError
from .align import HalfBodyCrop, crop_sequence, halfbody_crop, resize_and_pad_params
from .sequence import PoseSequence
from .dwpose_tensors import (DET_INPUT, DET_SCORE, KEYPOINT_THRESHOLD, NMS_IOU, PERSON_SCORE, POSE_INPUT, SIMCC_SPLIT,
                             box_to_center_scale, decode_simcc, decode_yolox, letterbox, nms, pose_input,
                             wholebody_to_released)

log = logging.getLogger(__name__)

HF_REPO = "yzd-v/DWPose"
DET_FILENAME = "yolox_l.onnx"
POSE_FILENAME = "dw-ll_ucoco_384.onnx"
MISSING_POLICIES = ("fail", "hold", "interpolate")


# ---------------------------------------------------------------------------------------------- models
def resolve_dwpose_models(models_dir: str | Path, download: bool = False, repo_id: str = HF_REPO) -> tuple[Path, Path]:
    """Paths of (detector, pose) ONNX files under ``models_dir`` (also ``dwpose/``, ``DWPose/``, ``yzd-v/DWPose/``
    sub-folders). Missing files are downloaded from Hugging Face into ``models_dir/dwpose`` only if ``download``."""
    root = Path(models_dir)
    subdirs = ("", "dwpose", "DWPose", "yzd-v/DWPose")
    found, missing = {}, []
    for name in (DET_FILENAME, POSE_FILENAME):
        hits = [root / d / name for d in subdirs if (root / d / name).is_file()]
        if hits:
            found[name] = hits[0]
        else:
            missing.append(name)
    if missing and download:
        from ..io.fetch_plan import is_planning, planned

        target = root / "dwpose"
        if is_planning():  # a dry run: each file said, none fetched
            for name in missing:
                planned(name, f"https://huggingface.co/{repo_id}", target / name)
                found[name] = target / name
            return found[DET_FILENAME], found[POSE_FILENAME]
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
            msg = "huggingface_hub is not installed, so DWPose cannot be downloaded; install it or place the files by hand."
            raise MissingWeightsError(msg, missing) from exc
        target = root / "dwpose"
        target.mkdir(parents=True, exist_ok=True)
        for name in list(missing):
            log.info("downloading %s from Hugging Face %s into %s", name, repo_id, target)
            try:
                found[name] = Path(hf_hub_download(repo_id=repo_id, filename=name, local_dir=str(target)))
            except Exception as exc:
                msg = f"could not download {name} from Hugging Face '{repo_id}' ({exc}); download it by hand into {target}."
                raise MissingWeightsError(msg, [name]) from exc
            missing.remove(name)
    if missing:
        where = ", ".join(str(root / d) for d in subdirs)
        raise MissingWeightsError(
            f"DWPose model file(s) {', '.join(missing)} not found (looked in {where}). Download them from "
            f"https://huggingface.co/{repo_id} into {root / 'dwpose'}, or allow the automatic download.",
            missing,
        )
    return found[DET_FILENAME], found[POSE_FILENAME]


def _session(path: Path, providers: Sequence[str] | None):
    import onnxruntime as ort

    wanted = list(providers or ["CPUExecutionProvider"])
    available = set(ort.get_available_providers())
    usable = [p for p in wanted if p in available]
    if len(usable) < len(wanted):
        absent = [p for p in wanted if p not in available]
        log.warning("ONNX Runtime providers %s are not available here; using %s", absent, usable or ["CPUExecutionProvider"])
    try:
        return ort.InferenceSession(str(path), providers=usable or ["CPUExecutionProvider"])
    except Exception as exc:
        raise EchoMimicError(f"{path}: ONNX Runtime cannot load this model ({exc}). Re-download it.") from exc



class DWPoseDetector:
    """YOLOX + DWPose through ONNX Runtime. ``providers`` default to CPU; CUDA is used only if asked and available.

    ``detector_bgr``: YOLOX was trained on BGR frames (the default here); the MimicMotion-derived reference code
    feeds it RGB frames, pass False to reproduce that exactly."""

    def __init__(self, det_model: str | Path, pose_model: str | Path, providers: Sequence[str] | None = None, detector_bgr: bool = True):
        self.det_path, self.pose_path = Path(det_model), Path(pose_model)
        for p in (self.det_path, self.pose_path):
            if not p.is_file():
                raise MissingWeightsError(f"{p}: DWPose model file not found.", [str(p)])
        self.providers = list(providers) if providers else None
        self.detector_bgr = detector_bgr
        self._det = self._pose = None

    @classmethod
    def from_models_dir(cls, models_dir: str | Path, download: bool = False, providers: Sequence[str] | None = None, **kw) -> "DWPoseDetector":
        return cls(*resolve_dwpose_models(models_dir, download), providers=providers, **kw)

    def _sessions(self):
        if self._det is None:
            self._det = _session(self.det_path, self.providers)
            self._pose = _session(self.pose_path, self.providers)
            shape = self._det.get_inputs()[0].shape
            self._det_size = (int(shape[3]), int(shape[2])) if all(isinstance(v, int) for v in shape[2:]) else DET_INPUT
            shape = self._pose.get_inputs()[0].shape
            self._pose_size = (int(shape[3]), int(shape[2])) if all(isinstance(v, int) for v in shape[2:]) else POSE_INPUT
        return self._det, self._pose

    def detect_persons(self, image_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Person boxes (K, 4) xyxy in image pixels and their scores (K,), best first."""
        det, _ = self._sessions()
        x, ratio = letterbox(image_rgb, self._det_size, self.detector_bgr)
        raw = det.run(None, {det.get_inputs()[0].name: x})[0]
        boxes, cls_scores = decode_yolox(raw, self._det_size)
        person = cls_scores[:, 0]
        cand = np.flatnonzero(person > DET_SCORE)
        if cand.size == 0:
            return np.zeros((0, 4)), np.zeros(0)
        keep = cand[nms(boxes[cand], person[cand], NMS_IOU)]
        keep = keep[person[keep] > PERSON_SCORE]
        return boxes[keep] / ratio, person[keep].astype(np.float64)

    def estimate(self, image_rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole-body keypoints (P, 133, 2) in image pixels and scores (P, 133) for each box."""
        _, pose = self._sessions()
        name = pose.get_inputs()[0].name
        all_k, all_s = [], []
        for box in boxes:
            center, scale = box_to_center_scale(box, self._pose_size)
            outs = pose.run(None, {name: pose_input(image_rgb, center, scale, self._pose_size)})
            sx, sy = sorted(outs[:2], key=lambda o: abs(o.shape[-1] - self._pose_size[0] * SIMCC_SPLIT))
            locs, vals = decode_simcc(sx[0], sy[0])
            pix = locs / np.array(self._pose_size) * scale + center - scale / 2
            pix[locs[:, 0] < 0] = -1.0
            all_k.append(pix)
            all_s.append(vals)
        if not all_k:
            return np.zeros((0, 133, 2)), np.zeros((0, 133))
        return np.stack(all_k), np.stack(all_s)

    def __call__(self, image_rgb: np.ndarray) -> dict | None:
        """Released-format dict (all people, normalised to the image), or None when nobody is found."""
        image_rgb = np.ascontiguousarray(image_rgb[..., :3])
        boxes, _ = self.detect_persons(image_rgb)
        if len(boxes) == 0:
            return None
        kpts, scores = self.estimate(image_rgb, boxes)
        return wholebody_to_released(kpts, scores, (image_rgb.shape[1], image_rgb.shape[0]))


# ---------------------------------------------------------------------------------------------- sequences
@dataclass
class PoseExtractionReport:
    n_frames: int
    missing_frames: list[int] = field(default_factory=list)
    multi_person_frames: list[int] = field(default_factory=list)
    policy: str = "interpolate"
    image_size: tuple[int, int] = (0, 0)
    crop: HalfBodyCrop | None = None

    def summary(self) -> str:
        s = f"{self.n_frames} frames, person found in {self.n_frames - len(self.missing_frames)}"
        if self.missing_frames:
            s += f"; no person in {len(self.missing_frames)} frames (first: {self.missing_frames[:10]}), filled by '{self.policy}'"
        if self.multi_person_frames:
            s += f"; {len(self.multi_person_frames)} frames with several people (kept the most confident)"
        return s


_FIELDS = ("body", "body_score", "body_subset", "hands", "hands_score", "faces", "faces_score")


def _main_person(d: dict) -> dict:
    """The person with the highest mean body score, as single-person frame arrays."""
    score = d["bodies"]["score"]
    n = len(score)
    p = int(np.argmax(score.mean(axis=1)))
    subset = d["bodies"]["subset"][p]
    return {
        "body": d["bodies"]["candidate"][18 * p : 18 * p + 18],
        "body_score": score[p],
        "body_subset": np.where(subset >= 0, subset - 18 * p, -1.0),
        "hands": d["hands"][[p, n + p]],
        "hands_score": d["hands_score"][[p, n + p]],
        "faces": d["faces"][p],
        "faces_score": d["faces_score"][p],
    }


def fill_missing(frames: list[dict | None], policy: str) -> list[dict]:
    """Fill frames without a person (None) by ``hold`` or ``interpolate``; ``fail`` raises."""
    if policy not in MISSING_POLICIES:
        raise EchoMimicError(f"on_missing must be one of {', '.join(MISSING_POLICIES)}, got '{policy}'.")
    have = [i for i, f in enumerate(frames) if f is not None]
    missing = [i for i, f in enumerate(frames) if f is None]
    if not have:
        raise EchoMimicError(f"no person was found in any of the {len(frames)} frames; use a video that shows a person (head, shoulders and hands).")
    if missing and policy == "fail":
        raise EchoMimicError(
            f"no person was found in {len(missing)} of {len(frames)} frames (first: {missing[:10]}); "
            "choose on_missing='hold' or 'interpolate', or trim the video."
        )
    out = list(frames)
    have_arr = np.array(have)
    for i in missing:
        k = np.searchsorted(have_arr, i)
        prev = have[k - 1] if k > 0 else None
        nxt = have[k] if k < len(have) else None
        if policy == "hold" or prev is None or nxt is None:
            src = prev if prev is not None else nxt
            out[i] = {key: np.array(v, copy=True) for key, v in frames[src].items()}
            continue
        t = (i - prev) / (nxt - prev)
        a, b = frames[prev], frames[nxt]
        f = {key: (1 - t) * a[key] + t * b[key] for key in ("body", "body_score", "hands", "hands_score", "faces", "faces_score")}
        f["body_subset"] = np.where(f["body_score"] > KEYPOINT_THRESHOLD, np.arange(18), -1).astype(np.float64)
        out[i] = f
    return out


def extract_pose_sequence(
    video: str | Path | np.ndarray | Iterable[np.ndarray],
    detector: DWPoseDetector,
    size: int = 768,
    on_missing: str = "interpolate",
    crop: bool = True,
    fps: float | None = None,
    max_frames: int | None = None,
) -> PoseSequence:
    """Run DWPose on every frame of a driving video (path, (F, H, W, 3) RGB array or iterable of RGB frames)
    and return a :class:`PoseSequence` in the released format: with ``crop`` (default) the reference's
    half-body crop is applied and coordinates are normalised to it (canvas ``size`` x ``size``); otherwise the
    whole frame is the crop. The :class:`PoseExtractionReport` is in ``seq.report``."""
    if on_missing not in MISSING_POLICIES:
        raise EchoMimicError(f"on_missing must be one of {', '.join(MISSING_POLICIES)}, got '{on_missing}'.")
    source = "frames"
    if isinstance(video, (str, Path)):  # decoded one frame at a time as DWPose takes it
        from ..io.retime import on_clock
        from ..io.video_io import VideoFrames

        decoded = on_clock(VideoFrames(video, max_frames=max_frames), "the video", "its poses keep the video's own "
                           "timing")  # (a variable frame rate: one frame a tick of its rate, the one shown nearest it)
        frames_in, fps, source = iter(decoded), fps or decoded.fps, str(video)
    else:
        frames_in = video
    raw: list[dict | None] = []
    report = PoseExtractionReport(0, policy=on_missing)
    try:
        for i, frame in enumerate(frames_in):
            if max_frames is not None and i >= max_frames:
                break
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] < 3:
                raise EchoMimicError(f"frame {i}: expected an (H, W, 3) RGB image, got shape {frame.shape}.")
            size_i = (frame.shape[1], frame.shape[0])
            if report.image_size == (0, 0):
                report.image_size = size_i
            elif size_i != report.image_size:
                raise EchoMimicError(f"frame {i} is {size_i[0]}x{size_i[1]} but earlier frames are {report.image_size[0]}x{report.image_size[1]}.")
            d = detector(frame)
            if d is None:
                report.missing_frames.append(i)
                raw.append(None)
                continue
            if len(d["bodies"]["score"]) > 1:
                report.multi_person_frames.append(i)
            raw.append(_main_person(d))
    finally:  # a video opened here is closed even when DWPose stops early
        if isinstance(video, (str, Path)):
            frames_in.close()
    report.n_frames = len(raw)
    if not raw:
        raise EchoMimicError(f"{source}: the video has no frames.")
    if report.missing_frames:
        log.warning("pose extraction: %s", report.summary())
    filled = fill_missing(raw, on_missing)
    w, h = report.image_size
    for i, f in enumerate(filled):
        f["draw_pose_params"] = np.array([h, w, 0, h, 0, w], dtype=np.int64)
        f["frame_ids"] = np.int64(i)
    full = PoseSequence.from_frames(filled, fps=fps or 24.0, canvas_size=(w, h), source=source)
    if crop:
        report.crop = halfbody_crop(full, (w, h), size)
    else:
        report.crop = HalfBodyCrop(0, 0, w, h, (w, h), int(size), resize_and_pad_params(h, w, size))
    seq = crop_sequence(full, report.crop)
    seq.report = report
    return seq


def detect_image_pose(detector: DWPoseDetector, image_rgb: np.ndarray) -> PoseSequence:
    """One-frame sequence of the main person in an image, normalised to the image (for the reference picture:
    pass it to :func:`echomimic_lib.pose.align.halfbody_crop` / ``align_reference_and_poses``)."""
    d = detector(image_rgb)
    if d is None:
        raise EchoMimicError("no person was found in the reference image; use a half-body picture of one person.")
    h, w = image_rgb.shape[:2]
    f = _main_person(d)
    f["draw_pose_params"] = np.array([h, w, 0, h, 0, w], dtype=np.int64)
    f["frame_ids"] = np.int64(0)
    return PoseSequence.from_frames([f], canvas_size=(w, h), source="reference image")
