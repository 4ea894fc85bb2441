"""``echomimic poses --audio``'s gesture analysis rides the checks' decode pass (tests/test_speech_one_pass_2.py left
three decodes without --length, and the whole 16 kHz mono held with it): the check pass hands its 16 kHz mono to a
:class:`~echomimic_lib.pose.gestures.speech_stream.SpeechStream`, which keeps numbers per frame, not samples. The poses
are the old ones, bit for bit; without --length the track is decoded twice (checks + analysis, the preview's mux),
with --length once."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from tests.test_speech_memory import long_speech, write_wav
from tests.test_speech_one_pass_2 import SHORT, _library, _numpy_peak

FPS = 24.0


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    return long_speech(tmp_path_factory.mktemp("one_pass_3") / "long.wav")  # 130 s, 3 channels, 44.1 kHz


@pytest.fixture
def decodes(monkeypatch):
    """The paths of every decode pass (a call to the audio decoder, ``audio_blocks``), wherever its caller looks."""
    from echomimic_lib.io import audio_file, video_io

    seen, real = [], audio_file.audio_blocks

    def counted(path, *a, **k):
        seen.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(audio_file, "audio_blocks", counted)
    if hasattr(video_io, "audio_blocks"):  # (before: the library's callers looked there)
        monkeypatch.setattr(video_io, "audio_blocks", counted)
    return seen


def _same_features(got, want) -> bool:
    return all(got.pauses == want.pauses if f.name == "pauses" else
               np.array_equal(getattr(got, f.name), getattr(want, f.name), equal_nan=True) for f in dataclasses.fields(want))


def _same_poses(a, b) -> bool:
    return len(a) == len(b) and a.fps == b.fps and all(
        np.array_equal(getattr(a, k), getattr(b, k), equal_nan=True)
        for k in ("body", "body_score", "body_subset", "hands", "hands_score", "faces", "faces_score", "draw_pose_params",
                  "frame_ids"))


def _old_poses(audio, library, frames: int):
    """What run_poses made before: the speech analysed from the file on its own (analyze_speech decoding it again)."""
    from echomimic_lib.jobs.pose_sources import speech_gestures

    return speech_gestures(str(audio), FPS, frames, 3407, [library], 1.0)


def _run(audio, tmp_path, length: int = 0, preview: bool = True):
    from echomimic_lib.jobs.poses import PosesRequest, run_poses

    out = tmp_path / "p.npz"
    for p in (out, tmp_path / "p.mp4"):
        p.unlink(missing_ok=True)
    return run_poses(PosesRequest(output=str(out), audio=str(audio), gesture_library=str(_library(tmp_path)),
                                  preview=str(tmp_path / "p.mp4") if preview else None, width=64, height=64,
                                  length=length))


# ------------------------------------------------------------------------------------------ the analysis a piece at a time


def _streamed(wave, fps, sizes):
    from echomimic_lib.pose.gestures.speech_stream import SpeechStream

    s, i, longest = SpeechStream(fps), 0, 0
    for k in sizes:
        if i >= len(wave):
            break
        s.add(wave[i : i + k].astype(np.float32))
        i += k
        longest = max(longest, len(s.buf) + s.waiting)
    s.add(wave[i:].astype(np.float32))
    return s.features(), longest


@pytest.mark.parametrize("fps", [24.0, 25.0, 12.5, 60.0, 1.0])
def test_the_stream_is_analyze_waveform_bit_for_bit(fps):
    from echomimic_lib.audio.track import read_mono_16k
    from echomimic_lib.pose.gestures.speech import analyze_waveform

    rng = np.random.default_rng(int(fps * 10))
    for path in SHORT:
        wave = read_mono_16k(path)
        want = analyze_waveform(wave.astype(np.float64), fps)
        for sizes in (rng.integers(1, 20000, 200), [1] * 700 + [16000] * 20, [len(wave)]):
            got, _ = _streamed(wave, fps, sizes)
            assert _same_features(got, want), (path.name, fps)


def test_the_stream_of_tiny_and_silent_clips_is_analyze_waveforms():
    """Shorter than the pitch window (640), than one flux hop pair (560), a frame and a bit; silence; and too short
    for a frame: refused with analyze_waveform's words."""
    from echomimic_lib.pose.gestures.speech import analyze_waveform

    rng = np.random.default_rng(3)
    for n, fps in ((667, 24.0), (700, 24.0), (300, 60.0), (559, 60.0), (560, 60.0), (639, 60.0), (640, 60.0),
                   (641, 60.0), (1000, 24.0), (1400, 60.0), (2000, 24.0), (5000, 60.0)):
        wave = (0.3 * rng.standard_normal(n)).astype(np.float32)
        for w in (wave, np.zeros(n, np.float32)):
            want = analyze_waveform(w.astype(np.float64), fps)
            for sizes in ([7] * 800, [n]):
                assert _same_features(_streamed(w, fps, sizes)[0], want), (n, fps)
    with pytest.raises(EchoMimicError) as old:
        analyze_waveform(np.zeros(600), FPS)
    with pytest.raises(EchoMimicError) as new:
        _streamed(np.zeros(600, np.float32), FPS, [100] * 6)
    assert str(new.value) == str(old.value)


