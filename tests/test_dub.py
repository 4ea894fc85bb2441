"""Video dubbing end to end on tiny random weights (64 px crops, 1 step): ``echomimic dub`` on the shared driving video
and speech, a source with face-less frames at an odd size and another frame rate, and the landmark-only ("L") audio."""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from echomimic_lib.cli import main as cli
from echomimic_lib.io.audio_file import read_audio
from echomimic_lib.io.video_io import probe, read_video
from tests._media import write_wav

# one denoiser call per run: 64 px, 1 step, no CFG, one 24-frame context window
FAST = ["--width", "64", "--height", "64", "--steps", "1", "--cfg", "1", "--context-frames", "24", "--context-overlap", "0",
        "--offline", "-q"]


def _wav(path: Path, name: str, seconds: float, shared: Path) -> Path:
    wav, sr = read_audio(shared / "audio" / name)
    return write_wav(path, wav[0, : int(seconds * sr)], sr)


def _best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 4096) -> float:
    """Largest normalised correlation of b against a shifted by 0..max_lag samples (AAC adds a short delay)."""
    n = min(len(a), len(b)) - max_lag
    best = 0.0
    for lag in range(0, max_lag, 8):
        x, y = a[lag:lag + n], b[:n]
        best = max(best, float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9)))
    return best


@pytest.mark.slow
def test_dub_the_shared_video_keeps_its_size_follows_the_audio_and_carries_the_new_speech(tiny_comfy_models, shared_data,
                                                                                         tmp_path):
    speech = _wav(tmp_path / "speech.wav", "echomimic_en.wav", 1.0, shared_data)
    out = tmp_path / "dub.mp4"
    rc = cli(["dub", "--video", str(shared_data / "video" / "driving_a.mp4"), "--audio", str(speech), "-o", str(out),
              "--models", str(tiny_comfy_models / "echomimic")] + FAST)
    assert rc == 0
    info = probe(out)
    assert (info["width"], info["height"]) == (512, 512) and info["fps"] == 24  # the source's size and rate
    assert info["frames"] == 24  # 1.0 s x 24 fps: the audio's length, not the 288-frame video's
    got, sr = read_audio(out)
    ref, ref_sr = read_audio(speech)
    other, _ = read_audio(_wav(tmp_path / "other.wav", "echomimic_zh.wav", 1.0, shared_data))
    assert sr == ref_sr and abs(got.shape[1] / sr - 1.0) < 0.05
    assert _best_correlation(got[0], ref[0]) > 0.9 and _best_correlation(got[0], other[0]) < 0.3


def _source_video(path: Path, shared: Path, black=(3, 4), size=(357, 331), fps=25) -> Path:
    """8 frames of the driving video on a grey 357x331 canvas at 25 fps, frames 3 and 4 black (no face); H.264 4:4:4
    keeps the odd size."""
    import av
    import cv2

    clip = read_video(shared / "video" / "driving_a.mp4", max_frames=8, with_audio=False)
    w, h = size
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt, stream.options = w, h, "yuv444p", {"crf": "12"}
        for i, frame in enumerate(clip.frames):
            canvas = np.full((h, w, 3), 90, np.uint8)
            canvas[5:325, 20:340] = cv2.resize(frame, (320, 320), interpolation=cv2.INTER_AREA)
            if i in black:
                canvas[:] = 0
            for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.slow
def test_faceless_frames_pass_through_and_odd_sizes_and_frame_rates_are_kept(tiny_comfy_models, shared_data, tmp_path,
                                                                             caplog):
    from echomimic_lib.jobs.dub import DubRequest, render_dub
    from echomimic_lib.retime import retime_indices
    from echomimic_lib.io.video_io import write_video

    video = _source_video(tmp_path / "person.mp4", shared_data)
    src = read_video(video, with_audio=False).frames
    assert src.shape == (8, 331, 357, 3)
    req = DubRequest(video=str(video), audio=str(_wav(tmp_path / "s.wav", "echomimic_en.wav", 0.6, shared_data)),
                     output=str(tmp_path / "out.mp4"), models=str(tiny_comfy_models / "echomimic"), width=64, height=64,
                     steps=1, cfg=1.0, context_frames=16, context_overlap=0, download=False)
    with caplog.at_level(logging.INFO, logger="echomimic_lib"):
        res = render_dub(req)
    # 0.6 s: 14 frames generated at 24 fps, 14 output frames at the source's 25 fps (the video never outlasts the sound)
    assert res.frames.shape == (14, 331, 357, 3) and res.fps == 25.0
    assert (res.schedule.source == retime_indices(8, 14, "ping-pong")).all()  # 8 source frames ping-ponged to 14
    assert list(np.flatnonzero(~res.plan.track.valid)) == [3, 4]
    faceless = np.flatnonzero(np.isin(res.schedule.source, [3, 4]))
    assert list(res.passthrough) == list(faceless) and len(faceless) == 4
    for j in faceless:
        assert np.array_equal(res.frames[j], src[res.schedule.source[j]])  # untouched, bit for bit
    x0, y0, x1, y1 = res.plan.geometry.box
    for j in np.setdiff1d(np.arange(14), faceless):
        s = res.schedule.source[j]
        outside = np.ones(src.shape[1:3], bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(res.frames[j][outside], src[s][outside])  # outside the crop: the source frame
        assert (res.frames[j] != src[s]).any(axis=-1).mean() > 0.05  # inside: the (noise) face of the tiny model
    assert "4 of 14 output frames show a source frame without a face" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="echomimic_lib"):
        write_video(tmp_path / "odd.mp4", res.frames[:3], res.fps)
    assert "padded to 358x332" in caplog.text and probe(tmp_path / "odd.mp4")["width"] == 358


