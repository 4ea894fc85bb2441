"""One clip's preparation, shared by every kind (:mod:`.prepare` for headshots, :mod:`.prepare_body` for
half-body and pose clips, :mod:`.prepare_full` for whole frames): the models of a run (:class:`Tools`), opening
a clip (video info, 16 kHz audio), its status row, and :func:`write_clip`, the common tail that writes a kept
clip into place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .clean import PrepareConfig, Verdict
from .store import ClipWriter, shard_dir, shard_of
from .video import find_audio, iter_frames, probe_video


@dataclass
class ClipStatus:
    id: str
    source: str
    status: str  # ok | dropped
    reason: str = ""
    detail: str = ""
    seconds: float = 0.0
    num_frames: int = 0
    shard: int = 0
    path: str = ""
    kind: str = "headshot"
    fps: float = 24.0
    curation: dict = field(default_factory=dict)  # curation measurements (trainer/data/curate.py), kept clips too

    def record(self) -> dict:
        """The status row as written (``status/<clip>.json``): a curation measure that came out NaN or infinite (a
        score with nothing to measure) is kept as null, which JSON can hold (the strict writer refuses NaN)."""
        import math
        from dataclasses import asdict

        row = asdict(self)
        row["curation"] = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row["curation"].items()}
        return row

    def checked(self, verdict: Verdict, n: int) -> bool:
        """Record the check of the clip's ``n`` usable frames; False (with the reason) when it is dropped."""
        self.seconds, self.num_frames = round(n / self.fps, 3), n
        if not verdict.ok:
            self.reason, self.detail = verdict.reason, verdict.detail
        return verdict.ok


class Tools:
    """Lazily built models shared by all clips of one prepare run. ``whisper_path`` None: no whisper rows are stored
    (EchoMimicV3 computes its own audio features)."""

    def __init__(self, whisper_path, landmarker_model=None, pose_detector=None, device="cpu"):
        self.whisper_path, self.landmarker_model, self._pose, self.device = whisper_path, landmarker_model, pose_detector, device
        self._whisper = self._landmarker = None
        self.sync_net = None  # SyncNet of the lip_sync curation filter (set by preflight when curate.syncnet is given)

    @property
    def whisper(self):
        if self._whisper is None:
            from echomimic_lib.audio import load_whisper_encoder

            self._whisper = load_whisper_encoder(self.whisper_path, device=self.device)
        return self._whisper

    @property
    def landmarker(self):
        if self._landmarker is None:
            from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor

            self._landmarker = FaceLandmarkExtractor(model_path=self.landmarker_model)
        return self._landmarker

    @property
    def pose_detector(self):
        if self._pose is None:
            raise RuntimeError("half-body preparation needs DWPose: pass --dwpose-dir (yolox_l.onnx + dw-ll_ucoco_384.onnx)")
        return self._pose

    def close(self):
        if self._landmarker is not None:
            self._landmarker.close()


def largest_face(faces: list[dict]) -> dict:
    def area(f):
        e = f["lmks"][:, :2].max(0) - f["lmks"][:, :2].min(0)
        return float(e[0] * e[1])

    return max(faces, key=area)


def whisper_rows(wave: np.ndarray, tools: Tools, dtype: str) -> np.ndarray:
    from echomimic_lib.audio import encode_audio

    feats = encode_audio(wave, tools.whisper, sample_rate=16000)
    return feats.rows.cpu().numpy().astype(dtype)


def _audio(video: Path, info: dict) -> tuple[np.ndarray | None, str]:
    from echomimic_lib.audio import load_waveform_16k

    src = video if info["has_audio"] else find_audio(video)
    if src is None:
        return None, ""
    return load_waveform_16k(str(src)).numpy().astype(np.float32), str(src)


def frames_to_analyse(cfg: PrepareConfig, wave) -> int | None:
    """Frames worth analysing: no more than the audio covers (and ``max_seconds``)."""
    limits = [int(cfg.max_seconds * cfg.fps)] if cfg.max_seconds else []
    if wave is not None:
        limits.append(int(len(wave) / 16000 * cfg.fps))
    return max(1, min(limits)) if limits else None


def open_clip(video: Path, cid: str, kind: str, cfg: PrepareConfig):
    """(video info, 16 kHz wave or None, audio source, status); the status already says 'no_audio' when wave is None."""
    info = probe_video(video)
    wave, audio_src = _audio(video, info)
    st = ClipStatus(cid, str(video), "dropped", kind=kind, fps=cfg.fps)
    if wave is None:
        st.reason, st.detail = "no_audio", "no audio stream and no sidecar audio file"
    return info, wave, audio_src, st


def write_clip(video: Path, st: ClipStatus, out_root: Path, cfg: PrepareConfig, tools: Tools, n: int, crop_frame, wave,
               describe, verdict: Verdict) -> ClipStatus:
    """Write a kept clip: its first ``n`` frames through ``crop_frame`` into ``<id>.partial``, the 16 kHz audio cut
    to them (silence when ``wave`` is None) with its whisper rows (none without a whisper model), and ``describe(writer, n)``'s metadata and
    arrays; renamed into place when complete, removed on any failure. Marks ``st`` ok and returns it."""
    shard = shard_of(st.id, cfg.num_shards)
    final = shard_dir(out_root, shard) / st.id
    writer = ClipWriter(final, cfg.jpeg_quality)
    try:
        for img in iter_frames(video, cfg.fps, None, n):
            writer.add_frame(crop_frame(img))
        n = writer.num_frames
        samples = int(round(n / cfg.fps * 16000))
        wave = wave[:samples] if wave is not None else np.zeros(samples, np.float32)
        with writer.writing():  # what describe writes into the clip (pose.npz) is said of the clip
            meta, arrays = describe(writer, n)
        arrays["audio16k"] = wave
        if tools.whisper_path is not None:
            arrays["whisper"] = whisper_rows(wave, tools, cfg.whisper_dtype)
        meta.update(id=st.id, source=st.source, kind=st.kind, fps=cfg.fps, size=cfg.size, seconds=n / cfg.fps, check=verdict.detail)
        writer.finish(meta, arrays)
    except BaseException:
        writer.abort()
        raise
    st.status, st.detail, st.num_frames, st.seconds = "ok", verdict.detail, n, round(n / cfg.fps, 3)
    st.shard, st.path = shard, str(final.relative_to(out_root))
    return st
