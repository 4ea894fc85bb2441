"""Speech read in one decode pass. ``read_speech(path, fps, length)`` (animate, batch rows, ``dub --audio``) keeps the
start while the whole track goes by for its checks and log-mel maximum: the file is opened and decoded once, not twice,
and gives what the two-pass read gave. V3's plan (``jobs.v3_speech``) keeps only the start a video can use and measures
the whole clip's loudness a piece at a time (``audio.loudness.LoudnessMeter``): the wav2vec input samples are the
whole-track pipeline's, bit for bit, while the buffers stay bounded whatever the track's length."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from tests.test_speech_memory import DATA, long_speech, write_wav


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    return long_speech(tmp_path_factory.mktemp("one_pass") / "long.wav")


@pytest.fixture
def opens(monkeypatch):
    """Every media open the audio decoder makes (``audio_blocks`` opens the file once per decode pass)."""
    from echomimic_lib.io import audio_file, video_io

    seen = []
    for module in (audio_file, video_io):  # audio_file: the decoder's opens; video_io: a probe's
        real = module._open
        monkeypatch.setattr(module, "_open", lambda p, *a, real=real, **k: seen.append(Path(p)) or real(p, *a, **k))
    return seen


def _two_pass(path, fps, length):
    """What read_speech(path, fps, length) did before: the start decoded, then the whole track decoded again."""
    from echomimic_lib.audio.features import seconds_for_frames
    from echomimic_lib.audio.track import summarise_track
    from echomimic_lib.io.audio_file import audio_blocks, read_audio

    wav, sr = read_audio(path, duration=seconds_for_frames(length, fps))
    return wav, sr, summarise_track(audio_blocks(path))


@pytest.mark.parametrize("fps, length", [(25.0, 125), (29.97, 1950)])
def test_a_long_tracks_start_is_read_in_one_pass_with_the_two_pass_reads_results(long_wav, opens, fps, length):
    from echomimic_lib.audio.track import SpeechStart
    from echomimic_lib.jobs.speech_input import read_speech

    wav, sr, raw = read_speech(long_wav, fps, length)
    assert opens == [Path(long_wav)]  # one open, one decode pass (two before)
    want_wav, want_sr, whole = _two_pass(long_wav, fps, length)
    assert isinstance(raw, SpeechStart) and sr == want_sr and wav.dtype == want_wav.dtype == np.float32
    assert np.array_equal(wav, want_wav) and wav.flags.c_contiguous
    assert raw.whole_samples == whole.samples and raw.mel_peak == whole.mel_peak is not None


def test_a_short_track_with_a_length_is_read_once_and_whole(opens):
    from echomimic_lib.audio.waveform import RawAudio
    from echomimic_lib.jobs.speech_input import read_speech

    path = DATA / "audio" / "echomimicv2_woman.wav"
    wav, sr, raw = read_speech(path, 25.0, 50)
    assert len(opens) == 1 and type(raw) is RawAudio
    assert np.array_equal(wav, read_speech(path)[0])


def test_dub_with_a_length_reads_its_speech_once(long_wav, opens):
    from echomimic_lib.jobs import dub

    wav, sr, seconds, frames, mel_peak = dub._speech(SimpleNamespace(audio=str(long_wav), length=50), "unused.mp4", 0,
                                                     25.0, 24.0, False)
    assert opens == [Path(long_wav)] and frames == 50 and mel_peak is not None
    assert seconds == pytest.approx(130.0, abs=1e-3) and wav.shape[1] < 70 * sr


def test_the_checks_past_the_start_still_refuse_in_one_pass(tmp_path, opens):
    from echomimic_lib.jobs.speech_input import read_speech

    x = np.zeros((2, 16000 * 70), np.float32)
    x[0, 3] = 0.5  # audible only at the start... and a NaN at 66 s
    x[1, 66 * 16000] = np.nan
    path = write_wav(tmp_path / "nan.wav", x, 16000, float32=True)
    with pytest.raises(EchoMimicError, match=r"1 NaN/Inf samples \(first at 66.000 s\)"):
        read_speech(path, 25.0, 25)
    assert len(opens) == 1


# ------------------------------------------------------------------------------------------------------------ V3


def _old_v3_samples(path, frames):
    """What plan_v3 + run_v3 made of the speech before: the whole track held, downmixed, resampled, normalised."""
    from echomimic_lib.audio.wav2vec import prepare_samples, resample_16k
    from echomimic_lib.jobs.speech_input import read_speech

    wav, sr, raw = read_speech(path)
    mono = raw.samples.mean(axis=0).astype(np.float32, copy=False)
    return wav, prepare_samples(resample_16k(mono, raw.sample_rate), frames)


def _plan(path, tmp_path, length=0):
    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3

    return plan_v3(V3Request(reference=str(DATA / "images" / "portrait_a.png"), audio=str(path),
                             output=str(tmp_path / "o.mp4"), models=str(tmp_path), size=(64, 64), length=length))


def _media(tmp_path):
    t = np.arange(16000 * 9) / 16000
    tone = (0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 0.7 * t))).astype(np.float32)
    quiet = np.zeros(44100 * 5, np.float32)
    quiet[:: 4410] = 3e-4  # audible, but every 400 ms block under the -70 LUFS gate: loudness -inf, left unchanged
    return [(DATA / "audio" / "echomimicv2_woman.wav", 0), (DATA / "audio" / "echomimic_en.wav", 0),
            (write_wav(tmp_path / "mono16k.wav", tone[None], 16000), 120),  # 16 kHz: no resampling
            (write_wav(tmp_path / "short.wav", tone[None, :5600], 16000), 0),  # 0.35 s: under one block, unchanged
            (write_wav(tmp_path / "quiet.wav", np.stack([quiet, quiet]), 44100), 0)]


def test_v3_plans_wav2vec_input_and_sound_are_the_whole_track_pipelines(tmp_path):
    for path, length in _media(tmp_path):
        plan = _plan(path, tmp_path, length)
        wav, want = _old_v3_samples(path, plan.frames)
        got = plan.speech.prepared(plan.frames)
        assert got.dtype == want.dtype and np.array_equal(got, want), path.name
        keep = math.ceil((plan.frames / 25 + 1.0) * plan.sample_rate)
        assert np.array_equal(plan.wav, wav[:, :keep]), path.name  # the muxed sound
    assert plan.speech.lufs == float("-inf")  # (the quiet one)


def test_v3_with_a_long_track_holds_its_start_and_bounded_buffers(long_wav, tmp_path, monkeypatch, opens):
    """130 s of 3-channel 44.1 kHz speech, loud only after 100 s: the loudness is the whole clip's, yet what is held
    is the start a 200-frame video uses (8 s + 2 s of sound, 8 s of 16 kHz mono) and under a second of K-weighted
    samples; the file is decoded once."""
    import echomimic_lib.audio.loudness as loudness
    import echomimic_lib.io.audio_file as audio_file

    widest, real_add = [], loudness.LoudnessMeter.add
    monkeypatch.setattr(loudness.LoudnessMeter, "add", lambda self, x: real_add(self, x) or widest.append(len(self.buf)))
    kept, real_read = [], audio_file.read_audio
    monkeypatch.setattr(audio_file, "read_audio", lambda *a, **k: kept.append(real_read(*a, **k)) or kept[-1])
    plan = _plan(long_wav, tmp_path, 200)
    assert len(opens) == 2  # the header's probe, then one decode pass (before: the same two, the whole track held)
    sr = plan.sample_rate
    assert plan.frames == 197 and plan.speech.samples == 130 * sr
    assert len(kept) == 1 and kept[0][0].shape == (3, math.ceil((200 / 25 + 2) * sr))  # never the whole track
    assert plan.speech.head_16k.shape == (int(200 / 25 * 16000),)
    assert max(widest) <= 6400 + loudness.LoudnessMeter.SLACK + 16000  # one block, the slack and a decoded piece
    _, want = _old_v3_samples(long_wav, plan.frames)
    assert np.array_equal(plan.speech.prepared(plan.frames), want)
    from echomimic_lib.audio.loudness import integrated_loudness

    alone = integrated_loudness(plan.speech.head_16k)  # the start's own loudness differs: the whole clip's is used
    assert alone != plan.speech.lufs


def test_v3_refuses_what_read_speech_refuses_with_its_words(tmp_path):
    from echomimic_lib.jobs.speech_input import read_speech
    from echomimic_lib.jobs.v3_speech import read_v3_speech

    x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000 * 12) / 16000)).astype(np.float32)
    bad = np.stack([x, x])
    bad[1, 11 * 16000] = np.inf
    cases = [write_wav(tmp_path / "silent.wav", np.zeros((2, 16000 * 12), np.float32), 16000),
             write_wav(tmp_path / "inf.wav", bad, 16000, float32=True),
             write_wav(tmp_path / "tiny.wav", x[None, :200], 16000), tmp_path / "missing.wav"]
    for path in cases:
        with pytest.raises(EchoMimicError) as old:
            read_speech(path)
        with pytest.raises(EchoMimicError) as new:
            read_v3_speech(path, 81)
        assert str(new.value) == str(old.value), path.name


def test_the_loudness_meter_is_the_whole_clips_measure_bit_for_bit():
    from echomimic_lib.audio.loudness import LoudnessMeter, integrated_loudness

    rng = np.random.default_rng(3)
    for _ in range(12):
        n = int(rng.integers(6400, 16000 * 15))
        x = (rng.standard_normal(n) * np.exp(rng.standard_normal(n).cumsum() / 300) * 0.05).astype(np.float32)
        meter, i = LoudnessMeter(), 0
        while i < n:
            step = int(rng.integers(1, 9000))
            meter.add(x[i : i + step])
            i += step
        assert meter.loudness() == integrated_loudness(x)
        padded = LoudnessMeter()
        padded.add(x[:-1])
        assert padded.loudness(n) == integrated_loudness(np.pad(x[:-1], (0, 1)))  # resample_16k's zero padding
        cut = LoudnessMeter()
        cut.add(x)
        assert cut.loudness(n - 1) == integrated_loudness(x[:-1])


def test_read_audios_rest_sees_the_whole_track_once_and_the_window_as_the_returned_array(tmp_path):
    from echomimic_lib.io.audio_file import read_audio

    x = (np.random.default_rng(5).standard_normal((2, 16000 * 9)) * 0.1).astype(np.float32)
    path = write_wav(tmp_path / "nine.wav", x, 16000, float32=True)
    whole = read_audio(path)[0]
    for start, duration in ((0.0, 3.0), (2.5, 3.0), (0.0, 20.0), (7.0, 5.0)):
        seen = []
        wav, _ = read_audio(path, start, duration, rest=lambda sr, piece: seen.append(piece))
        assert np.array_equal(wav, read_audio(path, start, duration)[0])
        if start + duration <= 9:  # the window whole: passed on as the very array returned, among the rest in order
            assert any(p is wav for p in seen) and np.array_equal(np.concatenate(seen, axis=1), whole)
        else:  # the track ends within the window: only what lies before it is passed on
            assert np.array_equal(np.concatenate(seen, axis=1) if seen else whole[:, :0], whole[:, : int(start * 16000)])


# ------------------------------------------------------------------------------------------------- poses --audio


def test_the_gesture_analysis_of_a_file_holds_its_16k_mono_not_the_track(long_wav, monkeypatch):
    """``echomimic poses --audio``'s speech analysis: the same features as from the whole track held, while the file is
    decoded a piece at a time (the (C, T) track at its own rate is never one array: read_audio is not called)."""
    import echomimic_lib.io.audio_file as audio_file
    from echomimic_lib.audio import read_raw_audio
    from echomimic_lib.pose.gestures.speech import analyze_speech, analyze_waveform

    wants = {p: analyze_waveform(read_raw_audio(p).mono_16k().astype(np.float64), 24.0)
             for p in (long_wav, DATA / "audio" / "echomimicv2_woman.wav", DATA / "audio" / "echomimic_en.wav")}
    monkeypatch.setattr(audio_file, "read_audio", lambda *a, **k: pytest.fail("the whole track was read into memory"))
    for path, want in wants.items():
        got = analyze_speech(path, 24.0)
        for name, value in vars(want).items():
            assert np.array_equal(getattr(got, name), value, equal_nan=True) if isinstance(value, np.ndarray) \
                else getattr(got, name) == value, (path.name, name)


def test_the_gesture_analysis_refuses_a_broken_file_with_read_raw_audios_words(tmp_path):
    from echomimic_lib.audio import read_raw_audio
    from echomimic_lib.pose.gestures.speech import analyze_speech

    x = np.full((2, 16000), 0.1, np.float32)
    x[1, 8000] = np.nan
    for path in (write_wav(tmp_path / "nan.wav", x, 16000, float32=True), tmp_path / "none.wav"):
        with pytest.raises(EchoMimicError) as old:
            read_raw_audio(path)
        with pytest.raises(EchoMimicError) as new:
            analyze_speech(path, 24.0)
        assert str(new.value) == str(old.value)


def test_poses_audio_with_a_length_keeps_the_start_for_its_preview(long_wav, tmp_path, shared_data, opens):
    import shutil

    from echomimic_lib.jobs.poses import PosesRequest, check

    lib = tmp_path / "poses"
    shutil.copytree(shared_data / "pose" / "01", lib / "01")
    plan = check(PosesRequest(output=str(tmp_path / "p.npz"), audio=str(long_wav), gesture_library=str(lib), length=48,
                              preview=str(tmp_path / "p.mp4")))
    assert plan.num_frames == 48 and plan.wav.shape[1] == math.ceil(61.0 * plan.sample_rate)  # not 130 s
    assert opens.count(Path(long_wav)) == 2  # probe_speech's open, then one decode pass
    whole = check(PosesRequest(output=str(tmp_path / "p.npz"), audio=str(long_wav), gesture_library=str(lib),
                               preview=str(tmp_path / "p.mp4")))
    assert whole.wav.shape[1] == 130 * whole.sample_rate  # (a SoundFile, muxed a piece at a time: test_speech_one_pass_2)
    from echomimic_lib.io.audio_file import read_audio

    assert np.array_equal(plan.wav, read_audio(long_wav)[0][:, : plan.wav.shape[1]])