def test_unconditional_audio_is_the_denoisers_zero_audio_path():
    from echomimic_lib.audio.unconditional import UnconditionalAudio
    from echomimic_lib.config import TINY
    from echomimic_lib.models.unet import EchoUNet
    from echomimic_lib.tiny import randomize_

    den = randomize_(EchoUNet(TINY, "denoiser"), 3).eval()
    feats = UnconditionalAudio(30, 25.0)
    assert feats.frame_count(25.0) == 30 and feats.frame_count(24.0) == 28  # the driving sequence's length
    chunks = feats.chunks_at([0, 1, 2], 24.0).unsqueeze(0)
    assert chunks.shape == (1, 3, 50, 384) and not chunks.any()
    x, cond = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 32, 3, 8, 8)
    with torch.no_grad():
        silent = den(x, 500, audio=chunks, cond=cond, reference=None)
        unconditional = den(x, 500, audio=None, cond=cond, reference=None)
        spoken = den(x, 500, audio=torch.randn_like(chunks), cond=cond, reference=None)
    torch.testing.assert_close(silent, unconditional, atol=1e-6, rtol=0)
    assert (spoken - unconditional).abs().max() > 1e-3
    with pytest.raises(Exception, match="out of range"):
        feats.chunks_at([28], 24.0)


def test_bad_dub_requests_fail_before_any_work(tmp_path, shared_data, capsys):
    video = str(shared_data / "video" / "driving_a.mp4")
    assert cli(["dub", "--video", str(tmp_path / "none.mp4"), "-o", str(tmp_path / "o.mp4")] + FAST) == 2
    assert "source video not found" in capsys.readouterr().err
    speech = str(shared_data / "audio" / "echomimic_en.wav")  # (the video has no sound track: said first, since the probe)
    assert cli(["dub", "--video", video, "--audio", speech, "-o", str(tmp_path / "o.mp4"), "--parts", "ears"] + FAST) == 2
    assert "unknown landmark part 'ears'" in capsys.readouterr().err
    assert cli(["dub", "--video", video, "-o", str(tmp_path), "--offline"] + FAST) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.mp4"))


def test_landmark_only_animate_follows_the_driving_sequence(shared_data, tmp_path):
    """``echomimic animate --mode landmarks`` without ``--audio``: planned before any weight, as long as the driving
    frames (240 .pkl frames; a driving video resampled to --fps), no sound track."""
    from echomimic_lib.jobs.animate import AnimateRequest
    from echomimic_lib.jobs.animate_checks import preflight
    from echomimic_lib.errors import EchoMimicError

    ref = str(shared_data / "images" / "portrait_a.png")
    pkl = str(shared_data / "v1_pose_pkl")
    plan = preflight(AnimateRequest(reference=ref, audio=None, output=str(tmp_path / "l.mp4"), mode="v1-landmarks",
                                    landmarks=pkl, face_crop=False, device="cpu"))
    assert plan.audio is None and plan.settings.num_frames == 240
    video = preflight(AnimateRequest(reference=ref, audio=None, output=str(tmp_path / "l.mp4"), mode="v1-landmarks",
                                     landmarks=str(shared_data / "video" / "driving_a.mp4"), fps=12.0, length=100,
                                     face_crop=False, device="cpu",
                                     mediapipe_model=str(shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task")))
    assert video.settings.num_frames == 100  # 288 frames at 24 fps = 144 at 12 fps, cut to --length 100
    with pytest.raises(EchoMimicError, match="--audio is needed for mode v1-audio\\+landmarks"):
        preflight(AnimateRequest(reference=ref, audio=None, output=str(tmp_path / "l.mp4"), mode="v1-audio+landmarks",
                                 landmarks=pkl, face_crop=False, device="cpu"))
