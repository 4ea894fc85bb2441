"""Weight-free quality metrics (echomimic_lib.evaluate): the lip-sync offset recovers known audio shifts on the shared
V1 landmark frames and their clip, jitter follows landmark noise, flicker follows changes outside the face only,
shape drift follows a warped face, the MFCC front end behaves like python_speech_features, and the report's JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.evaluate import EvalReport, clip_from_arrays, evaluate, load_clip, save_png, sync_plot, table
from echomimic_lib.evaluate.face import face_masks, points3d, stabilise
from echomimic_lib.evaluate.identity import procrustes_distance, shape_drift
from echomimic_lib.evaluate.mfcc import mfcc
from echomimic_lib.evaluate.stability import PARTS, background_flicker, landmark_jitter
from echomimic_lib.evaluate.sync import MIN_SYNC_SECONDS, NULL_COUNT, av_sync, mouth_opening, sync_null

FPS = 24.0
FRAME_MS = 1000.0 / FPS


@pytest.fixture(scope="module")
def pose_clip(shared_data):
    return load_clip(shared_data / "v1_pose_pkl", audio=shared_data / "audio" / "pose_demo_clip.wav")


@pytest.fixture(scope="module")
def px(pose_clip):
    return pose_clip.landmarks.pixels()


def _shifted(wave: np.ndarray, ms: float) -> np.ndarray:
    """The clip delayed (ms > 0: the audio comes late) or advanced (ms < 0) by ``ms``."""
    n = int(round(abs(ms) * 16))
    return np.concatenate([np.zeros(n, np.float32), wave]) if ms > 0 else wave[n:]


# ------------------------------------------------------------------------------------------ lip sync
def test_the_matching_clip_is_in_sync(pose_clip, px):
    res = av_sync(mouth_opening(px), pose_clip.wave16k, FPS)
    assert abs(res.offset_ms) <= FRAME_MS and res.corr > 0.3
    # the same mouth against the clip played backwards (same energy distribution, no timing): a much weaker match
    backwards = av_sync(mouth_opening(px), pose_clip.wave16k[::-1].copy(), FPS)
    assert backwards.corr < res.corr - 0.1


@pytest.mark.parametrize("shift_ms", [-400, -250, -120, 120, 250, 400])
def test_a_delayed_or_advanced_clip_gives_its_shift_back_within_one_frame(pose_clip, px, shift_ms):
    res = av_sync(mouth_opening(px), _shifted(pose_clip.wave16k, shift_ms), FPS)
    assert abs(res.offset_ms - shift_ms) <= FRAME_MS, (shift_ms, res.offset_ms)
    assert res.corr > 0.3


def test_sync_needs_frames_and_is_undefined_for_silence(px):
    with pytest.raises(EchoMimicError, match="at least 8 frames"):
        av_sync(mouth_opening(px[:5]), np.zeros(16000, np.float32), FPS)
    silent = av_sync(mouth_opening(px[:48]), np.zeros(32000, np.float32), FPS)
    assert silent.offset_ms is None and silent.corr is None


def _ar1(seed: int, n: int, phi: float = 0.81) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + rng.normal()
    return x + 5.0


def test_the_sync_strength_comes_with_its_confidence_against_unrelated_audio(pose_clip, px):
    wave = pose_clip.wave16k
    res = av_sync(mouth_opening(px), wave, FPS)
    null = sync_null(res, wave)
    assert null.nulls == NULL_COUNT and null.seconds == pytest.approx(10.0) and null.meaningful
    assert null.p_value <= 0.01 and null.z > 2.0 and null.null_p95 < res.corr  # the real clip beats every null
    assert sync_null(res, wave) == null  # deterministic
    # the same mouth against the clip played backwards scores like a null, and so do unrelated AR(1) mouths
    back = av_sync(mouth_opening(px), wave[::-1].copy(), FPS)
    assert sync_null(back, wave[::-1].copy()).p_value > 0.2
    unrelated = [sync_null(av_sync(_ar1(seed, len(px)), wave, FPS), wave) for seed in range(6)]
    assert np.mean([u.p_value for u in unrelated]) > 0.2 and sum(u.p_value < 0.05 for u in unrelated) <= 1


def test_a_short_clip_scores_high_by_chance_and_is_flagged(pose_clip):
    # 12 frames (0.5 s windows of speech): an unrelated mouth scores above real speech's 10-s score on average ...
    waves = [pose_clip.wave16k[k * 16000:k * 16000 + 8000] for k in (1, 2, 3, 4)]
    assert np.mean([av_sync(_ar1(seed, 12), w, FPS).corr for w in waves for seed in range(8)]) > 0.4
    for w in waves:  # ... the nulls' 95th percentile says so, and the score is flagged
        null = sync_null(av_sync(_ar1(0, 12), w, FPS), w)
        assert not null.meaningful and null.null_p95 > 0.6
    n = int(MIN_SYNC_SECONDS * FPS)
    assert sync_null(av_sync(_ar1(0, n), pose_clip.wave16k, FPS), pose_clip.wave16k).meaningful
    assert not sync_null(av_sync(_ar1(0, n - 1), pose_clip.wave16k, FPS), pose_clip.wave16k).meaningful


def test_the_report_shows_the_confidence_and_flags_a_short_clip(pose_clip):
    from echomimic_lib.evaluate import Clip

    full = evaluate(pose_clip)
    doc = full.to_dict()
    assert doc["av_sync_meaningful"] is True and doc["av_sync_p"] <= 0.01 and doc["av_sync_min_seconds"] == MIN_SYNC_SECONDS
    assert {"av_sync_p", "av_sync_z", "av_sync_null_p95"} <= set(full.scalars())
    short = evaluate(Clip("short", FPS, pose_clip.wave16k[:32000], None, pose_clip.landmarks.take(range(48))))
    doc = short.to_dict()
    assert doc["av_sync_meaningful"] is False and doc["av_sync_corr"] is not None and doc["av_sync_p"] is not None
    assert not any(k.startswith("av_") for k in short.scalars())  # never logged as if it meant something
    text = table([full, short])
    row = next(line for line in text.splitlines() if line.startswith("sync strength"))
    assert row.count("!") == 1 and "p-value vs unrelated audio" in text
    assert any("lasts 2.0 s" in n and "below 6 s" in n for n in doc["notes"])


# ------------------------------------------------------------------------------------------ stability
def test_jitter_rises_with_landmark_noise(px):
    rng = np.random.default_rng(0)
    clean = landmark_jitter(px)
    noisy = landmark_jitter(px + rng.normal(0.0, 1.0, px.shape))
    assert set(clean) == {"all", *PARTS}
    assert all(noisy[k] > clean[k] * 1.2 for k in clean), (clean, noisy)
    # head motion alone (a smooth drift of the whole face) is removed by the stabilisation
    t = np.arange(len(px))[:, None, None]
    moved = px + np.concatenate([20 * np.sin(t / 20.0), 10 * np.cos(t / 25.0)], axis=2)
    assert landmark_jitter(moved)["all"] == pytest.approx(clean["all"], rel=0.05)


def test_stabilise_removes_a_similarity_transform(px):
    a = np.deg2rad(12)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    moved = 1.3 * px[:10] @ rot.T + np.array([40.0, -15.0])
    assert np.allclose(stabilise(moved, target=px[0]), stabilise(px[:10], target=px[0]), atol=1e-6)


@pytest.fixture(scope="module")
def face_video(shared_data):
    """A still portrait repeated over 8 frames, with its face mesh (MediaPipe) for every frame."""
    import cv2

    from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor

    img = cv2.cvtColor(cv2.imread(str(shared_data / "images" / "portrait_a.png")), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)
    with FaceLandmarkExtractor(shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task") as ex:
        seq = ex.extract(img)
    return np.repeat(img[None], 8, axis=0), np.repeat(seq.pixels(), 8, axis=0)


def test_flicker_rises_when_frames_change_outside_the_face_only(face_video):
    frames, lm = face_video
    masks = face_masks(lm, (256, 256))
    assert 0.1 < masks[0].mean() < 0.9
    rng = np.random.default_rng(1)
    noise = rng.integers(-40, 41, frames.shape)
    outside = np.where(masks[..., None], frames, np.clip(frames + noise, 0, 255)).astype(np.uint8)
    inside = np.where(masks[..., None], np.clip(frames + noise, 0, 255), frames).astype(np.uint8)
    assert background_flicker(frames, masks) == 0.0
    assert background_flicker(outside, masks) > 10.0
    assert background_flicker(inside, masks) == 0.0
    assert background_flicker(inside, None) > 5.0  # without a face region the whole frame counts


def test_evaluate_on_frames_uses_the_extracted_face_for_flicker_and_face_rate(face_video, shared_data):
    from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor

    frames, _ = face_video
    rng = np.random.default_rng(2)
    flick = frames.copy()
    flick[1::2, :24] = np.clip(flick[1::2, :24].astype(int) + rng.integers(30, 60), 0, 255)  # the top rows (hair/background)
    with FaceLandmarkExtractor(shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task") as ex:
        still = evaluate(clip_from_arrays(frames, fps=FPS), landmarker=ex)
        flickering = evaluate(clip_from_arrays(flick, fps=FPS), landmarker=ex)
    assert still.face_rate == flickering.face_rate == 1.0
    assert still.flicker < 0.5 < 5.0 < flickering.flicker
    assert still.shape_drift < 0.5 and still.reference == "first frame"
    assert any("audio" in n for n in still.notes) and still.av_offset_ms is None


# ------------------------------------------------------------------------------------------ identity
def test_procrustes_ignores_pose_and_size_and_drift_rises_for_a_warped_face(pose_clip, px):
    a = np.deg2rad(-20)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    assert procrustes_distance(0.7 * px[0] @ rot.T + 30.0, px[0]) < 1e-9
    mirrored = px[0] * np.array([-1.0, 1.0])
    assert procrustes_distance(mirrored, px[0]) > procrustes_distance(px[1], px[0])  # no reflections
    pts = points3d(pose_clip.landmarks, (512, 512))  # with depth: head turns are not shape changes
    same = shape_drift(pts, pts[0])
    centre = pts[:, 4:5]  # nose tip
    warped = pts.copy()
    lower = warped[..., 1] > centre[..., 1]
    warped[..., 0] = np.where(lower, centre[..., 0] + (warped[..., 0] - centre[..., 0]) * 1.2, warped[..., 0])  # a wider jaw
    drift = shape_drift(warped, pts[0])
    assert same[0] == pytest.approx(0.0, abs=1e-9) and same.mean() < 3.0
    assert (drift > same).all() and drift.mean() > 2 * same.mean()
    assert shape_drift(pts, pts[0]).mean() < shape_drift(pts[..., :2], pts[0, :, :2]).mean()  # 2-D counts head turns


# ------------------------------------------------------------------------------------------ MFCC
def test_mfcc_frames_and_its_energy_and_scale_behaviour():
    rng = np.random.default_rng(3)
    sig = rng.normal(0, 3000, 16000 + 77)
    feat = mfcc(sig)
    assert feat.shape == (1 + int(np.ceil((len(sig) - 400) / 160)), 13)
    pre = np.append(sig[0], sig[1:] - 0.97 * sig[:-1])
    first = np.abs(np.fft.rfft(pre[:400], 512)) ** 2 / 512
    assert feat[0, 0] == pytest.approx(np.log(first.sum()))  # coefficient 0: log frame power
    louder = mfcc(2 * sig)  # a gain adds log(4) to every log-mel band: only the DC term moves, which c0 replaces
    assert np.allclose(louder[:, 0], feat[:, 0] + np.log(4))
    assert np.allclose(louder[:, 1:], feat[:, 1:], atol=1e-9)
    assert mfcc(np.zeros(800))[0, 0] == pytest.approx(np.log(np.finfo(float).eps))


# ------------------------------------------------------------------------------------------ report / plot
def test_report_json_table_and_plot(pose_clip, tmp_path):
    rep = evaluate(pose_clip)
    doc = json.loads(rep.to_json())
    for key in ("av_offset_ms", "av_sync_corr", "jitter", "flicker", "face_rate", "shape_drift"):
        assert key in doc
    assert doc["flicker"] is None and doc["face_rate"] == 1.0 and "lse_c" not in doc and "csim" not in doc
    assert abs(doc["av_offset_ms"]) <= FRAME_MS and set(doc["jitter"]) == {"all", *PARTS}
    other = EvalReport("b.mp4", 10, 25.0, 0.4, av_offset_ms=80.0, lse_c=7.5, notes=["x"])
    text = table([rep, other])
    assert "A/V offset" in text and "LSE-C" in text and "b.mp4" in text and "note (b.mp4): x" in text
    assert "v1_pose_pkl" in text.splitlines()[0]
    img = sync_plot(rep.sync, "pose demo")
    assert img.shape == (520, 960, 3) and img.dtype == np.uint8 and len(np.unique(img.reshape(-1, 3), axis=0)) > 10
    out = save_png(tmp_path / "plot.png", img)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "adir.png").mkdir()
    with pytest.raises(EchoMimicError, match="not a regular file"):
        save_png(tmp_path / "adir.png", img)
