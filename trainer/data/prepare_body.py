"""``prepare --kind halfbody | pose``: clips described by DWPose whole-body keypoints (V2 data).

Both kinds run DWPose on every frame and store the sequence (``pose.npz``, released format, normalised to the
stored canvas). They differ as data (:data:`BODY_KINDS`):

- ``halfbody``: talking half-body clips (EMTD-like): the reference's half-body crop
  (:func:`echomimic_lib.pose.align.halfbody_crop`), speech audio required, face landmarks mapped into the
  canvas, the face-size rule applies;
- ``pose``: fully pose-driven clips (the paper's HumanVid use in the pose phases): the whole frame letterboxed
  into the square canvas, no speech needed (the stored audio is silence and training always drops it), no face
  mesh, no face-size rule -- only "one person, no cut, long enough".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .clean import PrepareConfig, check_clip, fill_missing_rows, landmark_boxes
from .clip import ClipStatus, Tools, frames_to_analyse, largest_face, open_clip, write_clip
from .curate import BackgroundFlow, after_write, before_write
from .video import iter_frames, scene_score, small_hsv


@dataclass(frozen=True)
class BodyKind:
    halfbody_crop: bool  # the reference's half-body crop (else the whole frame)
    needs_speech: bool
    face_mesh: bool  # run the face landmarker (face boxes, landmarks)


BODY_KINDS = {"halfbody": BodyKind(True, True, True), "pose": BodyKind(False, False, False)}


def prepare_body(video: Path, cid: str, out_root: Path, cfg: PrepareConfig, tools: Tools) -> ClipStatus:
    """One half-body or pose clip: DWPose on every frame, the kind's crop, face landmarks mapped into the canvas."""
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.pose import HalfBodyCrop, crop_image, resize_and_pad_params, save_pose_npz
    from echomimic_lib.pose.dwpose import extract_pose_sequence

    kind = BODY_KINDS[cfg.kind]
    info, wave, audio_src, st = open_clip(video, cid, cfg.kind, cfg)
    if wave is None and kind.needs_speech:
        return st
    if not kind.needs_speech:
        wave, audio_src = None, ""  # whatever sound a pose clip has is not speech that drives it
        st.reason = st.detail = ""
    cuts, lmks, prev, an_size = [], [], [None], [None]
    face_mesh = cfg.face_landmarks and kind.face_mesh
    flow = BackgroundFlow() if cfg.curate.max_camera_motion is not None else None

    def frames():
        for img in iter_frames(video, cfg.fps, cfg.analysis_side, frames_to_analyse(cfg, wave)):
            an_size[0] = (img.shape[1], img.shape[0])
            hsv = small_hsv(img)
            if prev[0] is not None:
                cuts.append(scene_score(prev[0], hsv))
            prev[0] = hsv
            if flow is not None:
                flow.add(img)
            if face_mesh:
                faces = tools.landmarker.detect(img)
                lmks.append(largest_face(faces)["lmks"] if faces else None)
            yield img

    try:
        seq = extract_pose_sequence(frames(), tools.pose_detector, size=cfg.size, on_missing="interpolate", crop=kind.halfbody_crop,
                                    fps=cfg.fps)
    except EchoMimicError as exc:
        st.reason, st.detail = ("no_face", str(exc)) if "no person" in str(exc) or "face" in str(exc) else ("unreadable", str(exc))
        return st
    rep = seq.report
    counts = np.ones(rep.n_frames, dtype=np.int64)
    counts[rep.missing_frames] = 0
    counts[rep.multi_person_frames] = 2
    n = rep.n_frames if wave is None else min(rep.n_frames, int(len(wave) / 16000 * cfg.fps))
    crop = rep.crop
    s = info["width"] / an_size[0][0]
    ok = (seq.faces_score > 0.3) & np.isfinite(seq.faces).all(-1)
    fy = np.where(ok, seq.faces[..., 1], np.nan)
    heights = (np.nanmax(fy, axis=1) - np.nanmin(fy, axis=1)) * crop.height * s if ok.any() else np.full(len(seq), np.nan)
    v = check_clip(cfg, n, n / cfg.fps, counts[:n], heights[:n], np.array(cuts[: max(0, n - 1)]), wave is not None)
    if not st.checked(v, n):
        return st
    x0, y0 = int(round(crop.x0 * s)), int(round(crop.y0 * s))
    x1, y1 = min(info["width"], int(round(crop.x1 * s))), min(info["height"], int(round(crop.y1 * s)))
    if cfg.curate.enabled:  # the person: the half-body crop (a pose clip's crop is the whole frame: no background)
        real = [x for x in lmks[:n] if x is not None] if cfg.curate.max_yaw is not None else []
        person = np.array([x0 / info["width"], y0 / info["height"], x1 / info["width"], y1 / info["height"]])
        if not before_write(cfg.curate, st, np.stack(real) if real else None, flow, person, cfg.fps, margin=0.0):
            return st
    src_crop = HalfBodyCrop(x0, y0, x1, y1, (info["width"], info["height"]), cfg.size, resize_and_pad_params(y1 - y0, x1 - x0, cfg.size))
    seq = seq.take(np.arange(n))
    seq.draw_pose_params = np.tile(np.asarray(src_crop.draw_pose_params, dtype=np.int64), (len(seq), 1))
    imh, imw, rb, _, cb, _ = src_crop.draw_pose_params

    def describe(writer, n):
        arrays = {}
        if face_mesh and any(x is not None for x in lmks[:n]):
            lm, valid = fill_missing_rows(lmks[:n])
            lm_c = lm.copy()
            lm_c[..., 0] = ((lm[..., 0] * info["width"] - x0) / (x1 - x0) * imw + cb) / cfg.size
            lm_c[..., 1] = ((lm[..., 1] * info["height"] - y0) / (y1 - y0) * imh + rb) / cfg.size
            lm_c[..., 2] = lm[..., 2] * info["width"] / (x1 - x0) * imw / cfg.size
            arrays.update(landmarks=lm_c.astype(np.float32), landmarks_valid=valid)
            arrays["face_boxes"] = (landmark_boxes(lm_c, 1, 1)).astype(np.float32)
        save_pose_npz(seq.take(np.arange(n)), writer.tmp / "pose.npz")
        meta = {"audio_source": audio_src, "source_size": [info["width"], info["height"]], "crop": [x0, y0, x1, y1],
                "draw_pose_params": list(map(int, src_crop.draw_pose_params))}
        return meta, arrays

    st = write_clip(video, st, out_root, cfg, tools, n, lambda img: crop_image(img, src_crop), wave, describe, v)
    if face_mesh and any(x is not None for x in lmks[:n]):  # the lip-sync filter needs the face boxes
        after_write(cfg.curate, tools.sync_net, st, out_root)
    return st
