"""``echomimic dub --audio LONG --length N`` keeps only the start of the speech those frames need, as animate does: the
rest of the track is read a piece at a time for its checks, its length and the whisper features' log-mel maximum, which
reaches ``encode_audio`` so the frames' features are a whole read's (tests/test_speech_memory.py shows that equality)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.test_speech_memory import long_speech


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    return long_speech(tmp_path_factory.mktemp("dub_speech") / "long.wav")


def test_dub_with_a_length_keeps_the_start_and_the_whole_tracks_facts(long_wav, monkeypatch):
    import echomimic_lib.io.audio_file as audio_file
    from echomimic_lib.jobs import dub, speech_input

    whole_wav, whole_sr, whole_raw = speech_input.read_speech(long_wav)  # the old way: the whole track held
    asked = []
    real = audio_file.read_audio
    monkeypatch.setattr(audio_file, "read_audio", lambda p, **k: asked.append(k.get("duration")) or real(p, **k))
    req = SimpleNamespace(audio=str(long_wav), length=50)
    wav, sr, seconds, frames, mel_peak = dub._speech(req, "unused.mp4", 0, 25.0, 24.0, False)
    assert asked and all(d is not None for d in asked)  # never the whole track in one array
    assert sr == whole_sr and wav.shape[1] < whole_wav.shape[1] // 2
    assert (wav == whole_wav[:, : wav.shape[1]]).all()  # the start, sample for sample
    assert seconds == pytest.approx(whole_raw.num_samples_16k / 16000.0, abs=1e-3)  # the whole track's length
    assert frames == speech_input.frame_count(whole_raw, 24.0, 50) == 50
    assert mel_peak == speech_input.read_speech(long_wav, 24.0, 50)[2].mel_peak is not None

    asked.clear()  # without --length the video follows the whole speech: read whole, as before
    wav, sr, seconds, frames, mel_peak = dub._speech(SimpleNamespace(audio=str(long_wav), length=None), "unused.mp4", 0,
                                                     25.0, 24.0, False)
    assert asked == [None] and mel_peak is None and wav.shape == whole_wav.shape


def test_the_planned_dub_hands_the_whole_tracks_log_mel_maximum_to_the_features(long_wav, tiny_comfy_models,
                                                                                shared_data, tmp_path, monkeypatch):
    import echomimic_lib.audio as audio
    from echomimic_lib.jobs.dub import DubRequest, render_dub

    seen = []
    real = audio.encode_audio
    monkeypatch.setattr(audio, "encode_audio", lambda *a, **k: seen.append(k.get("mel_peak")) or real(*a, **k))
    req = DubRequest(video=str(shared_data / "video" / "driving_a.mp4"), audio=str(long_wav),
                     output=str(tmp_path / "out.mp4"), models=str(tiny_comfy_models / "echomimic"), width=64,
                     height=64, steps=1, cfg=1.0, context_frames=16, context_overlap=0, length=6, download=False)
    res = render_dub(req)
    from echomimic_lib.jobs.speech_input import read_speech

    assert seen == [read_speech(long_wav, 24.0, 6)[2].mel_peak] and seen[0] is not None
    assert res.audio.shape[1] < 70 * res.sample_rate  # the kept start (61 s and a second), not 130 s