def test_the_stream_holds_a_few_frames_of_samples_not_the_track(long_wav):
    """130 s of 16 kHz mono (2 M samples) given a second at a time: never more than its batch and two seconds of it
    held (4 s: 0.5 MB of float64)."""
    from echomimic_lib.audio.track import read_mono_16k
    from echomimic_lib.pose.gestures.speech import analyze_waveform
    from echomimic_lib.pose.gestures.speech_stream import BATCH

    wave = read_mono_16k(long_wav)
    got, longest = _streamed(wave, FPS, [16000] * (len(wave) // 16000 + 1))
    assert longest <= BATCH + 2 * 16000, longest
    assert _same_features(got, analyze_waveform(wave.astype(np.float64), FPS))


# ------------------------------------------------------------------------------------------ echomimic poses --audio


def test_poses_without_length_decode_twice_and_make_the_same_poses(tmp_path, decodes):
    """Before: three decodes (the checks, the gesture analysis, the preview's mux); now the checks' pass feeds the
    analysis: two. The poses and the preview's sound are the old ones."""
    for audio in SHORT:
        decodes.clear()
        out = _run(audio, tmp_path)
        assert decodes == [str(audio)] * 2, decodes  # (was 3)
        assert _same_poses(out["sequence"], _old_poses(audio, tmp_path / "poses", out["frames"])), audio.name


def test_poses_with_length_decode_once_and_make_the_same_poses(long_wav, tmp_path, decodes):
    """--length 48 of 130 s: the checks' pass (which keeps the start and goes over the whole track for its checks)
    feeds the analysis, so the track is decoded once, not twice, and the poses are the whole track's analysis cut to
    the window, as before (its loudness is the whole clip's)."""
    out = _run(long_wav, tmp_path, length=48)
    assert decodes == [str(long_wav)], decodes  # (was 2: the analysis decoded it all again)
    assert out["frames"] == 48
    assert _same_poses(out["sequence"], _old_poses(long_wav, tmp_path / "poses", 48))


def _peak(fn):
    fn()  # (the modules it imports the first time are no part of the peak)
    return _numpy_peak(fn)


def test_poses_with_length_hold_no_whole_16k_track(long_wav, tmp_path, monkeypatch):
    """The analysis with --length 48 of 130 s: before, it held the track's 16 kHz mono (8.3 MB here) and its float64
    copies and sums (over 5 times that); now it adds under a quarter of that 16 kHz mono to the checks' own peak."""
    from echomimic_lib.jobs.poses import PosesRequest, check
    from echomimic_lib.pose.gestures import speech_stream
    from echomimic_lib.pose.gestures.speech import analyze_speech

    def checked():
        plan = check(PosesRequest(output=str(tmp_path / "q.npz"), audio=str(long_wav), length=48,
                                  gesture_library=str(_library(tmp_path))))
        return plan.speech.features()

    mono_16k = 130 * 16000 * 4
    old, old_peak = _peak(lambda: analyze_speech(str(long_wav), FPS))
    speech, peak = _peak(checked)
    assert _same_features(speech, old) and speech.num_frames == 130 * 24
    real = speech_stream.SpeechStream

    class Nothing(real):  # the checks alone: the samples go nowhere
        def add(self, piece):
            pass

    monkeypatch.setattr(speech_stream, "SpeechStream", Nothing)
    _, checks_peak = _peak(lambda: check(PosesRequest(output=str(tmp_path / "q.npz"), audio=str(long_wav), length=48,
                                                      gesture_library=str(_library(tmp_path)))))
    assert old_peak > 5 * mono_16k, (old_peak, mono_16k)
    assert peak - checks_peak < mono_16k / 4, (peak, checks_peak, mono_16k)


def test_poses_with_length_past_a_short_tracks_end_are_the_old_ones(tmp_path, decodes):
    """A track that ends within --length's start (or exactly at it) is all in the start: analysed from it, no second
    decode, the old poses."""
    from echomimic_lib.audio.track import read_mono_16k

    audio = SHORT[0]
    frames = int(len(read_mono_16k(audio)) / 16000 * FPS)
    for length in (frames + 100, frames):
        decodes.clear()
        out = _run(audio, tmp_path, length=length)
        assert decodes == [str(audio)], (length, decodes)
        assert _same_poses(out["sequence"], _old_poses(audio, tmp_path / "poses", out["frames"])), length
    exact = write_wav(tmp_path / "exact.wav", np.tile(0.3 * np.sin(np.arange(16000) / 9.0), (2, 3)).astype(np.float32),
                      16000)  # 3 s: 72 frames, the start --length 72 keeps is the whole track
    out = _run(exact, tmp_path, length=72, preview=False)
    assert _same_poses(out["sequence"], _old_poses(exact, tmp_path / "poses", 72))


def test_a_stereo_and_a_multichannel_track_give_the_old_poses(tmp_path):
    rng = np.random.default_rng(5)
    talk = np.tile(np.sin(np.arange(48000 * 4) / 7.0) * (rng.random(48000 * 4) > 0.3), (4, 1)).astype(np.float32)
    talk[1] *= 0.5
    for c in (2, 4):
        audio = write_wav(tmp_path / f"c{c}.wav", 0.4 * talk[:c], 48000)
        for length in (0, 30):
            out = _run(audio, tmp_path, length=length, preview=False)
            assert _same_poses(out["sequence"], _old_poses(audio, tmp_path / "poses", out["frames"])), (c, length)

